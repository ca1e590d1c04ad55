// Package kafkatest gives the project's tests a Kafka cluster and a client:
// the embedded broker by default, or the Apache Kafka cluster named by the
// KAFKA_BROKERS environment variable, so that one suite runs on both.
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
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

// NewClient returns a client of brokers, closed when tb ends.
func NewClient(tb testing.TB, brokers string) kafkaclient.Client {
	tb.Helper()
	c, err := confluent.New(confluent.Config{"bootstrap.servers": brokers}, confluent.WithLogger(Logger(tb)))
	if err != nil {
		tb.Fatalf("creating the Kafka client: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Unique returns a short random name, to keep tests that share a cluster
// apart.
func Unique(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// CreateTopics creates topics with partitions each.
func CreateTopics(tb testing.TB, c kafkaclient.Client, partitions int32, topics ...string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	specs := make([]kafkaclient.TopicSpec, len(topics))
	for i, t := range topics {
		specs[i] = kafkaclient.TopicSpec{Name: t, Partitions: partitions}
	}
	if err := c.CreateTopics(ctx, specs); err != nil {
		tb.Fatalf("creating topics %v: %v", topics, err)
	}
}
