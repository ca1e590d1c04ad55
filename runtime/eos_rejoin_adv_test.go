package runtime_test

// Adversarial probes of the exactly-once worker's rejoin after a commit
// that raced a rebalance (kafkaclient.ErrGroupMoved).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// movedOnArm is a worker's Kafka client whose transactional producer,
// once armed, refuses its next commit as the group coordinator refuses one
// that raced a rebalance (an error wrapping kafkaclient.ErrGroupMoved),
// committing nothing; the worker aborts the transaction. Works on any
// broker.
type movedOnArm struct {
	commitHooked
	armed    atomic.Bool
	hits     chan struct{} // one value per refused commit
	failJoin atomic.Bool   // NewGroupReader fails
}

func newMovedOnArm() *movedOnArm {
	f := &movedOnArm{hits: make(chan struct{}, 16)}
	f.refuse = func([]kafkaclient.TopicPartitionOffset) error {
		if f.armed.CompareAndSwap(true, false) {
			f.hits <- struct{}{}
			return fmt.Errorf("injected by the test: ILLEGAL_GENERATION (%w)", kafkaclient.ErrGroupMoved)
		}
		return nil
	}
	return f
}

var errAdvJoin = errors.New("injected by the test: joining the group failed")

func (f *movedOnArm) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	if f.failJoin.Load() {
		return nil, errAdvJoin
	}
	return f.Client.NewGroupReader(cfg)
}

// rejoinEnv starts an exactly-once echo worker on a movedOnArm client and
// returns it with a read_committed gateway's client.
func rejoinEnv(t *testing.T, impl echov1.EchoServiceServer, wopts ...runtime.WorkerOption) (*env, *movedOnArm, echov1.EchoServiceClient) {
	t.Helper()
	f := newMovedOnArm()
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client { f.Client = kc; return f },
		func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		append([]runtime.WorkerOption{runtime.WorkerExactlyOnce(kafkatest.Unique("txn-"))}, wopts...)...)
	return e, f, advCommittedClient(t, e)
}

// TestEosRejoinAdvBidiEarlyResponses: a bidi caller that waits for each
// response before it sends the next message (its responses go out at the
// next commit, before the call's end) while a commit races a rebalance.
// Its call is given up at the rejoin and its request read again from the
// committed offsets: the caller must not get a response twice (the
// rejoined worker's handler answering the first message again), nor wait
// for its deadline; it gets its responses in order, once each, or a
// status it may retry (UNAVAILABLE), as README says of a bidi call given
// up after its early responses.
func TestEosRejoinAdvBidiEarlyResponses(t *testing.T) {
	e, f, client := rejoinEnv(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	bs, err := client.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := range int32(4) {
		if i == 1 {
			f.armed.Store(true) // the commit making response 1 visible races a rebalance
		}
		if err := bs.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}); err != nil {
			t.Fatalf("Send %d: %v (got %q)", i, err, got)
		}
		r, err := bs.Recv()
		if status.Code(err) == codes.Unavailable {
			t.Logf("Recv %d: %v (got %q): a status to retry", i, err, got)
			return
		}
		if err != nil {
			t.Fatalf("Recv %d: %v (got %q)", i, err, got)
		}
		got = append(got, fmt.Sprintf("%d:%s", r.GetIndex(), r.GetMessage()))
		if r.GetIndex() != i || r.GetMessage() != fmt.Sprint(i) {
			t.Fatalf("Recv %d: got %q, want each response once, in order", i, got)
		}
	}
	_ = bs.CloseSend()
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("bidi end: %v (got %q)", err, got)
	}
	select {
	case <-f.hits:
	default:
		t.Fatal("no commit was refused: the test did not probe a rejoin")
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
}

// TestEosRejoinAdvJoinFails: the group reader the worker makes to rejoin
// its group cannot be made. The worker must stop (Done closed, Err saying
// why), not hang; its callers are answered by the group's next member.
func TestEosRejoinAdvJoinFails(t *testing.T) {
	e, f, client := rejoinEnv(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "before"}); err != nil || r.GetMessage() != "before" {
		t.Fatalf("first call: %v, %v", r, err)
	}
	f.failJoin.Store(true)
	f.armed.Store(true)
	res := goUnary(ctx, client, "during")
	select {
	case <-e.worker.Done():
	case <-ctx.Done():
		t.Fatal("the worker neither rejoined nor stopped within 60 s")
	}
	if err := e.worker.Err(); !errors.Is(err, errAdvJoin) {
		t.Fatalf("worker.Err() = %v, want the failure to join again", err)
	}
	startWorker(t, e, echoserver.Server{}, runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	if r := <-res; r.err != nil || r.r.GetMessage() != "during" {
		t.Fatalf("the call in flight at the failed rejoin: %v, %v; want its answer from the next member", r.r, r.err)
	}
}

