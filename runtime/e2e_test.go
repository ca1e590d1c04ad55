package runtime_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// env is a gateway and a worker for the echo service on their own topics.
type env struct {
	echo    echov1.EchoServiceClient
	kc      kafkaclient.Client
	worker  *runtime.Worker
	gw      *runtime.Gateway
	prefix  string
	brokers string
}

func (e *env) topic(t string) string { return e.prefix + t }

// setup starts a worker serving impl and a gateway on a loopback gRPC server,
// on topics of their own, and waits until the worker has its partitions.
func setup(t testing.TB, impl echov1.EchoServiceServer, wopts ...runtime.WorkerOption) *env {
	t.Helper()
	return setupWith(t, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) }, wopts...)
}

// setupWith is setup with the worker's registration given by register.
func setupWith(t testing.TB, register func(*runtime.Worker) error, wopts ...runtime.WorkerOption) *env {
	t.Helper()
	return setupWrapped(t, nil, register, wopts...)
}

// setupWrapped is setupWith with the worker's Kafka client wrapped by wrap
// (when not nil), e.g. to inject failures.
func setupWrapped(t testing.TB, wrap func(prefix string, kc kafkaclient.Client) kafkaclient.Client, register func(*runtime.Worker) error, wopts ...runtime.WorkerOption) *env {
	t.Helper()
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("t") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	logger := runtime.WithLogger(kafkatest.Logger(t))

	wkc := kc
	if wrap != nil {
		wkc = wrap(prefix, kc)
	}
	worker := runtime.NewWorker(wkc, append([]runtime.WorkerOption{mapper, logger, runtime.WorkerGroupID(prefix + "workers")}, wopts...)...)
	if err := register(worker); err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Close() })

	gw := runtime.NewGateway(kc, mapper, logger)
	t.Cleanup(func() { _ = gw.Close() })
	e := &env{kc: kc, worker: worker, gw: gw, prefix: prefix, brokers: brokers}
	e.echo = echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	select {
	case <-worker.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("worker got no partitions within 60 s")
	}
	return e
}

// serve runs a gRPC server on loopback and returns a connection to it; both
// with the options recommended for a gateway and its callers.
func serve(t testing.TB, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	return serveWith(t, runtime.GatewayServerOptions(), register)
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestUnary(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 30*time.Second)
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: msg})
		if err != nil {
			t.Fatalf("EchoUnary: %v", err)
		}
		if resp.GetMessage() != msg || resp.GetIndex() != 0 {
			t.Fatalf("EchoUnary = %v, want %q index 0", resp, msg)
		}
	}
}

func TestServerStreamThousandInOrder(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(1000) {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		if resp.GetIndex() != i || resp.GetMessage() != "m" {
			t.Fatalf("response %d = %v", i, resp)
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("after 1000 responses: %v, want io.EOF", err)
	}
}

func TestClientStreamThousand(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	stream, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 1000 {
		m := fmt.Sprint(i)
		want = append(want, m)
		if err := stream.Send(&echov1.EchoRequest{Message: m}); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetIndex() != 1000 || resp.GetMessage() != strings.Join(want, ",") {
		t.Fatalf("response index %d, message %.40q..., want 1000 messages in order", resp.GetIndex(), resp.GetMessage())
	}
}

func TestBidiInterleaved(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 30*time.Second)
	stream, err := e.echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(20) {
		m := fmt.Sprint("b", i)
		if err := stream.Send(&echov1.EchoRequest{Message: m}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv() // each answer arrives before the next request is sent
		if err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		if resp.GetMessage() != m || resp.GetIndex() != i {
			t.Fatalf("response %d = %v", i, resp)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("after half-close: %v, want io.EOF", err)
	}
}

// earlyBidi ends the bidi call after answering n requests, without waiting
// for the caller to half-close.
type earlyBidi struct {
	echoserver.Server
	n int
}

func (s earlyBidi) EchoBidiStream(stream grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	for i := range s.n {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := stream.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: int32(i)}); err != nil {
			return err
		}
	}
	return status.Error(codes.OK, "")
}

func TestBidiReplyFinishesBeforeClientHalfCloses(t *testing.T) {
	e := setup(t, earlyBidi{n: 3})
	ctx := ctxFor(t, 30*time.Second)
	stream, err := e.echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := stream.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
	}
	// The caller has not half-closed, and the call is over all the same.
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("after the worker finished: %v, want io.EOF", err)
	}
}

func TestLargeMessage(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 30*time.Second)
	big := strings.Repeat("x", 1<<20)
	resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: big}, grpc.MaxCallRecvMsgSize(8<<20), grpc.MaxCallSendMsgSize(8<<20))
	if err != nil {
		t.Fatalf("1 MiB EchoUnary: %v", err)
	}
	if resp.GetMessage() != big {
		t.Fatalf("1 MiB message came back with %d bytes", len(resp.GetMessage()))
	}
}

func TestErrorCodeAndMessageReachCaller(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 30*time.Second)
	_, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "no such thing", FailCode: int32(codes.NotFound)})
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "no such thing" {
		t.Fatalf("EchoUnary error = %v, want NotFound 'no such thing'", err)
	}
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "denied", FailCode: int32(codes.PermissionDenied)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "denied" {
		t.Fatalf("EchoServerStream error = %v, want PermissionDenied 'denied'", err)
	}
}

// panicky panics on the message "panic".
type panicky struct{ echoserver.Server }

func (p panicky) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if req.GetMessage() == "panic" {
		panic("boom")
	}
	return p.Server.EchoUnary(ctx, req)
}

