package runtime_test

// Adversarial faults of fetch methods: each test failed on the code before
// its fix, for the reason its comment gives.

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// TestFetchAdvTopicDeleted: the fetched topic is deleted (and not created
// again) while a caller follows it.
func TestFetchAdvTopicDeleted(t *testing.T) {
	defer runtime.SetPartitionsRefresh(20 * time.Millisecond)()
	e := setupFanout(t)
	e.produce(t, e.topic, 3, 3, 0)
	ctx := ctxFor(t, 60*time.Second)
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 3)
	deleteTopic(t, e.brokers, e.topic)
	ev, err := a.s.Recv()
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), e.topic) {
		t.Fatalf("a caller following a topic that was deleted got %v, %v; want NOT_FOUND naming the topic", ev, err)
	}
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err = s.Recv()
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), e.topic) {
		t.Fatalf("a new caller of the deleted topic got %v, %v; want NOT_FOUND naming the topic", ev, err)
	}
}

// TestFetchAdvStalledCallerHoldsOneBatchOfBytes: a caller following the
// window that stops reading holds, while its send waits, the records it took
// from the window at once: up to 32, whatever their size, kept after the
// window dropped them (with 1 MiB records, 32 MiB per stalled caller beyond
// the window). README: a caller "holds no records of its own". Now a batch
// is at most 64 KiB of records, or one record when that is larger: here,
// with 100 KiB records, the one being sent. Once it reads again, it gets
// what it held, then UNAVAILABLE with the id to resume from, and resuming
// delivers the rest exactly once.
func TestFetchAdvStalledCallerHoldsOneBatchOfBytes(t *testing.T) {
	const size = 100 << 10
	gate := &sendGate{key: "x-stall", entered: make(chan struct{}, 1), release: make(chan struct{})}
	e := setupFanoutServer(t, []grpc.ServerOption{runtime.FetchServerCodec(), grpc.StreamInterceptor(gate.intercept)},
		runtime.GatewayFetchWindow(4<<20))
	ctx := ctxFor(t, 2*time.Minute)
	e.produce(t, e.topic, 30, 5, size) // in the window
	stalled := e.follower(t, ctx, nil, metadata.Pairs("x-stall", "1"))
	select {
	case <-gate.entered:
	case <-ctx.Done():
		t.Fatal("the caller's first message never reached SendMsg")
	}
	e.produce(t, e.topic, 60, 5, size) // the window drops the first 30 and more
	// Once another caller has them all, so has the window.
	e.follower(t, ctx, nil, nil).recvUpTo(t, 90)
	// Each record the gateway held for the stalled caller reaches it once
	// it reads again, before its end.
	close(gate.release)
	held := 0
	var end error
	for {
		ev, err := stalled.s.Recv()
		if err != nil {
			end = err
			break
		}
		if err := stalled.tr.add(ev); err != nil {
			t.Fatal(err)
		}
		held++
	}
	if status.Code(end) != codes.Unavailable || !strings.Contains(status.Convert(end).Message(), "resume with metadata last-message-id=") {
		t.Fatalf("the stalled caller ended with %v after %d messages; want UNAVAILABLE telling it to resume", end, held)
	}
	if held > 1 {
		t.Errorf("the stalled caller received %d records of %d KiB from the gateway after the window dropped them: it held them while it did not read; want at most the one it was sent", held, size>>10)
	}
	r := e.follower(t, ctx, stalled.tr, nil)
	r.recvUpTo(t, 90)
}
