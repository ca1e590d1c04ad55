package runtime_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// payloadSeen records the messages a gRPC server's stats handler sees: the
// values its unary handlers decoded into and returned. ended is closed at
// the end of the first call.
type payloadSeen struct {
	mu      sync.Mutex
	in, out []any
	ended   chan struct{}
	once    sync.Once
}

func newPayloadSeen() *payloadSeen { return &payloadSeen{ended: make(chan struct{})} }

func (p *payloadSeen) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (p *payloadSeen) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (p *payloadSeen) HandleConn(context.Context, stats.ConnStats) {}
func (p *payloadSeen) HandleRPC(_ context.Context, s stats.RPCStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch s := s.(type) {
	case *stats.InPayload:
		p.in = append(p.in, s.Payload)
	case *stats.OutPayload:
		p.out = append(p.out, s.Payload)
	case *stats.End:
		p.once.Do(func() { close(p.ended) })
	}
}

// first returns the request and response of the first call, once it ended
// (the server reports the end after the caller may have its response).
func (p *payloadSeen) first(t *testing.T) (in, out any) {
	t.Helper()
	select {
	case <-p.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the stats handler saw no call end within 30 s")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.in) != 1 || len(p.out) != 1 {
		t.Fatalf("the stats handler saw %d requests and %d responses, want 1 each", len(p.in), len(p.out))
	}
	return p.in[0], p.out[0]
}

// serveWith runs a gRPC server with opts on loopback, registers on it, and
// returns a connection to it.
func serveWith(t testing.TB, opts []grpc.ServerOption, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	register(s)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), append(runtime.CallerDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// encodes reports whether m is a proto message whose encoding is want.
func encodes(m any, want []byte) bool {
	pm, ok := m.(proto.Message)
	if !ok {
		return false
	}
	b, err := proto.Marshal(pm)
	return err == nil && bytes.Equal(b, want)
}

// TestUnaryRelayedAsBytes: through the generated RegisterEchoServiceKafkaGateway,
// a unary call of a server without a unary interceptor is relayed as bytes
// (the server's stats handler sees messages that are not the method's
// types, encoding the request and the response), with FetchServerCodec or
// without it; with an interceptor, with the plain RegisterEchoServiceServer,
// or from a caller of another codec, the typed messages, as before. Every
// way answers the call correctly.
func TestUnaryRelayedAsBytes(t *testing.T) {
	e := setup(t, echoserver.Server{})
	type seenByInterceptor struct {
		mu       sync.Mutex
		req, res any
	}
	for _, tc := range []struct {
		name        string
		opts        []grpc.ServerOption
		typed       bool // want the typed messages seen
		interceptor bool
		plain       bool // registered with RegisterEchoServiceServer
		callOpts    []grpc.CallOption
	}{
		{name: "GatewayServerOptions", opts: runtime.GatewayServerOptions()},
		{name: "without FetchServerCodec"},
		{name: "interceptor", opts: runtime.GatewayServerOptions(), typed: true, interceptor: true},
		{name: "interceptor without FetchServerCodec", typed: true, interceptor: true},
		{name: "RegisterEchoServiceServer", opts: runtime.GatewayServerOptions(), typed: true, plain: true},
		{name: "json caller", typed: true, callOpts: []grpc.CallOption{grpc.CallContentSubtype(testJSONName)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := newPayloadSeen()
			var icpt seenByInterceptor
			opts := append(append([]grpc.ServerOption(nil), tc.opts...), grpc.StatsHandler(seen))
			if tc.interceptor {
				opts = append(opts, grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
					res, err := h(ctx, req)
					icpt.mu.Lock()
					icpt.req, icpt.res = req, res
					icpt.mu.Unlock()
					return res, err
				}))
			}
			cc := serveWith(t, opts, func(s *grpc.Server) {
				if tc.plain {
					if err := e.gw.AddService(echov1.EchoServiceKafkaSpec); err != nil {
						t.Fatal(err)
					}
					echov1.RegisterEchoServiceServer(s, echov1.NewEchoServiceKafkaGateway(e.gw))
					return
				}
				if err := echov1.RegisterEchoServiceKafkaGateway(s, e.gw); err != nil {
					t.Fatal(err)
				}
			})
			ctx := ctxFor(t, 30*time.Second)
			req := &echov1.EchoRequest{Message: "raw " + tc.name}
			resp, err := echov1.NewEchoServiceClient(cc).EchoUnary(ctx, req, tc.callOpts...)
			if err != nil {
				t.Fatalf("EchoUnary: %v", err)
			}
			if resp.GetMessage() != req.GetMessage() || resp.GetIndex() != 0 {
				t.Fatalf("EchoUnary = %v, want %q index 0", resp, req.GetMessage())
			}
			in, out := seen.first(t)
			_, typedIn := in.(*echov1.EchoRequest)
			_, typedOut := out.(*echov1.EchoResponse)
			if typedIn != tc.typed || typedOut != tc.typed {
				t.Fatalf("the stats handler saw a %T request and a %T response; want typed messages: %v", in, out, tc.typed)
			}
			reqBytes, _ := proto.Marshal(req)
			respBytes, _ := proto.Marshal(resp)
			if !encodes(in, reqBytes) || !encodes(out, respBytes) {
				t.Fatalf("the stats handler's %T request and %T response do not encode as the call's", in, out)
			}
			if tc.interceptor {
				icpt.mu.Lock()
				defer icpt.mu.Unlock()
				if r, ok := icpt.req.(*echov1.EchoRequest); !ok || r.GetMessage() != req.GetMessage() {
					t.Fatalf("the interceptor saw request %T %v, want the typed request", icpt.req, icpt.req)
				}
				if r, ok := icpt.res.(*echov1.EchoResponse); !ok || r.GetMessage() != req.GetMessage() {
					t.Fatalf("the interceptor saw response %T %v, want the typed response", icpt.res, icpt.res)
				}
			}
		})
	}
}