func TestPanicBecomesInternalAndWorkerKeepsServing(t *testing.T) {
	e := setup(t, panicky{})
	ctx := ctxFor(t, 30*time.Second)
	_, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "panic"})
	if st := status.Convert(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), "boom") {
		t.Fatalf("error = %v, want INTERNAL mentioning the panic", err)
	}
	resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "still here"})
	if err != nil || resp.GetMessage() != "still here" {
		t.Fatalf("after a panic: %v, %v", resp, err)
	}
	if got := e.worker.Stats().Panics; got != 1 {
		t.Fatalf("Stats().Panics = %d, want 1", got)
	}
}

// metaEcho answers with what it saw of the call: metadata, deadline, and sets
// headers and trailers.
type metaEcho struct {
	echoserver.Server
	started   chan struct{}
	cancelled chan error
}

func (m metaEcho) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	switch req.GetMessage() {
	case "metadata":
		md, _ := metadata.FromIncomingContext(ctx)
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-header", "h1", "x-bin", "\x00\x01"))
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t1"))
		return &echov1.EchoResponse{Message: fmt.Sprintf("tenant=%v auth=%v bin=%q method=%s",
			md.Get("x-tenant"), md.Get("authorization"), md.Get("x-raw-bin"), grpcMethod(ctx))}, nil
	case "deadline":
		dl, ok := ctx.Deadline()
		if !ok {
			return &echov1.EchoResponse{Message: "none"}, nil
		}
		return &echov1.EchoResponse{Message: time.Until(dl).Round(time.Second).String()}, nil
	case "block":
		m.started <- struct{}{}
		<-ctx.Done()
		m.cancelled <- context.Cause(ctx)
		return nil, ctx.Err()
	}
	return m.Server.EchoUnary(ctx, req)
}

func grpcMethod(ctx context.Context) string {
	s, _ := grpc.Method(ctx)
	return s
}

func TestMetadataHeadersAndTrailers(t *testing.T) {
	e := setup(t, metaEcho{})
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second),
		"x-tenant", "acme", "authorization", "Bearer secret", "x-raw-bin", "\xff\x00")
	var header, trailer metadata.MD
	resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "metadata"}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	want := `tenant=[acme] auth=[] bin=["\xff\x00"] method=/example.echo.v1.EchoService/EchoUnary`
	if resp.GetMessage() != want {
		t.Fatalf("worker saw %q, want %q", resp.GetMessage(), want)
	}
	if got := header.Get("x-header"); len(got) != 1 || got[0] != "h1" {
		t.Errorf("response header x-header = %q", got)
	}
	if got := header.Get("x-bin"); len(got) != 1 || got[0] != "\x00\x01" {
		t.Errorf("response header x-bin = %q", got)
	}
	if got := trailer.Get("x-trailer"); len(got) != 1 || got[0] != "t1" {
		t.Errorf("trailer x-trailer = %q", got)
	}
}

func TestDeadlineReachesHandler(t *testing.T) {
	e := setup(t, metaEcho{})
	ctx := ctxFor(t, 30*time.Second)
	resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "deadline"})
	if err != nil {
		t.Fatal(err)
	}
	left, err := time.ParseDuration(resp.GetMessage())
	if err != nil || left <= 0 || left > 30*time.Second {
		t.Fatalf("handler saw a deadline %q from now, want within the caller's 30 s", resp.GetMessage())
	}
}

func TestCancelReachesHandler(t *testing.T) {
	impl := metaEcho{started: make(chan struct{}, 1), cancelled: make(chan error, 1)}
	e := setup(t, impl)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "block"})
		done <- err
	}()
	select { // the worker runs the handler; now the caller cancels
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	cancelled := time.Now()
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("caller got %v, want CANCELLED", err)
	}
	select {
	case cause := <-impl.cancelled:
		took := time.Since(cancelled)
		t.Logf("the handler saw the cancel %v after the caller", took)
		// The goal is 100 ms (measured here: about 2 ms); the bound is
		// generous so that a loaded machine does not fail the test.
		if took > 5*time.Second {
			t.Fatalf("the cancel reached the handler after %v", took)
		}
		if cause == nil || !strings.Contains(cause.Error(), "cancelled") {
			t.Fatalf("handler context cause = %v, want the caller's cancel", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler was not cancelled within 30 s")
	}
}

func TestEmptyClientStream(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 30*time.Second)
	stream, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.CloseAndRecv() // only the end-of-stream record goes to Kafka
	if err != nil || resp.GetIndex() != 0 || resp.GetMessage() != "" {
		t.Fatalf("empty client stream = %v, %v; want an empty response", resp, err)
	}
}

// silent never answers server streams: the test writes the replies itself.
type silent struct{ echoserver.Server }

func (silent) EchoServerStream(_ *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	<-s.Context().Done()
	return s.Context().Err()
}

func TestStreamServedAgainByAnotherWorkerEndsUnavailable(t *testing.T) {
	e := setup(t, silent{})
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "replayed")
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 3})
	if err != nil {
		t.Fatal(err)
	}
	id := wire.CorrelationID(wire.DefaultNames(), "replayed", "example.echo.v1.EchoService", "EchoServerStream", e.topic("echo-responses"))
	requests.await(t, id) // the request is in Kafka: the gateway waits for replies
	reply := func(index int32, servedBy string) {
		b, _ := proto.Marshal(&echov1.EchoResponse{Message: "m", Index: index})
		produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-responses"), Key: []byte(id), Value: b,
			Headers: hdrs{"zilla:correlation-id", id, "meta:" + wire.ServedByMetadata, servedBy}.headers()})
	}
	reply(0, "worker-a")
	if r, err := stream.Recv(); err != nil || r.GetIndex() != 0 {
		t.Fatalf("first answer: %v, %v", r, err)
	}
	reply(0, "worker-b") // worker-a died; worker-b serves the call again from the start
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("after another worker replayed the call: %v, want UNAVAILABLE", err)
	}
}
