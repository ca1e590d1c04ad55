package runtime_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// A caller whose deadline is as far away as a time.Duration reaches (a
// "no real deadline" date such as the year 9999) is served as by a plain gRPC
// server: the call succeeds.
func TestGwAdvFarDeadline(t *testing.T) {
	e := setup(t, echoserver.Server{})
	for _, dl := range []time.Time{time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), time.Now().Add(200 * 365 * 24 * time.Hour)} {
		ctx, cancel := context.WithDeadline(context.Background(), dl)
		stop := context.AfterFunc(ctxFor(t, 60*time.Second), cancel) // bounds the test
		resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "far"})
		stop()
		cancel()
		if err != nil {
			t.Fatalf("deadline %v: EchoUnary: %v", dl, err)
		}
		if resp.GetMessage() != "far" {
			t.Fatalf("deadline %v: got %q", dl, resp.GetMessage())
		}
	}
}

// countingClient counts the records produced through it to topics ending in
// suffix.
type countingClient struct {
	kafkaclient.Client
	suffix string
	n      atomic.Int32
}

func (c *countingClient) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if strings.HasSuffix(r.Topic, c.suffix) {
		c.n.Add(1)
	}
	c.Client.Produce(r, acks, done)
}

// A call that reaches a gateway after its Close began (the gRPC server in
// front of it still serving) ends UNAVAILABLE, as Close says, and nothing of
// it reaches Kafka: a caller that retries an UNAVAILABLE call elsewhere
// must not have it run by a worker as well.
func TestGwAdvCallAfterCloseProducesNothing(t *testing.T) {
	e := setup(t, echoserver.Server{})
	cc := &countingClient{Client: e.kc, suffix: "echo-requests"}
	gw := runtime.NewGateway(cc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }))
	echo := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := ctxFor(t, 60*time.Second)
	if _, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "before"}); err != nil {
		t.Fatalf("EchoUnary before Close: %v", err)
	}
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	before := cc.n.Load()
	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("unary after Close: %v, want UNAVAILABLE", err)
	}
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "after", Repeat: 2})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("server stream after Close: %v, want UNAVAILABLE", err)
	}
	b, err := echo.EchoBidiStream(ctx)
	if err == nil {
		_ = b.Send(&echov1.EchoRequest{Message: "after"})
		_, err = b.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("bidi after Close: %v, want UNAVAILABLE", err)
	}
	if n := cc.n.Load() - before; n != 0 {
		t.Errorf("calls after Close produced %d request records", n)
	}
}

// gwAdvDiff runs scenarios against a plain gRPC server of diffServer and a
// gateway in front of a worker of it, and compares what their callers see.
func gwAdvDiff(t *testing.T, scenarios []diffScenario) {
	gwAdvDiffWith(t, nil, scenarios)
}

// gwAdvDiffWith is gwAdvDiff with opts added to both servers' options.
func gwAdvDiffWith(t *testing.T, opts []grpc.ServerOption, scenarios []diffScenario) {
	gwAdvDiffOf(t, gwAdvServer{}, opts, scenarios)
}

// gwAdvDiffOf is gwAdvDiffWith serving impl.
func gwAdvDiffOf(t *testing.T, impl echov1.EchoServiceServer, opts []grpc.ServerOption, scenarios []diffScenario) {
	e := setup(t, impl)
	plainCC := serveWith(t, append([]grpc.ServerOption{grpc.MaxRecvMsgSize(kafkaclient.MaxMessageBytes)}, opts...), func(s *grpc.Server) {
		echov1.RegisterEchoServiceServer(s, impl)
	})
	gwCC := serveWith(t, append(runtime.GatewayServerOptions(), opts...), func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, e.gw); err != nil {
			t.Fatal(err)
		}
	})
	targets := []diffTarget{{"grpc", plainCC, echov1.NewEchoServiceClient(plainCC)}, {"gateway", gwCC, echov1.NewEchoServiceClient(gwCC)}}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			var got [2]observer
			for i, tg := range targets {
				sc.run(t, tg, &got[i])
			}
			t.Logf("grpc sees:\n%s", strings.Join(got[0].lines, "\n"))
			if d := diffLines(got[0].lines, got[1].lines, "gateway"); d != "" {
				t.Errorf("the gateway's caller sees otherwise than gRPC's:\n%s", d)
			}
		})
	}
}

