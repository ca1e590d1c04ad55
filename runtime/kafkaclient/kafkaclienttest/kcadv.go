package kafkaclienttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// produceWait produces r and returns its delivery error, or fails the test
// when no report came within bound.
func (e *env) produceWait(t *testing.T, r *kafkaclient.Record, acks kafkaclient.Acks, bound time.Duration) (*kafkaclient.Record, error) {
	t.Helper()
	ch := make(chan result, 1)
	e.client.Produce(r, acks, func(r *kafkaclient.Record, err error) { ch <- result{r, err} })
	select {
	case res := <-ch:
		return res.rec, res.err
	case <-time.After(bound):
		t.Fatalf("no delivery report within %v", bound)
	}
	return nil, nil
}

// allValues reads partition 0 of topic from its start to its high
// watermark and returns the values.
func (e *env) allValues(t *testing.T, topic string) []string {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	hw, err := e.client.Offsets(ctx, topic, []int32{0}, kafkaclient.Latest)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := e.client.Offsets(ctx, topic, []int32{0}, kafkaclient.Earliest)
	if err != nil {
		t.Fatal(err)
	}
	n := int(hw[0] - lo[0])
	if n == 0 {
		return nil
	}
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: lo[0]}}); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range readN(t, rd, n, 20*time.Second) {
		out = append(out, string(r.Value))
	}
	return out
}

// testKcAdvProduceFaults: a record whose produce the broker answers with
// a retriable error (NOT_LEADER_OR_FOLLOWER, or REQUEST_TIMED_OUT after it
// wrote the record) is delivered once, not failed nor duplicated; one
// answered with an error that producing again cannot cure
// (MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE, INVALID_RECORD,
// POLICY_VIOLATION) fails at once, not at the delivery timeout, with an
// error naming the topic that does not claim the outcome unknown, and is
// not written; INVALID_RECORD and POLICY_VIOLATION wrap
// kafkaclient.ErrRecordRefused and name Kafka's error (both clients
// reported them as passing failures, and the gateway answered UNAVAILABLE);
// one too large wraps kafkaclient.ErrRecordTooLarge, not ErrRecordRefused
// (the confluent client's
// RECORD_LIST_TOO_LARGE said "Message batch larger than configured server
// segment size", which the gateway took for a passing failure:
// UNAVAILABLE, where franz's was RESOURCE_EXHAUSTED). The next record is delivered either way.
func testKcAdvProduceFaults(t *testing.T, f Factory) {
	cases := []struct {
		err       *kerr.Error
		delivered bool
		is        error // what the failure wraps
	}{
		{kerr.NotLeaderForPartition, true, nil},
		{kerr.RequestTimedOut, true, nil},
		{kerr.MessageTooLarge, false, kafkaclient.ErrRecordTooLarge},
		{kerr.RecordListTooLarge, false, kafkaclient.ErrRecordTooLarge},
		{kerr.InvalidRecord, false, kafkaclient.ErrRecordRefused},
		{kerr.PolicyViolation, false, kafkaclient.ErrRecordRefused},
	}
	for _, tc := range cases {
		t.Run(tc.err.Message, func(t *testing.T) {
			e, c := newFaultEnv(t, f, Config{DeliveryTimeout: 2 * time.Minute})
			topic := e.createTopic(t, "faulted", 1)
			e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("before")}, kafkaclient.AcksAll)
			h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: tc.err, Count: 2})
			// A bound well below the delivery timeout: a record retried
			// until that timeout fails it.
			_, err := e.produceWait(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("during")}, kafkaclient.AcksAll, 60*time.Second)
			h.Remove()
			want := []string{"before", "after"}
			if tc.delivered {
				want = []string{"before", "during", "after"}
				if err != nil {
					t.Fatalf("produce answered %s: %v, want it delivered", tc.err.Message, err)
				}
			} else if err == nil || errors.Is(err, kafkaclient.ErrUnknownOutcome) || !strings.Contains(err.Error(), topic) {
				t.Fatalf("produce answered %s: %v, want an error naming %s that is not ErrUnknownOutcome", tc.err.Message, err, topic)
			} else if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("produce answered %s: %v, want an error wrapping %v", tc.err.Message, err, tc.is)
			} else if tc.is != kafkaclient.ErrRecordRefused && errors.Is(err, kafkaclient.ErrRecordRefused) {
				t.Fatalf("produce answered %s: %v, want an error not wrapping %v (a more specific sentinel)", tc.err.Message, err, kafkaclient.ErrRecordRefused)
			} else if tc.is == kafkaclient.ErrRecordRefused && !strings.Contains(err.Error(), tc.err.Message) {
				t.Fatalf("produce answered %s: %v, want an error naming %s", tc.err.Message, err, tc.err.Message)
			}
			e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("after")}, kafkaclient.AcksAll)
			if got := e.allValues(t, topic); !slices.Equal(got, want) {
				t.Fatalf("the partition holds %q, want %q", got, want)
			}
		})
	}
}

