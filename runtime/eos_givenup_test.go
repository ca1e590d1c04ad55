package runtime_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// halfThenStuck answers a server stream's first run with index 0, then
// waits for its context to end and returns its error; later runs answer
// indexes 0 and 1.
type halfThenStuck struct {
	counting
	started chan struct{}
}

func (h *halfThenStuck) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	first := h.run(req.GetMessage()) == 1
	if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 0}); err != nil {
		return err
	}
	if first {
		h.started <- struct{}{}
		<-s.Context().Done()
		return s.Context().Err()
	}
	return s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 1})
}

// TestExactlyOnceGivenUpStreamServedWholeByNext: with WorkerExactlyOnce a
// call's replies wait for its end. A stream the worker gave up at close
// after it had sent a response had that response, with an UNAVAILABLE end,
// committed with its request's offset: its caller got half a stream and
// "retry it", where nothing had reached Kafka yet and the group's next
// member could serve the call whole.
func TestExactlyOnceGivenUpStreamServedWholeByNext(t *testing.T) {
	impl := &halfThenStuck{started: make(chan struct{}, 1)}
	e, client := eosEnv(t, impl, true)
	type result struct {
		got []int32
		err error
	}
	res := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		s, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "given-up"})
		if err != nil {
			res <- result{err: err}
			return
		}
		var got []int32
		for {
			r, err := s.Recv()
			if errors.Is(err, io.EOF) {
				res <- result{got: got}
				return
			}
			if err != nil {
				res <- result{got, err}
				return
			}
			got = append(got, r.GetIndex())
		}
	}()
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	startWorker(t, e, impl, runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	r := <-res // bounded by the call's deadline
	if r.err != nil || !slices.Equal(r.got, []int32{0, 1}) {
		t.Fatalf("the stream given up at close got %v, then %v; want [0 1] and OK from the next member "+
			"(nothing of the first run had reached Kafka: it could be dropped)", r.got, r.err)
	}
	if n := impl.count("given-up"); n != 2 {
		t.Fatalf("the handler ran %d times, want 2 (once per member)", n)
	}
}
