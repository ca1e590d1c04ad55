package confluent

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
)

// The seam-level behaviour is checked by the shared suite
// (conformance_test.go); the tests of this package look at what only this
// client has: librdkafka configuration, its log and error events, producer
// replacement.

// env is one embedded broker and one client on it.
type env struct {
	broker *embedded.Broker
	client *Client
	logs   *kafkaclienttest.LogCapture
}

func newEnv(t testing.TB, cfg Config, opts ...Option) *env {
	t.Helper()
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	logs := kafkaclienttest.NewLogCapture()
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

// produceSync produces r and waits for its delivery.
func (e *env) produceSync(t testing.TB, r *kafkaclient.Record, acks kafkaclient.Acks) *kafkaclient.Record {
	t.Helper()
	type result struct {
		rec *kafkaclient.Record
		err error
	}
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