func TestGwAdvDiffMetadata(t *testing.T) {
	unary := func(name string, md metadata.MD) diffScenario {
		return diffScenario{name, func(t *testing.T, tg diffTarget, o *observer) {
			ctx := metadata.NewOutgoingContext(ctxFor(t, 60*time.Second), md)
			var hdr, trl metadata.MD
			r, err := tg.client.EchoUnary(ctx, &echov1.EchoRequest{Message: "md"}, grpc.Header(&hdr), grpc.Trailer(&trl))
			o.resp("unary", r, err)
			o.md("header", hdr)
			o.md("trailer", trl)
			s, err := tg.client.EchoBidiStream(ctx)
			o.err("open", err)
			o.err("send", s.Send(&echov1.EchoRequest{Message: "md"}))
			o.err("close send", s.CloseSend())
			h, err := s.Header()
			o.err("Header()", err)
			o.md("stream header", h)
			drainObserved(o, "recv", s.Recv)
			o.md("stream trailer", s.Trailer())
		}}
	}
	many := metadata.MD{}
	for i := range 300 {
		many.Append("x-many", fmt.Sprint(i))
		many.Append("x-many-bin", string([]byte{byte(i), 0, byte(i >> 8)}))
	}
	gwAdvDiff(t, []diffScenario{
		unary("empty values", metadata.Pairs("x-empty", "", "x-empty-bin", "", "x-two-empty", "", "x-two-empty", "")),
		unary("empty and non-empty values", metadata.Pairs("x-mixed", "", "x-mixed", "a", "x-mixed", "", "x-mixed-bin", "", "x-mixed-bin", "\x00")),
		unary("many values", many),
		unary("odd ASCII values", metadata.Pairs("x-odd", " leading and trailing ", "x-punct", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")),
		unary("names with digits, dots and underscores", metadata.Pairs("x-a.b_c-1", "v", "x-9", "nine")),
	})
}

// A caller whose connection goes away mid-call (its ClientConn closed, or
// the TCP connection dropped) ends the handler's call as gRPC's server does:
// its context ends CANCELLED, whatever the call's kind.
func TestGwAdvDiffConnectionGone(t *testing.T) {
	gone := func(name string, drop func(cc *grpc.ClientConn, conns *connList)) diffScenario {
		return diffScenario{name, func(t *testing.T, tg diffTarget, o *observer) {
			wait := &echov1.EchoRequest{Message: "wait-end"}
			for _, kind := range []string{"unary", "server", "client", "bidi"} {
				conns := &connList{}
				cc, err := grpc.NewClient(tg.cc.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(conns.dial))
				if err != nil {
					t.Fatal(err)
				}
				client := echov1.NewEchoServiceClient(cc)
				p := &diffProbe{make(chan string, 1), make(chan string, 1)}
				probe := tg.name + "/" + name + "/" + kind
				diffProbes.Store(probe, p)
				ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "diff-probe", probe)
				errc := make(chan error, 1)
				go func() {
					var err error
					switch kind {
					case "unary":
						_, err = client.EchoUnary(ctx, wait)
					case "server":
						var s grpc.ServerStreamingClient[echov1.EchoResponse]
						if s, err = client.EchoServerStream(ctx, wait); err == nil {
							_, err = s.Recv()
						}
					case "client":
						var s grpc.ClientStreamingClient[echov1.EchoRequest, echov1.EchoResponse]
						if s, err = client.EchoClientStream(ctx); err == nil {
							if err = s.Send(wait); err == nil {
								_, err = s.CloseAndRecv()
							}
						}
					case "bidi":
						var s grpc.BidiStreamingClient[echov1.EchoRequest, echov1.EchoResponse]
						if s, err = client.EchoBidiStream(ctx); err == nil {
							if err = s.Send(wait); err == nil {
								_, err = s.Recv()
							}
						}
					}
					errc <- err
				}()
				select {
				case <-p.started:
				case <-ctx.Done():
					t.Fatalf("%s: the handler did not start", kind)
				}
				drop(cc, conns)
				select {
				case ended := <-p.ended:
					o.add("%s: the handler's context ended %s", kind, ended)
				case <-ctx.Done():
					o.add("%s: the handler's context did not end", kind)
				}
				o.add("%s: caller's code %s", kind, status.Code(<-errc))
				_ = cc.Close()
			}
		}}
	}
	gwAdvDiff(t, []diffScenario{
		gone("ClientConn closed", func(cc *grpc.ClientConn, _ *connList) { _ = cc.Close() }),
		gone("TCP connection dropped", func(_ *grpc.ClientConn, conns *connList) { conns.closeAll() }),
	})
}

// connList dials TCP and remembers the connections, to drop them.
type connList struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (l *connList) dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *connList) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.Close()
	}
}

