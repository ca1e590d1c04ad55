package runtime_test

// Faults of fetch methods found by review: each test shows one defect (see
// its comment), failed for that reason before its fix, and checks what the
// caller gets.

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/fetchclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// sendGate is a stream interceptor for the calls whose metadata carries
// key: it holds their SendMsg until release is closed, or, with a nil
// release, every SendMsg until the call ends: what a caller that stopped
// reading does to the gateway once gRPC's flow-control window is full
// (SendMsg waits for the window and returns only when the stream ends).
// entered receives once per call, when its first SendMsg is held.
type sendGate struct {
	key     string
	entered chan struct{}
	release chan struct{}
}

func newStallGate() *sendGate { return &sendGate{key: "x-stall", entered: make(chan struct{}, 16)} }

func (g *sendGate) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	if len(md.Get(g.key)) == 0 {
		return handler(srv, ss)
	}
	return handler(srv, &gatedStream{ServerStream: ss, g: g})
}

type gatedStream struct {
	grpc.ServerStream
	g    *sendGate
	once bool
}

func (s *gatedStream) SendMsg(m any) error {
	if !s.once {
		s.once = true
		s.g.entered <- struct{}{}
	}
	select {
	case <-s.g.release: // never when nil
	case <-s.Context().Done():
		return s.Context().Err()
	}
	return s.ServerStream.SendMsg(m)
}

// stalledCatchUpEnv is a fanout gateway whose window is too small for the
// topic's 40 records, so that a caller starting from the earliest record
// gets a catch-up reader; one catch-up reader at most. A caller with
// metadata x-stall stops reading at its first message.
func stalledCatchUpEnv(t *testing.T) (*fanoutEnv, *sendGate) {
	gate := newStallGate()
	e := setupFanoutServer(t, []grpc.ServerOption{runtime.FetchServerCodec(), grpc.StreamInterceptor(gate.intercept)},
		runtime.GatewayFetchWindow(8<<10), runtime.GatewayFetchPreload(0), runtime.GatewayFetchCatchUpReaders(1))
	e.produce(t, e.topic, 40, 5, 500)
	return e, gate
}

// startStalled starts a fetch from the earliest record that stops reading
// at its first message, and returns once the gateway is blocked sending it
// (in the catch-up reader, since the window does not hold the start).
func startStalled(t *testing.T, e *fanoutEnv, gate *sendGate, ctx context.Context) {
	t.Helper()
	if _, err := e.echo.EchoEvents(metadata.AppendToOutgoingContext(ctx, "x-stall", "1"), &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gate.entered:
	case <-ctx.Done():
		t.Fatal("the stalled caller's first message never reached SendMsg")
	}
	if st := e.gw.FetchStats(); st.CatchUps != 1 || st.HandOvers != 0 {
		t.Fatalf("stats %+v: want the stalled caller in its catch-up", st)
	}
}

// TestFetchStalledCatchUpBlocksOthers: a caller that stops reading
// while it catches up keeps its catch-up reader (and slot) for as long as
// its stream lives, so every other caller that needs a catch-up waits
// behind it indefinitely. README: a slow caller "never delays the
// others".
func TestFetchStalledCatchUpBlocksOthers(t *testing.T) {
	e, gate := stalledCatchUpEnv(t)
	ctx := ctxFor(t, 60*time.Second)
	stalledCtx, stop := context.WithCancel(ctx)
	defer stop()
	startStalled(t, e, gate, stalledCtx)

	// Another caller from the earliest record: it needs a catch-up too.
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := s.Recv()
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("second caller: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("a second caller got nothing within 15 s while another caller, stalled in its catch-up, holds the only catch-up reader; stats %+v", e.gw.FetchStats())
	}
}

// TestFetchCloseWithStalledCatchUp: Gateway.Close waits for the
// catch-up readers, and a catch-up reader is closed only when its caller's
// send returns: with a caller that stopped reading, Close hangs until
// that caller goes away. Close is documented to stop the fetch readers and
// return (TestFetchGatewayClose calls it with the gRPC server running).
func TestFetchCloseWithStalledCatchUp(t *testing.T) {
	e, gate := stalledCatchUpEnv(t)
	ctx := ctxFor(t, 60*time.Second)
	startStalled(t, e, gate, ctx)
	closed := make(chan error, 1)
	go func() { closed <- e.gw.Close() }()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("Gateway.Close did not return within 15 s: it waits for the catch-up reader of a caller that stopped reading")
	}
}

