package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
	keyedv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/keyed/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// heldUnaryTarget is a proxy target whose unary handler, for the request
// message "hold", says it started and waits for release, then fails
// ABORTED (an outcome the worker does not store for the key); any other
// request is echoed. runs counts the handler's runs by request message.
type heldUnaryTarget struct {
	started chan struct{}
	release chan struct{}
	mu      sync.Mutex
	runs    map[string]int
}

func newHeldUnaryTarget() *heldUnaryTarget {
	return &heldUnaryTarget{started: make(chan struct{}, 1), release: make(chan struct{}), runs: map[string]int{}}
}

func (h *heldUnaryTarget) unary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	h.mu.Lock()
	h.runs[req.GetMessage()]++
	h.mu.Unlock()
	if req.GetMessage() != "hold" {
		return &echov1.EchoResponse{Message: req.GetMessage()}, nil
	}
	h.started <- struct{}{}
	select {
	case <-h.release:
		return nil, status.Error(codes.Aborted, "held call given up")
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (h *heldUnaryTarget) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.runs[msg]
}

// TestProxyAdvKeyedRetryOfFailedCallRunsAgain: a keyed unary call through
// the proxy (attempt a1) runs at the target, and a retry with the same
// idempotency key (attempt a2, from a second gateway or a caller that gave
// up on a1) arrives while a1 runs, so it waits for a1's outcome. a1 ends
// ABORTED, an outcome the worker does not store: a2 must run again at the
// target and get its answer, as it does with a generated worker
// (TestRetriesWaitingForFailedAttemptShareOneRerun). The proxy's methods
// are all relayed as bidi streams, and the worker re-ran no waiter of a
// method with a client stream: a2 was answered ABORTED "retry it" without
// reaching the target.
func TestProxyAdvKeyedRetryOfFailedCallRunsAgain(t *testing.T) {
	h := newHeldUnaryTarget()
	addr := listenTarget(t, &scriptedTarget{unary: h.unary})
	e := setupProxy(t, addr)
	t.Cleanup(func() {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
	})
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "proxy-keyed-rerun"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoUnary", e.topic("echo-responses"))
	sendAttempt(t, e, "EchoUnary", id, key, "a1", "hold")
	sendAttempt(t, e, "EchoUnary", id, key, "a1", "")
	select {
	case <-h.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the target did not get the first attempt within 30 s")
	}
	sendAttempt(t, e, "EchoUnary", id, key, "a2", "again")
	sendAttempt(t, e, "EchoUnary", id, key, "a2", "")
	awaitWorkerRead(t, e, id) // a2 waits for a1's outcome
	close(h.release)
	got := awaitEndWithin(replies, id, "a1", 30*time.Second)
	if got == nil || header(got[len(got)-1], "zilla:status") != "10" {
		t.Fatalf("the first attempt did not end ABORTED within 30 s (%d records)", len(got))
	}
	awaitEchoAnswer(t, replies, id, "a2", "again")
	if n := h.count("again"); n != 1 {
		t.Fatalf("the target ran the retry %d times, want once", n)
	}
}

// TestProxyAdvRetryBackOffMustBePositive: ProxyRetry with retries on (d >
// 0) and a back-off that is not positive is refused by RegisterProxy. A
// negative first back-off made every retry panic in rand.Int64N (the
// caller got INTERNAL "handler panicked"); a zero first or max back-off
// retried in a busy loop, without any pause, for up to d.
func TestProxyAdvRetryBackOffMustBePositive(t *testing.T) {
	cc, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	for _, c := range []struct {
		name        string
		first, max  time.Duration
		d           time.Duration
		wantRefused bool
	}{
		{"negative first", -time.Millisecond, time.Second, 30 * time.Second, true},
		{"zero first", 0, time.Second, 30 * time.Second, true},
		{"zero max", 50 * time.Millisecond, 0, 30 * time.Second, true},
		{"max below first", 100 * time.Millisecond, 10 * time.Millisecond, 30 * time.Second, false},
		{"retries off", 0, 0, 0, false},
		{"defaults-like", 50 * time.Millisecond, 2 * time.Second, 30 * time.Second, false},
	} {
		w := runtime.NewWorker(nil)
		err := w.RegisterProxy(cc, []string{"echo-requests"}, runtime.ProxyRetry(c.d, c.first, c.max))
		if refused := err != nil; refused != c.wantRefused {
			t.Errorf("%s: RegisterProxy with ProxyRetry(%v, %v, %v) = %v, want refused: %v", c.name, c.d, c.first, c.max, err, c.wantRefused)
		}
	}
}

