package runtime_test

import (
	"context"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// stuckHandler is a unary handler that ignores its context: it returns
// only once release is closed.
type stuckHandler struct {
	echov1.UnimplementedEchoServiceServer
	started chan struct{}
	release chan struct{}
}

func (h stuckHandler) EchoUnary(_ context.Context, r *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	h.started <- struct{}{}
	<-h.release
	return &echov1.EchoResponse{Message: "late: " + r.GetMessage()}, nil // never seen: the call was given up
}

// TestWorkerCloseWithHandlerIgnoringContext: a handler that ignores its
// context kept Worker.Close (and a Shutdown whose context ended) waiting
// for as long as it ran: a SIGTERM handler calling Shutdown hung until the
// process was killed. Close now returns once the calls it cancelled had a
// short grace to end; the call left running is not committed, so another
// member serves it again, and its handler's late return writes nothing.
func TestWorkerCloseWithHandlerIgnoringContext(t *testing.T) {
	for _, eos := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "exactly-once"}[eos], func(t *testing.T) {
			var opts []runtime.WorkerOption
			if eos {
				opts = append(opts, runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
			}
			closeWithStuckHandler(t, opts...)
		})
	}
}

func closeWithStuckHandler(t *testing.T, opts ...runtime.WorkerOption) {
	h := stuckHandler{started: make(chan struct{}, 1), release: make(chan struct{})}
	e := setup(t, h, opts...)
	released := false
	release := func() {
		if !released {
			released = true
			close(h.release)
		}
	}
	t.Cleanup(release)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	type result struct {
		r   *echov1.EchoResponse
		err error
	}
	answer := make(chan result, 1)
	go func() {
		r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "stuck"})
		answer <- result{r, err}
	}()
	select {
	case <-h.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	closed := make(chan error, 1)
	go func() { closed <- e.worker.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close had not returned 30 s after it was called, with a handler that ignores its context still running")
	}
	release() // the handler returns after the worker stopped: nothing may break
	sh, cancelSh := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelSh()
	if err := e.worker.Shutdown(sh); err != nil {
		t.Fatalf("Shutdown after Close: %v", err)
	}
	// Not committed: the group's next member serves the call, and its
	// caller, still waiting, gets that answer (not the late handler's).
	next := runtime.NewWorker(e.kc, append([]runtime.WorkerOption{runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(e.worker.GroupID())}, opts...)...)
	if err := echov1.RegisterEchoServiceKafkaWorker(next, echoserver.Server{}); err != nil {
		t.Fatal(err)
	}
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = next.Close() })
	if r := <-answer; r.err != nil || r.r.GetMessage() != "stuck" {
		t.Errorf("the call whose handler was left running at Close: %v, %v; want the next member's answer", r.r, r.err)
	}
}
