package franz

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestBatchLimitRefusedLookupAskedOnce: a principal that may write to a
// topic but not describe its configuration (no DescribeConfigs ACL, common
// for producers) gets the fallback batch bound. kgo asks for the bound of
// every partition of every topic it produces to at each metadata update:
// a refused lookup, not remembered, was asked again (and logged at warn
// level) for each partition, at each update, one at a time in the
// producer's metadata goroutine.
func TestBatchLimitRefusedLookupAskedOnce(t *testing.T) {
	cl, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, err := New(WithSeedBrokers(cl.ListenAddrs()...), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const parts = 8
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "nodescribe", Partitions: parts}, {Name: "other", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	h := cl.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.DescribeConfigs}, Resource: "nodescribe", Err: kerr.TopicAuthorizationFailed, Count: -1})
	defer h.Remove()
	produce := func(topic string) {
		t.Helper()
		done := make(chan error, 1)
		c.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll,
			func(_ *kafkaclient.Record, err error) { done <- err })
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("produce to %s: %v", topic, err)
			}
		case <-ctx.Done():
			t.Fatalf("no delivery report from %s", topic)
		}
	}
	produce("nodescribe")
	// A topic new to the producer: a metadata update, which asks again
	// for the bounds of the topics it knows.
	produce("other")
	if n := h.Hits(); n != 1 {
		t.Errorf("the refused configuration of a %d-partition topic was asked for %d times, want once (per %v)", parts, n, batchLimitTTL)
	}
}
