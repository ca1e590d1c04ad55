// Package kafkatest gives the project's tests a Kafka cluster and a client:
// the embedded broker by default, or the Apache Kafka cluster named by the
// KAFKA_BROKERS environment variable, so that one suite runs on both; and
// the client named by the KAFKA_CLIENT environment variable (confluent, the
// default, or franz), so that one suite runs on both clients.
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
)

// Brokers returns the bootstrap servers of the cluster under test: the value
// of KAFKA_BROKERS, or else a fresh embedded broker closed when tb ends.
func Brokers(tb testing.TB) string {
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

// Real reports whether the tests run against a real cluster (KAFKA_BROKERS).
func Real() bool { return os.Getenv("KAFKA_BROKERS") != "" }

// Logger returns a logger that writes through tb.Log at warn level and above
// (LOG_LEVEL=debug for more), so a failing test shows what the runtime said.
func Logger(tb testing.TB) *slog.Logger {
	var level slog.Level = slog.LevelWarn
	if v := os.Getenv("LOG_LEVEL"); v != "" {
		_ = level.UnmarshalText([]byte(v))
	}
	w := &tbWriter{tb: tb}
	tb.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type tbWriter struct {
	mu   sync.Mutex
	tb   testing.TB
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// Client names accepted in KAFKA_CLIENT.
const (
	Confluent = "confluent"
	Franz     = "franz"
)

// ClientName returns the client the tests use: the value of KAFKA_CLIENT,
// or Confluent when it is empty. An unknown name panics, so that a typo
// does not silently test the default.
func ClientName() string {
	switch v := os.Getenv("KAFKA_CLIENT"); v {
	case "":
		return Confluent
	case Confluent, Franz:
		return v
	default:
		panic(fmt.Sprintf("kafkatest: KAFKA_CLIENT=%q: want %q or %q", v, Confluent, Franz))
	}
}

// NewClient returns a client of brokers, made by the client that
// ClientName names, with its default settings and Logger(tb); it is closed
// when tb ends.
func NewClient(tb testing.TB, brokers string) kafkaclient.Client {
	tb.Helper()
	c, err := Factory(ClientName()).New(brokers, kafkaclienttest.Config{Logger: Logger(tb)})
	if err != nil {
		tb.Fatalf("creating the %s Kafka client: %v", ClientName(), err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Factory returns the conformance-suite factory of the named client
// (Confluent or Franz): how each client expresses the suite's settings.
func Factory(name string) kafkaclienttest.Factory {
	switch name {
	case Confluent:
		return kafkaclienttest.Factory{
			Name:         Confluent,
			LogComponent: "librdkafka",
			ErrQueueFull: confluent.ErrQueueFull,
			New:          newConfluent,
		}
	case Franz:
		return kafkaclienttest.Factory{
			Name:         Franz,
			LogComponent: "franz-go",
			ErrQueueFull: franz.ErrQueueFull,
			New:          newFranz,
		}
	}
	panic("kafkatest: unknown client " + name)
}

func newConfluent(brokers string, cfg kafkaclienttest.Config) (kafkaclient.Client, error) {
	base := confluent.Config{"bootstrap.servers": brokers}
	prod, cons := confluent.Config{}, confluent.Config{}
	opts := []confluent.Option{confluent.WithLogger(cfg.Logger), confluent.WithProducerConfig(prod), confluent.WithConsumerConfig(cons)}
	if cfg.DeliveryTimeout > 0 {
		prod["message.timeout.ms"] = cfg.DeliveryTimeout.Milliseconds()
	}
	if cfg.MaxBuffered > 0 {
		prod["queue.buffering.max.messages"] = cfg.MaxBuffered
	}
	if cfg.Linger > 0 {
		prod["linger.ms"] = cfg.Linger.Milliseconds()
	}
	if cfg.CloseTimeout > 0 {
		opts = append(opts, confluent.WithCloseTimeout(cfg.CloseTimeout))
	}
	if cfg.FastGroups {
		cons["heartbeat.interval.ms"] = 200
	}
	if cfg.EagerGroups {
		cons["partition.assignment.strategy"] = "range"
	}
	if cfg.DebugLogs {
		base["debug"] = "broker"
	}
	return confluent.New(base, opts...)
}

func newFranz(brokers string, cfg kafkaclienttest.Config) (kafkaclient.Client, error) {
	opts := []franz.Option{franz.WithSeedBrokers(brokers), franz.WithLogger(cfg.Logger)}
	if cfg.DeliveryTimeout > 0 {
		opts = append(opts, franz.WithDeliveryTimeout(cfg.DeliveryTimeout))
	}
	if cfg.MaxBuffered > 0 {
		opts = append(opts, franz.WithProducerOpts(kgo.MaxBufferedRecords(cfg.MaxBuffered)))
	}
	if cfg.Linger > 0 {
		opts = append(opts, franz.WithProducerOpts(kgo.ProducerLinger(cfg.Linger)))
	}
	if cfg.CloseTimeout > 0 {
		opts = append(opts, franz.WithCloseTimeout(cfg.CloseTimeout))
	}
	if cfg.FastGroups {
		opts = append(opts, franz.WithConsumerOpts(kgo.HeartbeatInterval(200*time.Millisecond)))
	}
	if cfg.EagerGroups {
		opts = append(opts, franz.WithConsumerOpts(kgo.Balancers(kgo.RangeBalancer())))
	}
	// DebugLogs needs nothing: kgo logs at the levels the handler enables.
	return franz.New(opts...)
}

// Unique returns a short random name, to keep tests that share a cluster
// apart.
func Unique(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// CreateTopics creates topics with partitions each, replicated as
// kafkaclient.ReplicatedSpecs says for the cluster of c.
func CreateTopics(tb testing.TB, c kafkaclient.Client, partitions int32, topics ...string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	specs := make([]kafkaclient.TopicSpec, len(topics))
	for i, t := range topics {
		specs[i] = kafkaclient.TopicSpec{Name: t, Partitions: partitions, Config: kafkaclient.TopicConfig()}
	}
	specs, err := kafkaclient.ReplicatedSpecs(ctx, c, specs)
	if err != nil {
		tb.Fatalf("counting the brokers for topics %v: %v", topics, err)
	}
	if err := c.CreateTopics(ctx, specs); err != nil {
		tb.Fatalf("creating topics %v: %v", topics, err)
	}
}
