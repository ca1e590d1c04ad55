package runtime_test

// Differential tests of runtime.ClientConn: every scenario runs the same
// client-side code against (a) a plain grpc-go server serving the echo
// implementation on loopback, through grpc.NewClient, and (b) a ClientConn
// calling a worker over Kafka, and compares what the caller observed
// (codes, messages, details, messages received and their order, io.EOF,
// Header() and Trailer(), grpc.Header and grpc.Trailer). A difference fails
// the test, unless the scenario says why it is inherent to Kafka.

import (
	"context"
	"fmt"
	"io"
	"net"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // grpc.UseCompressor("gzip")
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// diffImpl is the echo implementation both sides serve: echoserver's, with
// a few behaviours picked by the request's message.
type diffImpl struct {
	echoserver.Server
	started chan string // a blocking handler started (capacity 1, one side at a time)
}

func (d *diffImpl) signal(what string) {
	select {
	case d.started <- what:
	default:
	}
}

func (d *diffImpl) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	switch req.GetMessage() {
	case "metadata":
		md, _ := metadata.FromIncomingContext(ctx)
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-header", "h1", "x-bin", "\x00\x01\xff"))
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t1", "x-tbin", "\xfe"))
		return &echov1.EchoResponse{Message: fmt.Sprintf("tenant=%q bin=%q", md.Get("x-tenant"), md.Get("x-raw-bin"))}, nil
	case "details":
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-header", "h1"))
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t1"))
		st, _ := status.New(codes.NotFound, "no such order").WithDetails(&errdetails.ResourceInfo{ResourceType: "order", ResourceName: "o-7"})
		return nil, st.Err()
	case "block":
		d.signal("block")
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	case "deadline?":
		// Whether there is one only: grpc-go's server counts the timeout
		// from when it read the call (a little after the caller's
		// deadline), the worker from the request record's timestamp.
		_, ok := ctx.Deadline()
		caller, _ := metadata.FromIncomingContext(ctx)
		return &echov1.EchoResponse{Message: fmt.Sprintf("deadline %v, multi=%q upper=%q",
			ok, caller.Get("x-multi"), caller.Get("x-upper"))}, nil
	}
	return d.Server.EchoUnary(ctx, req)
}

func (d *diffImpl) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	switch req.GetMessage() {
	case "zero":
		return nil
	case "header":
		if err := s.SendHeader(metadata.Pairs("x-stream", "open")); err != nil {
			return err
		}
		s.SetTrailer(metadata.Pairs("x-done", "yes"))
	case "details":
		s.SetTrailer(metadata.Pairs("x-trailer", "t1"))
		st, _ := status.New(codes.NotFound, "no such order").WithDetails(&errdetails.ResourceInfo{ResourceType: "order", ResourceName: "o-7"})
		return st.Err()
	case "header-then-fail":
		if err := s.SendHeader(metadata.Pairs("x-stream", "open")); err != nil {
			return err
		}
		s.SetTrailer(metadata.Pairs("x-done", "no"))
		return status.Error(codes.Aborted, "gave up")
	case "block":
		d.signal("block")
		<-s.Context().Done()
		return s.Context().Err()
	case "one-then-block":
		if err := s.Send(&echov1.EchoResponse{Message: "first"}); err != nil {
			return err
		}
		<-s.Context().Done()
		return s.Context().Err()
	}
	return d.Server.EchoServerStream(req, s)
}

func (d *diffImpl) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	if len(md.Get("x-echo-metadata")) > 0 {
		if err := s.Send(&echov1.EchoResponse{Message: fmt.Sprintf("tenant=%q bin=%q", md.Get("x-tenant"), md.Get("x-raw-bin"))}); err != nil {
			return err
		}
	}
	return d.Server.EchoBidiStream(s)
}

// diffSide is one way of calling the echo service.
type diffSide struct {
	name string
	cc   grpc.ClientConnInterface
	echo echov1.EchoServiceClient
}

// diffEnv is both sides, serving one diffImpl; icpt are both sides again,
// with client interceptors that note what they see in the context's obs.
type diffEnv struct {
	impl  *diffImpl
	sides [2]diffSide
	icpt  [2]diffSide
}

type obsKey struct{}

func obsOf(ctx context.Context) *obs {
	o, _ := ctx.Value(obsKey{}).(*obs)
	if o == nil {
		o = &obs{}
	}
	return o
}

func unaryNoting(name string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		o := obsOf(ctx)
		o.add("unary %s before %s (request %v)", name, method, req)
		err := invoker(metadata.AppendToOutgoingContext(ctx, "x-added-by-"+name, "1"), method, req, reply, cc, opts...)
		o.add("unary %s after: %s (reply %v)", name, errString(err), reply)
		return err
	}
}

func streamNoting(name string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		o := obsOf(ctx)
		o.add("stream %s before %s (server streams %v, client streams %v)", name, method, desc.ServerStreams, desc.ClientStreams)
		s, err := streamer(ctx, desc, cc, method, opts...)
		o.add("stream %s NewStream: %s", name, errString(err))
		if err != nil {
			return nil, err
		}
		return notingStream{s, name, o}, nil
	}
}

type notingStream struct {
	grpc.ClientStream
	name string
	o    *obs
}

