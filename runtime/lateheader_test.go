package runtime_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// keepsContext answers EchoUnary and hands its context to the test.
type keepsContext struct {
	echoserver.Server
	ctxs chan context.Context
}

func (k keepsContext) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	k.ctxs <- ctx
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

// TestHeaderAndTrailerAfterTheCallEnded: a goroutine the handler left
// behind that sets headers or trailers once the call ended gets an error,
// as grpc-go gives on a stream that is done, instead of writing what the
// worker's end record was read from (a data race with that record).
func TestHeaderAndTrailerAfterTheCallEnded(t *testing.T) {
	impl := keepsContext{ctxs: make(chan context.Context, 1)}
	e := setup(t, impl)
	if _, err := e.echo.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "x"}); err != nil {
		t.Fatal(err)
	}
	ctx := <-impl.ctxs
	md := metadata.Pairs("x-late", "1")
	if err := grpc.SetTrailer(ctx, md); err == nil {
		t.Error("grpc.SetTrailer after the call ended = nil, want an error")
	}
	if err := grpc.SetHeader(ctx, md); err == nil {
		t.Error("grpc.SetHeader after the call ended = nil, want an error")
	}
}

// leavesMetadata answers EchoServerStream on its second attempt; its first
// attempt leaves a goroutine behind holding its stream, which sets a
// header and a trailer on that stream while the second attempt runs.
type leavesMetadata struct {
	echoserver.Server
	attempts atomic.Int32
	late     chan grpc.ServerStream // the first attempt's stream
	lateCtx  chan context.Context   // the first unary attempt's context
	errs     chan [2]error          // what the left goroutine's SetHeader and SendHeader returned
}

// EchoUnary does as EchoServerStream through the context, as a unary
// handler sets metadata (grpc.SetHeader and the like).
func (l *leavesMetadata) EchoUnary(ctx context.Context, in *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if l.attempts.Add(1) == 1 {
		l.lateCtx <- ctx
		return nil, status.Error(codes.Unavailable, "first attempt fails")
	}
	stale := <-l.lateCtx
	_ = grpc.SetTrailer(stale, metadata.Pairs("x-stale", "trailer"))
	l.errs <- [2]error{grpc.SetHeader(stale, metadata.Pairs("x-stale", "header")), grpc.SendHeader(stale, nil)}
	if err := grpc.SetHeader(ctx, metadata.Pairs("x-own", "header")); err != nil {
		return nil, err
	}
	if err := grpc.SetTrailer(ctx, metadata.Pairs("x-own", "trailer")); err != nil {
		return nil, err
	}
	return &echov1.EchoResponse{Message: in.GetMessage()}, nil
}

func (l *leavesMetadata) EchoServerStream(in *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if l.attempts.Add(1) == 1 {
		l.late <- s
		return status.Error(codes.Unavailable, "first attempt fails")
	}
	stale := <-l.late // the first attempt's goroutine, run to its end here
	stale.SetTrailer(metadata.Pairs("x-stale", "trailer"))
	l.errs <- [2]error{stale.SetHeader(metadata.Pairs("x-stale", "header")), stale.SendHeader(nil)}
	if err := s.SetHeader(metadata.Pairs("x-own", "header")); err != nil {
		return err
	}
	if err := grpc.SetTrailer(s.Context(), metadata.Pairs("x-own", "trailer")); err != nil {
		return err // the retry's own context sets its metadata
	}
	return s.Send(&echov1.EchoResponse{Message: in.GetMessage()})
}

// TestRetryEndsTheMetadataOfTheAttemptThatReturned: with WorkerRetries, a
// goroutine a failed attempt left behind that sets a header or a trailer
// on its stream while the retry runs is refused, as its SendMsg and
// RecvMsg are (the attempt's stream ended with its handler): its trailer
// went out in the retry's answer, and its SendHeader froze the headers, so
// that the retry's own SetHeader failed.
func TestRetryEndsTheMetadataOfTheAttemptThatReturned(t *testing.T) {
	for _, unary := range []bool{false, true} {
		h := &leavesMetadata{late: make(chan grpc.ServerStream, 1), lateCtx: make(chan context.Context, 1), errs: make(chan [2]error, 1)}
		e := setup(t, h, runtime.WorkerRetries(2, codes.Unavailable))
		var hd, tr metadata.MD
		if unary {
			if _, err := e.echo.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "m"}, grpc.Header(&hd), grpc.Trailer(&tr)); err != nil {
				t.Fatalf("unary call ended with %v", err)
			}
		} else {
			s, err := e.echo.EchoServerStream(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "m"})
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := s.Recv(); err == io.EOF {
					break
				} else if err != nil {
					t.Fatalf("call ended with %v", err)
				}
			}
			hd, _ = s.Header()
			tr = s.Trailer()
		}
		if got := hd.Get("x-own"); len(got) != 1 {
			t.Errorf("unary %v: the retry's own header is missing: %v", unary, hd)
		}
		if got := tr.Get("x-own"); len(got) != 1 {
			t.Errorf("unary %v: the retry's own trailer is missing: %v", unary, tr)
		}
		if got := hd.Get("x-stale"); len(got) != 0 {
			t.Errorf("unary %v: the answer carries the failed attempt's header %v", unary, got)
		}
		if got := tr.Get("x-stale"); len(got) != 0 {
			t.Errorf("unary %v: the answer carries the failed attempt's trailer %v", unary, got)
		}
		if errs := <-h.errs; errs[0] == nil || errs[1] == nil {
			t.Errorf("unary %v: the failed attempt's SetHeader, SendHeader = %v, want errors: its stream ended", unary, errs)
		}
	}
}
