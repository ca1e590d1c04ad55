package runtime_test

import (
	"context"
	"fmt"
	"strings"
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
)

// startWorker starts one more member of e's worker group serving impl,
// with opts, and waits until it joined.
func startWorker(t *testing.T, e *env, impl echov1.EchoServiceServer, opts ...runtime.WorkerOption) *runtime.Worker {
	t.Helper()
	opts = append([]runtime.WorkerOption{runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(e.worker.GroupID())}, opts...)
	w := runtime.NewWorker(e.kc, opts...)
	if err := echov1.RegisterEchoServiceKafkaWorker(w, impl); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	select {
	case <-w.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("the new worker did not join within 60 s")
	}
	return w
}

func TestClientStreamSurvivesRebalances(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 120*time.Second)
	stream, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	send := func(from, to int) {
		for i := from; i < to; i++ {
			m := fmt.Sprint(i)
			want = append(want, m)
			if err := stream.Send(&echov1.EchoRequest{Message: m}); err != nil {
				t.Fatalf("Send %d: %v", i, err)
			}
		}
	}
	send(0, 300)
	second := startWorker(t, e, echoserver.Server{}) // rebalance: partitions spread over two members
	send(300, 600)
	// The first member leaves mid-stream: whatever it held moves to the
	// second, which serves the call again from its first record.
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	send(600, 1000)
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetIndex() != 1000 || resp.GetMessage() != strings.Join(want, ",") {
		t.Fatalf("response index %d, %d bytes: want all 1000 messages in order", resp.GetIndex(), len(resp.GetMessage()))
	}
	t.Logf("second member served %d calls", second.Stats().Calls)
}

// perWorker counts, for one worker, the handler runs per message.
type perWorker struct {
	echoserver.Server
	mu   sync.Mutex
	runs map[string]int
}

func (p *perWorker) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	p.mu.Lock()
	p.runs[req.GetMessage()]++
	p.mu.Unlock()
	t := time.NewTimer(5 * time.Millisecond) // keep calls in flight
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

func TestWorkerLostMidLoadEveryCallAnswered(t *testing.T) {
	impls := []*perWorker{{runs: map[string]int{}}, {runs: map[string]int{}}, {runs: map[string]int{}}}
	e := setup(t, impls[0])
	startWorker(t, e, impls[1])
	startWorker(t, e, impls[2])

	const callers, perCaller = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, callers*perCaller)
	var answered atomic.Int32
	half := make(chan struct{})
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perCaller {
				msg := fmt.Sprintf("c%d-%d", c, i)
				ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", msg)
				var err error
				for attempt := 0; attempt < 10; attempt++ { // the caller retries with the same key
					actx, cancel := context.WithTimeout(ctx, 5*time.Second)
					var resp *echov1.EchoResponse
					resp, err = e.echo.EchoUnary(actx, &echov1.EchoRequest{Message: msg})
					cancel()
					if err == nil && resp.GetMessage() != msg {
						err = fmt.Errorf("%s answered %q", msg, resp.GetMessage())
					}
					if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
						break
					}
				}
				errs <- err
				if answered.Add(1) == callers*perCaller/2 {
					close(half)
				}
			}
		}()
	}
	// The first worker goes away once half of the calls were answered, with
	// calls of its own in flight.
	<-half
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a call was not answered: %v", err)
		}
	}
	for _, p := range impls[1:] {
		p.mu.Lock()
		for msg, n := range p.runs {
			if n > 1 {
				t.Errorf("a surviving worker ran %s %d times", msg, n)
			}
		}
		p.mu.Unlock()
	}
}

func TestGracefulShutdownFinishesCallsInFlight(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "slow", Repeat: 5, DelayMs: 100})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the call is running on the worker
		t.Fatal(err)
	}
	shut := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shut <- e.worker.Shutdown(sctx)
	}()
	for i := 1; i < 5; i++ {
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("response %d after Shutdown began: %v", i, err)
		}
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
}