// TestEosRejoinAdvCallsOfEveryKind: a commit races a rebalance, twice in a
// row, while a client stream is half sent, a server stream is mid-way, a
// keyed call (idempotency-key) and a slow unary call run. Each caller
// gets its whole answer once; the worker goes on.
func TestEosRejoinAdvCallsOfEveryKind(t *testing.T) {
	e, f, client := rejoinEnv(t, echoserver.Server{})
	ctx := ctxFor(t, 90*time.Second)
	if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "before"}); err != nil || r.GetMessage() != "before" {
		t.Fatalf("first call: %v, %v", r, err)
	}
	before := e.worker.Stats().Rejoins
	cs, err := client.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"x", "y"} {
		if err := cs.Send(&echov1.EchoRequest{Message: m}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	wg.Go(func() {
		s, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "s", Repeat: 4, DelayMs: 150})
		if err != nil {
			errs <- err
			return
		}
		var got []string
		for {
			r, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				errs <- fmt.Errorf("server stream after %q: %w", got, err)
				return
			}
			got = append(got, fmt.Sprintf("%d:%s", r.GetIndex(), r.GetMessage()))
		}
		if fmt.Sprint(got) != "[0:s 1:s 2:s 3:s]" {
			errs <- fmt.Errorf("server stream: got %q, want each response once", got)
		}
	})
	wg.Go(func() {
		kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", kafkatest.Unique("k-"))
		r, err := client.EchoUnary(kctx, &echov1.EchoRequest{Message: "keyed", DelayMs: 400})
		if err != nil || r.GetMessage() != "keyed" {
			errs <- fmt.Errorf("keyed call: %v, %v", r, err)
		}
	})
	wg.Go(func() {
		r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "slow", DelayMs: 600})
		if err != nil || r.GetMessage() != "slow" {
			errs <- fmt.Errorf("slow call: %v, %v", r, err)
		}
	})
	for i := range 2 {
		f.armed.Store(true)
		m := fmt.Sprintf("trigger%d", i)
		if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: m}); err != nil || r.GetMessage() != m {
			t.Fatalf("call %s: %v, %v", m, r, err)
		}
		select {
		case <-f.hits:
		case <-ctx.Done():
			t.Fatal("no commit refused")
		}
	}
	if err := cs.Send(&echov1.EchoRequest{Message: "z"}); err != nil {
		t.Fatal(err)
	}
	r, err := cs.CloseAndRecv()
	if err != nil || r.GetMessage() != "x,y,z" || r.GetIndex() != 3 {
		t.Errorf("client stream: %v, %v; want x,y,z", r, err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
	if n := e.worker.Stats().Rejoins - before; n != 2 {
		t.Errorf("Stats().Rejoins went up by %d, want 2", n)
	}
}

// TestEosRejoinAdvCloseRacesRejoin: Close right as a commit that raced a
// rebalance makes the worker rejoin its group, calls in flight. Close
// returns (no hang, no panic), the worker ends without an error of its
// own, its per-call tables are empty, and, round after round, no
// goroutine is left behind.
func TestEosRejoinAdvCloseRacesRejoin(t *testing.T) {
	round := func(t *testing.T) {
		e, f, client := rejoinEnv(t, echoserver.Server{})
		ctx := ctxFor(t, 60*time.Second)
		if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "before"}); err != nil || r.GetMessage() != "before" {
			t.Fatalf("first call: %v, %v", r, err)
		}
		f.armed.Store(true)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		res := goUnary(cctx, client, "during")
		select {
		case <-f.hits:
		case r := <-res:
			t.Fatalf("the call ended (%v, %v) before its transaction's commit", r.r, r.err)
		case <-ctx.Done():
			t.Fatal("no commit refused")
		}
		closed := make(chan error, 1)
		go func() { closed <- e.worker.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("Close: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("Close did not return within 60 s of a rejoin")
		}
		select {
		case <-e.worker.Done():
		default:
			t.Fatal("Close returned, Done not closed")
		}
		if err := e.worker.Err(); err != nil {
			t.Fatalf("worker.Err() = %v after Close", err)
		}
		leakAdvQuiet(t, "worker tables after Close", func() string { return leakAdvEmpty(e.worker) })
		cancel()
		<-res
	}
	for i := range 2 { // what a process starts once exists before the baseline
		t.Run(fmt.Sprint("warm", i), round)
	}
	base := leakAdvGoroutines()
	for i := range 6 {
		t.Run(fmt.Sprint("round", i), round)
	}
	leakAdvWait(t, base, "after 6 rounds of Close racing a rejoin")
}

// TestEosRejoinAdvBidiEndedInAbortedTxn: a bidi caller got its first
// response while its stream was open, then closed its stream; the call's
// end went into the transaction whose commit raced a rebalance, which was
// aborted, and the request was served again: the caller got its first
// response twice, and an OK end. It must get it once, and then either the
// OK end or a status it may retry (UNAVAILABLE).
func TestEosRejoinAdvBidiEndedInAbortedTxn(t *testing.T) {
	e, f, client := rejoinEnv(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	bs, err := client.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&echov1.EchoRequest{Message: "0"}); err != nil {
		t.Fatal(err)
	}
	r, err := bs.Recv()
	if err != nil || r.GetMessage() != "0" {
		t.Fatalf("first response: %v, %v", r, err)
	}
	got := []string{fmt.Sprintf("%d:%s", r.GetIndex(), r.GetMessage())}
	f.armed.Store(true) // the commit of the call's end races a rebalance
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var end error
	for {
		r, err := bs.Recv()
		if err != nil {
			end = err
			break
		}
		got = append(got, fmt.Sprintf("%d:%s", r.GetIndex(), r.GetMessage()))
	}
	if len(got) != 1 {
		t.Fatalf("got %q, then %v; want the first response once", got, end)
	}
	if end != io.EOF && status.Code(end) != codes.Unavailable {
		t.Fatalf("the call ended %v; want OK or UNAVAILABLE", end)
	}
	select {
	case <-f.hits:
	case <-ctx.Done():
		t.Fatal("no commit was refused: the test did not probe a rejoin")
	}
	if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}); err != nil || r.GetMessage() != "after" {
		t.Fatalf("the call after the rejoin: %v, %v", r, err)
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
}