func (n notingStream) SendMsg(m any) error {
	err := n.ClientStream.SendMsg(m)
	n.o.add("stream %s SendMsg %v: %s", n.name, m, errString(err))
	return err
}

func (n notingStream) RecvMsg(m any) error {
	err := n.ClientStream.RecvMsg(m)
	n.o.add("stream %s RecvMsg: %s", n.name, errString(err))
	return err
}

func newDiffEnv(t *testing.T) *diffEnv {
	t.Helper()
	impl := &diffImpl{started: make(chan string, 1)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	echov1.RegisterEchoServiceServer(srv, impl)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	gc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gc.Close() })

	gi, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(unaryNoting("A"), unaryNoting("B")),
		grpc.WithChainStreamInterceptor(streamNoting("A"), streamNoting("B")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gi.Close() })

	e := setup(t, impl)
	kcc, kecho := connTo(t, e.kc, e.prefix)
	kci, kechoi := connTo(t, e.kc, e.prefix,
		runtime.ConnUnaryInterceptor(unaryNoting("A")), runtime.ConnUnaryInterceptor(unaryNoting("B")),
		runtime.ConnStreamInterceptor(streamNoting("A"), streamNoting("B")))
	return &diffEnv{impl: impl, sides: [2]diffSide{
		{"grpc", gc, echov1.NewEchoServiceClient(gc)},
		{"ClientConn", kcc, kecho},
	}, icpt: [2]diffSide{
		{"grpc", gi, echov1.NewEchoServiceClient(gi)},
		{"ClientConn", kci, kechoi},
	}}
}

// obs is what a caller observed, one line per step.
type obs struct {
	mu    sync.Mutex
	lines []string
}

func (o *obs) add(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lines = append(o.lines, fmt.Sprintf(format, args...))
}

// errString describes an error as a gRPC caller sees it.
func errString(err error) string {
	switch {
	case err == nil:
		return "nil"
	case err == io.EOF:
		return "io.EOF"
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Sprintf("non-status error %T %v", err, err)
	}
	msg := st.Message()
	// The connection names the method in its own errors (grpc-go does not):
	// the same message otherwise.
	if strings.HasPrefix(msg, "/"+echov1.EchoService_ServiceDesc.ServiceName+"/") {
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			msg = rest
		}
	}
	var ds []string
	for _, d := range st.Details() {
		ds = append(ds, fmt.Sprint(d))
	}
	return fmt.Sprintf("%s %q details=%v", st.Code(), msg, ds)
}

// codeString is errString with the code only, for errors whose message is
// the transport's own wording.
func codeString(err error) string {
	switch err {
	case nil:
		return "nil"
	case io.EOF:
		return "io.EOF"
	}
	return status.Code(err).String()
}

// mdString describes metadata without grpc-go's transport header
// content-type; nil and empty alike.
func mdString(md metadata.MD) string {
	var ks []string
	for k, v := range md {
		if k == "content-type" {
			continue
		}
		ks = append(ks, fmt.Sprintf("%s=%q", k, v))
	}
	sort.Strings(ks)
	return "{" + strings.Join(ks, " ") + "}"
}

func (o *obs) err(what string, err error)  { o.add("%s: %s", what, errString(err)) }
func (o *obs) code(what string, err error) { o.add("%s: %s", what, codeString(err)) }
func (o *obs) md(what string, md metadata.MD) {
	o.add("%s: %s", what, mdString(md))
}
func (o *obs) resp(what string, r *echov1.EchoResponse, err error) {
	if err != nil {
		o.err(what, err)
		return
	}
	o.add("%s: %q #%d", what, r.GetMessage(), r.GetIndex())
}

// header records what Header() returned.
func (o *obs) header(what string, s grpc.ClientStream) {
	md, err := s.Header()
	o.add("%s: %s, %s", what, mdString(md), errString(err))
}

// drain records every message until RecvMsg fails, then RecvMsg once more.
func drain[T any](o *obs, recv func() (*T, error)) {
	for {
		r, err := recv()
		if err != nil {
			o.err("Recv end", err)
			_, err = recv()
			o.err("Recv again", err)
			return
		}
		o.add("Recv: %v", r)
	}
}

// cancelled returns a context cancelled already.
func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// waitStarted waits for a blocking handler of the side under test.
func (e *diffEnv) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-e.impl.started:
	case <-time.After(60 * time.Second):
		t.Fatal("the handler did not start within 60 s")
	}
}

// run runs scenario against both sides and fails when they observed
// different things.
func (e *diffEnv) run(t *testing.T, name string, scenario func(t *testing.T, s diffSide, o *obs)) {
	e.runOn(t, name, e.sides, scenario)
}

func (e *diffEnv) runOn(t *testing.T, name string, sides [2]diffSide, scenario func(t *testing.T, s diffSide, o *obs)) {
	t.Run(name, func(t *testing.T) {
		var got [2]*obs
		for i, s := range sides {
			got[i] = &obs{}
			scenario(t, s, got[i])
		}
		t.Logf("grpc-go observed:\n\t%s", strings.Join(got[0].lines, "\n\t"))
		if !slices.Equal(got[0].lines, got[1].lines) {
			t.Errorf("grpc-go and the ClientConn differ:\ngrpc-go:\n\t%s\nClientConn:\n\t%s",
				strings.Join(got[0].lines, "\n\t"), strings.Join(got[1].lines, "\n\t"))
		}
	})
}

