package runtime_test

// Adversarial tests of the worker, the gateway and the connection under
// overload: more calls than the worker's handler slots, a backlog of
// requests, callers giving up (see each test's comment for the fault it
// failed on before its fix).

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// loadAdvGated is an echo handler that, once started, waits for the test's
// go-ahead without watching its context (a busy handler), and counts the
// calls it ran by message.
type loadAdvGated struct {
	echov1.UnimplementedEchoServiceServer
	started chan string   // each started call's message (buffered; sends never block the handler)
	release chan struct{} // closed by the test
	mu      sync.Mutex
	ran     map[string]int
}

func newLoadAdvGated(n int) *loadAdvGated {
	return &loadAdvGated{started: make(chan string, n), release: make(chan struct{}), ran: map[string]int{}}
}

func (g *loadAdvGated) EchoUnary(_ context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	g.mu.Lock()
	g.ran[req.GetMessage()]++
	g.mu.Unlock()
	select {
	case g.started <- req.GetMessage():
	default:
	}
	<-g.release
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

// ranWith returns the messages with prefix whose handlers ran, with counts.
func (g *loadAdvGated) ranWith(prefix string) map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]int{}
	for m, n := range g.ran {
		if strings.HasPrefix(m, prefix) {
			out[m] = n
		}
	}
	return out
}

// awaitCalls waits (bounded) until w started at least n calls.
func awaitCalls(t *testing.T, w *runtime.Worker, n uint64) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); w.Stats().Calls < n; {
		if time.Now().After(deadline) {
			t.Fatalf("the worker read %d calls within 60 s, want %d", w.Stats().Calls, n)
		}
		time.Sleep(time.Millisecond) // polling the worker's state, bounded above
	}
}

// blockSlot starts a call "block" whose handler holds a's one slot until
// a.release, and waits (bounded) until that handler started.
func blockSlot(t *testing.T, ctx context.Context, e *env, a *loadAdvGated) chan unaryResult {
	t.Helper()
	block := goUnary(ctx, e.echo, "block")
	select {
	case <-a.started:
	case r := <-block:
		t.Fatalf("the first call ended (%v, %v) before its handler started", r.r, r.err)
	case <-time.After(60 * time.Second):
		t.Fatal("the first call's handler did not start within 60 s")
	}
	return block
}

// queueCalls starts n calls "queued-I", which wait for a handler slot.
func queueCalls(ctx context.Context, e *env, n int) []chan unaryResult {
	res := make([]chan unaryResult, n)
	for i := range res {
		res[i] = goUnary(ctx, e.echo, fmt.Sprintf("queued-%d", i))
	}
	return res
}

// leftToNextOwner checks, once the worker of e let its partitions go
// (a shutdown or a revocation), that the call "block" running then got
// its response and that none of the queued calls' handlers ran on that
// worker; then (after leave, if not nil) it starts the next member and
// checks that every queued call gets its response from it.
func leftToNextOwner(t *testing.T, e *env, a *loadAdvGated, block chan unaryResult, queued []chan unaryResult, leave func() error) {
	t.Helper()
	if r := <-block; r.err != nil || r.r.GetMessage() != "block" {
		t.Fatalf("the call running when the worker let its partitions go ended %v, %v; want its response", r.r, r.err)
	}
	if ran := a.ranWith("queued-"); len(ran) > 0 {
		t.Errorf("the worker ran %d queued calls' handlers after it began to let their partitions go (e.g. %v); "+
			"want them left to the next owner", len(ran), first(ran))
	}
	if leave != nil {
		if err := leave(); err != nil {
			t.Fatal(err)
		}
	}
	b := newLoadAdvGated(1)
	close(b.release)
	startWorker(t, e, b)
	for i, ch := range queued {
		r := <-ch // bounded by the calls' context
		if want := fmt.Sprintf("queued-%d", i); r.err != nil || r.r.GetMessage() != want {
			t.Fatalf("queued call %d ended %v, %v; want its response from the next owner", i, r.r, r.err)
		}
	}
}