// A gateway whose server limits the messages it sends and receives
// (grpc.MaxSendMsgSize, grpc.MaxRecvMsgSize) fails a call whose message is
// over the limit as gRPC's server does, whichever way the message goes and
// whatever the call's kind.
func TestGwAdvDiffServerMessageLimits(t *testing.T) {
	const limit = 1000
	small, big := strings.Repeat("s", 100), strings.Repeat("b", 2*limit)
	scenario := func(name, msg string, repeat int32) diffScenario {
		return diffScenario{name, func(t *testing.T, tg diffTarget, o *observer) {
			ctx := ctxFor(t, 60*time.Second)
			r, err := tg.client.EchoUnary(ctx, &echov1.EchoRequest{Message: msg, Repeat: repeat})
			o.resp("unary", r, err)
			s, err := tg.client.EchoServerStream(ctx, &echov1.EchoRequest{Message: msg, Repeat: repeat})
			o.err("server open", err)
			drainObserved(o, "server recv", s.Recv)
			c, err := tg.client.EchoClientStream(ctx)
			o.err("client open", err)
			_ = c.Send(&echov1.EchoRequest{Message: msg, Repeat: repeat})
			r, err = c.CloseAndRecv()
			o.resp("client", r, err)
			b, err := tg.client.EchoBidiStream(ctx)
			o.err("bidi open", err)
			_ = b.Send(&echov1.EchoRequest{Message: msg, Repeat: repeat})
			_ = b.CloseSend()
			drainObserved(o, "bidi recv", b.Recv)
		}}
	}
	t.Run("send", func(t *testing.T) {
		gwAdvDiffWith(t, []grpc.ServerOption{grpc.MaxSendMsgSize(limit)}, []diffScenario{
			scenario("under", small, 2),
			scenario("over", big, 2),
		})
	})
	t.Run("receive", func(t *testing.T) {
		gwAdvDiffWith(t, []grpc.ServerOption{grpc.MaxRecvMsgSize(limit)}, []diffScenario{
			scenario("under", small, 2),
			scenario("over", big, 2),
		})
	})
}

// Metadata of a few MiB (under gRPC's 16 MiB header list limit, and under
// the 8 MiB records of a topic the project creates) travels as with gRPC.
func TestGwAdvDiffLargeMetadata(t *testing.T) {
	scenario := func(name string, size int) diffScenario {
		return diffScenario{name, func(t *testing.T, tg diffTarget, o *observer) {
			ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "x-big", strings.Repeat("v", size), "x-big-bin", strings.Repeat("\x01", size/4))
			var hdr, trl metadata.MD
			r, err := tg.client.EchoUnary(ctx, &echov1.EchoRequest{Message: "big md"}, grpc.Header(&hdr), grpc.Trailer(&trl))
			o.resp("unary", r, err)
			o.add("header bytes %d, trailer bytes %d", mdBytes(hdr), mdBytes(trl))
			s, err := tg.client.EchoBidiStream(ctx)
			o.err("open", err)
			for i := range 3 {
				o.err("send", s.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}))
			}
			o.err("close send", s.CloseSend())
			drainObserved(o, "recv", s.Recv)
			h, _ := s.Header()
			o.add("stream header bytes %d, trailer bytes %d", mdBytes(h), mdBytes(s.Trailer()))
		}}
	}
	gwAdvDiff(t, []diffScenario{scenario("256 KiB", 256<<10), scenario("1 MiB", 1<<20), scenario("2 MiB", 2<<20)})
}

