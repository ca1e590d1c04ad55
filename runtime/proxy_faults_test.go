package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// scriptedTarget is a proxy target whose answers the tests choose.
type scriptedTarget struct {
	echoserver.Server
	unary func(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error)
	bidi  func(stream grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error
}

func (r *scriptedTarget) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if r.unary != nil {
		return r.unary(ctx, req)
	}
	return r.Server.EchoUnary(ctx, req)
}

func (r *scriptedTarget) EchoBidiStream(stream grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if r.bidi != nil {
		return r.bidi(stream)
	}
	return r.Server.EchoBidiStream(stream)
}

func listenTarget(t *testing.T, impl echov1.EchoServiceServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target(t, lis, impl)
	return lis.Addr().String()
}

func resourceInfo(t *testing.T, err error) *errdetails.ResourceInfo {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.ResourceInfo); ok {
			return ri
		}
	}
	return nil
}

// A target's error status with details, sent trailers-only (a unary call
// that fails) or after messages (a bidi call), reaches the caller with its
// code, message and details.
func TestProxyStatusDetailsReachCaller(t *testing.T) {
	st, err := status.New(codes.FailedPrecondition, "no such order").WithDetails(&errdetails.ResourceInfo{ResourceType: "order", ResourceName: "o-7"})
	if err != nil {
		t.Fatal(err)
	}
	addr := listenTarget(t, &scriptedTarget{
		unary: func(context.Context, *echov1.EchoRequest) (*echov1.EchoResponse, error) { return nil, st.Err() },
		bidi: func(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
			if _, err := s.Recv(); err != nil {
				return err
			}
			if err := s.Send(&echov1.EchoResponse{Message: "one"}); err != nil {
				return err
			}
			return st.Err()
		},
	})
	e := setupProxy(t, addr)
	ctx := ctxFor(t, 60*time.Second)

	_, err = e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
	if got := status.Convert(err); got.Code() != codes.FailedPrecondition || got.Message() != "no such order" {
		t.Fatalf("unary status through the proxy = %v", err)
	}
	if ri := resourceInfo(t, err); ri == nil || ri.GetResourceName() != "o-7" {
		t.Fatalf("unary status details through the proxy = %v, want the ResourceInfo", status.Convert(err).Details())
	}

	bs, err := e.echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&echov1.EchoRequest{Message: "x"}); err != nil {
		t.Fatal(err)
	}
	if r, err := bs.Recv(); err != nil || r.GetMessage() != "one" {
		t.Fatalf("bidi first reply = %v, %v", r, err)
	}
	_, err = bs.Recv()
	if got := status.Convert(err); got.Code() != codes.FailedPrecondition || got.Message() != "no such order" {
		t.Fatalf("bidi status through the proxy = %v", err)
	}
	if ri := resourceInfo(t, err); ri == nil || ri.GetResourceName() != "o-7" {
		t.Fatalf("bidi status details through the proxy = %v, want the ResourceInfo", status.Convert(err).Details())
	}
}

// A call the target refused with UNAVAILABLE (trailers only) and then
// served is answered with the serving attempt's trailers only: the refused
// attempt's trailers are not the call's.
func TestProxyRetryKeepsOnlyTheServingAttemptsTrailers(t *testing.T) {
	var attempts atomic.Int32
	addr := listenTarget(t, &scriptedTarget{
		unary: func(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
			if attempts.Add(1) == 1 {
				_ = grpc.SetTrailer(ctx, metadata.Pairs("x-attempt", "refused"))
				return nil, status.Error(codes.Unavailable, "warming up")
			}
			_ = grpc.SetTrailer(ctx, metadata.Pairs("x-attempt", "served"))
			return &echov1.EchoResponse{Message: req.GetMessage()}, nil
		},
	})
	e := setupProxy(t, addr)
	var trailer metadata.MD
	resp, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "r"}, grpc.Trailer(&trailer))
	if err != nil || resp.GetMessage() != "r" {
		t.Fatalf("call retried through the proxy = %v, %v", resp, err)
	}
	if n := attempts.Load(); n != 2 {
		t.Fatalf("target saw %d attempts, want 2", n)
	}
	if got := trailer.Get("x-attempt"); !slices.Equal(got, []string{"served"}) {
		t.Fatalf("trailer x-attempt = %q, want [served]: the refused attempt's trailers leaked into the answer", got)
	}
}

