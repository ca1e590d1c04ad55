package runtime_test

import (
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// bidiCounter counts the runs of EchoBidiStream.
type bidiCounter struct {
	echoserver.Server
	runs atomic.Int32
}

func (b *bidiCounter) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	b.runs.Add(1)
	return b.Server.EchoBidiStream(s)
}

// TestOutcomeBidiAfterWorkerDies: a keyed bidi call of several request
// messages, answered by worker A, is answered from its stored outcome by
// worker B after A dies, without running again: both the replay of A's
// uncommitted request and a repeat of the call.
func TestOutcomeBidiAfterWorkerDies(t *testing.T) {
	e := newOutcomeEnv(t, false)
	opt := runtime.WorkerOutcomeTopic(outcomeTopic)
	implA, implB := &bidiCounter{}, &bidiCounter{}
	kcA := &killable{Client: e.kc}
	a := e.start(t, kcA, implA, opt)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "bidi-7")
	call := func() []string {
		t.Helper()
		s, err := e.echo.EchoBidiStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"a", "b", "c"} {
			if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
		_ = s.CloseSend()
		var got []string
		for {
			r, err := s.Recv()
			if err == io.EOF {
				return got
			}
			if err != nil {
				t.Fatalf("after %v: %v", got, err)
			}
			got = append(got, r.GetMessage())
		}
	}
	first := call()
	if n := implA.runs.Load(); n != 1 || !slices.Equal(first, []string{"a", "b", "c"}) {
		t.Fatalf("worker A: %d runs, answer %v", n, first)
	}
	kcA.dead.Store(true)
	_ = a.Close()
	b := e.start(t, e.kc, implB, opt)
	again := call()
	if n := implB.runs.Load(); n != 0 {
		t.Fatalf("worker B ran the call %d times, want 0: it had the stored outcome", n)
	}
	if !slices.Equal(again, first) {
		t.Fatalf("the repeat got %v, want the stored %v", again, first)
	}
	_ = b
}