// testKcAdvCommitRetriesTimedOut: a group commit the coordinator answers
// REQUEST_TIMED_OUT (its write of the offsets timed out) or
// COORDINATOR_LOAD_IN_PROGRESS is committed again within Commit's
// context, as librdkafka and the Java client do. franz-go's Commit
// returned the first REQUEST_TIMED_OUT: the worker logged a failed commit,
// and one at a revocation left the partition's next owner to serve the
// calls again.
func testKcAdvCommitRetriesTimedOut(t *testing.T, f Factory) {
	for _, ke := range []*kerr.Error{kerr.RequestTimedOut, kerr.CoordinatorLoadInProgress} {
		t.Run(ke.Message, func(t *testing.T) {
			e, c := newFaultEnv(t, f, Config{})
			topic := e.createTopic(t, "commit", 1)
			e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll)
			group := e.name("g")
			g, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: group, Topics: []string{topic}})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			if recs, err := g.Poll(ctxT(t, 30*time.Second)); err != nil || len(recs) != 1 {
				t.Fatalf("poll: %d records, %v", len(recs), err)
			}
			h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Group: group, Err: ke, Count: 2})
			defer h.Remove()
			if err := g.Commit(ctxT(t, 20*time.Second), []kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 1}}); err != nil {
				t.Fatalf("commit answered %s twice: %v, want it committed", ke.Message, err)
			}
			if n := h.Hits(); n != 2 {
				t.Fatalf("the fault answered %d commits, want 2", n)
			}
		})
	}
}

// testKcAdvTxnProducerWaitsForBroker: NewTxnProducer, which is documented
// to wait (up to a minute) for the transaction coordinator, waits for a
// broker that is not up yet (a worker with exactly-once started with its
// broker, as a compose file does) and returns a working producer once the
// broker listens. franz-go failed it at once with the refused dial, while
// the confluent client waited: Worker.Start failed on one client only.
func testKcAdvTxnProducerWaitsForBroker(t *testing.T, f Factory) {
	// A port nothing listens on until the broker starts there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	logs := NewLogCapture()
	c, err := f.New(addr, Config{Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc, ok := c.(kafkaclient.TxnClient)
	if !ok {
		t.Skipf("%T has no transactions", c)
	}
	type res struct {
		p   kafkaclient.TxnProducer
		err error
	}
	done := make(chan res, 1)
	go func() {
		p, err := tc.NewTxnProducer(unique("waits-"))
		done <- res{p, err}
	}()
	// The client logs its refused connection before the broker starts;
	// NewTxnProducer has not given up by then.
	logs.WaitFor(t, 30*time.Second, func(r LogRecord) bool {
		return strings.Contains(strings.ToLower(r.Msg+fmt.Sprint(r.Attrs)), "refused")
	})
	select {
	case r := <-done:
		if r.p != nil {
			_ = r.p.Close()
		}
		t.Fatalf("NewTxnProducer with no broker up yet returned: %v; want it to wait for the broker", r.err)
	default:
	}
	cl, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port))
	if err != nil {
		t.Fatalf("starting the broker on %s: %v", addr, err)
	}
	defer cl.Close()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("NewTxnProducer once the broker is up: %v", r.err)
		}
		defer r.p.Close()
		ctx := ctxT(t, 30*time.Second)
		if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "t", Partitions: 1}}); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		r.p.Produce(&kafkaclient.Record{Topic: "t", Partition: 0, Value: []byte("x")}, func(_ *kafkaclient.Record, err error) { errc <- err })
		if err := r.p.Flush(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("produce: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("NewTxnProducer did not return within 90 s of the broker starting")
	}
}