func TestConnDiff(t *testing.T) {
	e := newDiffEnv(t)
	ctx := ctxFor(t, 120*time.Second)

	// Unary calls.
	e.run(t, "UnaryOK", func(t *testing.T, s diffSide, o *obs) {
		h, tr := metadata.Pairs("x-stale", "1"), metadata.Pairs("x-stale", "1")
		r, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"}, grpc.Header(&h), grpc.Trailer(&tr))
		o.resp("EchoUnary", r, err)
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})
	e.run(t, "UnaryMetadataBin", func(t *testing.T, s diffSide, o *obs) {
		octx := metadata.AppendToOutgoingContext(ctx, "x-tenant", "acme", "x-raw-bin", "\xff\x00")
		var h, tr metadata.MD
		r, err := s.echo.EchoUnary(octx, &echov1.EchoRequest{Message: "metadata"}, grpc.Header(&h), grpc.Trailer(&tr))
		o.resp("EchoUnary", r, err)
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})
	e.run(t, "UnaryFailWithDetails", func(t *testing.T, s diffSide, o *obs) {
		var h, tr metadata.MD
		r, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "details"}, grpc.Header(&h), grpc.Trailer(&tr))
		o.resp("EchoUnary", r, err)
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})
	e.run(t, "UnaryFailCode", func(t *testing.T, s diffSide, o *obs) {
		r, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "nope", FailCode: int32(codes.PermissionDenied)})
		o.resp("EchoUnary", r, err)
	})
	e.run(t, "UnaryOddStatus", func(t *testing.T, s diffSide, o *obs) {
		for _, c := range []codes.Code{codes.Unknown, codes.Unauthenticated, 42} {
			_, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "héllo wörld 100% %20 \n\t ✓ \x00", FailCode: int32(c)})
			o.err("EchoUnary", err)
		}
	})
	e.run(t, "DeadlineAndMetadataReachHandler", func(t *testing.T, s diffSide, o *obs) {
		// A caller without a deadline: the worker bounds the call with
		// WorkerMaxCallDuration (README, "a call without a deadline ... is
		// bounded by WorkerMaxCallDuration"): there the handler has a
		// deadline that grpc-go's does not. Documented, inherent (a call
		// holds its partition's committed offset): not compared.
		mctx := metadata.AppendToOutgoingContext(ctx, "x-multi", "a", "x-multi", "b", "X-Upper", "U")
		r, err := s.echo.EchoUnary(mctx, &echov1.EchoRequest{Message: "deadline?"})
		o.resp("EchoUnary", r, err)
	})
	e.run(t, "ContextAfterEnd", func(t *testing.T, s diffSide, o *obs) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := s.echo.EchoServerStream(cctx, &echov1.EchoRequest{Message: "m"})
		o.err("NewStream", err)
		o.add("Context().Err() before the end: %v", st.Context().Err())
		drain(o, st.Recv)
		o.add("Context().Err() after the end: %v", st.Context().Err())
		cancel()
		_, err = st.Recv()
		o.err("Recv after the end and a cancel", err)
		o.header("Header after the end and a cancel", st)
	})
	e.run(t, "UnaryDeadlinePast", func(t *testing.T, s diffSide, o *obs) {
		dctx, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel()
		h, tr := metadata.Pairs("x-stale", "1"), metadata.Pairs("x-stale", "1")
		r, err := s.echo.EchoUnary(dctx, &echov1.EchoRequest{Message: "late"}, grpc.Header(&h), grpc.Trailer(&tr))
		o.resp("EchoUnary", r, err)
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})
	e.run(t, "UnaryDeadlineAtWorker", func(t *testing.T, s diffSide, o *obs) {
		// The handler blocks until its context ends: only the deadline ends it.
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, err := s.echo.EchoUnary(dctx, &echov1.EchoRequest{Message: "block"})
		o.code("EchoUnary", err)
		select { // the handler may or may not have started
		case <-e.impl.started:
		default:
		}
	})
	e.run(t, "UnaryCancelledBefore", func(t *testing.T, s diffSide, o *obs) {
		h, tr := metadata.Pairs("x-stale", "1"), metadata.Pairs("x-stale", "1")
		r, err := s.echo.EchoUnary(cancelled(), &echov1.EchoRequest{Message: "x"}, grpc.Header(&h), grpc.Trailer(&tr))
		o.resp("EchoUnary", r, err)
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})
	e.run(t, "RefusedBeforeSendingEmptiesHeaderAndTrailer", func(t *testing.T, s diffSide, o *obs) {
		// Refused on the caller's side: a method the service does not
		// have, a request that is not a proto message, one over
		// MaxCallSendMsgSize. A grpc.Header or grpc.Trailer reused from an
		// earlier call must not keep that call's metadata. (NewStream of an
		// unknown method is not compared: the ClientConn fails it at once,
		// grpc-go at the first RecvMsg; TestConnUnregisteredMethodFailsAtOnce.)
		for _, refuse := range []func(h, tr *metadata.MD) error{
			func(h, tr *metadata.MD) error {
				return s.cc.Invoke(ctx, "/example.echo.v1.EchoService/Nope", &echov1.EchoRequest{}, new(echov1.EchoResponse), grpc.Header(h), grpc.Trailer(tr))
			},
			func(h, tr *metadata.MD) error {
				return s.cc.Invoke(ctx, echov1.EchoService_EchoUnary_FullMethodName, "not a message", new(echov1.EchoResponse), grpc.Header(h), grpc.Trailer(tr))
			},
			func(h, tr *metadata.MD) error {
				_, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: strings.Repeat("s", 200)}, grpc.MaxCallSendMsgSize(100), grpc.Header(h), grpc.Trailer(tr))
				return err
			},
		} {
			h, tr := metadata.Pairs("x-stale", "1"), metadata.Pairs("x-stale", "1")
			err := refuse(&h, &tr)
			o.code("call", err)
			o.md("grpc.Header", h)
			o.md("grpc.Trailer", tr)
		}
	})
	e.run(t, "RefusedWithContextEndedKeepsHeaderAndTrailer", func(t *testing.T, s diffSide, o *obs) {
		// grpc-go refuses a call whose context ended before its stream
		// begins: the targets keep what they had. (Its code, CANCELLED,
		// against the ClientConn's INTERNAL for the request is not
		// compared: grpc-go looks at the context first.)
		h, tr := metadata.Pairs("x-stale", "1"), metadata.Pairs("x-stale", "1")
		_ = s.cc.Invoke(cancelled(), echov1.EchoService_EchoUnary_FullMethodName, "not a message", new(echov1.EchoResponse), grpc.Header(&h), grpc.Trailer(&tr))
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})
	e.run(t, "UnknownMethodOfService", func(t *testing.T, s diffSide, o *obs) {
		err := s.cc.Invoke(ctx, "/example.echo.v1.EchoService/Nope", &echov1.EchoRequest{}, new(echov1.EchoResponse))
		o.err("Invoke", err)
	})
	e.run(t, "OneRequestMethodSentTwice", func(t *testing.T, s diffSide, o *obs) {
		// A hand-written caller of a server-streaming method that sends
		// twice: the second SendMsg fails, and so does the call, rather
		// than the second request being dropped unseen.
		st, err := s.cc.NewStream(ctx, &echov1.EchoService_ServiceDesc.Streams[0], echov1.EchoService_EchoServerStream_FullMethodName)
		o.err("NewStream", err)
		o.err("SendMsg", st.SendMsg(&echov1.EchoRequest{Message: "s1"}))
		o.code("SendMsg again", st.SendMsg(&echov1.EchoRequest{Message: "s2"}))
		o.err("CloseSend", st.CloseSend())
		o.code("RecvMsg", st.RecvMsg(new(echov1.EchoResponse)))
		// A unary method called through NewStream with a StreamDesc that
		// says it streams requests: grpc-go's server fails the call when
		// the second request arrives, the ClientConn at the second
		// SendMsg (not compared); the call ends INTERNAL either way.
		st, err = s.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, echov1.EchoService_EchoUnary_FullMethodName)
		o.err("NewStream", err)
		o.err("SendMsg", st.SendMsg(&echov1.EchoRequest{Message: "u1"}))
		_ = st.SendMsg(&echov1.EchoRequest{Message: "u2"})
		_ = st.CloseSend()
		o.code("RecvMsg", st.RecvMsg(new(echov1.EchoResponse)))
	})
	e.run(t, "UnaryCancelDuring", func(t *testing.T, s diffSide, o *obs) {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := s.echo.EchoUnary(cctx, &echov1.EchoRequest{Message: "block"})
			done <- err
		}()
		e.waitStarted(t)
		cancel()
		o.err("EchoUnary", <-done)
	})
	e.run(t, "UnaryCancelDuringHeaderTrailer", func(t *testing.T, s diffSide, o *obs) {
		cctx, cancel := context.WithCancel(ctx)
		h, tr := metadata.Pairs("x-stale", "1"), metadata.Pairs("x-stale", "1")
		done := make(chan error, 1)
		go func() {
			_, err := s.echo.EchoUnary(cctx, &echov1.EchoRequest{Message: "block"}, grpc.Header(&h), grpc.Trailer(&tr))
			done <- err
		}()
		e.waitStarted(t)
		cancel()
		o.err("EchoUnary", <-done)
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})

	// Server streams.
	e.run(t, "ServerStream", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 5})
		o.err("NewStream", err)
		o.header("Header", st)
		drain(o, st.Recv)
		o.md("Trailer", st.Trailer())
		o.header("Header after end", st)
	})
	e.run(t, "ServerStreamHeaderAndTrailer", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "header", Repeat: 2})
		o.err("NewStream", err)
		o.header("Header before any message", st)
		drain(o, st.Recv)
		o.md("Trailer", st.Trailer())
	})
	e.run(t, "ServerStreamZeroMessages", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "zero"})
		o.err("NewStream", err)
		o.header("Header", st)
		drain(o, st.Recv)
		o.md("Trailer", st.Trailer())
	})
	e.run(t, "ServerStreamFails", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "gone", FailCode: int32(codes.FailedPrecondition)})
		o.err("NewStream", err)
		o.header("Header", st)
		drain(o, st.Recv)
		o.md("Trailer", st.Trailer())
	})
	e.run(t, "ServerStreamHeaderThenFail", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "header-then-fail"})
		o.err("NewStream", err)
		o.header("Header", st)
		drain(o, st.Recv)
		o.md("Trailer", st.Trailer())
	})
	e.run(t, "ServerStreamCancelledBefore", func(t *testing.T, s diffSide, o *obs) {
		_, err := s.echo.EchoServerStream(cancelled(), &echov1.EchoRequest{Message: "x"})
		o.err("NewStream", err)
	})
	e.run(t, "ServerStreamDeadlinePast", func(t *testing.T, s diffSide, o *obs) {
		dctx, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel()
		_, err := s.echo.EchoServerStream(dctx, &echov1.EchoRequest{Message: "x"})
		o.err("NewStream", err)
	})
	e.run(t, "ServerStreamCancelDuring", func(t *testing.T, s diffSide, o *obs) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := s.echo.EchoServerStream(cctx, &echov1.EchoRequest{Message: "one-then-block"})
		o.err("NewStream", err)
		r, err := st.Recv()
		o.resp("Recv", r, err)
		cancel()
		drain(o, st.Recv)
		o.md("Trailer", st.Trailer())
	})
	e.run(t, "HeaderWaitCancelled", func(t *testing.T, s diffSide, o *obs) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := s.echo.EchoServerStream(cctx, &echov1.EchoRequest{Message: "block"})
		o.err("NewStream", err)
		e.waitStarted(t)
		type result struct {
			md  metadata.MD
			err error
		}
		hc := make(chan result, 1)
		go func() {
			md, err := st.Header()
			hc <- result{md, err}
		}()
		cancel() // before or while Header() waits: the same either way
		h := <-hc
		o.add("Header: %s, %s", mdString(h.md), errString(h.err))
		drain(o, st.Recv)
	})

	e.run(t, "ServerStreamFailWithDetails", func(t *testing.T, s diffSide, o *obs) {
		var h, tr metadata.MD
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "details"}, grpc.Header(&h), grpc.Trailer(&tr))
		o.err("NewStream", err)
		drain(o, st.Recv)
		o.md("Trailer", st.Trailer())
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})
	e.run(t, "ServerStreamCallOptionsHeaderTrailer", func(t *testing.T, s diffSide, o *obs) {
		var h, tr metadata.MD
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "header", Repeat: 2}, grpc.Header(&h), grpc.Trailer(&tr))
		o.err("NewStream", err)
		drain(o, st.Recv)
		o.md("grpc.Header", h)
		o.md("grpc.Trailer", tr)
	})
	e.run(t, "ServerStreamDeadlineAtWorker", func(t *testing.T, s diffSide, o *obs) {
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		st, err := s.echo.EchoServerStream(dctx, &echov1.EchoRequest{Message: "block"})
		if err == nil {
			_, err = st.Recv()
		}
		o.code("Recv", err)
		select { // the handler may or may not have started
		case <-e.impl.started:
		default:
		}
	})
	e.run(t, "OnFinish", func(t *testing.T, s diffSide, o *obs) {
		note := func(what string) grpc.CallOption {
			return grpc.OnFinish(func(err error) { o.err("OnFinish "+what, err) })
		}
		_, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "ok"}, note("unary OK"))
		o.err("EchoUnary", err)
		_, err = s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "no", FailCode: int32(codes.NotFound)}, note("unary NOT_FOUND"))
		o.err("EchoUnary", err)
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 2}, note("server stream"))
		o.err("NewStream", err)
		drain(o, st.Recv)
		bs, err := s.echo.EchoBidiStream(ctx, note("bidi"))
		o.err("NewStream", err)
		o.err("CloseSend", bs.CloseSend())
		drain(o, bs.Recv)
	})
	e.runOn(t, "Interceptors", e.icpt, func(t *testing.T, s diffSide, o *obs) {
		ictx := context.WithValue(ctx, obsKey{}, o)
		r, err := s.echo.EchoUnary(ictx, &echov1.EchoRequest{Message: "via interceptors"})
		o.resp("EchoUnary", r, err)
		_, err = s.echo.EchoUnary(ictx, &echov1.EchoRequest{Message: "no", FailCode: int32(codes.NotFound)})
		o.err("EchoUnary", err)
		st, err := s.echo.EchoServerStream(ictx, &echov1.EchoRequest{Message: "m", Repeat: 2})
		o.err("NewStream", err)
		drain(o, st.Recv)
		bs, err := s.echo.EchoBidiStream(ictx)
		o.err("NewStream", err)
		o.err("Send", bs.Send(&echov1.EchoRequest{Message: "b"}))
		r, err = bs.Recv()
		o.resp("Recv", r, err)
		o.err("CloseSend", bs.CloseSend())
		drain(o, bs.Recv)
	})

	// Client streams.
	e.run(t, "ClientStream", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoClientStream(ctx)
		o.err("NewStream", err)
		for i := range 3 {
			o.err("Send", st.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}))
		}
		r, err := st.CloseAndRecv()
		o.resp("CloseAndRecv", r, err)
		o.err("CloseSend again", st.CloseSend())
		o.code("Send after CloseSend", st.Send(&echov1.EchoRequest{Message: "late"}))
		o.err("RecvMsg after the end", st.RecvMsg(new(echov1.EchoResponse)))
		o.md("Trailer", st.Trailer())
		o.header("Header after end", st)
	})
	e.run(t, "ClientStreamZeroRequests", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoClientStream(ctx)
		o.err("NewStream", err)
		r, err := st.CloseAndRecv()
		o.resp("CloseAndRecv", r, err)
	})
	e.run(t, "ClientStreamFails", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoClientStream(ctx)
		o.err("NewStream", err)
		o.err("Send", st.Send(&echov1.EchoRequest{Message: "bad", FailCode: int32(codes.InvalidArgument)}))
		r, err := st.CloseAndRecv()
		o.resp("CloseAndRecv", r, err)
		o.err("Send after the end", st.Send(&echov1.EchoRequest{Message: "late"}))
	})
	e.run(t, "ClientStreamCancelledBefore", func(t *testing.T, s diffSide, o *obs) {
		_, err := s.echo.EchoClientStream(cancelled())
		o.err("NewStream", err)
	})
	e.run(t, "ClientStreamCancelDuring", func(t *testing.T, s diffSide, o *obs) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := s.echo.EchoClientStream(cctx)
		o.err("NewStream", err)
		o.err("Send", st.Send(&echov1.EchoRequest{Message: "a"}))
		cancel()
		r, err := st.CloseAndRecv()
		o.resp("CloseAndRecv", r, err)
		o.err("Send after the end", st.Send(&echov1.EchoRequest{Message: "late"}))
		o.err("RecvMsg again", st.RecvMsg(new(echov1.EchoResponse)))
	})

	// Bidi streams.
	e.run(t, "Bidi", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoBidiStream(ctx)
		o.err("NewStream", err)
		for i := range 3 {
			o.err("Send", st.Send(&echov1.EchoRequest{Message: fmt.Sprint("b", i)}))
			r, err := st.Recv()
			o.resp("Recv", r, err)
		}
		o.header("Header", st)
		o.err("CloseSend", st.CloseSend())
		o.err("CloseSend again", st.CloseSend())
		o.code("Send after CloseSend", st.Send(&echov1.EchoRequest{Message: "late"}))
		drain(o, st.Recv)
		o.md("Trailer", st.Trailer())
	})
	e.run(t, "BidiConcurrentSendRecv", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoBidiStream(ctx)
		o.err("NewStream", err)
		const n = 50
		sent := make(chan error, 1)
		go func() {
			for i := range n {
				if err := st.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}); err != nil {
					sent <- err
					return
				}
			}
			sent <- st.CloseSend()
		}()
		var got []string
		for {
			r, err := st.Recv()
			if err != nil {
				o.err("Recv end", err)
				break
			}
			got = append(got, fmt.Sprintf("%s#%d", r.GetMessage(), r.GetIndex()))
		}
		o.err("sender", <-sent)
		o.add("received %d: %v", len(got), got)
	})
	e.run(t, "BidiServerEndsFirst", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoBidiStream(ctx)
		o.err("NewStream", err)
		o.err("Send", st.Send(&echov1.EchoRequest{Message: "ok"}))
		r, err := st.Recv()
		o.resp("Recv", r, err)
		o.err("Send", st.Send(&echov1.EchoRequest{Message: "stop", FailCode: int32(codes.Aborted)}))
		r, err = st.Recv()
		o.resp("Recv", r, err)
		o.err("Send after the server ended", st.Send(&echov1.EchoRequest{Message: "late"}))
		o.err("Recv again", st.RecvMsg(new(echov1.EchoResponse)))
		o.md("Trailer", st.Trailer())
	})
	e.run(t, "BidiMetadata", func(t *testing.T, s diffSide, o *obs) {
		mctx := metadata.AppendToOutgoingContext(ctx, "x-echo-metadata", "1", "x-tenant", "acme", "x-raw-bin", "\xff\x00")
		st, err := s.echo.EchoBidiStream(mctx)
		o.err("NewStream", err)
		o.err("Send", st.Send(&echov1.EchoRequest{Message: "a"}))
		o.err("CloseSend", st.CloseSend())
		drain(o, st.Recv)
	})
	e.run(t, "BidiDeadlineDuring", func(t *testing.T, s diffSide, o *obs) {
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		st, err := s.echo.EchoBidiStream(dctx)
		if err == nil {
			if err = st.Send(&echov1.EchoRequest{Message: "a"}); err == nil {
				if _, err = st.Recv(); err == nil {
					_, err = st.Recv() // the handler waits for the next request
				}
			}
		}
		o.code("until the deadline", err)
	})
	e.run(t, "ClientStreamHeaderBeforeRecv", func(t *testing.T, s diffSide, o *obs) {
		st, err := s.echo.EchoClientStream(ctx)
		o.err("NewStream", err)
		o.err("Send", st.Send(&echov1.EchoRequest{Message: "a"}))
		o.err("CloseSend", st.CloseSend())
		o.header("Header", st)
		r := new(echov1.EchoResponse)
		err = st.RecvMsg(r)
		o.resp("RecvMsg", r, err)
		o.err("RecvMsg again", st.RecvMsg(r))
	})
	e.run(t, "NotProtoMessages", func(t *testing.T, s diffSide, o *obs) {
		err := s.cc.Invoke(ctx, echov1.EchoService_EchoUnary_FullMethodName, "not a message", new(echov1.EchoResponse))
		o.code("Invoke with a string request", err)
		st, err := s.cc.NewStream(ctx, &echov1.EchoService_ServiceDesc.Streams[2], echov1.EchoService_EchoBidiStream_FullMethodName)
		o.err("NewStream", err)
		o.code("SendMsg of a string", st.SendMsg("not a message"))
		o.code("RecvMsg", st.RecvMsg(new(echov1.EchoResponse)))
		st, err = s.cc.NewStream(ctx, &echov1.EchoService_ServiceDesc.Streams[2], echov1.EchoService_EchoBidiStream_FullMethodName)
		o.err("NewStream", err)
		o.err("SendMsg", st.SendMsg(&echov1.EchoRequest{Message: "a"}))
		var str string
		o.code("RecvMsg into a string", st.RecvMsg(&str))
		o.code("RecvMsg", st.RecvMsg(new(echov1.EchoResponse)))
		o.code("SendMsg", st.SendMsg(&echov1.EchoRequest{Message: "b"}))
	})
	e.run(t, "BidiCancelledBefore", func(t *testing.T, s diffSide, o *obs) {
		_, err := s.echo.EchoBidiStream(cancelled())
		o.err("NewStream", err)
	})
	e.run(t, "BidiCancelDuring", func(t *testing.T, s diffSide, o *obs) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := s.echo.EchoBidiStream(cctx)
		o.err("NewStream", err)
		o.err("Send", st.Send(&echov1.EchoRequest{Message: "a"}))
		r, err := st.Recv()
		o.resp("Recv", r, err)
		cancel()
		drain(o, st.Recv)
		o.err("Send after the end", st.Send(&echov1.EchoRequest{Message: "late"}))
	})

	// Big messages, under both gRPC's default 4 MiB and Kafka's 8 MiB.
	e.run(t, "BigMessage", func(t *testing.T, s diffSide, o *obs) {
		big := strings.Repeat("x", 3<<20)
		r, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: big})
		o.add("EchoUnary: %s, %d bytes", errString(err), len(r.GetMessage()))
		st, err := s.echo.EchoBidiStream(ctx)
		o.err("NewStream", err)
		o.err("Send", st.Send(&echov1.EchoRequest{Message: big}))
		r, err = st.Recv()
		o.add("Recv: %s, %d bytes", errString(err), len(r.GetMessage()))
		o.err("CloseSend", st.CloseSend())
		drain(o, st.Recv)
	})

	// A method the connection has no spec for: UNIMPLEMENTED, whose message
	// is the server's (or the connection's) own wording. grpc-go reports it
	// on the stream's first RecvMsg, the connection on NewStream: either
	// way the caller gets UNIMPLEMENTED from the call.
	e.run(t, "UnknownMethod", func(t *testing.T, s diffSide, o *obs) {
		err := s.cc.Invoke(ctx, "/example.echo.v1.EchoService/Nope", &echov1.EchoRequest{}, new(echov1.EchoResponse))
		o.code("Invoke unknown method", err)
		err = s.cc.Invoke(ctx, "/example.nope.v1.Nope/Nope", &echov1.EchoRequest{}, new(echov1.EchoResponse))
		o.code("Invoke unknown service", err)
		st, err := s.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/example.echo.v1.EchoService/NopeStream")
		if err == nil {
			_ = st.CloseSend()
			err = st.RecvMsg(new(echov1.EchoResponse))
		}
		o.code("stream of an unknown method", err)
	})

	// Call options.
	e.run(t, "WaitForReady", func(t *testing.T, s diffSide, o *obs) {
		r, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "ready"}, grpc.WaitForReady(true))
		o.resp("EchoUnary", r, err)
	})
	e.run(t, "UseCompressorGzip", func(t *testing.T, s diffSide, o *obs) {
		r, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "zip"}, grpc.UseCompressor("gzip"))
		o.resp("EchoUnary", r, err)
	})
	e.run(t, "MaxCallRecvMsgSize", func(t *testing.T, s diffSide, o *obs) {
		long := strings.Repeat("r", 200)
		_, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: long}, grpc.MaxCallRecvMsgSize(100))
		o.code("EchoUnary reply over the limit", err)
		r, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "short"}, grpc.MaxCallRecvMsgSize(100))
		o.resp("EchoUnary reply under the limit", r, err)
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: long, Repeat: 2}, grpc.MaxCallRecvMsgSize(100))
		o.err("NewStream", err)
		_, err = st.Recv()
		o.code("server stream reply over the limit", err)
	})
	e.run(t, "MaxCallSendMsgSize", func(t *testing.T, s diffSide, o *obs) {
		long := strings.Repeat("s", 200)
		_, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: long}, grpc.MaxCallSendMsgSize(100))
		o.code("EchoUnary request over the limit", err)
		st, err := s.echo.EchoBidiStream(ctx, grpc.MaxCallSendMsgSize(100))
		o.err("NewStream", err)
		o.err("Send under the limit", st.Send(&echov1.EchoRequest{Message: "short"}))
		r, err := st.Recv()
		o.resp("Recv", r, err)
		o.code("Send over the limit", st.Send(&echov1.EchoRequest{Message: long}))
		_, err = st.Recv()
		o.code("Recv after", err)
	})
}