// TestProxyAdvKeyedRetryOfStreamIsNotTruncated: as
// TestProxyAdvKeyedRetryOfFailedCallRunsAgain, but the retry is a stream of
// two messages. The worker skips a waiting attempt's records after its
// first and cannot tell a proxied method's kind, so it must not run the
// retry again with its first message alone (the target would take a
// truncated stream for the whole request): it answers ABORTED, for the
// caller to retry once more, as it does for a generated worker's client
// stream.
func TestProxyAdvKeyedRetryOfStreamIsNotTruncated(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	var mu sync.Mutex
	var served [][]string // the requests of every call served to its end
	addr := listenTarget(t, &scriptedTarget{bidi: func(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
		var got []string
		for {
			req, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			if req.GetMessage() == "hold" {
				started <- struct{}{}
				select {
				case <-release:
					return status.Error(codes.Aborted, "held call given up")
				case <-s.Context().Done():
					return s.Context().Err()
				}
			}
			got = append(got, req.GetMessage())
		}
		mu.Lock()
		served = append(served, got)
		mu.Unlock()
		return s.Send(&echov1.EchoResponse{Message: strings.Join(got, ",")})
	}})
	e := setupProxy(t, addr)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "proxy-keyed-stream"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoBidiStream", e.topic("echo-responses"))
	sendAttempt(t, e, "EchoBidiStream", id, key, "a1", "hold")
	sendAttempt(t, e, "EchoBidiStream", id, key, "a1", "")
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the target did not get the first attempt within 30 s")
	}
	sendAttempt(t, e, "EchoBidiStream", id, key, "a2", "m0")
	sendAttempt(t, e, "EchoBidiStream", id, key, "a2", "m1")
	sendAttempt(t, e, "EchoBidiStream", id, key, "a2", "")
	awaitWorkerRead(t, e, id)
	close(release)
	got := awaitEndWithin(replies, id, "a2", 30*time.Second)
	if got == nil {
		t.Fatal("no answer to the retry within 30 s")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range served {
		if len(s) == 1 && s[0] == "m0" {
			t.Fatalf("the target served the retry with its first message alone (%q): a truncated stream", s)
		}
	}
	if st := header(got[len(got)-1], "zilla:status"); st != "10" && (st != "0" || len(served) != 1 || strings.Join(served[0], ",") != "m0,m1") {
		t.Fatalf("the retry ended with status %s (%s), served %q; want ABORTED, or the whole stream served",
			st, header(got[len(got)-1], "zilla:message"), served)
	}
}

// recordTarget is a LedgerService target whose Record says it ran.
type recordTarget struct {
	keyedv1.UnimplementedLedgerServiceServer
	got chan string
}

func (r *recordTarget) Record(_ context.Context, e *keyedv1.Entry) (*emptypb.Empty, error) {
	r.got <- e.GetAccount().GetId()
	return &emptypb.Empty{}, nil
}

