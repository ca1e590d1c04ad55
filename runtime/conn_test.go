package runtime_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	kindsv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/kinds/v1"
	partialv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/partial/v1"
)

// connTo returns a ClientConn on kc for the echo service, its topics under
// prefix, and a generated client on it: no gRPC server anywhere.
func connTo(t testing.TB, kc kafkaclient.Client, prefix string, opts ...runtime.ConnOption) (*runtime.ClientConn, echov1.EchoServiceClient) {
	t.Helper()
	opts = append([]runtime.ConnOption{runtime.WithTopicMapper(func(s string) string { return prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t))}, opts...)
	cc := runtime.NewClientConn(kc, opts...)
	t.Cleanup(func() { _ = cc.Close() })
	if err := cc.Register(echov1.EchoServiceKafkaSpec); err != nil {
		t.Fatal(err)
	}
	return cc, echov1.NewEchoServiceClient(cc)
}

// conn is connTo for an env's topics.
func (e *env) conn(t testing.TB, opts ...runtime.ConnOption) echov1.EchoServiceClient {
	t.Helper()
	_, c := connTo(t, e.kc, e.prefix, opts...)
	return c
}

func TestConnAllKinds(t *testing.T) {
	e := setup(t, echoserver.Server{})
	echo := e.conn(t)
	ctx := ctxFor(t, 60*time.Second)

	resp, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil || resp.GetMessage() != "hello" || resp.GetIndex() != 0 {
		t.Fatalf("EchoUnary = %v, %v", resp, err)
	}

	ss, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 200})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(200) {
		r, err := ss.Recv()
		if err != nil || r.GetIndex() != i || r.GetMessage() != "m" {
			t.Fatalf("server stream response %d = %v, %v", i, r, err)
		}
	}
	if _, err := ss.Recv(); err != io.EOF {
		t.Fatalf("after 200 responses: %v, want io.EOF", err)
	}

	cs, err := echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 100 {
		want = append(want, fmt.Sprint(i))
		if err := cs.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	if r, err := cs.CloseAndRecv(); err != nil || r.GetIndex() != 100 || r.GetMessage() != strings.Join(want, ",") {
		t.Fatalf("client stream = %v, %v", r, err)
	}

	empty, err := echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := empty.CloseAndRecv(); err != nil || r.GetIndex() != 0 || r.GetMessage() != "" {
		t.Fatalf("empty client stream = %v, %v", r, err)
	}

	bs, err := echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(20) {
		m := fmt.Sprint("b", i)
		if err := bs.Send(&echov1.EchoRequest{Message: m}); err != nil {
			t.Fatal(err)
		}
		r, err := bs.Recv() // each answer arrives before the next request is sent
		if err != nil || r.GetMessage() != m || r.GetIndex() != i {
			t.Fatalf("bidi response %d = %v, %v", i, r, err)
		}
	}
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("bidi after CloseSend: %v, want io.EOF", err)
	}
}

func TestConnUnregisteredMethodFailsAtOnce(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	cc := runtime.NewClientConn(kc)
	t.Cleanup(func() { _ = cc.Close() })
	echo := echov1.NewEchoServiceClient(cc)
	ctx := ctxFor(t, 30*time.Second)
	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), echov1.EchoService_EchoUnary_FullMethodName) {
		t.Fatalf("unary of an unregistered method: %v, want UNIMPLEMENTED naming it", err)
	}
	_, err = echo.EchoBidiStream(ctx)
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), echov1.EchoService_EchoBidiStream_FullMethodName) {
		t.Fatalf("stream of an unregistered method: %v, want UNIMPLEMENTED naming it", err)
	}
	_ = cc.Close()
	if _, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"}); status.Code(err) != codes.Canceled {
		t.Fatalf("a call on a closed connection: %v, want CANCELLED (as grpc-go)", err)
	}
}