// TestConnDiffOnFinishAfterLastMessage: grpc-go ends a stream, and runs its
// grpc.OnFinish callbacks, inside the RecvMsg that returns the end, so that
// a callback never runs while the caller still handles the last message
// (the two are ordered, without a data race between them). The connection
// ended the call once the worker's end arrived: OnFinish ran concurrently
// with the caller's handling of the last message (seen at once, in the
// first calls, with either Kafka client). Each side makes many calls, each
// checking the order; the flaky TestConnDiff/OnFinish found it. A check
// that can only fail when the order is wrong: with the fix, OnFinish
// cannot run before that RecvMsg, whatever the scheduling.
func TestConnDiffOnFinishAfterLastMessage(t *testing.T) {
	e := newDiffEnv(t)
	ctx := ctxFor(t, 120*time.Second)
	for _, s := range e.sides {
		for i := range 100 {
			var finished atomic.Bool
			onFinish := grpc.OnFinish(func(error) { finished.Store(true) })
			st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 2}, onFinish)
			if err != nil {
				t.Fatal(err)
			}
			for j := range 2 {
				if _, err := st.Recv(); err != nil {
					t.Fatalf("%s: call %d, message %d: %v", s.name, i, j, err)
				}
				// Let other goroutines run, as a caller handling the
				// message would: OnFinish must not, whatever they do.
				for range 100 {
					goruntime.Gosched()
				}
				if finished.Load() {
					t.Fatalf("%s: call %d: OnFinish ran before the RecvMsg that returns the end (message %d just received)", s.name, i, j)
				}
			}
			if _, err := st.Recv(); err != io.EOF {
				t.Fatalf("%s: call %d end: %v", s.name, i, err)
			}
			if !finished.Load() {
				t.Fatalf("%s: call %d: OnFinish had not run when RecvMsg returned io.EOF", s.name, i)
			}
		}
	}
}

