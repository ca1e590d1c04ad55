package runtime_test

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// stalledReader is a client stream handler that, while stall is set,
// reads one message and then waits for its call to end, reporting the
// error its Recv returns then (or when reading the first); otherwise it reads the whole stream and
// answers with the number of messages read.
type stalledReader struct {
	echoserver.Server
	stall   atomic.Bool
	stalled atomic.Int32
	recvErr chan error // capacity 1
}

func (s *stalledReader) EchoClientStream(stream grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if s.stall.Load() {
		s.stalled.Add(1)
		_, err := stream.Recv()
		if err == nil {
			<-stream.Context().Done()
			_, err = stream.Recv()
		}
		s.recvErr <- err
		return err
	}
	n := 0
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&echov1.EchoResponse{Index: int32(n)})
		}
		if err != nil {
			return err
		}
		n++
	}
}

// TestRequestBufferOverflowEndsCall: a client stream whose handler read
// more slowly than its caller sent kept every unread message in the
// worker's memory, without a bound: the caller's messages travel through
// Kafka, and nothing slows the caller down. Past WorkerRequestBufferBytes
// the call ends RESOURCE_EXHAUSTED, its handler's Recv says so, the rest of
// its request is skipped (not taken for a new call), and, not remembered
// for its idempotency key, a retry runs again. Through a gateway and
// through a ClientConn.
func TestRequestBufferOverflowEndsCall(t *testing.T) {
	for _, via := range []string{"gateway", "conn"} {
		t.Run(via, func(t *testing.T) { testRequestBufferOverflow(t, via) })
	}
}

func testRequestBufferOverflow(t *testing.T, via string) {
	const n, size, bound = 40, 8 << 10, 64 << 10
	impl := &stalledReader{recvErr: make(chan error, 1)}
	impl.stall.Store(true)
	e := setup(t, impl, runtime.WorkerRequestBufferBytes(bound))
	client := e.echo
	if via == "conn" {
		client = e.conn(t)
	}
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "upload")
	msg := strings.Repeat("u", size)
	upload := func(n int) (*echov1.EchoResponse, error) {
		cs, err := client.EchoClientStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if err := cs.Send(&echov1.EchoRequest{Message: msg}); err == io.EOF {
				break // the call ended: CloseAndRecv says how
			} else if err != nil {
				t.Fatalf("Send %d: %v", i, err)
			}
		}
		return cs.CloseAndRecv()
	}

	_, err := upload(n)
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "WorkerRequestBufferBytes") {
		t.Fatalf("a stream its handler does not read: %v; want RESOURCE_EXHAUSTED naming WorkerRequestBufferBytes", err)
	}
	if impl.stalled.Load() == 1 { // (the call may end before its handler starts)
		select {
		case err := <-impl.recvErr: // sent before the handler returned, so before the call's end
			if status.Code(err) != codes.ResourceExhausted {
				t.Errorf("the handler's Recv after the overflow: %v; want RESOURCE_EXHAUSTED", err)
			}
		default:
			t.Fatal("the call ended before its handler's Recv failed")
		}
	}
	id := wire.CorrelationID(wire.DefaultNames(), "upload", "example.echo.v1.EchoService", "EchoClientStream", e.topic("echo-responses"))
	awaitWorkerRead(t, e, id) // the rest of the stream, and its end
	if got := e.worker.Stats().Calls; got != 1 {
		t.Fatalf("the worker started %d calls, want 1: the rest of the overflowed stream was taken for a new call", got)
	}

	impl.stall.Store(false)
	const small = bound / size / 2 // within the bound however far behind the handler reads
	r, err := upload(small)
	if err != nil || r.GetIndex() != small {
		t.Fatalf("retry with the same key: %v, %v; want it run again, reading %d messages", r, err, small)
	}
}

// TestRequestBufferCountsUnreadOnly: WorkerRequestBufferBytes bounds the
// messages waiting to be read, not the stream: a bidi stream many times
// the bound, read as it comes, is served whole, also when WorkerRetries
// keeps the messages read for a second reading.
func TestRequestBufferCountsUnreadOnly(t *testing.T) {
	const n, size, bound = 40, 8 << 10, 64 << 10
	for name, opts := range map[string][]runtime.WorkerOption{
		"let go":  {runtime.WorkerRequestBufferBytes(bound)},
		"retries": {runtime.WorkerRequestBufferBytes(bound), runtime.WorkerRetries(2)},
	} {
		t.Run(name, func(t *testing.T) {
			e := setup(t, echoserver.Server{}, opts...)
			bs, err := e.echo.EchoBidiStream(ctxFor(t, 30*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			msg := strings.Repeat("b", size)
			for i := range n {
				if err := bs.Send(&echov1.EchoRequest{Message: msg}); err != nil {
					t.Fatalf("Send %d: %v", i, err)
				}
				r, err := bs.Recv()
				if err != nil || r.GetIndex() != int32(i) {
					t.Fatalf("Recv %d: %v, %v", i, r.GetIndex(), err)
				}
			}
			if err := bs.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := bs.Recv(); err != io.EOF {
				t.Fatalf("end: %v, want OK", err)
			}
		})
	}
}
