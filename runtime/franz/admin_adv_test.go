package franz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// adminAdvBrokers returns KAFKA_BROKERS, or the address of an embedded
// cluster closed when t ends.
func adminAdvBrokers(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("KAFKA_BROKERS"); b != "" {
		return b
	}
	cl, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl.ListenAddrs()[0]
}

// adminAdvProduce produces values to partition 0 of topic with c, one at a
// time, each acknowledged.
func adminAdvProduce(t *testing.T, ctx context.Context, c *Client, topic string, values ...string) {
	t.Helper()
	for _, v := range values {
		done := make(chan error, 1)
		c.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte(v)}, kafkaclient.AcksAll,
			func(_ *kafkaclient.Record, err error) { done <- err })
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("producing %q: %v", v, err)
			}
		case <-ctx.Done():
			t.Fatalf("producing %q: %v", v, ctx.Err())
		}
	}
}

// TestAdminAdvReaderTopicRecreatedFromStart: a topic deleted and created
// again while a Reader reads it, and more records written to the new topic
// than the reader had read of the old one before the reader notices (kgo
// learns the new topic id at a metadata refresh, seconds later). The
// reader must deliver the new topic from its first record: it resumed at
// its position in the old topic, so the new topic's first records were
// never delivered (a gateway's reply reader lost the replies of the first
// calls after its reply topic was created again).
func TestAdminAdvReaderTopicRecreatedFromStart(t *testing.T) {
	brokers := adminAdvBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	newClient := func() *Client {
		c, err := New(WithSeedBrokers(brokers), WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	c := newClient()
	topic := fmt.Sprintf("adminadv-recreated-%d", time.Now().UnixNano())
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: topic, Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	var old []string
	for i := range 10 {
		old = append(old, fmt.Sprintf("old-%d", i))
	}
	adminAdvProduce(t, ctx, c, topic, old...)
	rd, err := c.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 0}}); err != nil {
		t.Fatal(err)
	}
	for read := 0; read < len(old); {
		recs, err := rd.Poll(ctx)
		if err != nil {
			t.Fatalf("reading the old topic after %d records: %v", read, err)
		}
		read += len(recs)
	}

	if err := c.DeleteTopics(ctx, []string{topic}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := c.Partitions(ctx, topic)
		if errors.Is(err, kafkaclient.ErrUnknownTopic) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("topic %s still listed after its deletion: %v", topic, err)
		}
		time.Sleep(50 * time.Millisecond) // polling the broker's metadata, bounded by ctx
	}
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: topic, Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	// A producer of its own: c's knows the old topic id.
	var fresh []string
	for i := range 3 * len(old) {
		fresh = append(fresh, fmt.Sprintf("new-%d", i))
	}
	adminAdvProduce(t, ctx, newClient(), topic, fresh...)

	var got []string
	for len(got) < len(fresh) {
		recs, err := rd.Poll(ctx)
		if err != nil {
			t.Fatalf("reading the new topic: got %v, then %v", got, err)
		}
		for _, r := range recs {
			got = append(got, string(r.Value))
		}
	}
	for i, v := range got {
		if v != fresh[i] {
			t.Fatalf("the reader delivered %v from the topic created again, want %v", got, fresh)
		}
	}
}