// mdBytes is the size of md's names and values, leaving out grpc-* names
// and content-type (transport metadata).
func mdBytes(md metadata.MD) int {
	n := 0
	for k, vs := range md {
		if strings.HasPrefix(k, "grpc-") || k == "content-type" {
			continue
		}
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return n
}

// The differential scenarios of TestGatewayDiff once more on the gateway's
// typed paths: a server with interceptors (a unary interceptor makes the
// gateway relay unary calls typed, a stream interceptor wraps the stream,
// so that the zero-copy reply path is not taken) and one without
// GatewayServerOptions (no FetchServerCodec).
func TestGwAdvDiffTypedPaths(t *testing.T) {
	e := setup(t, diffServer{})
	plainCC := serveWith(t, []grpc.ServerOption{grpc.MaxRecvMsgSize(kafkaclient.MaxMessageBytes)}, func(s *grpc.Server) {
		echov1.RegisterEchoServiceServer(s, diffServer{})
	})
	register := func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, e.gw); err != nil {
			t.Fatal(err)
		}
	}
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, wrappedStream{ss})
	}
	intercepted := serveWith(t, append(runtime.GatewayServerOptions(), grpc.UnaryInterceptor(unary), grpc.StreamInterceptor(stream)), register)
	plainOpts := serveWith(t, []grpc.ServerOption{grpc.MaxRecvMsgSize(kafkaclient.MaxMessageBytes)}, register)
	t.Run("interceptors", func(t *testing.T) {
		runDiff(t, diffTarget{"grpc", plainCC, echov1.NewEchoServiceClient(plainCC)},
			diffTarget{"gateway", intercepted, echov1.NewEchoServiceClient(intercepted)}, diffKnown)
	})
	t.Run("no FetchServerCodec", func(t *testing.T) {
		runDiff(t, diffTarget{"grpc", plainCC, echov1.NewEchoServiceClient(plainCC)},
			diffTarget{"gateway", plainOpts, echov1.NewEchoServiceClient(plainOpts)}, diffKnown)
	})
}

// wrappedStream hides the gRPC stream's type from the gateway.
type wrappedStream struct{ grpc.ServerStream }

// gwAdvServer is diffServer plus handlers chosen by the call's metadata
// "adv-mode":
//
//   - "send-twice": a client stream's handler reads the stream and sends
//     two responses (SendMsg twice) before it returns nil.
type gwAdvServer struct{ diffServer }

func advMode(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	return strings.Join(md.Get("adv-mode"), "")
}

func (s gwAdvServer) EchoClientStream(stream grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	switch advMode(stream.Context()) {
	case "send-twice":
		for {
			if _, err := stream.Recv(); err != nil {
				break
			}
		}
		if err := stream.SendMsg(&echov1.EchoResponse{Message: "first"}); err != nil {
			return err
		}
		return stream.SendMsg(&echov1.EchoResponse{Message: "second", Index: 1})
	}
	return s.diffServer.EchoClientStream(stream)
}

// A client-streaming handler that sends two responses breaks the call's
// cardinality: a gRPC caller gets INTERNAL, never one of the two responses
// as if the call had gone right.
func TestGwAdvDiffClientStreamTwoResponses(t *testing.T) {
	gwAdvDiff(t, []diffScenario{{"two responses", func(t *testing.T, tg diffTarget, o *observer) {
		ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "adv-mode", "send-twice")
		s, err := tg.client.EchoClientStream(ctx)
		o.err("open", err)
		o.err("send", s.Send(&echov1.EchoRequest{Message: "a"}))
		r, err := s.CloseAndRecv()
		o.add("code %s", status.Code(err))
		if err == nil {
			o.add("response %q", r.GetMessage())
		}
	}}})
}

