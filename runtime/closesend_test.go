package runtime_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// uploadEnds is a client-streaming handler that reads its request stream to
// the end and reports how the reading ended (nil for io.EOF: the caller
// sent its whole stream) before answering.
type uploadEnds struct {
	echov1.UnimplementedEchoServiceServer
	started chan struct{} // after the first message
	ended   chan error
}

func (u uploadEnds) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	n := int32(0)
	for {
		_, err := s.Recv()
		if errors.Is(err, io.EOF) {
			u.ended <- nil
			return s.SendAndClose(&echov1.EchoResponse{Message: "committed", Index: n})
		}
		if err != nil {
			u.ended <- err
			return err
		}
		if n++; n == 1 {
			u.started <- struct{}{}
		}
	}
}

// TestConnCancelThenCloseSendIsNoEOF: a caller of a ClientConn that
// cancels its client stream and then half-closes it (a deferred CloseSend
// after an error, say) gave up: the handler must not read its stream's
// end as io.EOF, on which it would commit a partial upload. CloseSend
// wrote a normal end-of-stream record, which usually reached the worker
// before the cancel record the connection writes when the context ends.
func TestConnCancelThenCloseSendIsNoEOF(t *testing.T) {
	u := uploadEnds{started: make(chan struct{}, 16), ended: make(chan error, 16)}
	e := setup(t, u)
	echo := e.conn(t)
	for i := range 5 {
		ctx, cancel := context.WithCancel(ctxFor(t, 30*time.Second))
		s, err := echo.EchoClientStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		send := func(m string) {
			t.Helper()
			if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
				t.Fatalf("call %d: Send: %v", i, err)
			}
		}
		send("part 1")
		select { // a call cancelled before its handler started runs none
		case <-u.started:
		case <-time.After(30 * time.Second):
			t.Fatalf("call %d: the handler did not read the first message within 30 s", i)
		}
		send("part 2")
		cancel()
		_ = s.CloseSend()
		if _, err := s.CloseAndRecv(); status.Code(err) != codes.Canceled {
			t.Fatalf("call %d: the caller cancelled, and got %v; want CANCELLED", i, err)
		}
		select {
		case err := <-u.ended:
			if status.Code(err) != codes.Canceled {
				t.Fatalf("call %d: the caller cancelled before it half-closed, and the handler's reading ended with %v; want CANCELLED (nil: io.EOF, the whole stream)", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("call %d: the handler's reading did not end within 30 s", i)
		}
	}
}
