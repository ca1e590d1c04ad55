package embedded_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

func client(t *testing.T, b *embedded.Broker) *confluent.Client {
	t.Helper()
	c, err := confluent.New(confluent.Config{"bootstrap.servers": b.Addr()}, confluent.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return c
}

func produce(c kafkaclient.Client, r *kafkaclient.Record) error {
	ch := make(chan error, 1)
	c.Produce(r, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-time.After(15 * time.Second):
		return errors.New("no delivery report")
	}
}

func TestDefaults(t *testing.T) {
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	host, _, err := net.SplitHostPort(b.Addr())
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr() = %q", b.Addr())
	}
	c := client(t, b)
	// No auto-creation: a metadata lookup does not create the topic.
	if _, err := c.Partitions(ctx(t), "nope"); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Partitions(nope) = %v", err)
	}
	// Default partition count for a topic created without one.
	if err := c.CreateTopics(ctx(t), []kafkaclient.TopicSpec{{Name: "dflt"}}); err != nil {
		t.Fatal(err)
	}
	parts, err := c.Partitions(ctx(t), "dflt")
	if err != nil || len(parts) != embedded.DefaultPartitions {
		t.Fatalf("Partitions(dflt) = %v, %v", parts, err)
	}
	// Records of 2 MiB are accepted.
	big := make([]byte, 2<<20)
	if err := produce(c, &kafkaclient.Record{Topic: "dflt", Partition: 0, Value: big}); err != nil {
		t.Fatalf("2 MiB record: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestKafkaDefaultLimitRefusesOneMiB(t *testing.T) {
	// The reason for DefaultMaxMessageBytes: Kafka's (and kfake's) default
	// message.max.bytes refuses a 1 MiB value with its batch framing.
	b, err := embedded.Start(embedded.WithMaxMessageBytes(1048588))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := client(t, b)
	if err := c.CreateTopics(ctx(t), []kafkaclient.TopicSpec{{Name: "small", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	err = produce(c, &kafkaclient.Record{Topic: "small", Partition: 0, Value: make([]byte, 1<<20)})
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "too large") {
		t.Fatalf("1 MiB record with message.max.bytes=1048588: %v", err)
	}
}

func TestOptions(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	logger := slog.New(slog.DiscardHandler)
	b, err := embedded.Start(
		embedded.WithPort(port),
		embedded.WithDefaultPartitions(5),
		embedded.WithAutoTopicCreation(),
		embedded.WithSeedTopics(2, "seed-a", "seed-b"),
		embedded.WithSeedTopics(0, "seed-dflt"),
		embedded.WithLogger(logger),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(port)); b.Addr() != want {
		t.Fatalf("Addr() = %q, want %q", b.Addr(), want)
	}
	c := client(t, b)
	for topic, want := range map[string][]int32{"seed-a": {0, 1}, "seed-b": {0, 1}, "seed-dflt": {0, 1, 2, 3, 4}} {
		got, err := c.Partitions(ctx(t), topic)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("Partitions(%s) = %v, %v; want %v", topic, got, err, want)
		}
	}
	// A second broker on the same port fails to start.
	if b2, err := embedded.Start(embedded.WithPort(port)); err == nil {
		b2.Close()
		t.Fatal("second broker on a taken port started")
	}
}

// TestLogSpansSegments reads back, from the start, a partition's log that
// fills several of the broker's in-memory segments (1 MiB each), with a
// record larger than a segment among them.
func TestLogSpansSegments(t *testing.T) {
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := client(t, b)
	if err := c.CreateTopics(ctx(t), []kafkaclient.TopicSpec{{Name: "log", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	sizes := []int{512 << 10, 512 << 10, 512 << 10, 2 << 20, 512 << 10, 512 << 10, 512 << 10, 100}
	for i, n := range sizes {
		v := make([]byte, n)
		v[0], v[n-1] = byte(i), byte(i)
		if err := produce(c, &kafkaclient.Record{Topic: "log", Partition: 0, Value: v}); err != nil {
			t.Fatalf("record %d (%d bytes): %v", i, n, err)
		}
	}
	r, err := c.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Assign([]kafkaclient.TopicPartitionOffset{{Topic: "log", Partition: 0, Offset: 0}}); err != nil {
		t.Fatal(err)
	}
	var got []*kafkaclient.Record
	for len(got) < len(sizes) {
		recs, err := r.Poll(ctx(t))
		if err != nil {
			t.Fatalf("after %d of %d records: %v", len(got), len(sizes), err)
		}
		got = append(got, recs...)
	}
	for i, rec := range got {
		if i >= len(sizes) {
			t.Fatalf("read %d records, produced %d", len(got), len(sizes))
		}
		n := sizes[i]
		if rec.Offset != int64(i) || len(rec.Value) != n || rec.Value[0] != byte(i) || rec.Value[n-1] != byte(i) {
			t.Fatalf("record %d: offset %d, %d bytes, first %d last %d; want offset %d, %d bytes, both %d",
				i, rec.Offset, len(rec.Value), rec.Value[0], rec.Value[len(rec.Value)-1], i, n, i)
		}
	}
}