// bytesCodec sends and receives []byte as they are, under the name "proto",
// so that a caller can send a request that is not well-formed protobuf.
type bytesCodec struct{}

func (bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (bytesCodec) Unmarshal(d mem.BufferSlice, v any) error {
	*v.(*[]byte) = d.Materialize()
	return nil
}

func (bytesCodec) Name() string { return "proto" }

// TestUnaryRelayedAsBytesChecksRequest: a request that is not well-formed
// protobuf ends INTERNAL at the gateway, as gRPC's decoding of the typed
// request answers; a request with fields the gateway's types do not know
// reaches the worker and is answered.
func TestUnaryRelayedAsBytesChecksRequest(t *testing.T) {
	e := setup(t, echoserver.Server{})
	for _, tc := range []struct {
		name string
		opts []grpc.ServerOption
	}{
		{"GatewayServerOptions", runtime.GatewayServerOptions()},
		{"without FetchServerCodec", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := serveWith(t, tc.opts, func(s *grpc.Server) {
				if err := echov1.RegisterEchoServiceKafkaGateway(s, e.gw); err != nil {
					t.Fatal(err)
				}
			})
			ctx := ctxFor(t, 30*time.Second)
			call := func(req []byte) ([]byte, error) {
				var resp []byte
				err := cc.Invoke(ctx, echov1.EchoService_EchoUnary_KafkaFullMethodName, &req, &resp, grpc.ForceCodecV2(bytesCodec{}))
				return resp, err
			}
			// A field number 5000 length-delimited field whose length runs
			// past the end.
			_, err := call([]byte{0xc2, 0xb8, 0x02, 0x10, 'x'})
			if status.Code(err) != codes.Internal {
				t.Fatalf("malformed request: %v, want INTERNAL", err)
			}
			known, _ := proto.Marshal(&echov1.EchoRequest{Message: "with an unknown field"})
			withUnknown := append(append([]byte(nil), known...), 0xc2, 0xb8, 0x02, 0x01, 'x') // field 5000 = "x"
			resp, err := call(withUnknown)
			if err != nil {
				t.Fatalf("request with an unknown field: %v", err)
			}
			var got echov1.EchoResponse
			if err := proto.Unmarshal(resp, &got); err != nil || got.GetMessage() != "with an unknown field" {
				t.Fatalf("request with an unknown field answered %v (%v), want its message", &got, err)
			}
		})
	}
}

// TestServiceDescRefusesOtherService: a descriptor given with another
// service's spec is an error naming both.
func TestServiceDescRefusesOtherService(t *testing.T) {
	gw := runtime.NewGateway(nil)
	_, err := gw.ServiceDesc(&echov1.EchoService_ServiceDesc, &runtime.ServiceSpec{Name: "other.Service"})
	if err == nil {
		t.Fatal("ServiceDesc accepted the spec of another service")
	}
	want := fmt.Sprintf("%q given with the spec of %q", "example.echo.v1.EchoService", "other.Service")
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %s", err, want)
	}
	if _, err := gw.ServiceDesc(nil, echov1.EchoServiceKafkaSpec); err == nil {
		t.Fatal("ServiceDesc accepted a nil descriptor")
	}
}
