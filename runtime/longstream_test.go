package runtime_test

import (
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// longStream is a server stream of n responses of size bytes each that,
// in its first run, after its first `before` responses, waits until the
// test lets it go on (goOn closed) or its call ends.
type longStream struct {
	echoserver.Server
	n, size, before int
	goOn            chan struct{}
	waiting         chan struct{} // closed once it waits for goOn
	runs            atomic.Int32
	// hook, when not nil, is called in the first run before response i is
	// sent; an error ends the run with it.
	hook func(ctx context.Context, i int) error
}

func (s *longStream) EchoServerStream(req *echov1.EchoRequest, stream grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	msg := strings.Repeat("x", s.size)
	first := s.runs.Add(1) == 1
	for i := range s.n {
		if s.hook != nil && first {
			if err := s.hook(stream.Context(), i); err != nil {
				return err
			}
		}
		if i == s.before && first {
			close(s.waiting)
			select {
			case <-s.goOn:
			case <-stream.Context().Done():
				return status.FromContextError(context.Cause(stream.Context())).Err()
			}
		}
		if err := stream.Send(&echov1.EchoResponse{Message: msg, Index: int32(i)}); err != nil {
			return err
		}
	}
	return nil
}

func newLongStream(n, size, before int) *longStream {
	return &longStream{n: n, size: size, before: before, goOn: make(chan struct{}), waiting: make(chan struct{})}
}

// eosStreamEnv starts an exactly-once worker serving impl that holds at
// most 64 KiB of a stream's responses, and returns it with a
// read_committed gateway's client.
func eosStreamEnv(t *testing.T, impl echov1.EchoServiceServer) (*env, echov1.EchoServiceClient) {
	t.Helper()
	e := setupWith(t, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")), runtime.WorkerExactlyOnceStreamBytes(64<<10))
	return e, advCommittedClient(t, e)
}

// TestEosStreamPastBoundGoesOut: with WorkerExactlyOnce, a server stream
// longer than WorkerExactlyOnceStreamBytes is not held in the worker's
// memory until its end: its caller gets its first responses while the
// handler is still sending (here, while it waits for the caller to have
// them), then the rest, each once, in order, and OK.
func TestEosStreamPastBoundGoesOut(t *testing.T) {
	const n, size, before = 40, 8 << 10, 20 // 160 KiB sent before the handler waits, bound 64 KiB
	impl := newLongStream(n, size, before)
	e, client := eosStreamEnv(t, impl)
	ctx := ctxFor(t, 60*time.Second)
	stream, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "long"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(n) {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v (a stream held until its end never reaches its caller while its handler waits for it)", i, err)
		}
		if r.GetIndex() != i || len(r.GetMessage()) != size {
			t.Fatalf("Recv %d: index %d, %d bytes; want each response once, in order", i, r.GetIndex(), len(r.GetMessage()))
		}
		if i == 0 {
			close(impl.goOn)
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream end: %v, want OK", err)
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("worker stopped: %v", err)
	}
}

// TestEosStreamPastBoundGivenUp: a stream past the bound whose worker
// shuts down midway has sent responses its caller may have read: it ends
// UNAVAILABLE "retry it" after them, as README says, rather than being
// left to the group's next member (its caller would get them twice). (A
// stream within the bound is served whole by the next member:
// TestExactlyOnceGivenUpStreamServedWholeByNext.)
func TestEosStreamPastBoundGivenUp(t *testing.T) {
	const n, size, before = 40, 8 << 10, 20
	impl := newLongStream(n, size, before)
	e, client := eosStreamEnv(t, impl)
	ctx := ctxFor(t, 60*time.Second)
	stream, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "given up"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil || r.GetIndex() != 0 {
		t.Fatalf("first response: %v, %v", r, err)
	}
	select {
	case <-impl.waiting:
	case <-ctx.Done():
		t.Fatal("the handler did not send its first responses")
	}
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	got := 1
	for {
		r, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "retry it") {
				t.Fatalf("after %d responses: %v, want UNAVAILABLE \"retry it\"", got, err)
			}
			break
		}
		if r.GetIndex() != int32(got) {
			t.Fatalf("Recv %d: index %d; want each response once, in order", got, r.GetIndex())
		}
		got++
	}
	if got != before {
		t.Fatalf("the caller got %d responses before the end, want the %d sent before the shutdown (past the bound, each goes out as sent)", got, before)
	}
}