// closeOf returns the Close of a side's connection.
func closeOf(s diffSide) func() error {
	switch cc := s.cc.(type) {
	case *grpc.ClientConn:
		return cc.Close
	case *runtime.ClientConn:
		return cc.Close
	}
	panic(fmt.Sprintf("a diffSide of %T", s.cc))
}

// TestConnDiffCloseEndsUnreadStreams: a stream whose caller stopped reading
// (replies waiting for it) and whose context never ends is ended by Close,
// as grpc-go's: grpc.OnFinish runs with CANCELLED and RecvMsg returns it.
// The ClientConn kept such a call, its goroutine and its place in the reply
// router forever.
func TestConnDiffCloseEndsUnreadStreams(t *testing.T) {
	e := newDiffEnv(t)
	e.run(t, "UnreadStreams", func(t *testing.T, s diffSide, o *obs) {
		var finished [2]chan error
		for j := range finished {
			finished[j] = make(chan error, 1)
		}
		onFinish := func(j int) grpc.CallOption {
			return grpc.OnFinish(func(err error) { finished[j] <- err })
		}
		ss, err := s.echo.EchoServerStream(context.Background(), &echov1.EchoRequest{Message: "one-then-block"}, onFinish(0))
		o.err("server stream", err)
		bidi, err := s.echo.EchoBidiStream(context.Background(), onFinish(1))
		o.err("bidi stream", err)
		o.err("Send", bidi.Send(&echov1.EchoRequest{Message: "a"}))
		o.err("Send", bidi.Send(&echov1.EchoRequest{Message: "b"}))
		// Header returns once the first reply is in: replies wait unread.
		o.header("server stream Header", ss)
		o.header("bidi Header", bidi)
		o.err("Close", closeOf(s)())
		for j, what := range []string{"server stream", "bidi"} {
			select {
			case err := <-finished[j]:
				o.code(what+" OnFinish", err)
			case <-time.After(30 * time.Second):
				o.add("%s: OnFinish not called within 30 s of Close", what)
			}
		}
		// grpc-go returns the responses its transport had read before the
		// status; the ClientConn the status at once: the status compared.
		for j, recv := range []func() (*echov1.EchoResponse, error){ss.Recv, bidi.Recv} {
			for range 10 {
				if _, err = recv(); err != nil {
					break
				}
			}
			o.add("%s Recv until it fails: %s", [2]string{"server stream", "bidi"}[j], codeString(err))
		}
	})
}

// TestConnDiffClose closes the connection with a unary call and a stream
// in flight, then calls again.
func TestConnDiffClose(t *testing.T) {
	e := newDiffEnv(t)
	ctx := ctxFor(t, 120*time.Second)
	e.run(t, "InFlight", func(t *testing.T, s diffSide, o *obs) {
		done := make(chan error, 1)
		go func() {
			_, err := s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "block"})
			done <- err
		}()
		e.waitStarted(t)
		st, err := s.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "one-then-block"})
		o.err("NewStream", err)
		r, err := st.Recv()
		o.resp("Recv", r, err)
		o.err("Close", closeOf(s)())
		o.code("unary in flight", <-done)
		_, err = st.Recv()
		o.code("stream in flight", err)
		_, err = s.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"})
		o.code("unary after Close", err) // the message is each connection's own wording
		_, err = s.echo.EchoBidiStream(ctx)
		o.code("stream after Close", err)
	})
}
