// Package echoserver is the example's implementation of
// example.echo.v1.EchoService: the code a team writes itself. The same
// implementation serves plain gRPC (echo-server) and calls from Kafka
// (echo-worker and echo), which is the point of the example.
package echoserver

import (
	"context"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// Server implements echov1.EchoServiceServer. The zero value is ready to use
// and safe for concurrent use.
//
//   - EchoUnary echoes message with index 0.
//   - EchoServerStream sends max(repeat, 1) responses with the message and
//     index 0, 1, 2, ...
//   - EchoClientStream answers once with the request messages joined by ","
//     and index = the number of requests.
//   - EchoBidiStream answers each request with its message and its position.
//
// A request's delay_ms waits that long before each response it causes,
// honouring cancellation; a non-zero fail_code fails the call with that code
// and message as the status message.
type Server struct {
	echov1.UnimplementedEchoServiceServer
}

// check applies a request's delay and failure.
func check(ctx context.Context, req *echov1.EchoRequest) error {
	if req.GetFailCode() != 0 {
		return status.Error(codes.Code(req.GetFailCode()), req.GetMessage())
	}
	return pause(ctx, req)
}

func pause(ctx context.Context, req *echov1.EchoRequest) error {
	if req.GetDelayMs() <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(req.GetDelayMs()) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// EchoUnary echoes the request's message with index 0.
func (Server) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if err := check(ctx, req); err != nil {
		return nil, err
	}
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

// EchoServerStream sends max(repeat, 1) copies of the message.
func (Server) EchoServerStream(req *echov1.EchoRequest, stream grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if req.GetFailCode() != 0 {
		return status.Error(codes.Code(req.GetFailCode()), req.GetMessage())
	}
	for i := range max(req.GetRepeat(), 1) {
		if err := pause(stream.Context(), req); err != nil {
			return err
		}
		if err := stream.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
	return nil
}

// EchoClientStream joins the messages of every request.
func (Server) EchoClientStream(stream grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	var msgs []string
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&echov1.EchoResponse{Message: strings.Join(msgs, ","), Index: int32(len(msgs))})
		}
		if err != nil {
			return err
		}
		if err := check(stream.Context(), req); err != nil {
			return err
		}
		msgs = append(msgs, req.GetMessage())
	}
}

// EchoBidiStream answers each request with its message and position.
func (Server) EchoBidiStream(stream grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	for i := int32(0); ; i++ {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := check(stream.Context(), req); err != nil {
			return err
		}
		if err := stream.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
}
