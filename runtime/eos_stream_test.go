package runtime_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// longStream is a server stream of n responses of size bytes each that,
// after its first `before` responses, waits until the test lets it go on
// (goOn closed) or its call ends.
type longStream struct {
	echoserver.Server
	n, size, before int
	goOn            chan struct{}
	waiting         chan struct{} // closed once it waits for goOn
}

func (s *longStream) EchoServerStream(req *echov1.EchoRequest, stream grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	msg := strings.Repeat("x", s.size)
	for i := range s.n {
		if i == s.before {
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

// TestEosStreamPastBoundGoesOut: with WorkerExactlyOnce, a server stream
// longer than WorkerExactlyOnceStreamBytes is not held in the worker's
// memory until its end: its caller gets its first responses while the
// handler is still sending (here, while it waits for the caller to have
// them), then the rest, each once, in order, and OK.
func TestEosStreamPastBoundGoesOut(t *testing.T) {
	const n, size, before = 40, 8 << 10, 20 // 160 KiB sent before the handler waits, bound 64 KiB
	impl := newLongStream(n, size, before)
	e := setupWith(t, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")), runtime.WorkerExactlyOnceStreamBytes(64<<10))
	client := advCommittedClient(t, e)
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
	e := setupWith(t, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")), runtime.WorkerExactlyOnceStreamBytes(64<<10))
	client := advCommittedClient(t, e)
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
		t.Fatalf("the caller got %d responses before the end, want the %d sent before the shutdown", got, before)
	}
}