// TestProxyAdvOnewayReachesTarget: a oneway call (a route without a reply
// topic: the gateway answers the caller once Kafka has the request) to a
// proxying worker reaches the target, as it reaches a generated worker's
// implementation. The proxy skipped it as a record "without correlation
// id": the caller was told OK and the target never got the call.
func TestProxyAdvOnewayReachesTarget(t *testing.T) {
	rt := &recordTarget{got: make(chan string, 4)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	keyedv1.RegisterLedgerServiceServer(s, rt)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	env := startLedgerWith(t, func(w *runtime.Worker) error {
		return w.RegisterProxy(cc, []string{"ledger-records", "ledger-requests"})
	})
	ctx := ctxFor(t, 60*time.Second)
	if _, err := keyedv1.NewLedgerServiceClient(env.Conn).Record(ctx, &keyedv1.Entry{Account: &keyedv1.Account{Id: "acct-1"}}); err != nil {
		t.Fatalf("oneway call through the gateway: %v", err)
	}
	select {
	case id := <-rt.got:
		if id != "acct-1" {
			t.Fatalf("target got %q", id)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the oneway call did not reach the proxy's target within 30 s (worker stats %+v)", env.Worker.Stats())
	}
}

// startLedgerWith is startLedger with the worker registered by register.
func startLedgerWith(t *testing.T, register func(*runtime.Worker) error) *kafkarpctest.Env {
	t.Helper()
	return kafkarpctest.Start(t, kafkarpctest.Service{
		Spec:            keyedv1.LedgerServiceKafkaSpec,
		RegisterGateway: keyedv1.RegisterLedgerServiceKafkaGateway,
		RegisterWorker:  register,
	}, kafkarpctest.WithClient(func(brokers string) (kafkaclient.Client, error) {
		return kafkatest.Factory(kafkatest.ClientName()).New(brokers, kafkaclienttest.Config{Logger: kafkatest.Logger(t)})
	}))
}

// TestProxyAdvManyConcurrentCalls runs 64 unary calls and 16 bidi streams
// at once through the proxy: every caller gets its own answers, in order,
// and nothing else.
func TestProxyAdvManyConcurrentCalls(t *testing.T) {
	e := setupProxy(t, listenTarget(t, &scriptedTarget{}))
	ctx := ctxFor(t, 60*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 80)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := fmt.Sprintf("unary-%d", i)
			resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: msg})
			if err != nil || resp.GetMessage() != msg {
				errs <- fmt.Errorf("unary call %d = %v, %v; want its own message back", i, resp, err)
			}
		}()
	}
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bs, err := e.echo.EchoBidiStream(ctx)
			if err != nil {
				errs <- fmt.Errorf("bidi %d: %v", i, err)
				return
			}
			for j := range int32(5) {
				msg := fmt.Sprintf("bidi-%d-%d", i, j)
				if err := bs.Send(&echov1.EchoRequest{Message: msg}); err != nil {
					errs <- fmt.Errorf("bidi %d send %d: %v", i, j, err)
					return
				}
				r, err := bs.Recv()
				if err != nil || r.GetMessage() != msg || r.GetIndex() != j {
					errs <- fmt.Errorf("bidi %d reply %d = %v, %v; want %q index %d", i, j, r, err, msg, j)
					return
				}
			}
			_ = bs.CloseSend()
			if _, err := bs.Recv(); err != io.EOF {
				errs <- fmt.Errorf("bidi %d end = %v, want EOF", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestProxyAdvTargetGoesAwayMidStream: the target stops (its process
// dies) once the caller received the first two messages of a server
// stream. The caller then gets UNAVAILABLE, as it does calling the target
// directly; the proxy does not run the call again, the target having taken
// it.
func TestProxyAdvTargetGoesAwayMidStream(t *testing.T) {
	for _, via := range []string{"direct", "proxy"} {
		t.Run(via, func(t *testing.T) {
			var runs atomic.Int32
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			s := grpc.NewServer()
			echov1.RegisterEchoServiceServer(s, &serverStreamTarget{fn: func(req *echov1.EchoRequest, ss grpc.ServerStreamingServer[echov1.EchoResponse]) error {
				runs.Add(1)
				for i := range int32(2) {
					if err := ss.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
						return err
					}
				}
				<-ss.Context().Done()
				return ss.Context().Err()
			}})
			go func() { _ = s.Serve(lis) }()
			t.Cleanup(s.Stop)
			var client echov1.EchoServiceClient
			if via == "direct" {
				cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = cc.Close() })
				client = echov1.NewEchoServiceClient(cc)
			} else {
				client = setupProxy(t, lis.Addr().String()).echo
			}
			stream, err := client.EchoServerStream(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "m"})
			if err != nil {
				t.Fatal(err)
			}
			for i := range int32(2) {
				if r, err := stream.Recv(); err != nil || r.GetIndex() != i {
					t.Fatalf("%s: message %d = %v, %v", via, i, r, err)
				}
			}
			s.Stop() // closes the connections: the target is gone
			if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
				t.Fatalf("%s: after the target went away the caller got %v, want UNAVAILABLE", via, err)
			}
			if n := runs.Load(); n != 1 {
				t.Fatalf("%s: the target ran the call %d times, want once", via, n)
			}
		})
	}
}

// serverStreamTarget serves EchoServerStream with fn.
type serverStreamTarget struct {
	echoserver.Server
	fn func(*echov1.EchoRequest, grpc.ServerStreamingServer[echov1.EchoResponse]) error
}

func (s *serverStreamTarget) EchoServerStream(req *echov1.EchoRequest, ss grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	return s.fn(req, ss)
}

