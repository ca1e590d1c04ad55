package franz

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// The seam-level behaviour is checked by the shared suite
// (conformance_test.go); these tests look at what only this client has.

func TestSlogLevels(t *testing.T) {
	for kl, want := range map[kgo.LogLevel]slog.Level{
		kgo.LogLevelError: slog.LevelError,
		kgo.LogLevelWarn:  slog.LevelWarn,
		kgo.LogLevelInfo:  slog.LevelInfo,
		kgo.LogLevelDebug: slog.LevelDebug,
	} {
		if got := slogLevel(kl); got != want {
			t.Errorf("slogLevel(%v) = %v, want %v", kl, got, want)
		}
	}
	// kgo is told the most verbose level the handler takes (Info for
	// Warn: a few Info lines are raised to Warn).
	for hl, want := range map[slog.Level]kgo.LogLevel{
		slog.LevelDebug:     kgo.LogLevelDebug,
		slog.LevelInfo:      kgo.LogLevelInfo,
		slog.LevelWarn:      kgo.LogLevelInfo,
		slog.LevelError:     kgo.LogLevelError,
		slog.LevelError + 1: kgo.LogLevelNone,
	} {
		l := newLogger(slog.New(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: hl})))
		if got := l.Level(); got != want {
			t.Errorf("handler at %v: Level() = %v, want %v", hl, got, want)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func TestNewValidates(t *testing.T) {
	if _, err := New(); err == nil {
		t.Error("New without seed brokers succeeded")
	}
	if _, err := New(WithSeedBrokers(" , ")); err == nil {
		t.Error("New with empty seed brokers succeeded")
	}
	if _, err := New(WithSeedBrokers("127.0.0.1:1"), WithConsumerOpts(kgo.FetchMaxWait(time.Millisecond))); err == nil {
		t.Error("New with an invalid kgo option succeeded")
	}
	c, err := New(WithSeedBrokers("127.0.0.1:1, 127.0.0.1:2"), WithSeedBrokers("127.0.0.1:3"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.opts.seeds) != 3 {
		t.Errorf("seeds %v", c.opts.seeds)
	}
}

// The default options are what the package documents, and the caller's
// options come after them.
func TestOptionDefaults(t *testing.T) {
	c, err := New(WithSeedBrokers("127.0.0.1:1"), WithProducerOpts(kgo.ProducerLinger(3*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	check := func(opts []kgo.Opt, opt any, want any) {
		t.Helper()
		kc, err := kgo.NewClient(opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer kc.Close()
		if got := kc.OptValue(opt); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%T: %v, want %v", opt, got, want)
		}
	}
	all := c.producerOpts(kafkaclient.AcksAll, false)
	check(all, kgo.ProducerLinger, 3*time.Millisecond)                  // the caller's
	check(all, kgo.ProducerBatchMaxBytes, int32(DefaultMaxRecordBytes)) // for the empty topic: the per-topic bound is the conformance suite's SmallRecordsToLimitedTopic
	check(all, kgo.RequiredAcks, kgo.AllISRAcks())
	check(all, kgo.AllowIdempotentProduceCancellation, true)
	check(all, kgo.DisableIdempotentWrite, false)
	one := c.producerOpts(kafkaclient.AcksLeader, false)
	check(one, kgo.RequiredAcks, kgo.LeaderAck())
	check(one, kgo.DisableIdempotentWrite, true)
	check(c.producerOpts(kafkaclient.AcksAll, true), kgo.AllowIdempotentProduceCancellation, false)
	cons := c.consumerOpts("r", true, nil)
	check(cons, kgo.FetchMaxWait, DefaultFetchMaxWait)
	check(cons, kgo.FetchIsolationLevel, 1) // read committed
}

func TestJavaPartitioner(t *testing.T) {
	tp := javaPartitioner{}.ForTopic("t")
	if _, ok := tp.(kgo.TopicPartitionerOnNewBatch); ok {
		t.Error("the partitioner asks for new batches: kgo would buffer every record under the topic's lock")
	}
	d := newDeadlines(time.Minute)
	for i := range 50 {
		k := []byte(fmt.Sprint("key-", i))
		r := &kgo.Record{Key: k, Context: d.ctx(time.Now(), false)}
		if !tp.RequiresConsistency(r) {
			t.Fatal("keyed record does not require consistency")
		}
		if got, want := tp.Partition(r, 7), int(kafkaclient.KeyPartition(k, 7)); got != want {
			t.Errorf("key %s: partition %d, want %d", k, got, want)
		}
	}
	r := &kgo.Record{Key: []byte("key-1"), Partition: 5, Context: d.ctx(time.Now(), true)}
	if !tp.RequiresConsistency(r) || tp.Partition(r, 7) != 5 {
		t.Errorf("chosen partition 5: consistency %v, partition %d", tp.RequiresConsistency(r), tp.Partition(r, 7))
	}
	r = &kgo.Record{Value: []byte("no key"), Context: context.Background()}
	if tp.RequiresConsistency(r) {
		t.Error("unkeyed record requires consistency")
	}
	seen := map[int]bool{}
	for range 1000 {
		p := tp.Partition(r, 7)
		if p < 0 || p >= 7 {
			t.Fatalf("unkeyed record: partition %d", p)
		}
		seen[p] = true
	}
	if len(seen) != 7 { // each partition missed by 1000 draws: about 1e-67
		t.Errorf("1000 unkeyed records went to %d partitions of 7", len(seen))
	}
	if r := (&kgo.Record{Key: []byte{}, Context: context.Background()}); !tp.RequiresConsistency(r) || tp.Partition(r, 7) != int(kafkaclient.KeyPartition([]byte{}, 7)) {
		t.Error("an empty key is a key: it hashes like any other")
	}
}

func TestDeadlines(t *testing.T) {
	now := time.Now()
	d := newDeadlines(2 * time.Minute)
	a, m := d.ctx(now, false), d.ctx(now, true)
	if a == m || a.Value(manualKey{}) != nil || m.Value(manualKey{}) == nil {
		t.Fatal("manual and automatic contexts mixed up")
	}
	if d.ctx(now.Add(time.Second-time.Nanosecond), false) != a {
		t.Error("records within one slice do not share a context")
	}
	next := d.ctx(now.Add(time.Second), false)
	if next == a {
		t.Error("the next slice reuses the context of the previous one")
	}
	dl, ok := next.Deadline()
	if !ok || !dl.Equal(now.Add(time.Second+2*time.Minute)) {
		t.Errorf("deadline %v, want %v", dl, now.Add(time.Second+2*time.Minute))
	}
	off := newDeadlines(0)
	if c := off.ctx(now, false); c.Done() != nil {
		t.Error("no timeout, yet the context can end")
	}
	if c := off.ctx(now, true); c.Done() != nil || c.Value(manualKey{}) == nil {
		t.Error("no timeout: manual context wrong")
	}
}

// A record stamped long ago is delivered: the delivery timeout counts from
// Produce, not from the record's timestamp.
func TestOldTimestampDelivered(t *testing.T) {
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := New(WithSeedBrokers(b.Addr()), WithLogger(slog.New(slog.DiscardHandler)), WithDeliveryTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "old", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	c.Produce(&kafkaclient.Record{Topic: "old", Partition: 0, Value: []byte("x"), Timestamp: time.Now().Add(-time.Hour)},
		kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { done <- err })
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("record stamped an hour ago: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("no delivery report")
	}
}

func Example() {
	b, err := embedded.Start()
	if err != nil {
		panic(err)
	}
	defer b.Close()
	c, err := New(WithSeedBrokers(b.Addr()), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "requests", Partitions: 3}}); err != nil {
		panic(err)
	}
	done := make(chan struct{})
	c.Produce(&kafkaclient.Record{Topic: "requests", Partition: kafkaclient.AnyPartition, Key: []byte("21"), Value: []byte("hello")},
		kafkaclient.AcksAll, func(r *kafkaclient.Record, err error) {
			fmt.Println(r.Partition, r.Offset, err)
			close(done)
		})
	<-done
	// Output: 0 0 <nil>
}
