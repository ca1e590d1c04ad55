package franz

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// startLingerClient starts an embedded broker and a client with opts and a
// topic "linger", closed at the end of the test.
func startLingerClient(t *testing.T, opts ...Option) *Client {
	t.Helper()
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	c, err := New(append([]Option{WithSeedBrokers(b.Addr()), WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "linger", Partitions: 2}}); err != nil {
		t.Fatal(err)
	}
	return c
}

// produceOne produces one record and waits for its report, up to bound.
func produceOne(t *testing.T, c *Client, acks kafkaclient.Acks, bound time.Duration) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	c.Produce(&kafkaclient.Record{Topic: "linger", Partition: kafkaclient.AnyPartition, Key: []byte("k"), Value: []byte("v")}, acks,
		func(_ *kafkaclient.Record, err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		})
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	select {
	case <-all:
	case <-time.After(bound):
		t.Fatalf("the record was not reported within %v", bound)
	}
}

// A record produced alone does not wait for the load linger: with kgo's
// longest linger (a minute), each of a few records produced one after the
// other is reported before the linger could have passed (a liveness
// bound, not a speed check: a record that lingered would take the whole
// minute).
func TestLoadLingerLoneRecordNotDelayed(t *testing.T) {
	c := startLingerClient(t, WithLoadLinger(time.Minute))
	for range 5 {
		produceOne(t, c, kafkaclient.AcksAll, 45*time.Second)
	}
	c.mu.RLock()
	on := c.loadLinger[kafkaclient.AcksAll]
	c.mu.RUnlock()
	if !on {
		t.Error("the acks=all producer does not linger under load only")
	}
}

// A kgo.ProducerLinger of the caller's replaces the load linger; 0 turns
// it off.
func TestLoadLingerReplaced(t *testing.T) {
	for name, opts := range map[string][]Option{
		"ProducerLinger": {WithProducerOpts(kgo.ProducerLinger(time.Millisecond))},
		"off":            {WithLoadLinger(0)},
	} {
		t.Run(name, func(t *testing.T) {
			c := startLingerClient(t, opts...)
			produceOne(t, c, kafkaclient.AcksAll, 90*time.Second)
			c.mu.RLock()
			on := c.loadLinger[kafkaclient.AcksAll]
			c.mu.RUnlock()
			if on {
				t.Error("the producer lingers under load only, against the options")
			}
		})
	}
}