// TestFetchResumeIDWithPartitionsTheTopicLacks: an event id naming
// partitions the fetched topic does not have (an id of another topic, or a
// forged one) is accepted without a word: the stream starts, and every id
// it hands out carries the bogus partitions on. WIRE.md: an id that cannot
// be used is refused with INVALID_ARGUMENT saying why.
func TestFetchResumeIDWithPartitionsTheTopicLacks(t *testing.T) {
	e := setupFanout(t)
	e.produce(t, e.topic, 3, 3, 0)
	ctx := ctxFor(t, 30*time.Second)
	// echo-events has partitions 0, 1, 2.
	id := wire.EventID{{Partition: 0, Offset: 0}, {Partition: 7, Offset: 12}}
	s, err := e.echo.EchoEvents(metadata.AppendToOutgoingContext(ctx, "last-message-id", id.String()), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.Recv()
	if status.Code(err) == codes.InvalidArgument && strings.Contains(status.Convert(err).Message(), "partition 7") {
		return
	}
	var carried string
	if raw, ok := wire.EventIDFromMessage(ev, wire.DefaultEventIDField); ok {
		got, _ := wire.DecodeEventID(raw)
		carried = fmt.Sprint(got)
	}
	t.Fatalf("resuming with an id naming partition 7 of a 3-partition topic: got %v (event id %s), %v; want INVALID_ARGUMENT naming partition 7", ev, carried, err)
}

// TestFetchTopicRecreated: a fetched topic deleted and created again. The
// hub's reader, reset to the new log, reads records at offsets it had
// passed, which it dropped as read: a caller following it waited for ever,
// and a new caller got the deleted topic's records from the window. The hub
// now ends when its topic's log restarted: its callers get UNAVAILABLE
// saying so, and the next caller reads the new topic.
func TestFetchTopicRecreated(t *testing.T) {
	e := setupFanout(t)
	e.produce(t, e.topic, 6, 3, 0) // seq-0 to seq-5
	ctx := ctxFor(t, 60*time.Second)
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for range 6 {
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	deleteTopic(t, e.brokers, e.topic)
	kafkatest.CreateTopics(t, e.kc, 3, e.topic)
	for i := 6; i < 9; i++ { // seq-6 to seq-8, in the new topic, each until Kafka takes it
		v, _ := proto.Marshal(&echov1.EchoEvent{Message: fmt.Sprintf("seq-%d", i)})
		produceUntilTaken(t, ctx, e.kc, &kafkaclient.Record{Topic: e.topic, Partition: kafkaclient.AnyPartition, Key: []byte(fmt.Sprintf("k%d", i%3)), Value: v})
	}
	ev, err := s.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "deleted and created again") {
		t.Fatalf("the caller following the deleted topic got %v, %v; want UNAVAILABLE saying the topic was deleted and created again", ev, err)
	}
	s, err = e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 3 {
		ev, err := s.Recv()
		if err != nil {
			t.Fatalf("a new caller after the topic was created again: %v after %v", err, got)
		}
		got = append(got, ev.GetMessage())
	}
	slices.Sort(got)
	if want := []string{"seq-6", "seq-7", "seq-8"}; !slices.Equal(got, want) {
		t.Fatalf("a new caller got %v, want the new topic's %v", got, want)
	}
}

// produceUntilTaken produces rec, again after each failure (a client
// learning that the topic was created again fails a record or two), until
// Kafka takes it or ctx ends.
func produceUntilTaken(t *testing.T, ctx context.Context, kc kafkaclient.Client, rec *kafkaclient.Record) {
	t.Helper()
	for {
		errc := make(chan error, 1)
		r := *rec
		kc.Produce(&r, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		select {
		case err := <-errc:
			if err == nil {
				return
			}
			t.Logf("producing to %s: %v; again", rec.Topic, err)
		case <-ctx.Done():
			t.Fatalf("producing to %s: %v", rec.Topic, ctx.Err())
		}
	}
}

// TestFetchReadsPartitionsAddedToTopic: an operator adds partitions to a
// fetched topic while a gateway serves it. The hub read only the partitions
// the topic had when it started: every record written to a new partition
// was delivered to no caller of that gateway until it restarted, and event
// ids never named the new partitions. Now the hub reads them, from their
// earliest offset, once it notices them: callers following the hub get
// their records, and callers resuming with an id taken before the topic
// grew (which does not name the new partitions: "from the earliest") get
// them exactly once, from the window and from a catch-up reader alike.
func TestFetchReadsPartitionsAddedToTopic(t *testing.T) {
	defer runtime.SetPartitionsRefresh(20 * time.Millisecond)()
	// A window of about 140 of these records: a caller resuming from
	// before 300 more needs a catch-up reader.
	e := setupFanout(t, runtime.GatewayFetchWindow(16<<10))
	ctx := ctxFor(t, time.Minute)
	e.produce(t, e.topic, 6, 3, 0) // seq-0 to seq-5, on partitions 0 to 2
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 6)
	before := a.tr.clone() // its id names partitions 0 to 2 only

	if err := e.kc.CreatePartitions(ctx, e.topic, 5); err != nil {
		t.Fatal(err)
	}
	e.produceTo(t, 3, 2, 0) // seq-6, seq-7
	e.produceTo(t, 4, 2, 0) // seq-8, seq-9
	a.recvUpTo(t, 10)

	// Resuming from before the topic grew: from the window.
	stats := e.gw.FetchStats()
	b := e.follower(t, ctx, before, nil)
	b.recvUpTo(t, 10)
	if st := e.gw.FetchStats(); st.CatchUps != stats.CatchUps {
		t.Fatalf("stats %+v: the window holds every record; want no catch-up", st)
	}
	// 300 more, over all 5 partitions, read as they come so that a and b
	// stay in the window.
	for range 15 {
		for p := range int32(5) {
			e.produceTo(t, p, 4, 0)
		}
		a.recvUpTo(t, e.producedCount())
		b.recvUpTo(t, e.producedCount())
	}
	// Resuming from before the topic grew: with a catch-up reader.
	stats = e.gw.FetchStats()
	c := e.follower(t, ctx, before, nil)
	c.recvUpTo(t, e.producedCount())
	if st := e.gw.FetchStats(); st.CatchUps != stats.CatchUps+1 {
		t.Fatalf("stats %+v (before %+v): want one more catch-up", st, stats)
	}
	// Resuming from an id that names the new partitions: nothing again.
	d := e.follower(t, ctx, a.tr, nil)
	n := e.producedCount()
	e.produceTo(t, 4, 1, 0)
	for _, f := range []*fetchFollower{a, b, c, d} {
		f.recvUpTo(t, n+1)
	}
}

// TestFetchCatchUpReadsPartitionsAddedMeanwhile: the topic grows while a
// caller is in its catch-up (its first message held until the hub read the
// new partitions, more of them than its window holds): its catch-up reader
// reads the new partitions too, from their start, and its hand-over to the
// window covers them, so it gets their records exactly once.
func TestFetchCatchUpReadsPartitionsAddedMeanwhile(t *testing.T) {
	defer runtime.SetPartitionsRefresh(20 * time.Millisecond)()
	gate := &sendGate{key: "x-hold", entered: make(chan struct{}, 1), release: make(chan struct{})}
	e := setupFanoutServer(t, []grpc.ServerOption{runtime.FetchServerCodec(), grpc.StreamInterceptor(gate.intercept)},
		runtime.GatewayFetchWindow(8<<10), runtime.GatewayFetchPreload(0))
	ctx := ctxFor(t, time.Minute)
	e.produce(t, e.topic, 40, 5, 500) // more than the window
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 40)
	stats := e.gw.FetchStats()
	held := e.follower(t, ctx, nil, metadata.Pairs("x-hold", "1"))
	select {
	case <-gate.entered:
	case <-ctx.Done():
		t.Fatal("the held caller's first message never reached SendMsg")
	}
	if st := e.gw.FetchStats(); st.CatchUps != stats.CatchUps+1 || st.HandOvers != stats.HandOvers {
		t.Fatalf("stats %+v (before %+v): want the held caller in its catch-up", st, stats)
	}
	if err := e.kc.CreatePartitions(ctx, e.topic, 5); err != nil {
		t.Fatal(err)
	}
	// More than the window holds on the new partitions, so that the held
	// caller's catch-up reader reads them too; a reads them as they come.
	for range 4 {
		e.produceTo(t, 3, 5, 500)
		e.produceTo(t, 4, 5, 500)
		a.recvUpTo(t, e.producedCount())
	}
	close(gate.release)
	held.recvUpTo(t, 80)
	e.produce(t, e.topic, 10, 7, 0)
	a.recvUpTo(t, 90)
	held.recvUpTo(t, 90)
	if st := e.gw.FetchStats(); st.CatchUps != stats.CatchUps+1 || st.HandOvers != stats.HandOvers+1 || st.Laggards != 0 {
		t.Fatalf("stats %+v (before %+v): want the held caller's catch-up handed over, no laggard", st, stats)
	}
}