// testKcAdvCommittedOffsetDeletedIsWarned: a group member whose committed
// offset is below the partition's log start (the records after it were
// deleted, by retention or DeleteRecords, while no member ran: calls a
// worker never served) resumes at the log start and says so at warn level,
// naming the topic. librdkafka warned ("offset reset"); franz-go logged it
// at info only, which a service logging at warn does not show.
func testKcAdvCommittedOffsetDeletedIsWarned(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "deleted-below", 1)
	for i := range 5 {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte(fmt.Sprint("v", i))}, kafkaclient.AcksAll)
	}
	group := e.name("g")
	g, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: group, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Commit(ctxT(t, 30*time.Second), []kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 1}}); err != nil {
		// A member may commit before it joined; if this client cannot,
		// join first.
		if recs, perr := g.Poll(ctxT(t, 30*time.Second)); perr != nil || len(recs) == 0 {
			t.Fatalf("commit: %v; poll: %v", err, perr)
		}
		if err := g.Commit(ctxT(t, 30*time.Second), []kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	admin, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	o := kadm.Offsets{}
	o.Add(kadm.Offset{Topic: topic, Partition: 0, At: 3})
	if resp, err := kadm.NewClient(admin).DeleteRecords(ctxT(t, 30*time.Second), o); err != nil || resp.Error() != nil {
		t.Fatalf("deleting records: %v %v", err, resp.Error())
	}

	// The service logs at warn level, as many do in production.
	logs := NewLogCapture()
	c2, err := f.New(e.brokers, Config{Logger: slog.New(warnOnly{logs})})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	g2, err := c2.NewGroupReader(kafkaclient.GroupConfig{GroupID: group, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	ctx := ctxT(t, 30*time.Second)
	var got []string
	for len(got) < 2 {
		recs, err := g2.Poll(ctx)
		if err != nil {
			t.Fatalf("poll after %q: %v", got, err)
		}
		for _, r := range recs {
			got = append(got, string(r.Value))
		}
	}
	if !slices.Equal(got, []string{"v3", "v4"}) {
		t.Fatalf("the member read %q, want the records from the log start on: [v3 v4]", got)
	}
	logs.WaitFor(t, 10*time.Second, func(r LogRecord) bool {
		return r.Level >= slog.LevelWarn && r.Attrs["component"] == f.LogComponent &&
			strings.Contains(r.Msg+fmt.Sprint(r.Attrs), topic)
	})
}

// warnOnly is a LogCapture that takes records of warn level and above only,
// as a handler at that level does.
type warnOnly struct{ h slog.Handler }

func (w warnOnly) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w warnOnly) Handle(ctx context.Context, r slog.Record) error {
	return w.h.Handle(ctx, r)
}
func (w warnOnly) WithAttrs(as []slog.Attr) slog.Handler { return warnOnly{w.h.WithAttrs(as)} }
func (w warnOnly) WithGroup(n string) slog.Handler       { return warnOnly{w.h.WithGroup(n)} }

// testKcAdvFetchErrorNoHotLoop: a partition the broker keeps failing with
// an error the client retries (UNKNOWN_SERVER_ERROR at every fetch) is
// asked for again after a backoff, by a Reader and by a group member, and
// its records are returned once the broker serves it. franz-go fetched it
// again as soon as Poll had seen the error: over 40,000 fetches, and as many
// warnings, in 3 s; librdkafka waits fetch.error.backoff.ms (50 ms).
func testKcAdvFetchErrorNoHotLoop(t *testing.T, f Factory) {
	for _, group := range []bool{false, true} {
		t.Run(fmt.Sprint("group=", group), func(t *testing.T) {
			e, c := newFaultEnv(t, f, Config{})
			topic := e.createTopic(t, "failing", 1)
			e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll)
			h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: topic, Err: kerr.UnknownServerError, Count: -1})
			defer h.Remove()
			var poll func(context.Context) ([]*kafkaclient.Record, error)
			if group {
				g, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: e.name("g"), Topics: []string{topic}})
				if err != nil {
					t.Fatal(err)
				}
				defer g.Close()
				poll = g.Poll
			} else {
				rd, err := e.client.NewReader(kafkaclient.ReaderConfig{})
				if err != nil {
					t.Fatal(err)
				}
				defer rd.Close()
				if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 0}}); err != nil {
					t.Fatal(err)
				}
				poll = rd.Poll
			}
			// Poll for 3 s while every fetch of the partition fails.
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			for ctx.Err() == nil {
				if recs, err := poll(ctx); len(recs) > 0 {
					t.Fatalf("poll of a partition whose every fetch fails: %d records, %v", len(recs), err)
				}
			}
			cancel()
			// librdkafka's backoff makes it about 60; a hot loop, tens of
			// thousands.
			if n := h.Hits(); n == 0 || n > 1000 {
				t.Errorf("the partition was fetched %d times in 3 s of errors, want a fetch after a backoff", n)
			}
			h.Remove()
			recs, err := poll(ctxT(t, 30*time.Second))
			if err != nil || len(recs) != 1 || string(recs[0].Value) != "x" {
				t.Fatalf("poll once the broker serves the partition: %d records, %v", len(recs), err)
			}
		})
	}
}
