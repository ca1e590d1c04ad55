package runtime_test

import (
	"io"
	"net"
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
	first   chan struct{} // closed once it read the first message; capacity 0
	recvErr chan error    // capacity 1
}

func (s *stalledReader) EchoClientStream(stream grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if s.stall.Load() {
		_, err := stream.Recv()
		if err == nil {
			close(s.first)
			<-stream.Context().Done()
			_, err = stream.Recv()
		}
		s.recvErr <- err
		return err
	}
	return s.Server.EchoClientStream(stream)
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
	impl := &stalledReader{first: make(chan struct{}), recvErr: make(chan error, 1)}
	impl.stall.Store(true)
	e := setup(t, impl, runtime.WorkerRequestBufferBytes(bound))
	client := e.echo
	if via == "conn" {
		client = e.conn(t)
	}
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "upload")
	msg := strings.Repeat("u", size)
	upload := func(n int, first <-chan struct{}) (*echov1.EchoResponse, error) {
		cs, err := client.EchoClientStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if first != nil {
			sendUntilEnd(t, cs.Send, 1, msg)
			select { // the handler runs, and waits with the rest unread
			case <-first:
			case <-ctx.Done():
				t.Fatal("the handler did not read the first message")
			}
			n--
		}
		sendUntilEnd(t, cs.Send, n, msg)
		return cs.CloseAndRecv()
	}

	_, err := upload(n, impl.first)
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "WorkerRequestBufferBytes") {
		t.Fatalf("a stream its handler does not read: %v; want RESOURCE_EXHAUSTED naming WorkerRequestBufferBytes", err)
	}
	select {
	case err := <-impl.recvErr: // sent before the handler returned, so before the call's end
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("the handler's Recv after the overflow: %v; want RESOURCE_EXHAUSTED", err)
		}
	default:
		t.Fatal("the call ended before its handler's Recv failed")
	}
	id := wire.CorrelationID(wire.DefaultNames(), "upload", "example.echo.v1.EchoService", "EchoClientStream", e.topic("echo-responses"))
	awaitWorkerRead(t, e, id) // the rest of the stream, and its end
	if got := e.worker.Stats().Calls; got != 1 {
		t.Fatalf("the worker started %d calls, want 1: the rest of the overflowed stream was taken for a new call", got)
	}

	impl.stall.Store(false)
	const small = bound / size / 2 // within the bound however far behind the handler reads
	r, err := upload(small, nil)
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

// quietBidi reads one message, then waits for its call to end and returns
// ret: nil, as a handler that takes its context's end for a normal stop
// does, or an error of its own, as a proxy whose stream to its target
// failed CANCELLED with the call's context.
type quietBidi struct {
	echoserver.Server
	first chan struct{} // closed once it read the first message
	ret   error
}

func (q *quietBidi) EchoBidiStream(stream grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	close(q.first)
	<-stream.Context().Done()
	return q.ret
}

// TestRequestBufferOverflowWhateverReturned: a handler that returned nil
// once its context ended ended an overflowed call OK, and its caller took
// the stream it sent for served whole; one that returned CANCELLED (a
// proxy, whose stream to its target uses the call's context) or INTERNAL
// ended it so, not saying why. The call ends RESOURCE_EXHAUSTED whatever
// its handler returns.
func TestRequestBufferOverflowWhateverReturned(t *testing.T) {
	for name, ret := range map[string]error{
		"nil":       nil,
		"CANCELLED": status.Error(codes.Canceled, "context canceled"),
		"INTERNAL":  status.Error(codes.Internal, "could not read"),
	} {
		t.Run(name, func(t *testing.T) { testOverflowReturning(t, ret) })
	}
}

func testOverflowReturning(t *testing.T, ret error) {
	const size, bound = 8 << 10, 64 << 10
	impl := &quietBidi{first: make(chan struct{}), ret: ret}
	e := setup(t, impl, runtime.WorkerRequestBufferBytes(bound))
	ctx := ctxFor(t, 30*time.Second)
	bs, err := e.echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("q", size)
	if err := bs.Send(&echov1.EchoRequest{Message: msg}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-impl.first:
	case <-ctx.Done():
		t.Fatal("the handler did not read the first message")
	}
	sendUntilEnd(t, bs.Send, 2*bound/size, msg)
	_, err = bs.Recv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("the end of a stream cut short: %v; want RESOURCE_EXHAUSTED", err)
	}
}

// againReader is a client stream handler whose first attempt reads `fail`
// messages, reporting each, and fails UNAVAILABLE (a retry follows); its
// second reports that it started, waits for goOn, then reads the whole
// stream and answers with the number of messages.
type againReader struct {
	echoserver.Server
	fail    int
	read    chan int      // the first attempt's count after each message
	second  chan struct{} // closed when the second attempt starts
	goOn    chan struct{}
	attempt atomic.Int32
}