// TestLoadAdvShutdownLeavesQueuedCallsToNextMember: a worker whose handler
// slots (WorkerMaxConcurrentCalls) are all busy reads on: every request it
// reads waits for a slot, a backlog in the worker's memory. On a graceful
// Shutdown, which "stops fetching, lets the calls in flight finish", the
// worker ran that whole backlog, one slot at a time, before it let its
// partitions go: a Shutdown meant to take as long as the running handlers
// took as long as every queued request (or until its context ended), while
// another member could have served them (a rebalance waited likewise, up
// to WorkerRevokeTimeout, for the queued calls of the revoked partitions).
// Now the calls whose handlers have not started are left uncommitted at
// once for the partition's next owner, which serves them: none is lost.
func TestLoadAdvShutdownLeavesQueuedCallsToNextMember(t *testing.T) {
	const queued = 200
	a := newLoadAdvGated(1)
	var once sync.Once
	restore := runtime.SetDrainingHook(func() { once.Do(func() { close(a.release) }) })
	e := setup(t, a, runtime.WorkerMaxConcurrentCalls(1))
	t.Cleanup(func() {
		_ = e.worker.Close()
		restore()
	})
	ctx := ctxFor(t, 3*time.Minute)
	block := blockSlot(t, ctx, e, a)
	res := queueCalls(ctx, e, queued)
	awaitCalls(t, e.worker, queued+1) // every queued call is in the worker, waiting for the slot

	// The hook lets the busy handler return once the worker stopped
	// polling: the slot frees during the shutdown.
	sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.worker.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	leftToNextOwner(t, e, a, block, res, nil)
}

// TestLoadAdvRevokeLeavesQueuedCallsToNextOwner: as at a shutdown, a
// revocation (a member joining the group to help with the load, which is
// when a backlog is likely) waited up to WorkerRevokeTimeout for the calls
// of the revoked partitions, those waiting for a handler slot included:
// the worker ran its backlog of them, one slot at a time, and the group's
// rebalance waited meanwhile. Now only the handlers already running are
// waited for; the queued calls are left to the partitions' next owner,
// which serves them.
func TestLoadAdvRevokeLeavesQueuedCallsToNextOwner(t *testing.T) {
	const queued = 200
	a := newLoadAdvGated(1)
	var once sync.Once
	restore := runtime.SetDrainingHook(func() { once.Do(func() { close(a.release) }) })
	e := setup(t, a, runtime.WorkerMaxConcurrentCalls(1), runtime.WorkerRevokeTimeout(2*time.Minute))
	t.Cleanup(func() {
		_ = e.worker.Close()
		restore()
	})
	ctx := ctxFor(t, 3*time.Minute)
	block := blockSlot(t, ctx, e, a)
	res := queueCalls(ctx, e, queued)
	awaitCalls(t, e.worker, queued+1)

	topic := e.topic("echo-requests")
	parts := []kafkaclient.TopicPartition{{Topic: topic, Partition: 0}, {Topic: topic, Partition: 1}, {Topic: topic, Partition: 2}}
	runtime.RevokeForTest(e.worker, parts...) // the hook lets the busy handler return
	// The revocation committed below the queued calls: the next owner
	// (after this worker left) serves them.
	leftToNextOwner(t, e, a, block, res, e.worker.Close)
}

