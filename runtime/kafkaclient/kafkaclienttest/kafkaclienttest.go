// Package kafkaclienttest is the conformance suite of the Kafka seam: what
// every kafkaclient.Client implementation must do, checked from the same
// test code against each of them. An implementation's tests call Run with a
// Factory, and BenchTwoHopFloor from a benchmark.
//
// The suite runs on a fresh embedded broker per test, or on the Apache Kafka
// cluster named by the KAFKA_BROKERS environment variable (with topic and
// group names made unique per test); the tests that must stop the broker
// always use an embedded one.
package kafkaclienttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Config is what the suite asks of a client beyond its defaults, in terms
// every implementation can translate into its own settings.
type Config struct {
	// Logger receives the client's logs. Never nil.
	Logger *slog.Logger
	// DeliveryTimeout bounds how long a record may wait for delivery
	// before it fails (librdkafka message.timeout.ms, kgo
	// RecordDeliveryTimeout). Zero: the client's default.
	DeliveryTimeout time.Duration
	// MaxBuffered caps the records the producer buffers locally, after
	// which Produce fails with the factory's ErrQueueFull. Zero: default.
	MaxBuffered int
	// CloseTimeout bounds the flush done by Close. Zero: default.
	CloseTimeout time.Duration
	// FastGroups makes group members heartbeat every 200 ms or so, so
	// that a running member notices a rebalance quickly.
	FastGroups bool
	// EagerGroups selects an eager (stop-the-world) assignment strategy
	// such as range instead of the default cooperative one.
	EagerGroups bool
	// DebugLogs makes the client log debug lines about its connections.
	DebugLogs bool
	// Linger makes the producer hold records back up to this long to
	// batch them (librdkafka linger.ms, kgo ProducerLinger). Zero: the
	// client's default.
	Linger time.Duration
}

// Factory makes clients of one implementation for the suite.
type Factory struct {
	// Name of the implementation, for messages.
	Name string
	// New returns a client of the cluster at brokers (a bootstrap.servers
	// string) configured as cfg says. The suite closes it.
	New func(brokers string, cfg Config) (kafkaclient.Client, error)
	// LogComponent is the value of the "component" attribute on the
	// client's log records, e.g. "librdkafka".
	LogComponent string
	// ErrQueueFull is the error (for errors.Is) that Produce reports when
	// the local buffer is full.
	ErrQueueFull error
}

// brokers returns KAFKA_BROKERS or the address of a fresh embedded broker.
func brokers(tb testing.TB) string {
	tb.Helper()
	if b := os.Getenv("KAFKA_BROKERS"); b != "" {
		return b
	}
	b, err := embedded.Start()
	if err != nil {
		tb.Fatalf("starting the embedded broker: %v", err)
	}
	tb.Cleanup(func() { _ = b.Close() })
	return b.Addr()
}

func unique(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// env is one cluster and one client on it, with names of its own.
type env struct {
	f       Factory
	brokers string
	client  kafkaclient.Client
	logs    *LogCapture
	prefix  string
}

func newEnv(tb testing.TB, f Factory, cfg Config) *env {
	tb.Helper()
	return newEnvOn(tb, f, brokers(tb), cfg)
}

func newEnvOn(tb testing.TB, f Factory, brokers string, cfg Config) *env {
	tb.Helper()
	logs := NewLogCapture()
	cfg.Logger = slog.New(logs)
	c, err := f.New(brokers, cfg)
	if err != nil {
		tb.Fatalf("%s: new client: %v", f.Name, err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return &env{f: f, brokers: brokers, client: c, logs: logs, prefix: unique("k") + "."}
}

// name returns a topic or group name unique to this env.
func (e *env) name(s string) string { return e.prefix + s }

func ctxT(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// createTopic creates the topic e.name(name) and returns its full name.
func (e *env) createTopic(tb testing.TB, name string, partitions int32) string {
	tb.Helper()
	full := e.name(name)
	ctx := ctxT(tb, 30*time.Second)
	specs, err := kafkaclient.ReplicatedSpecs(ctx, e.client, []kafkaclient.TopicSpec{{Name: full, Partitions: partitions}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := e.client.CreateTopics(ctx, specs); err != nil {
		tb.Fatal(err)
	}
	return full
}

type result struct {
	rec *kafkaclient.Record
	err error
}

// produceSync produces r and waits for its delivery.
func (e *env) produceSync(tb testing.TB, r *kafkaclient.Record, acks kafkaclient.Acks) *kafkaclient.Record {
	tb.Helper()
	ch := make(chan result, 1)
	e.client.Produce(r, acks, func(r *kafkaclient.Record, err error) { ch <- result{r, err} })
	select {
	case res := <-ch:
		if res.err != nil {
			tb.Fatalf("produce: %v", res.err)
		}
		return res.rec
	case <-time.After(15 * time.Second):
		tb.Fatal("no delivery report within 15s")
	}
	return nil
}

// readN polls rd until n records arrived.
func readN(tb testing.TB, rd kafkaclient.Reader, n int, timeout time.Duration) []*kafkaclient.Record {
	tb.Helper()
	ctx := ctxT(tb, timeout)
	var out []*kafkaclient.Record
	for len(out) < n {
		batch, err := rd.Poll(ctx)
		if err != nil {
			tb.Fatalf("poll after %d of %d records: %v", len(out), n, err)
		}
		out = append(out, batch...)
	}
	return out
}

// readerFrom returns a reader of every partition of topic from the given
// looked-up offsets.
func (e *env) readerFrom(tb testing.TB, topic string, which kafkaclient.OffsetSpec) kafkaclient.Reader {
	tb.Helper()
	ctx := ctxT(tb, 30*time.Second)
	parts, err := e.client.Partitions(ctx, topic)
	if err != nil {
		tb.Fatal(err)
	}
	offs, err := e.client.Offsets(ctx, topic, parts, which)
	if err != nil {
		tb.Fatal(err)
	}
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = rd.Close() })
	var as []kafkaclient.TopicPartitionOffset
	for _, p := range parts {
		as = append(as, kafkaclient.TopicPartitionOffset{Topic: topic, Partition: p, Offset: offs[p]})
	}
	if err := rd.Assign(as); err != nil {
		tb.Fatal(err)
	}
	return rd
}