// A method that does not travel over Kafka (PartialService's Local and Tail:
// no method option, no service option), called through a connection on
// which its service is registered, fails with UNIMPLEMENTED saying that the
// method has no Kafka options, not that the service was never registered.
func TestConnMethodNotOverKafkaSaysWhy(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("partial-") + "-"
	spec := partialv1.PartialServiceKafkaSpec
	var topics []string
	for _, tp := range spec.Topics(nil) {
		topics = append(topics, prefix+tp.Name)
	}
	kafkatest.CreateTopics(t, kc, 1, topics...)
	cc := runtime.NewClientConn(kc, runtime.WithTopicMapper(func(s string) string { return prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = cc.Close() })
	if err := cc.Register(spec); err != nil {
		t.Fatal(err)
	}
	c := partialv1.NewPartialServiceClient(cc)
	ctx := ctxFor(t, 30*time.Second)
	check := func(what, method string, err error) {
		t.Helper()
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.Unimplemented || !strings.Contains(msg, method) ||
			!strings.Contains(msg, "kafkarpc.kafka.v1.method") || strings.Contains(msg, "ClientConn.Register") {
			t.Errorf("%s of a method without Kafka options, its service registered: %v, want UNIMPLEMENTED naming it and saying it has no Kafka options", what, err)
		}
	}
	_, err := c.Local(ctx, &kindsv1.Ping{})
	check("unary", partialv1.PartialService_Local_FullMethodName, err)
	_, err = c.Tail(ctx, &kindsv1.Ping{})
	check("stream", partialv1.PartialService_Tail_FullMethodName, err)
}

// Registering a service whose reply topic nobody created fails at once,
// naming the topic and saying how to create it.
func TestConnRegisterWithoutReplyTopicSaysSo(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("uncreated-") + "-"
	cc := runtime.NewClientConn(kc, runtime.WithTopicMapper(func(s string) string { return prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = cc.Close() })
	err := cc.Register(echov1.EchoServiceKafkaSpec)
	if !errors.Is(err, kafkaclient.ErrUnknownTopic) || !strings.Contains(err.Error(), `"`+prefix+`echo-responses" does not exist`) ||
		!strings.Contains(err.Error(), "runtime.EnsureTopics") {
		t.Fatalf("Register with no reply topic: %v, want an error wrapping ErrUnknownTopic that names %secho-responses and runtime.EnsureTopics", err, prefix)
	}
}

func TestConnDeadlineReachesHandler(t *testing.T) {
	e := setup(t, metaEcho{})
	resp, err := e.conn(t).EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "deadline"})
	if err != nil {
		t.Fatal(err)
	}
	left, err := time.ParseDuration(resp.GetMessage())
	if err != nil || left <= 0 || left > 30*time.Second {
		t.Fatalf("handler saw a deadline %q from now, want within the caller's 30 s", resp.GetMessage())
	}
	// A deadline the worker cannot meet ends the call with DEADLINE_EXCEEDED.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = e.conn(t).EchoUnary(ctx, &echov1.EchoRequest{Message: "slow", DelayMs: 5000})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call past its deadline: %v, want DEADLINE_EXCEEDED", err)
	}
}

func TestConnCancelReachesHandler(t *testing.T) {
	impl := metaEcho{started: make(chan struct{}, 1), cancelled: make(chan error, 1)}
	e := setup(t, impl)
	echo := e.conn(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "block"})
		done <- err
	}()
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("caller got %v, want CANCELLED", err)
	}
	select {
	case cause := <-impl.cancelled:
		if cause == nil || !strings.Contains(cause.Error(), "cancelled") {
			t.Fatalf("handler context cause = %v, want the caller's cancel", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler was not cancelled within 30 s")
	}
}

// blockStream sends one response, then waits for the call to end and
// reports why.
type blockStream struct {
	echoserver.Server
	cancelled chan error
}

func (b blockStream) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage()}); err != nil {
		return err
	}
	<-s.Context().Done()
	b.cancelled <- context.Cause(s.Context())
	return s.Context().Err()
}