// fetchFollower is one fetch stream checked by a tracker.
type fetchFollower struct {
	s  grpc.ServerStreamingClient[echov1.EchoEvent]
	tr *tracker
	e  *fanoutEnv
}

// follower starts a fetch of the echo events, resuming after what from has
// seen (its last id and its records; from is not changed) when from is not
// nil.
func (e *fanoutEnv) follower(t *testing.T, ctx context.Context, from *tracker, md metadata.MD) *fetchFollower {
	t.Helper()
	tr := newTracker(t)
	md = md.Copy()
	if from != nil {
		tr = from.clone()
		md.Set("last-message-id", base64.RawURLEncoding.EncodeToString(from.last))
	}
	s, err := e.echo.EchoEvents(metadata.NewOutgoingContext(ctx, md), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	return &fetchFollower{s: s, tr: tr, e: e}
}

// recvUpTo receives until the follower has n distinct records, each
// exactly once and in order (tracker.add).
func (f *fetchFollower) recvUpTo(t *testing.T, n int) {
	t.Helper()
	for len(f.tr.seen) < n {
		ev, err := f.s.Recv()
		if err != nil {
			f.e.stalled(t, f.tr)
			t.Fatalf("after %d of %d records: %v", len(f.tr.seen), n, err)
		}
		if err := f.tr.add(ev); err != nil {
			t.Fatal(err)
		}
	}
}

// clone returns a copy of tr.
func (tr *tracker) clone() *tracker {
	c := &tracker{t: tr.t, next: maps.Clone(tr.next), seen: maps.Clone(tr.seen), last: slices.Clone(tr.last)}
	return c
}

// produceTo writes n EchoEvent records to partition p of the echo events,
// numbered on and padded to size as produce does, and returns once Kafka
// took them.
func (e *fanoutEnv) produceTo(t *testing.T, p int32, n, size int) {
	t.Helper()
	for range n {
		e.mu.Lock()
		i := e.produced
		e.produced++
		e.mu.Unlock()
		msg := fmt.Sprintf("seq-%06d", i)
		if len(msg) < size {
			msg += "-" + strings.Repeat("x", size-len(msg)-1)
		}
		v, _ := proto.Marshal(&echov1.EchoEvent{Message: msg})
		errc := make(chan error, 1)
		e.kc.Produce(&kafkaclient.Record{Topic: e.topic, Partition: p, Key: []byte("k" + fmt.Sprint(i)), Value: v},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("producing to partition %d: %v", p, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("producing to partition %d: no acknowledgement within 30 s", p)
		}
	}
}

// TestFetchClientStartsAgainWhenTopicRecreated: the fetch topic is deleted
// and created again while a fetchclient follows it. The gateway ends the
// stream with UNAVAILABLE saying the caller's ids name records that no
// longer exist and that it must start again without one; but fetchclient
// retried UNAVAILABLE with its last id, which the new topic accepts once it
// holds as many records: it resumed mid-way through the new topic and
// silently skipped its first records.
func TestFetchClientStartsAgainWhenTopicRecreated(t *testing.T) {
	e := setupFanout(t)
	ctx := ctxFor(t, 60*time.Second)
	put := func(p int32, msg string) {
		v, _ := proto.Marshal(&echov1.EchoEvent{Message: msg})
		produceUntilTaken(t, ctx, e.kc, &kafkaclient.Record{Topic: e.topic, Partition: p, Key: []byte(msg), Value: v})
	}
	for p := range int32(3) { // old-0-0, old-0-1 on partition 0, and so on
		put(p, fmt.Sprintf("old-%d-0", p))
		put(p, fmt.Sprintf("old-%d-1", p))
	}
	opens := 0
	open := func(ctx context.Context, in *emptypb.Empty, opts ...grpc.CallOption) (grpc.ServerStreamingClient[echov1.EchoEvent], error) {
		opens++
		if opens == 2 { // resuming after the gateway ended the stream: the new topic has grown meanwhile
			for p := range int32(3) {
				put(p, fmt.Sprintf("new-%d-1", p))
				put(p, fmt.Sprintf("new-%d-2", p))
			}
		}
		return e.echo.EchoEvents(ctx, in, opts...)
	}
	sub := fetchclient.New(ctx, open, fetchclient.WithBackoff(time.Millisecond, 10*time.Millisecond))
	defer sub.Close()
	for range 6 {
		if _, err := sub.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	deleteTopic(t, e.brokers, e.topic)
	kafkatest.CreateTopics(t, e.kc, 3, e.topic)
	for p := range int32(3) { // one record each: the hub sees the log restart
		put(p, fmt.Sprintf("new-%d-0", p))
	}
	next := make([]int, 3) // per partition of the new topic, the next record expected
	for range 9 {
		ev, err := sub.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var p, i int
		if _, err := fmt.Sscanf(ev.GetMessage(), "new-%d-%d", &p, &i); err != nil || p < 0 || p > 2 {
			t.Fatalf("after the topic was created again: got %q, want a record of the new topic", ev.GetMessage())
		}
		if i != next[p] {
			t.Fatalf("after the topic was created again: got %q, want new-%d-%d: records of the new topic skipped (resumed with an id of the deleted one)", ev.GetMessage(), p, next[p])
		}
		next[p]++
	}
	if opens != 2 {
		t.Fatalf("%d streams opened, want 2", opens)
	}
}

// TestFetchClientEndsOnMessageTooLarge: a record larger than the caller's
// gRPC receive limit (4 MiB by default; Kafka topics may take larger) fails
// the stream with RESOURCE_EXHAUSTED ("received message larger than max").
// fetchclient retried RESOURCE_EXHAUSTED by default, from the same id, so it
// met the same record again and again: Recv never returned, the caller spun
// forever instead of learning why. A fetch gateway never answers
// RESOURCE_EXHAUSTED itself (a caller too slow gets UNAVAILABLE), so it is
// not retried by default.
func TestFetchClientEndsOnMessageTooLarge(t *testing.T) {
	e := setupFanout(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	e.produceTo(t, 0, 1, 10)  // fits
	e.produceTo(t, 0, 1, 500) // does not
	var retried []error
	sub := fetchclient.New(ctx, e.echo.EchoEvents,
		fetchclient.WithBackoff(time.Millisecond, time.Millisecond),
		fetchclient.WithCallOptions(grpc.MaxCallRecvMsgSize(200)),
		fetchclient.WithRetryHook(func(n int, err error) {
			retried = append(retried, err)
			if n >= 3 {
				cancel() // the same failure again and again: it would go on for ever
			}
		}))
	defer sub.Close()
	if _, err := sub.Recv(); err != nil {
		t.Fatal(err)
	}
	_, err := sub.Recv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Recv of a message larger than the receive limit = %v after retries %v; want RESOURCE_EXHAUSTED", err, retried)
	}
}
