package runtime_test

// Adversarial tests of the worker's request path under faults: each test
// shows what a caller gets when something goes wrong in the worker (see
// each test's comment for the fault it failed on before its fix).

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// advCommittedClient returns an echo client of a new gateway on e's topics
// that reads replies read_committed, as exactly-once workers need.
func advCommittedClient(t *testing.T, e *env) echov1.EchoServiceClient {
	t.Helper()
	gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReadCommitted())
	t.Cleanup(func() { _ = gw.Close() })
	return echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
}

var errAdvCommit = errors.New("injected by the test: the transaction's commit failed")

// failFirstCommit is a worker's Kafka client whose transactional producer
// fails its first commit that carries offsets, as a commit that timed out
// or lost its coordinator does; every later commit goes through.
type failFirstCommit struct {
	kafkaclient.Client
	failed chan struct{} // closed once the commit failed
	once   atomic.Bool
}

func (f *failFirstCommit) NewTxnProducer(id string) (kafkaclient.TxnProducer, error) {
	tc, ok := f.Client.(kafkaclient.TxnClient)
	if !ok {
		return nil, errors.New("the test's client has no transactions")
	}
	p, err := tc.NewTxnProducer(id)
	if err != nil {
		return nil, err
	}
	return &failFirstCommitTxn{TxnProducer: p, f: f}, nil
}

type failFirstCommitTxn struct {
	kafkaclient.TxnProducer
	f *failFirstCommit
}

func (t *failFirstCommitTxn) Commit(ctx context.Context, gr kafkaclient.GroupReader, offs []kafkaclient.TopicPartitionOffset) error {
	if len(offs) > 0 && t.f.once.CompareAndSwap(false, true) {
		close(t.f.failed)
		return errAdvCommit
	}
	return t.TxnProducer.Commit(ctx, gr, offs)
}

// TestWorkerAdvFailedTransactionCommitsNothingMore: with WorkerExactlyOnce,
// a call's reply goes into the open transaction and its offset is marked
// done; the transaction's commit fails, the worker aborts it (the reply is
// gone: read_committed gateways never see it) and stops, "nothing more is
// committed, and the group moves the partitions to other members, which
// serve the uncommitted requests again" (WorkerExactlyOnce). The worker
// committed again after the failure all the same (its committer ran on,
// and committed one last time when the worker stopped), with the offset of
// the call whose reply was aborted: no member ever served that request
// again, and its caller waited for its deadline.
func TestWorkerAdvFailedTransactionCommitsNothingMore(t *testing.T) {
	impl := &counting{}
	f := &failFirstCommit{failed: make(chan struct{})}
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client { f.Client = kc; return f },
		func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	client := advCommittedClient(t, e)
	res := goUnary(ctxFor(t, 45*time.Second), client, "aborted-reply")
	select {
	case <-f.failed:
	case r := <-res:
		t.Fatalf("the call ended (%v, %v) before the transaction holding its reply was committed", r.r, r.err)
	case <-time.After(60 * time.Second):
		t.Fatal("no transaction commit within 60 s of the call")
	}
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.worker.Err(); !errors.Is(err, errAdvCommit) {
		t.Fatalf("worker.Err() = %v after its transaction failed, want the commit's failure", err)
	}
	// Another member of the group serves the request whose reply was
	// aborted: its offset was not committed.
	next := runtime.NewWorker(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(e.worker.GroupID()),
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	if err := echov1.RegisterEchoServiceKafkaWorker(next, impl); err != nil {
		t.Fatal(err)
	}
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = next.Close() })
	r := <-res // bounded by the call's deadline
	if r.err != nil || r.r.GetMessage() != "aborted-reply" {
		t.Fatalf("the call whose reply was in the aborted transaction ended %v, %v; want its response from the next member "+
			"(the failed worker committed its request's offset after all, so nobody served it again)", r.r, r.err)
	}
	if n := impl.count("aborted-reply"); n != 2 {
		t.Fatalf("the handler ran %d times, want 2 (once per member)", n)
	}
}

// advUpload is a client-streaming and bidi handler that, once started,
// waits for the test's go-ahead without watching its context (it is busy,
// as a handler writing each message somewhere is), then reads its request
// stream to the end and reports how that read ended: nil for io.EOF, the
// caller's whole stream, on which a real handler commits what it read.
type advUpload struct {
	echov1.UnimplementedEchoServiceServer
	started chan struct{}
	proceed chan struct{}
	ended   chan error // how the reads ended, with the messages read
	read    atomic.Int32
}