// TestProxyAdvKeyedRepeatRunsTargetOnce: a keyed call through the proxy
// repeated with the same idempotency key after it ended is answered from
// the worker's stored outcome, response headers and trailers included:
// the target runs it once. A failure the worker does not store
// (UNAVAILABLE after the target sent its headers, which the proxy does not
// retry) is not replayed: the repeat runs at the target again.
func TestProxyAdvKeyedRepeatRunsTargetOnce(t *testing.T) {
	var mu sync.Mutex
	runs := map[string]int{}
	addr := listenTarget(t, &scriptedTarget{unary: func(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
		mu.Lock()
		runs[req.GetMessage()]++
		n := runs[req.GetMessage()]
		mu.Unlock()
		if err := grpc.SendHeader(ctx, metadata.Pairs("x-run", fmt.Sprint(n))); err != nil {
			return nil, err
		}
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer-run", fmt.Sprint(n)))
		if req.GetMessage() == "flaky" && n == 1 {
			return nil, status.Error(codes.Unavailable, "try again")
		}
		return &echov1.EchoResponse{Message: req.GetMessage()}, nil
	}})
	e := setupProxy(t, addr)
	ctx := ctxFor(t, 60*time.Second)
	call := func(key, msg string) (string, string, error) {
		var hdr, trl metadata.MD
		resp, err := e.echo.EchoUnary(metadata.AppendToOutgoingContext(ctx, "idempotency-key", key), &echov1.EchoRequest{Message: msg},
			grpc.Header(&hdr), grpc.Trailer(&trl))
		if err == nil && resp.GetMessage() != msg {
			err = fmt.Errorf("response %q, want %q", resp.GetMessage(), msg)
		}
		return strings.Join(hdr.Get("x-run"), ","), strings.Join(trl.Get("x-trailer-run"), ","), err
	}
	for i := range 2 {
		h, tr, err := call("stored-key", "stored")
		if err != nil || h != "1" || tr != "1" {
			t.Fatalf("keyed call %d: header x-run %q, trailer x-trailer-run %q, %v; want the first run's 1 and 1, OK", i, h, tr, err)
		}
	}
	if _, _, err := call("flaky-key", "flaky"); status.Code(err) != codes.Unavailable {
		t.Fatalf("first flaky call = %v, want UNAVAILABLE", err)
	}
	if h, _, err := call("flaky-key", "flaky"); err != nil || h != "2" {
		t.Fatalf("repeated flaky call: header x-run %q, %v; want a second run, OK", h, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if runs["stored"] != 1 || runs["flaky"] != 2 {
		t.Fatalf("target runs %v, want stored once and flaky twice", runs)
	}
}

// TestProxyAdvShutdownCancelsHungTargetCall: a proxied call whose target
// handler never returns on its own does not hold Worker.Shutdown past its
// context: Shutdown returns, and the target's handler sees its call
// cancelled.
func TestProxyAdvShutdownCancelsHungTargetCall(t *testing.T) {
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	addr := listenTarget(t, &scriptedTarget{unary: func(ctx context.Context, _ *echov1.EchoRequest) (*echov1.EchoResponse, error) {
		started <- struct{}{}
		<-ctx.Done()
		ended <- ctx.Err()
		return nil, status.FromContextError(ctx.Err()).Err()
	}})
	e := setupProxy(t, addr)
	callCtx, cancelCall := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancelCall()
	go func() { _, _ = e.echo.EchoUnary(callCtx, &echov1.EchoRequest{Message: "hang"}) }()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the target did not get the call within 30 s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	shutdown := make(chan error, 1)
	go func() { shutdown <- e.worker.Shutdown(ctx) }()
	select {
	case err := <-shutdown:
		if err != nil {
			t.Fatalf("Shutdown = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown did not return within 30 s with a proxied call hung at the target")
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the target's handler ended with %v, want its call cancelled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the target's handler was not cancelled within 30 s of Shutdown")
	}
}

// TestProxyAdvRetriedStreamReplaysEveryRequest: a bidi target that reads a
// caller's whole request stream and then refuses it with UNAVAILABLE
// before sending anything (trailers only) is retried by the proxy, which
// sends the retry every request again, in order, none lost or doubled,
// though the caller sent them while the first attempt ran.
func TestProxyAdvRetriedStreamReplaysEveryRequest(t *testing.T) {
	const n = 50
	var mu sync.Mutex
	var attempts [][]string
	addr := listenTarget(t, &scriptedTarget{bidi: func(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
		var got []string
		for {
			req, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			got = append(got, req.GetMessage())
		}
		mu.Lock()
		attempts = append(attempts, got)
		first := len(attempts) == 1
		mu.Unlock()
		if first {
			return status.Error(codes.Unavailable, "refused after reading")
		}
		return s.Send(&echov1.EchoResponse{Message: strings.Join(got, ",")})
	}})
	e := setupProxy(t, addr)
	want, r, err := sendNumbered(t, e, n)
	if err != nil || r.GetMessage() != want {
		t.Fatalf("the retried stream answered %v, %v; want every request once, in order", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 2 {
		t.Fatalf("the target saw %d attempts, want 2", len(attempts))
	}
}

// TestProxyAdvRetryMidStreamKeepsOrder: as
// TestProxyAdvRetriedStreamReplaysEveryRequest, but the first attempt is
// refused after its first request, while the caller goes on sending: the
// retry gets the requests the first attempt took, then the rest, each
// once, in order.
func TestProxyAdvRetryMidStreamKeepsOrder(t *testing.T) {
	const n = 200
	var mu sync.Mutex
	var attempts [][]string
	addr := listenTarget(t, &scriptedTarget{bidi: func(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
		mu.Lock()
		attempts = append(attempts, nil)
		i := len(attempts) - 1
		mu.Unlock()
		for {
			req, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			mu.Lock()
			attempts[i] = append(attempts[i], req.GetMessage())
			mu.Unlock()
			if i == 0 {
				return status.Error(codes.Unavailable, "refused after one request")
			}
		}
		mu.Lock()
		got := strings.Join(attempts[i], ",")
		mu.Unlock()
		return s.Send(&echov1.EchoResponse{Message: got})
	}})
	e := setupProxy(t, addr)
	want, r, err := sendNumbered(t, e, n)
	if err != nil || r.GetMessage() != want {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("the retried stream answered %v, %v; want every request once, in order (attempts: %d)", r, err, len(attempts))
	}
}

// TestProxyAdvLargeBinaryResponseMetadata: a target's response header and
// trailer of 100 KiB of binary bytes each (-bin), on a unary call and on a
// server stream of three messages, reach the caller byte for byte.
func TestProxyAdvLargeBinaryResponseMetadata(t *testing.T) {
	big := make([]byte, 100<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	setMD := func(ctx context.Context) {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-big-bin", string(big)))
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-big-trailer-bin", string(big)))
	}
	unaryAddr := listenTarget(t, &scriptedTarget{unary: func(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
		setMD(ctx)
		return &echov1.EchoResponse{Message: req.GetMessage()}, nil
	}})
	streamAddr := listenTarget(t, &serverStreamTarget{fn: func(req *echov1.EchoRequest, ss grpc.ServerStreamingServer[echov1.EchoResponse]) error {
		setMD(ss.Context())
		for i := range int32(3) {
			if err := ss.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
				return err
			}
		}
		return nil
	}})
	check := func(kind string, hdr, trl metadata.MD) {
		t.Helper()
		if h, tr := hdr.Get("x-big-bin"), trl.Get("x-big-trailer-bin"); len(h) != 1 || h[0] != string(big) || len(tr) != 1 || tr[0] != string(big) {
			t.Fatalf("%s: header x-big-bin has %d values, trailer x-big-trailer-bin %d, or their bytes differ from the target's", kind, len(h), len(tr))
		}
	}
	ctx := ctxFor(t, 60*time.Second)

	var hdr, trl metadata.MD
	if _, err := setupProxy(t, unaryAddr).echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}, grpc.Header(&hdr), grpc.Trailer(&trl)); err != nil {
		t.Fatal(err)
	}
	check("unary", hdr, trl)

	stream, err := setupProxy(t, streamAddr).echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := indexes(stream); err != nil || len(got) != 3 {
		t.Fatalf("server stream: indexes %v, %v; want 3 messages, OK", got, err)
	}
	hdr, err = stream.Header()
	if err != nil {
		t.Fatal(err)
	}
	check("server stream", hdr, stream.Trailer())
}

// sendNumbered sends requests "0" to n-1 on a bidi call through e's
// gateway, half-closes, and returns what an answer listing every request
// once, in order, is, and the first answer.
func sendNumbered(t *testing.T, e *env, n int) (string, *echov1.EchoResponse, error) {
	t.Helper()
	bs, err := e.echo.EchoBidiStream(ctxFor(t, 60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprint(i)
		if err := bs.Send(&echov1.EchoRequest{Message: want[i]}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	r, err := bs.Recv()
	return strings.Join(want, ","), r, err
}
