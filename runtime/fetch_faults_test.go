package runtime_test

// Faults of fetch methods found by review: each test shows one defect (see
// its comment), failed for that reason before its fix, and checks what the
// caller gets.

import (
	"context"
	"fmt"
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
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// stallGate is a stream interceptor that makes every SendMsg of a call whose
// metadata carries x-stall block until the call ends: what a caller that
// stopped reading does to the gateway once gRPC's flow-control window is
// full (SendMsg waits for the window and returns only when the stream ends).
// entered receives once per call when its first SendMsg blocks.
type stallGate struct{ entered chan struct{} }

func newStallGate() *stallGate { return &stallGate{entered: make(chan struct{}, 16)} }

func (g *stallGate) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	if len(md.Get("x-stall")) == 0 {
		return handler(srv, ss)
	}
	return handler(srv, &stalledStream{ServerStream: ss, g: g})
}

type stalledStream struct {
	grpc.ServerStream
	g    *stallGate
	once bool
}

func (s *stalledStream) SendMsg(m any) error {
	if !s.once {
		s.once = true
		s.g.entered <- struct{}{}
	}
	<-s.Context().Done()
	return s.Context().Err()
}

// stalledCatchUpEnv is a fanout gateway whose window is too small for the
// topic's 40 records, so that a caller starting from the earliest record
// gets a catch-up reader; one catch-up reader at most. A caller with
// metadata x-stall stops reading at its first message.
func stalledCatchUpEnv(t *testing.T) (*fanoutEnv, *stallGate) {
	gate := newStallGate()
	e := setupFanoutServer(t, []grpc.ServerOption{runtime.FetchServerCodec(), grpc.StreamInterceptor(gate.intercept)},
		runtime.GatewayFetchWindow(8<<10), runtime.GatewayFetchPreload(0), runtime.GatewayFetchCatchUpReaders(1))
	e.produce(t, e.topic, 40, 5, 500)
	return e, gate
}

// startStalled starts a fetch from the earliest record that stops reading
// at its first message, and returns once the gateway is blocked sending it
// (in the catch-up reader, since the window does not hold the start).
func startStalled(t *testing.T, e *fanoutEnv, gate *stallGate, ctx context.Context) {
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