func (a *againReader) EchoClientStream(stream grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if a.attempt.Add(1) == 1 {
		for i := range a.fail {
			if _, err := stream.Recv(); err != nil {
				return err
			}
			a.read <- i + 1
		}
		return status.Error(codes.Unavailable, "try again")
	}
	close(a.second)
	select {
	case <-a.goOn:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	return a.Server.EchoClientStream(stream)
}

// TestRequestBufferRetryCountsUnreadOnly: with WorkerRetries, the messages
// an attempt read are kept for the next one, and a retry reads them again;
// they are not unread messages waiting, and a message that comes while
// the retry has yet to read them again does not overflow the bound.
func TestRequestBufferRetryCountsUnreadOnly(t *testing.T) {
	const fail, size, bound = 12, 8 << 10, 64 << 10 // fail*size > bound
	impl := &againReader{fail: fail, read: make(chan int, 1), second: make(chan struct{}), goOn: make(chan struct{})}
	e := setup(t, impl, runtime.WorkerRequestBufferBytes(bound), runtime.WorkerRetries(2))
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "again")
	cs, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("a", size)
	for i := range fail {
		if err := cs.Send(&echov1.EchoRequest{Message: msg}); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		select { // read before the next is sent: never more than one unread
		case <-impl.read:
		case <-ctx.Done():
			t.Fatalf("the first attempt did not read message %d", i)
		}
	}
	select {
	case <-impl.second:
	case <-ctx.Done():
		t.Fatal("no second attempt")
	}
	if err := cs.Send(&echov1.EchoRequest{Message: msg}); err != nil {
		t.Fatal(err)
	}
	id := wire.CorrelationID(wire.DefaultNames(), "again", "example.echo.v1.EchoService", "EchoClientStream", e.topic("echo-responses"))
	awaitWorkerRead(t, e, id) // the worker has the last message, with the first twelve not read again yet
	close(impl.goOn)
	r, err := cs.CloseAndRecv()
	if err != nil || r.GetIndex() != fail+1 {
		t.Fatalf("%v, %v; want all %d messages read by the retry", r, err, fail+1)
	}
}

// TestRequestBufferOverflowProxied: a proxied stream whose target reads
// more slowly than its caller sends ends RESOURCE_EXHAUSTED.
func TestRequestBufferOverflowProxied(t *testing.T) {
	const n, size, bound = 64, 8 << 10, 64 << 10
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Fixed windows (no BDP growth): the target takes at most 64 KiB it
	// does not read, and the rest waits in the worker.
	target(t, lis, &quietBidi{first: make(chan struct{})}, grpc.InitialWindowSize(64<<10), grpc.InitialConnWindowSize(64<<10))
	e := setupProxy(t, lis.Addr().String(), runtime.WorkerRequestBufferBytes(bound))
	ctx := ctxFor(t, 30*time.Second)
	bs, err := e.echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("p", size)
	sendUntilEnd(t, bs.Send, n, msg)
	_, err = bs.Recv()
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "WorkerRequestBufferBytes") {
		t.Fatalf("a proxied stream its target does not read: %v; want RESOURCE_EXHAUSTED naming WorkerRequestBufferBytes", err)
	}
}

// TestRequestBufferOverflowInBackoff: a call whose request overflows while
// the worker waits to retry it is not retried; it ended with its failed
// attempt's UNAVAILABLE, telling its caller to retry what its handler never
// got whole. It ends RESOURCE_EXHAUSTED.
func TestRequestBufferOverflowInBackoff(t *testing.T) {
	const size, bound = 8 << 10, 64 << 10
	impl := &againReader{fail: 1, read: make(chan int, 1), second: make(chan struct{}), goOn: make(chan struct{})}
	close(impl.goOn)
	// A back-off that only the overflow cuts short within the test.
	e := setup(t, impl, runtime.WorkerRequestBufferBytes(bound), runtime.WorkerRetries(2), runtime.WorkerRetryBackoffForTest(20*time.Second))
	ctx := ctxFor(t, 60*time.Second)
	cs, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("w", size)
	if err := cs.Send(&echov1.EchoRequest{Message: msg}); err != nil {
		t.Fatal(err)
	}
	select { // the first attempt read it and fails: the back-off begins
	case <-impl.read:
	case <-ctx.Done():
		t.Fatal("the first attempt did not read the first message")
	}
	sendUntilEnd(t, cs.Send, 2*bound/size, msg)
	_, err = cs.CloseAndRecv()
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "WorkerRequestBufferBytes") {
		t.Fatalf("a stream that overflowed while its retry waited: %v; want RESOURCE_EXHAUSTED naming WorkerRequestBufferBytes", err)
	}
	if n := impl.attempt.Load(); n != 1 {
		t.Fatalf("%d attempts ran, want 1: the request was cut short", n)
	}
}

// sendUntilEnd sends n messages msg with send, or fewer once send reports
// the call over (io.EOF: the caller's end of the call then says how).
func sendUntilEnd(t *testing.T, send func(*echov1.EchoRequest) error, n int, msg string) {
	t.Helper()
	for i := range n {
		if err := send(&echov1.EchoRequest{Message: msg}); err == io.EOF {
			return
		} else if err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
}