// GracefulStop of the gateway's gRPC server lets its calls in flight end
// as they would have (every response, then OK), refuses new ones, and
// returns once they ended; Stop ends them at once and the worker's
// handler learns it. As with a plain gRPC server.
func TestGwAdvDiffServerStop(t *testing.T) {
	e := setup(t, gwAdvServer{})
	start := func(t *testing.T, gateway bool) (*grpc.Server, echov1.EchoServiceClient) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer(runtime.GatewayServerOptions()...)
		if gateway {
			if err := echov1.RegisterEchoServiceKafkaGateway(s, e.gw); err != nil {
				t.Fatal(err)
			}
		} else {
			echov1.RegisterEchoServiceServer(s, gwAdvServer{})
		}
		go func() { _ = s.Serve(lis) }()
		t.Cleanup(s.Stop)
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		return s, echov1.NewEchoServiceClient(cc)
	}
	for _, gateway := range []bool{false, true} {
		name := map[bool]string{false: "grpc", true: "gateway"}[gateway]
		t.Run(name+"/GracefulStop", func(t *testing.T) {
			s, client := start(t, gateway)
			ctx := ctxFor(t, 60*time.Second)
			st, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "slow", Repeat: 3, DelayMs: 200})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.Recv(); err != nil {
				t.Fatal(err)
			}
			stopped := make(chan struct{})
			go func() {
				s.GracefulStop()
				close(stopped)
			}()
			n := 1
			for {
				_, err := st.Recv()
				if err != nil {
					if err != io.EOF {
						t.Errorf("stream ended with %v after %d responses, want EOF after 3", err, n)
					}
					break
				}
				n++
			}
			if n != 3 {
				t.Errorf("got %d responses, want 3", n)
			}
			select {
			case <-stopped:
			case <-ctx.Done():
				t.Fatal("GracefulStop did not return")
			}
		})
		t.Run(name+"/Stop", func(t *testing.T) {
			s, client := start(t, gateway)
			p := &diffProbe{make(chan string, 1), make(chan string, 1)}
			probe := "stop/" + name
			diffProbes.Store(probe, p)
			ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "diff-probe", probe)
			b, err := client.EchoBidiStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Send(&echov1.EchoRequest{Message: "wait-end"}); err != nil {
				t.Fatal(err)
			}
			select {
			case <-p.started:
			case <-ctx.Done():
				t.Fatal("the handler did not start")
			}
			s.Stop()
			if _, err := b.Recv(); status.Code(err) != codes.Unavailable {
				t.Errorf("Recv after Stop: %v, want UNAVAILABLE", err)
			}
			select {
			case ended := <-p.ended:
				if ended != codes.Canceled.String() {
					t.Errorf("the handler's context ended %s, want Canceled", ended)
				}
			case <-ctx.Done():
				t.Error("the handler's context did not end")
			}
		})
	}
}

// Many bidi streams at once on one gRPC connection to the gateway, some
// cancelled midway: each stream that runs to its end gets its own
// responses, in order, and then io.EOF; each cancelled one ends CANCELLED.
func TestGwAdvManyStreamsOneConnection(t *testing.T) {
	e := setup(t, echoserver.Server{})
	const streams, msgs = 64, 5
	ctx := ctxFor(t, 120*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			s, err := e.echo.EchoBidiStream(sctx)
			if err != nil {
				errs <- err
				return
			}
			cancelAt := -1
			if i%2 == 1 {
				cancelAt = i % msgs
			}
			for j := range msgs {
				if j == cancelAt {
					cancel()
					if _, err := s.Recv(); status.Code(err) != codes.Canceled {
						errs <- fmt.Errorf("stream %d: Recv after cancel: %v, want CANCELLED", i, err)
					}
					return
				}
				want := fmt.Sprintf("%d/%d", i, j)
				if err := s.Send(&echov1.EchoRequest{Message: want}); err != nil {
					errs <- fmt.Errorf("stream %d: Send %d: %v", i, j, err)
					return
				}
				r, err := s.Recv()
				if err != nil || r.GetMessage() != want || r.GetIndex() != int32(j) {
					errs <- fmt.Errorf("stream %d: Recv %d: %q %d %v, want %q %d", i, j, r.GetMessage(), r.GetIndex(), err, want, j)
					return
				}
			}
			if err := s.CloseSend(); err != nil {
				errs <- err
				return
			}
			if _, err := s.Recv(); err != io.EOF {
				errs <- fmt.Errorf("stream %d: Recv after CloseSend: %v, want EOF", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