// ProxyRetry with d 0 turns the retries off: a target handler that returns
// UNAVAILABLE at once (which the proxy cannot tell from a refused call)
// runs once, and the caller gets its status, even with a deadline of its
// own (which bounds the retries otherwise).
func TestProxyRetryOff(t *testing.T) {
	var attempts atomic.Int32
	addr := listenTarget(t, &scriptedTarget{
		unary: func(context.Context, *echov1.EchoRequest) (*echov1.EchoResponse, error) {
			attempts.Add(1)
			return nil, status.Error(codes.Unavailable, "side effect done, then unavailable")
		},
	})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	e := setupWith(t, func(w *runtime.Worker) error {
		return w.RegisterProxy(cc, []string{"echo-requests"}, runtime.ProxyRetry(0, 10*time.Millisecond, 200*time.Millisecond))
	})
	_, err = e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "once"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call = %v, want the target's UNAVAILABLE", err)
	}
	if n := attempts.Load(); n != 1 {
		t.Fatalf("target ran the handler %d times with ProxyRetry(0, ...), want once", n)
	}
}

// The caller's deadline reaches the target through the proxy.
func TestProxyDeadlineReachesTarget(t *testing.T) {
	addr := listenTarget(t, metaEcho{})
	e := setupProxy(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "deadline"})
	if err != nil {
		t.Fatal(err)
	}
	left, err := time.ParseDuration(resp.GetMessage())
	if err != nil {
		t.Fatalf("target saw no deadline (%q)", resp.GetMessage())
	}
	if left <= 20*time.Second || left > 40*time.Second {
		t.Fatalf("target saw %v left of a 40 s deadline", left)
	}
}

// A caller's cancel of a bidi call reaches a target blocked in Recv.
func TestProxyBidiCancelReachesTargetBlockedInRecv(t *testing.T) {
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	addr := listenTarget(t, &scriptedTarget{
		bidi: func(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
			if _, err := s.Recv(); err != nil {
				ended <- err
				return err
			}
			started <- struct{}{}
			_, err := s.Recv() // blocks: the caller sends nothing more
			ended <- err
			return err
		},
	})
	e := setupProxy(t, addr)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	bs, err := e.echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&echov1.EchoRequest{Message: "first"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the target never got the first request")
	}
	cancel()
	select {
	case err := <-ended:
		if status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
			t.Fatalf("target's Recv ended with %v, want CANCELLED", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the caller's cancel did not reach the target blocked in Recv within 30 s")
	}
}

// TestProxyRepliesCarryNoTransportMetadata: WIRE.md, "Metadata that must
// never be copied into Kafka: HTTP/2 pseudo-headers, content-type, te,
// user-agent, grpc-* transport headers." A proxying worker hands its
// target's response headers and trailers on as meta:/trailer: headers, but
// grpc-go's client reports the target's content-type among them, and its
// grpc-status-details-bin among the trailers: neither may reach the reply
// records (the status and its details travel in zilla:status,
// zilla:message and zilla:status-details-bin). The application's own
// metadata still does.
func TestProxyRepliesCarryNoTransportMetadata(t *testing.T) {
	st, err := status.New(codes.FailedPrecondition, "no such order").WithDetails(&errdetails.ResourceInfo{ResourceName: "o-7"})
	if err != nil {
		t.Fatal(err)
	}
	addr := listenTarget(t, &scriptedTarget{
		unary: func(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
			_ = grpc.SetHeader(ctx, metadata.Pairs("x-header", "h"))
			_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t"))
			if req.GetFailCode() != 0 {
				return nil, st.Err()
			}
			return &echov1.EchoResponse{Message: req.GetMessage()}, nil
		},
	})
	e := setupProxy(t, addr)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	ctx := ctxFor(t, 60*time.Second)
	for _, fail := range []bool{false, true} {
		key := fmt.Sprintf("transport-%v", fail)
		req := &echov1.EchoRequest{Message: "x"}
		if fail {
			req.FailCode = int32(codes.FailedPrecondition)
		}
		_, err := e.echo.EchoUnary(metadata.AppendToOutgoingContext(ctx, "idempotency-key", key), req)
		switch {
		case fail && status.Code(err) != codes.FailedPrecondition:
			t.Fatalf("failing call: %v, want FAILED_PRECONDITION", err)
		case !fail && err != nil:
			t.Fatalf("call: %v", err)
		}
		id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoUnary", e.topic("echo-responses"))
		own := map[string]bool{}
		for _, rec := range replies.await(t, id) {
			for _, h := range rec.Headers {
				name, ok := strings.CutPrefix(h.Key, "meta:")
				if !ok {
					name, ok = strings.CutPrefix(h.Key, "trailer:")
				}
				if !ok {
					continue
				}
				if name == "content-type" || name == "te" || name == "user-agent" || strings.HasPrefix(name, ":") || strings.HasPrefix(name, "grpc-") {
					t.Errorf("call failing=%v: reply record carries transport metadata %s=%q", fail, h.Key, h.Value)
				}
				own[h.Key] = true
			}
		}
		if !own["meta:x-header"] || !own["trailer:x-trailer"] {
			t.Errorf("call failing=%v: the target's own header and trailer are missing from the replies (got %v)", fail, own)
		}
	}
}