func (u *advUpload) readAll(recv func() (*echov1.EchoRequest, error)) error {
	u.started <- struct{}{}
	<-u.proceed
	for {
		_, err := recv()
		if errors.Is(err, io.EOF) {
			u.ended <- nil
			return nil
		}
		if err != nil {
			u.ended <- err
			return err
		}
		u.read.Add(1)
	}
}

func (u *advUpload) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if err := u.readAll(s.Recv); err != nil {
		return err
	}
	return s.SendAndClose(&echov1.EchoResponse{Message: "committed", Index: u.read.Load()})
}

func (u *advUpload) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	return u.readAll(s.Recv)
}

// TestWorkerAdvCancelledClientStreamIsNoEOF: a caller cancels its client
// stream (or bidi call) midway; its gateway writes the request's end with
// zilla:status=1 (WIRE.md). A handler that was busy when the cancel came
// and reads its stream afterwards got io.EOF, the sign that the caller sent
// its whole stream, on which it commits what it read (an upload kept
// half-done); gRPC's own server gives such a Recv CANCELLED.
func TestWorkerAdvCancelledClientStreamIsNoEOF(t *testing.T) {
	for _, method := range []string{"EchoClientStream", "EchoBidiStream"} {
		t.Run(method, func(t *testing.T) {
			impl := &advUpload{started: make(chan struct{}, 1), proceed: make(chan struct{}), ended: make(chan error, 1)}
			e := setup(t, impl)
			id := "cancelled-" + method
			send := func(msg string, extra ...string) {
				t.Helper()
				hs := append(requestHeaders(e, echoService, method, id), extra...)
				var value []byte
				if msg != "" {
					value, _ = proto.Marshal(&echov1.EchoRequest{Message: msg})
				}
				produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Value: value, Headers: hs.headers()})
			}
			send("part 1")
			select {
			case <-impl.started:
			case <-time.After(30 * time.Second):
				t.Fatal("the handler did not start within 30 s of the first request record")
			}
			send("part 2")
			send("", "zilla:status", "1") // the caller cancelled
			awaitWorkerRead(t, e, id)
			close(impl.proceed)
			select {
			case err := <-impl.ended:
				if status.Code(err) != codes.Canceled {
					t.Fatalf("after the caller's cancel, the handler's read of its request stream ended with %v after %d messages; "+
						"want CANCELLED (io.EOF says the caller sent its whole stream)", err, impl.read.Load())
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the handler's reads did not end within 30 s")
			}
		})
	}
}

// advCareless is a server-streaming handler that sends index 0, works on
// past its call's end (it does not watch its context), sends index 1
// without looking at Send's error, as careless handlers do, and returns
// nil.
type advCareless struct {
	echov1.UnimplementedEchoServiceServer
}

func (advCareless) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 0}); err != nil {
		return err
	}
	<-s.Context().Done() // the work outlasts the call
	_ = s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 1})
	return nil
}

// TestWorkerAdvStreamPastItsEndIsNoOK: a server stream outlives its
// deadline (here the worker's WorkerMaxCallDuration; the caller set none);
// its next Send is refused, and the handler, ignoring that, returns nil.
// The worker ended the call OK: its caller got index 0 and a normal end,
// a stream with its second message missing that looks whole. gRPC's own
// server ends such a call DEADLINE_EXCEEDED whatever the handler returns.
func TestWorkerAdvStreamPastItsEndIsNoOK(t *testing.T) {
	e := setup(t, advCareless{}, runtime.WorkerMaxCallDuration(500*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background()) // no deadline of the caller's
	defer cancel()
	s, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "careless"})
	if err != nil {
		t.Fatal(err)
	}
	var got []int32
	for range 3 { // two responses and the end at most
		r, err := s.Recv()
		if err == nil {
			got = append(got, r.GetIndex())
			continue
		}
		if errors.Is(err, io.EOF) {
			t.Fatalf("the stream ended OK after %v: a response the handler sent past the call's deadline is missing; "+
				"want DEADLINE_EXCEEDED naming WorkerMaxCallDuration", got)
		}
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), "WorkerMaxCallDuration") {
			t.Fatalf("the stream ended %v after %v, want DEADLINE_EXCEEDED naming WorkerMaxCallDuration", err, got)
		}
		if len(got) != 1 || got[0] != 0 {
			t.Fatalf("responses %v before DEADLINE_EXCEEDED, want [0]", got)
		}
		return
	}
	t.Fatalf("responses %v and no end", got)
}