// TestConnCancelStream cancels a server stream after its first response:
// the handler's context ends and the caller's Recv reports CANCELLED.
func TestConnCancelStream(t *testing.T) {
	impl := blockStream{cancelled: make(chan error, 1)}
	e := setup(t, impl)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	s, err := e.conn(t).EchoServerStream(ctx, &echov1.EchoRequest{Message: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := s.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("after cancel: %v, want CANCELLED", err)
	}
	select {
	case cause := <-impl.cancelled:
		if cause == nil || !strings.Contains(cause.Error(), "cancelled") {
			t.Fatalf("handler context cause = %v, want the caller's cancel", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler was not cancelled within 30 s")
	}
}

func TestConnMetadataBothWays(t *testing.T) {
	e := setup(t, metaEcho{})
	echo := e.conn(t)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second),
		"x-tenant", "acme", "authorization", "Bearer secret", "x-raw-bin", "\xff\x00")
	var header, trailer metadata.MD
	resp, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "metadata"}, grpc.Header(&header), grpc.Trailer(&trailer))
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

	// An allow list, as on a gateway.
	allow := e.conn(t, runtime.GatewayAllowedMetadata("authorization"))
	resp, err = allow.EchoUnary(ctx, &echov1.EchoRequest{Message: "metadata"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `tenant=[] auth=[Bearer secret] bin=[] method=/example.echo.v1.EchoService/EchoUnary`; resp.GetMessage() != want {
		t.Fatalf("with an allow list the worker saw %q, want %q", resp.GetMessage(), want)
	}
}

// headerStream sends response headers and trailers on a server stream.
type headerStream struct{ echoserver.Server }

func (headerStream) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if err := s.SendHeader(metadata.Pairs("x-stream", "open")); err != nil {
		return err
	}
	s.SetTrailer(metadata.Pairs("x-done", "yes"))
	return echoserver.Server{}.EchoServerStream(req, s)
}

func TestConnStreamHeaderAndTrailer(t *testing.T) {
	e := setup(t, headerStream{})
	s, err := e.conn(t).EchoServerStream(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "m", Repeat: 3})
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.Header()
	if err != nil || len(h.Get("x-stream")) != 1 || h.Get("x-stream")[0] != "open" {
		t.Fatalf("Header() = %v, %v", h, err)
	}
	n := 0
	for {
		_, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 3 {
		t.Fatalf("%d responses, want 3", n)
	}
	if tr := s.Trailer(); len(tr.Get("x-done")) != 1 || tr.Get("x-done")[0] != "yes" {
		t.Fatalf("Trailer() = %v", tr)
	}
}

// detailed fails with a status carrying details.
type detailed struct{ echoserver.Server }

func (detailed) EchoUnary(context.Context, *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	st, _ := status.New(codes.NotFound, "no such order").WithDetails(&errdetails.ResourceInfo{ResourceType: "order", ResourceName: "o-7"})
	return nil, st.Err()
}

func TestConnErrorsWithDetails(t *testing.T) {
	e := setup(t, detailed{})
	echo := e.conn(t)
	ctx := ctxFor(t, 30*time.Second)
	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.NotFound || st.Message() != "no such order" {
		t.Fatalf("err = %v, want NOT_FOUND no such order", err)
	}
	ds := st.Details()
	if len(ds) != 1 {
		t.Fatalf("details = %v, want one ResourceInfo", ds)
	}
	if ri, ok := ds[0].(*errdetails.ResourceInfo); !ok || ri.GetResourceName() != "o-7" {
		t.Fatalf("detail = %v, want ResourceInfo o-7", ds[0])
	}
	// A failing stream: the code and message arrive on Recv.
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "gone", FailCode: int32(codes.FailedPrecondition)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != "gone" {
		t.Fatalf("stream err = %v, want FAILED_PRECONDITION gone", err)
	}
}

func TestConnIdempotentRetry(t *testing.T) {
	impl := &counting{}
	e := setup(t, impl)
	echo := e.conn(t)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "order-7")
	first, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	// The retry goes through another connection, as a restarted caller's would.
	second, err := e.conn(t).EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(first, second) {
		t.Fatalf("retry got %v, want the stored %v", second, first)
	}
	if n := impl.count("charge"); n != 1 {
		t.Fatalf("handler ran %d times for one idempotency key, want 1", n)
	}
	if d := e.worker.Stats().Duplicates; d != 1 {
		t.Fatalf("Stats().Duplicates = %d, want 1", d)
	}
}

