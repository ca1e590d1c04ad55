package runtime_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

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
