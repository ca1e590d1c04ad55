package confluent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// murmur2 is Kafka's Utils.murmur2, written from the algorithm's definition:
// MurmurHash2 (32 bit) with seed 0x9747b28c, little-endian 4-byte blocks,
// m = 0x5bd1e995, r = 24.
func murmur2(data []byte) int32 {
	const (
		seed = 0x9747b28c
		m    = 0x5bd1e995
		r    = 24
	)
	n := len(data)
	h := uint32(seed) ^ uint32(n)
	for i := 0; i+4 <= n; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[n&^3:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// javaPartition is Kafka's default partitioner for a non-null key:
// toPositive(murmur2(key)) % numPartitions.
func javaPartition(key []byte, numPartitions int32) int32 {
	return (murmur2(key) & 0x7fffffff) % numPartitions
}

// captureHandler is a slog.Handler that keeps every record.
type captureHandler struct {
	mu      sync.Mutex
	records []captured
	changed chan struct{}
	attrs   []slog.Attr
	parent  *captureHandler
}

type captured struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func newCapture() *captureHandler {
	return &captureHandler{changed: make(chan struct{}, 1)}
}

func (h *captureHandler) root() *captureHandler {
	if h.parent != nil {
		return h.parent
	}
	return h
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	c := captured{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		c.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		c.attrs[a.Key] = a.Value.String()
		return true
	})
	root := h.root()
	root.mu.Lock()
	root.records = append(root.records, c)
	root.mu.Unlock()
	select {
	case root.changed <- struct{}{}:
	default:
	}
	return nil
}

func (h *captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &captureHandler{parent: h.root(), attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *captureHandler) WithGroup(string) slog.Handler { return h }

// waitFor waits until some captured record satisfies match.
func (h *captureHandler) waitFor(t *testing.T, timeout time.Duration, match func(captured) bool) captured {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		for _, c := range h.records {
			if match(c) {
				h.mu.Unlock()
				return c
			}
		}
		h.mu.Unlock()
		select {
		case <-h.changed:
		case <-deadline.C:
			t.Fatalf("no matching log record within %v", timeout)
		}
	}
}

// env is one embedded broker and one client on it.
type env struct {
	broker *embedded.Broker
	client *Client
	logs   *captureHandler
}

func newEnv(t testing.TB, cfg Config, opts ...Option) *env {
	t.Helper()
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	logs := newCapture()
	full := Config{"bootstrap.servers": b.Addr()}
	for k, v := range cfg {
		full[k] = v
	}
	c, err := New(full, append([]Option{WithLogger(slog.New(logs))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &env{broker: b, client: c, logs: logs}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) createTopic(t testing.TB, name string, partitions int32) {
	t.Helper()
	if err := e.client.CreateTopics(ctxT(t, 10*time.Second), []kafkaclient.TopicSpec{{Name: name, Partitions: partitions}}); err != nil {
		t.Fatal(err)
	}
}

type result struct {
	rec *kafkaclient.Record
	err error
}

// produceSync produces r and waits for its delivery.
func (e *env) produceSync(t testing.TB, r *kafkaclient.Record, acks kafkaclient.Acks) *kafkaclient.Record {
	t.Helper()
	ch := make(chan result, 1)
	e.client.Produce(r, acks, func(r *kafkaclient.Record, err error) { ch <- result{r, err} })
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatalf("produce: %v", res.err)
		}
		return res.rec
	case <-time.After(15 * time.Second):
		t.Fatal("no delivery report within 15s")
	}
	return nil
}

// readN polls rd until n records arrived.
func readN(t testing.TB, rd kafkaclient.Reader, n int, timeout time.Duration) []*kafkaclient.Record {
	t.Helper()
	ctx := ctxT(t, timeout)
	var out []*kafkaclient.Record
	for len(out) < n {
		batch, err := rd.Poll(ctx)
		if err != nil {
			t.Fatalf("poll after %d of %d records: %v", len(out), n, err)
		}
		out = append(out, batch...)
	}
	return out
}

// readerFrom returns a reader of every partition of topic from the given
// looked-up offsets.
func (e *env) readerFrom(t testing.TB, topic string, which kafkaclient.OffsetSpec) kafkaclient.Reader {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	parts, err := e.client.Partitions(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	offs, err := e.client.Offsets(ctx, topic, parts, which)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	var as []kafkaclient.TopicPartitionOffset
	for _, p := range parts {
		as = append(as, kafkaclient.TopicPartitionOffset{Topic: topic, Partition: p, Offset: offs[p]})
	}
	if err := rd.Assign(as); err != nil {
		t.Fatal(err)
	}
	return rd
}

func key(i int) []byte { return []byte(fmt.Sprintf("key-%d", i)) }