// TestKeyedStreamPastStoreBoundNotHeld: a server stream called with an
// idempotency key whose replies outgrow what the worker remembers of a call
// (WorkerIdempotencyWindow's maxBytes) is not kept in the worker's memory
// reply by reply until its end, only to be dropped there: past the bound
// the worker keeps none of them. The call ends OK, and a repeat with the
// same key runs the handler again, as one past the window does.
func TestKeyedStreamPastStoreBoundNotHeld(t *testing.T) {
	const n, size, maxStored = 41, 8 << 10, 64 << 10 // 320 KiB sent before the handler waits
	impl := newLongStream(n, size, n-1)
	e := setup(t, impl, runtime.WorkerIdempotencyWindow(10*time.Minute, maxStored))
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", e.prefix+"long")
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "long"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(n - 1) {
		if r, err := stream.Recv(); err != nil || r.GetIndex() != i {
			t.Fatalf("Recv %d: %v, %v", i, r, err)
		}
	}
	select {
	case <-impl.waiting:
	case <-ctx.Done():
		t.Fatal("the handler did not reach its wait")
	}
	if held := runtime.HeldRepliesForTest(e.worker); held > maxStored {
		t.Errorf("the worker holds %d bytes of the running call's replies for its repeats, more than the %d it may remember of a call", held, maxStored)
	}
	close(impl.goOn)
	got := 0
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d more responses: %v, want OK", got, err)
		}
		got++
	}
	if got != 1 {
		t.Fatalf("got %d responses after the wait, want 1", got)
	}
	repeat, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "long"})
	if err != nil {
		t.Fatal(err)
	}
	got = 0
	for {
		r, err := repeat.Recv()
		if err == io.EOF {
			break
		}
		if err != nil || r.GetIndex() != int32(got) {
			t.Fatalf("repeat, Recv %d: %v, %v", got, r, err)
		}
		got++
	}
	if got != n {
		t.Fatalf("the repeat got %d responses, want %d", got, n)
	}
	if runs := impl.runs.Load(); runs != 2 {
		t.Fatalf("the handler ran %d times, want 2 (an outcome larger than the store's bound is not remembered)", runs)
	}
}

// TestEosStreamPastBoundRejoin: a commit races a rebalance while a stream
// past WorkerExactlyOnceStreamBytes runs: the transaction aborted holds
// responses its handler sent (they went out as it sent them), and it has
// sent more since. The worker gives the call up and rejoins its group: its
// caller must get a prefix of the stream, each response once and in
// order, then UNAVAILABLE "retry it"; not later responses after a gap
// where the aborted ones were.
func TestEosStreamPastBoundRejoin(t *testing.T) {
	const n, size = 40, 8 << 10 // with a bound of 64 KiB, responses 0-7 go out together, then each as sent
	impl := newLongStream(n, size, -1)
	var f atomic.Pointer[movedOnArm]
	impl.hook = func(ctx context.Context, i int) error {
		switch i {
		case 16: // 8-15 are in the open transaction, not committed (WorkerCommitInterval)
			f.Load().armed.Store(true)
		case 20:
			<-ctx.Done() // given up at the rejoin
			return status.FromContextError(context.Cause(ctx)).Err()
		}
		return nil
	}
	e, arm, client := rejoinEnv(t, impl, runtime.WorkerExactlyOnceStreamBytes(64<<10), runtime.WorkerCommitInterval(2*time.Second))
	f.Store(arm)
	ctx := ctxFor(t, 60*time.Second)
	stream, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "rejoin"})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for {
		r, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("after %d responses: %v, want UNAVAILABLE", got, err)
			}
			break
		}
		if r.GetIndex() != int32(got) {
			t.Fatalf("Recv %d: index %d; want a prefix of the stream, each response once, in order", got, r.GetIndex())
		}
		got++
	}
	if got > 16 {
		t.Fatalf("the caller got %d responses, want at most the 16 sent before the aborted commit", got)
	}
	select {
	case <-arm.hits:
	default:
		t.Fatal("no commit was refused: the test did not probe a rejoin")
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
}

// readAllThenWait is a client stream whose handler reads every request
// message, says so on read, and answers with their count once the test
// lets it go on (goOn closed).
type readAllThenWait struct {
	echoserver.Server
	read chan int
	goOn chan struct{}
}

func (s *readAllThenWait) EchoClientStream(stream grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	n := 0
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		n++
	}
	s.read <- n
	select {
	case <-s.goOn:
	case <-stream.Context().Done():
		return status.FromContextError(context.Cause(stream.Context())).Err()
	}
	return stream.SendAndClose(&echov1.EchoResponse{Index: int32(n)})
}

// TestClientStreamReadNotHeld: a client stream's request messages were
// kept in the worker's memory until the call's end, read or not, for
// retries and dead letters: a long upload took its whole size in memory.
// Without WorkerRetries or WorkerDeadLetterTopic nothing reads them again,
// and those the handler read are let go.
func TestClientStreamReadNotHeld(t *testing.T) {
	const n, size = 40, 8 << 10
	impl := &readAllThenWait{read: make(chan int, 1), goOn: make(chan struct{})}
	e := setup(t, impl)
	ctx := ctxFor(t, 60*time.Second)
	cs, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("u", size)
	for i := range n {
		if err := cs.Send(&echov1.EchoRequest{Message: msg}); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-impl.read:
		if got != n {
			t.Fatalf("the handler read %d messages, want %d", got, n)
		}
	case <-ctx.Done():
		t.Fatal("the handler did not read the stream")
	}
	if held := runtime.HeldRequestsForTest(e.worker); held != 0 {
		t.Errorf("the worker keeps %d bytes of request messages its handler read, with no retry or dead letter to read them again", held)
	}
	close(impl.goOn)
	var r echov1.EchoResponse
	if err := cs.RecvMsg(&r); err != nil || r.GetIndex() != n {
		t.Fatalf("response: %v, %v; want %d", &r, err, n)
	}
}
