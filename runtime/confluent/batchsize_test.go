package confluent

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
)

// TestBurstToTopicCreatedLater: a record to a topic that does not exist
// yet fails (ErrUnknownTopic); once the topic is created with a
// max.message.bytes below batch.size, a burst of small records to it is
// delivered, as it is to a topic that existed before the client's first
// record.
func TestBurstToTopicCreatedLater(t *testing.T) {
	e := newEnv(t, nil)
	const topic = "created-later"
	errc := make(chan error, 1)
	e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("early")}, kafkaclient.AcksAll,
		func(_ *kafkaclient.Record, err error) { errc <- err })
	if err := <-errc; !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("record to a missing topic: %v, want an error wrapping ErrUnknownTopic", err)
	}
	if err := e.client.CreateTopics(ctxT(t, 10*time.Second), []kafkaclient.TopicSpec{{Name: topic, Partitions: 1,
		Config: map[string]string{"max.message.bytes": "20000"}}}); err != nil {
		t.Fatal(err)
	}
	if failed := kafkaclienttest.ProduceBurst(e.client, topic, kafkaclient.AcksAll, 300, 2000); len(failed) > 0 {
		t.Errorf("300 records of 2000 bytes to a topic with max.message.bytes 20000, created after a first record failed: %v", failed)
	}
}

// TestOrderKeptWhenTopicGetsSizedProducer: records of one key keep their
// order when their topic's batch bound changes, from "missing" to a
// max.message.bytes below batch.size, while a record produced before, on
// the client's main producer, is still undelivered: the records produced
// through the topic's own producer must not overtake it. The broker holds
// the first record's produce request until a later record was delivered
// (or, when none overtakes it, for 3 s).
func TestOrderKeptWhenTopicGetsSizedProducer(t *testing.T) {
	const topic = "sized-later"
	kc, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	held, release := make(chan struct{}), make(chan struct{})
	var holding atomic.Bool
	kc.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		kc.KeepControl()
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			if tp.Topic == topic && holding.CompareAndSwap(false, true) {
				close(held)
				kc.SleepControl(func() {
					select {
					case <-release:
					case <-time.After(3 * time.Second):
					}
				})
			}
		}
		return nil, nil, false
	})
	logs := kafkaclienttest.NewLogCapture()
	// librdkafka holds a record to a missing topic up to 30 s for the
	// topic to appear.
	c, err := New(Config{"bootstrap.servers": kc.ListenAddrs()[0], "topic.metadata.propagation.max.ms": 30000}, WithLogger(slog.New(logs)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t, 30*time.Second)
	var wg sync.WaitGroup
	var releaseOnce sync.Once
	produce := func(v string) {
		wg.Add(1)
		c.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Key: []byte("k"), Value: []byte(v)}, kafkaclient.AcksLeader,
			func(_ *kafkaclient.Record, err error) {
				if err != nil {
					t.Errorf("record %s: %v", v, err)
				}
				if v != "0" {
					releaseOnce.Do(func() { close(release) })
				}
				wg.Done()
			})
	}
	produce("0")
	// The lookup found the topic missing, and the record is in librdkafka.
	if err := c.wait(ctx, &c.queued); err != nil {
		t.Fatal(err)
	}
	// Another client creates the topic (this one's metadata requests
	// would show it to librdkafka at once).
	admin, err := New(Config{"bootstrap.servers": kc.ListenAddrs()[0]}, WithLogger(slog.New(kafkaclienttest.NewLogCapture())))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: topic, Partitions: 1,
		Config: map[string]string{"max.message.bytes": "20000"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("the first record never reached the broker")
	}
	// The second that a missing topic's bound holds passes.
	v, _ := c.batches.Load(topic)
	v.(*topicBatch).bound.Store(&batchBound{next: time.Now().Add(-time.Millisecond)})
	produce("1") // looks the topic up again
	c.lookups.Wait()
	produce("2")
	wg.Wait()

	rd, err := c.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 0}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		recs, err := rd.Poll(ctx)
		if err != nil {
			t.Fatalf("poll after %v: %v", got, err)
		}
		for _, r := range recs {
			got = append(got, string(r.Value))
		}
	}
	if want := []string{"0", "1", "2"}; !slices.Equal(got, want) {
		t.Fatalf("records of one key read in the order %v, want %v", got, want)
	}
}