// TestLoadAdvQueuedCallsEndAtTheirDeadline: calls waiting for a handler
// slot (WorkerMaxConcurrentCalls) while a burst saturates the worker end
// DEADLINE_EXCEEDED at their deadline, the worker answering each so, and
// none of their handlers runs once a slot frees.
func TestLoadAdvQueuedCallsEndAtTheirDeadline(t *testing.T) {
	const late = 300
	a := newLoadAdvGated(1)
	e := setup(t, a, runtime.WorkerMaxConcurrentCalls(1))
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	ctx := ctxFor(t, 3*time.Minute)
	block := blockSlot(t, ctx, e, a)
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	res := make([]chan unaryResult, late)
	for i := range res {
		res[i] = goUnary(lctx, e.echo, fmt.Sprintf("late-%d", i))
	}
	for i, ch := range res {
		if r := <-ch; status.Code(r.err) != codes.DeadlineExceeded {
			t.Fatalf("late call %d ended %v, %v; want DEADLINE_EXCEEDED", i, r.r, r.err)
		}
	}
	// The worker ends each too (an end-of-stream record with its status):
	// then it is done with them.
	ended := 0
	for timeout := time.After(60 * time.Second); ended < late; {
		select {
		case rec := <-replies.recs:
			if rec.Value != nil {
				t.Fatalf("a reply with a value (%q) to a call whose handler should not run", rec.Value)
			}
			// CANCELLED when the gateway's cancel record, written at the
			// caller's deadline, came first.
			if s := header(rec, "zilla:status"); s != "4" && s != "1" {
				t.Fatalf("an end-of-stream with status %s (%s), want 4 (DEADLINE_EXCEEDED) or 1 (CANCELLED)", s, header(rec, "zilla:message"))
			}
			ended++
		case <-timeout:
			t.Fatalf("the worker ended %d of the %d late calls within 60 s of their deadline", ended, late)
		}
	}
	close(a.release)
	if r := <-block; r.err != nil || r.r.GetMessage() != "block" {
		t.Fatalf("the first call ended %v, %v; want its response", r.r, r.err)
	}
	if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}); err != nil || r.GetMessage() != "after" {
		t.Fatalf("a call after the burst ended %v, %v; want its response", r, err)
	}
	if ran := a.ranWith("late-"); len(ran) > 0 {
		t.Errorf("%d handlers of calls past their deadline ran (e.g. %v)", len(ran), first(ran))
	}
}

// loadAdvUntilCancelled is an echo handler that answers "after" at once and
// holds every other call until its context ends.
type loadAdvUntilCancelled struct {
	echov1.UnimplementedEchoServiceServer
}

func (loadAdvUntilCancelled) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if req.GetMessage() == "after" {
		return &echov1.EchoResponse{Message: "after"}, nil
	}
	<-ctx.Done()
	return nil, status.FromContextError(context.Cause(ctx)).Err()
}

// TestLoadAdvManyCallersCancelAtOnce: a thousand callers waiting on a
// saturated worker (every handler slot held until its caller goes) cancel
// at once: each ends CANCELLED, and the worker, told by the gateway's
// cancel records, frees its slots and serves the next call.
func TestLoadAdvManyCallersCancelAtOnce(t *testing.T) {
	const callers = 1000
	e := setup(t, loadAdvUntilCancelled{}, runtime.WorkerMaxConcurrentCalls(4))
	base := e.worker.Stats().Calls
	ctx, cancel := context.WithCancel(ctxFor(t, 3*time.Minute))
	defer cancel()
	res := make([]chan unaryResult, callers)
	for i := range res {
		res[i] = goUnary(ctx, e.echo, fmt.Sprintf("waiting-%d", i))
	}
	awaitCalls(t, e.worker, base+callers)
	cancel()
	for i, ch := range res {
		if r := <-ch; status.Code(r.err) != codes.Canceled {
			t.Fatalf("caller %d ended %v, %v after it cancelled; want CANCELLED", i, r.r, r.err)
		}
	}
	r, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "after"})
	if err != nil || r.GetMessage() != "after" {
		t.Fatalf("a call after the cancelled ones ended %v, %v; want its response (the cancelled calls still hold the worker's slots?)", r, err)
	}
}

func first(m map[string]int) string {
	for k, v := range m {
		return fmt.Sprintf("%s ran %d times", k, v)
	}
	return ""
}