func TestConnInterceptors(t *testing.T) {
	e := setup(t, echoserver.Server{})
	var mu sync.Mutex
	var seen []string
	note := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, s)
	}
	unary := func(name string) grpc.UnaryClientInterceptor {
		return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			note(name + " " + method)
			return invoker(metadata.AppendToOutgoingContext(ctx, "x-by", name), method, req, reply, cc, opts...)
		}
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		note("stream " + method)
		return streamer(ctx, desc, cc, method, opts...)
	}
	echo := e.conn(t, runtime.ConnUnaryInterceptor(unary("a"), unary("b")), runtime.ConnStreamInterceptor(stream))
	ctx := ctxFor(t, 30*time.Second)
	if _, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"}); err != nil {
		t.Fatal(err)
	}
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	want := []string{"a " + echov1.EchoService_EchoUnary_FullMethodName, "b " + echov1.EchoService_EchoUnary_FullMethodName,
		"stream " + echov1.EchoService_EchoServerStream_FullMethodName}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("interceptors saw %q, want %q", seen, want)
	}
}

// TestConnFetchResume fetches EchoEvents through a connection: every record
// once with its event id, then, from the id of the tenth, a second call
// resumes with the rest.
func TestConnFetchResume(t *testing.T) {
	e := setupFanout(t)
	_, echo := connTo(t, e.kc, e.prefix)
	e.produce(t, e.topic, 30, 5, 0)
	ctx := ctxFor(t, 60*time.Second)
	tr := newTracker(t)
	fetch := func(ctx context.Context, n int) {
		t.Helper()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s, err := echo.EchoEvents(ctx, &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			ev, err := s.Recv()
			if err != nil {
				e.stalled(t, tr)
				t.Fatal(err)
			}
			if err := tr.add(ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	fetch(ctx, 10)
	fetch(metadata.AppendToOutgoingContext(ctx, "last-event-id", base64.RawURLEncoding.EncodeToString(tr.last)), 20)
	if len(tr.seen) != 30 {
		t.Fatalf("%d distinct records, want 30", len(tr.seen))
	}
	// A bad resume id is refused, as by the gateway.
	bad, err := echo.EchoEvents(metadata.AppendToOutgoingContext(ctx, "last-event-id", "Ag"), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a bad resume id: %v, want INVALID_ARGUMENT", err)
	}
}

// TestConnFetchContextEndedBefore: a fetch whose context ended before the
// call fails at NewStream, as a grpc-go caller's does through the gateway,
// with the context's code, and grpc.OnFinish gets it.
func TestConnFetchContextEndedBefore(t *testing.T) {
	e := setupFanout(t)
	_, conn := connTo(t, e.kc, e.prefix)
	past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	for _, side := range []struct {
		name string
		echo echov1.EchoServiceClient
	}{{"gateway", e.echo}, {"ClientConn", conn}} {
		for _, c := range []struct {
			ctx  context.Context
			want codes.Code
		}{{cancelled(), codes.Canceled}, {past, codes.DeadlineExceeded}} {
			finished := make(chan error, 1)
			h := metadata.Pairs("x-stale", "1")
			_, err := side.echo.EchoEvents(c.ctx, &emptypb.Empty{}, grpc.OnFinish(func(err error) { finished <- err }), grpc.Header(&h))
			if status.Code(err) != c.want {
				t.Errorf("%s: EchoEvents with the context ended: %v, want %s at once", side.name, err, c.want)
			}
			if len(h["x-stale"]) != 1 {
				t.Errorf("%s: grpc.Header target %v, want it left as it was (grpc-go does not touch it)", side.name, h)
			}
			select {
			case err := <-finished:
				if status.Code(err) != c.want {
					t.Errorf("%s: OnFinish got %v, want %s", side.name, err, c.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("%s: OnFinish not called within 30 s", side.name)
			}
		}
	}
}

// TestConnUnstartedFetchEnds: a fetch stream the caller made with NewStream
// but never started (no SendMsg, RecvMsg or CloseSend) ends when its context
// ends or the ClientConn closes, as any grpc-go stream: grpc.OnFinish runs,
// Header returns, RecvMsg returns the status, SendMsg io.EOF. It waited
// forever: for the caller's first SendMsg or RecvMsg.
func TestConnUnstartedFetchEnds(t *testing.T) {
	e := setupFanout(t)
	desc := &echov1.EchoService_ServiceDesc.Streams[len(echov1.EchoService_ServiceDesc.Streams)-1]
	if desc.StreamName != "EchoEvents" {
		t.Fatalf("the last stream of the echo service is %s, want EchoEvents", desc.StreamName)
	}
	for _, how := range []string{"context cancelled", "ClientConn closed"} {
		t.Run(how, func(t *testing.T) {
			cc, _ := connTo(t, e.kc, e.prefix)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			finished := make(chan error, 1)
			s, err := cc.NewStream(ctx, desc, echov1.EchoService_EchoEvents_FullMethodName, grpc.OnFinish(func(err error) { finished <- err }))
			if err != nil {
				t.Fatal(err)
			}
			if how == "context cancelled" {
				cancel()
			} else if err := cc.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-finished:
				if status.Code(err) != codes.Canceled {
					t.Errorf("OnFinish got %v, want CANCELLED", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("OnFinish not called within 30 s of the %s", how)
			}
			if md, err := s.Header(); len(md) != 0 || err != nil {
				t.Errorf("Header: %v, %v; want no metadata and no error (the call ended without headers)", md, err)
			}
			if err := s.RecvMsg(new(echov1.EchoEvent)); status.Code(err) != codes.Canceled {
				t.Errorf("RecvMsg: %v, want CANCELLED", err)
			}
			if err := s.SendMsg(&emptypb.Empty{}); err != io.EOF {
				t.Errorf("SendMsg: %v, want io.EOF (the stream ended)", err)
			}
		})
	}
}

// TestConnFetchMisuseEndsCall: a fetch given something that is not a
// proto message, to send or to receive into, or a second request, ends
// with INTERNAL, as a grpc-go stream does (TestConnDiff/NotProtoMessages
// and OneRequestMethodSentTwice for the other kinds): grpc.OnFinish gets it
// and RecvMsg returns it. The fetch went on.
func TestConnFetchMisuseEndsCall(t *testing.T) {
	e := setupFanout(t)
	cc, _ := connTo(t, e.kc, e.prefix)
	desc := &echov1.EchoService_ServiceDesc.Streams[len(echov1.EchoService_ServiceDesc.Streams)-1]
	ctx := ctxFor(t, 60*time.Second)
	for _, how := range []string{"SendMsg", "RecvMsg", "SendMsg twice"} {
		t.Run(how, func(t *testing.T) {
			finished := make(chan error, 1)
			s, err := cc.NewStream(ctx, desc, echov1.EchoService_EchoEvents_FullMethodName, grpc.OnFinish(func(err error) { finished <- err }))
			if err != nil {
				t.Fatal(err)
			}
			var str string
			switch how {
			case "SendMsg":
				err = s.SendMsg(&str)
			case "RecvMsg":
				if err := s.SendMsg(&emptypb.Empty{}); err != nil {
					t.Fatal(err)
				}
				err = s.RecvMsg(&str)
			default:
				if err := s.SendMsg(&emptypb.Empty{}); err != nil {
					t.Fatal(err)
				}
				err = s.SendMsg(&emptypb.Empty{})
			}
			if status.Code(err) != codes.Internal {
				t.Fatalf("%s: %v, want INTERNAL", how, err)
			}
			select {
			case err := <-finished:
				if status.Code(err) != codes.Internal {
					t.Errorf("OnFinish got %v, want INTERNAL", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("OnFinish not called within 30 s: the fetch goes on")
			}
			if err := s.RecvMsg(new(echov1.EchoEvent)); status.Code(err) != codes.Internal {
				t.Errorf("RecvMsg after: %v, want INTERNAL", err)
			}
		})
	}
}

// TestConnPeerIsTheTopic: grpc.Peer gets the topic a call's requests went
// to, or a fetch read, as a KafkaAddr ("kafka" network): a caller that logs
// its peer's address (p.Addr.String()) finds one, not a nil Addr.
func TestConnPeerIsTheTopic(t *testing.T) {
	e := setup(t, echoserver.Server{})
	echo := e.conn(t)
	ctx := ctxFor(t, 60*time.Second)
	check := func(what string, p *peer.Peer, topic string) {
		t.Helper()
		if p.Addr == nil || p.Addr.Network() != "kafka" || p.Addr.String() != topic {
			t.Errorf("%s: grpc.Peer got %+v, want the kafka address %s", what, p, topic)
		}
	}
	var p peer.Peer
	if _, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "peer"}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	check("EchoUnary", &p, e.prefix+"echo-requests")
	p = peer.Peer{}
	st, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "peer"}, grpc.Peer(&p))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := st.Recv(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	check("EchoServerStream", &p, e.prefix+"echo-requests")
	f := setupFanout(t)
	_, fetch := connTo(t, f.kc, f.prefix)
	p = peer.Peer{}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := fetch.EchoEvents(cctx, &emptypb.Empty{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	check("EchoEvents", &p, f.topic)
}

// TestConnZillaLayoutWorker answers the connection's requests as a Zilla
// kafka-grpc binding would (WIRE.md): replies keyed by the correlation id on
// the zilla:reply-to topic, no attempt id, an end-of-stream record with
// zilla:status; the connection takes them.
func TestConnZillaLayoutWorker(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("z") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(rec *kafkaclient.Record, req *echov1.EchoRequest, reply func([]byte, hdrs)) {
		switch method := header(rec, "zilla:method"); {
		case header(rec, "zilla:service") != "example.echo.v1.EchoService":
		case req.GetFailCode() != 0:
			reply(nil, hdrs{"zilla:status", fmt.Sprint(req.GetFailCode()), "zilla:message", req.GetMessage()})
		case method == "EchoUnary":
			v, _ := proto.Marshal(&echov1.EchoResponse{Message: "zilla:" + req.GetMessage() + ":" + header(rec, "meta:x-tenant")})
			reply(v, hdrs{"meta:x-answer", "42"})
			reply(nil, hdrs{"zilla:status", "0"})
		case method == "EchoServerStream":
			for i := range req.GetRepeat() {
				v, _ := proto.Marshal(&echov1.EchoResponse{Message: req.GetMessage(), Index: i})
				reply(v, nil)
			}
			reply(nil, nil) // no zilla:status: OK
		}
	})
	_, echo := connTo(t, kc, prefix)
	ctx := ctxFor(t, 30*time.Second)
	var header metadata.MD
	resp, err := echo.EchoUnary(metadata.AppendToOutgoingContext(ctx, "x-tenant", "acme"), &echov1.EchoRequest{Message: "hi"}, grpc.Header(&header))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMessage() != "zilla:hi:acme" {
		t.Fatalf("response %q, want zilla:hi:acme", resp.GetMessage())
	}
	if got := header.Get("x-answer"); len(got) != 1 || got[0] != "42" {
		t.Fatalf("response header x-answer = %q, want 42", got)
	}
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "s", Repeat: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(3) {
		if r, err := s.Recv(); err != nil || r.GetIndex() != i || r.GetMessage() != "s" {
			t.Fatalf("server stream response %d = %v, %v", i, r, err)
		}
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("server stream end: %v, want io.EOF", err)
	}
	_, err = echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "nope", FailCode: int32(codes.PermissionDenied)})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != "nope" {
		t.Fatalf("failed call: %v, want PERMISSION_DENIED nope", err)
	}
}

// TestConnConcurrentCallers shares one connection between many goroutines
// making calls of every kind at once (run it with -race).
func TestConnConcurrentCallers(t *testing.T) {
	e := setup(t, echoserver.Server{})
	echo := e.conn(t)
	ctx := ctxFor(t, 120*time.Second)
	const callers, calls = 32, 10
	errc := make(chan error, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- concurrentCaller(ctx, echo, c, calls)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}
}

func concurrentCaller(ctx context.Context, echo echov1.EchoServiceClient, c, calls int) error {
	for i := range calls {
		m := fmt.Sprintf("c%d-%d", c, i)
		switch i % 4 {
		case 0:
			r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: m})
			if err != nil || r.GetMessage() != m {
				return fmt.Errorf("unary %s = %v, %v", m, r, err)
			}
		case 1:
			s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: m, Repeat: 5})
			if err != nil {
				return err
			}
			for j := range int32(6) {
				r, err := s.Recv()
				if j == 5 {
					if err != io.EOF {
						return fmt.Errorf("server stream %s end: %v", m, err)
					}
					break
				}
				if err != nil || r.GetMessage() != m || r.GetIndex() != j {
					return fmt.Errorf("server stream %s #%d = %v, %v", m, j, r, err)
				}
			}
		case 2:
			s, err := echo.EchoClientStream(ctx)
			if err != nil {
				return err
			}
			for range 3 {
				if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
					return err
				}
			}
			r, err := s.CloseAndRecv()
			if err != nil || r.GetMessage() != m+","+m+","+m {
				return fmt.Errorf("client stream %s = %v, %v", m, r, err)
			}
		case 3:
			s, err := echo.EchoBidiStream(ctx)
			if err != nil {
				return err
			}
			for j := range int32(3) {
				if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
					return err
				}
				if r, err := s.Recv(); err != nil || r.GetIndex() != j {
					return fmt.Errorf("bidi %s #%d = %v, %v", m, j, r, err)
				}
			}
			_ = s.CloseSend()
			if _, err := s.Recv(); !errors.Is(err, io.EOF) {
				return fmt.Errorf("bidi %s end: %v", m, err)
			}
		}
	}
	return nil
}