// TestTimestampIsProduceTime: a record produced without a timestamp is
// stamped when Produce is called, also when it waits for the lookup of its
// topic's max.message.bytes (the broker holds the lookup here until
// Produce has returned).
func TestTimestampIsProduceTime(t *testing.T) {
	kc, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	c, err := New(Config{"bootstrap.servers": kc.ListenAddrs()[0]}, WithLogger(slog.New(kafkaclienttest.NewLogCapture())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t, 30*time.Second)
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "stamped", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	kc.ControlKey(int16(kmsg.DescribeConfigs), func(kmsg.Request) (kmsg.Response, error, bool) {
		kc.SleepControl(func() { <-release })
		return nil, nil, false
	})
	type result struct {
		r   *kafkaclient.Record
		err error
	}
	res := make(chan result, 1)
	c.Produce(&kafkaclient.Record{Topic: "stamped", Partition: 0, Value: []byte("v")}, kafkaclient.AcksAll,
		func(r *kafkaclient.Record, err error) { res <- result{r, err} })
	returned := time.Now()
	close(release)
	got := <-res
	if got.err != nil {
		t.Fatal(got.err)
	}
	if got.r.Timestamp.After(returned) {
		t.Fatalf("record stamped %v after Produce returned", got.r.Timestamp.Sub(returned))
	}
}

// levelCounter counts the records logged with a message, by level.
type levelCounter struct {
	msg string
	mu  sync.Mutex
	n   map[slog.Level]int
}

func (h *levelCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *levelCounter) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.msg) {
		h.mu.Lock()
		h.n[r.Level]++
		h.mu.Unlock()
	}
	return nil
}
func (h *levelCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *levelCounter) WithGroup(string) slog.Handler      { return h }

// TestRefusedLookupWarnsOnce: a principal that may not describe a topic's
// configuration fails every lookup of its max.message.bytes (one a
// minute); the records are still delivered, and the failure is logged at
// Warn once for the topic, not at every lookup.
func TestRefusedLookupWarnsOnce(t *testing.T) {
	defer func(d time.Duration) { batchFailedTTL = d }(batchFailedTTL)
	batchFailedTTL = 0 // every record looks the topic up again
	kc, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	var lookups atomic.Int32
	kc.ControlKey(int16(kmsg.DescribeConfigs), func(req kmsg.Request) (kmsg.Response, error, bool) {
		kc.KeepControl()
		lookups.Add(1)
		resp := req.(*kmsg.DescribeConfigsRequest).ResponseKind().(*kmsg.DescribeConfigsResponse)
		for _, r := range req.(*kmsg.DescribeConfigsRequest).Resources {
			rr := kmsg.NewDescribeConfigsResponseResource()
			rr.ResourceType, rr.ResourceName = r.ResourceType, r.ResourceName
			rr.ErrorCode = kerr.TopicAuthorizationFailed.Code
			resp.Resources = append(resp.Resources, rr)
		}
		return resp, nil, true
	})
	logs := &levelCounter{msg: "confluent: could not look up the topic's max.message.bytes", n: map[slog.Level]int{}}
	c, err := New(Config{"bootstrap.servers": kc.ListenAddrs()[0]}, WithLogger(slog.New(logs)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateTopics(ctxT(t, 10*time.Second), []kafkaclient.TopicSpec{{Name: "undescribed", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		errc := make(chan error, 1)
		c.Produce(&kafkaclient.Record{Topic: "undescribed", Partition: 0, Value: []byte("v")}, kafkaclient.AcksAll,
			func(_ *kafkaclient.Record, err error) { errc <- err })
		if err := <-errc; err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	if n := lookups.Load(); n < 3 {
		t.Fatalf("%d lookups for 3 records with the retry interval at 0, want 3", n)
	}
	logs.mu.Lock()
	defer logs.mu.Unlock()
	if logs.n[slog.LevelWarn] != 1 {
		t.Errorf("the refused lookup was logged at Warn %d times over %d lookups, want once (the rest at Debug: %d)",
			logs.n[slog.LevelWarn], lookups.Load(), logs.n[slog.LevelDebug])
	}
}