// TestConnTelemetry: a call through a connection is traced as through a
// gateway (send and receive spans in the caller's trace, the worker's span
// between them) and counted under kafkarpc.client.*.
func TestConnTelemetry(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	e := setup(t, echoserver.Server{}, runtime.WithTracerProvider(tp))
	echo := e.conn(t, runtime.WithTracerProvider(tp), runtime.WithMeterProvider(mp))
	ctx, parent := tp.Tracer("test").Start(ctxFor(t, 30*time.Second), "caller")
	for _, fail := range []codes.Code{codes.OK, codes.OK, codes.NotFound} {
		_, _ = echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m", FailCode: int32(fail)})
	}
	parent.End()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	calls := sumByCode(t, rm, "kafkarpc.client.calls")
	if calls[0] != 2 || calls[int64(codes.NotFound)] != 1 {
		t.Errorf("kafkarpc.client.calls by code = %v, want 2 OK and 1 NOT_FOUND", calls)
	}
	if n := histogramCount(rm, "kafkarpc.client.duration"); n != 3 {
		t.Errorf("kafkarpc.client.duration has %d observations, want 3", n)
	}
	// A send span ends once Kafka answered the request's records, which
	// can come after the reply (the worker reads the request as soon as
	// the broker has it): wait for them, bounded.
	trace := parent.SpanContext().TraceID()
	for deadline := time.Now().Add(30 * time.Second); ; {
		names := map[string]int{}
		for _, s := range spans.GetSpans() {
			if s.SpanContext.TraceID() == trace {
				names[s.Name]++
			}
		}
		if names["send "+e.topic("echo-requests")] == 3 && names["receive "+e.topic("echo-responses")] == 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("spans of the caller's trace 30 s after the calls: %v, want 3 send and 3 receive", names)
		}
		time.Sleep(2 * time.Millisecond) // polling a condition, bounded above
	}
}
