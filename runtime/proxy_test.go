package runtime_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// setupProxy runs a gateway and a proxying worker whose target is addr.
func setupProxy(t *testing.T, addr string, wopts ...runtime.WorkerOption) *env {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return setupWith(t, func(w *runtime.Worker) error {
		return w.RegisterProxy(cc, []string{"echo-requests"}, runtime.ProxyRetry(30*time.Second, 10*time.Millisecond, 200*time.Millisecond))
	}, wopts...)
}

// target serves impl as a plain gRPC server with opts on lis.
func target(t *testing.T, lis net.Listener, impl echov1.EchoServiceServer, opts ...grpc.ServerOption) {
	s := grpc.NewServer(opts...)
	echov1.RegisterEchoServiceServer(s, impl)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
}

func TestProxyAllKinds(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target(t, lis, metaEcho{})
	e := setupProxy(t, lis.Addr().String())
	ctx := ctxFor(t, 60*time.Second)

	resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "u"})
	if err != nil || resp.GetMessage() != "u" {
		t.Fatalf("unary through the proxy = %v, %v", resp, err)
	}

	ss, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "s", Repeat: 100})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(100) {
		r, err := ss.Recv()
		if err != nil || r.GetIndex() != i {
			t.Fatalf("server stream %d: %v, %v", i, r, err)
		}
	}
	if _, err := ss.Recv(); err != io.EOF {
		t.Fatalf("server stream end: %v", err)
	}

	cs, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := cs.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := cs.CloseAndRecv(); err != nil || r.GetIndex() != 100 {
		t.Fatalf("client stream = %v, %v", r, err)
	}

	bs, err := e.echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(10) {
		if err := bs.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		if r, err := bs.Recv(); err != nil || r.GetIndex() != i {
			t.Fatalf("bidi %d: %v, %v", i, r, err)
		}
	}
	_ = bs.CloseSend()
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("bidi end: %v", err)
	}

	_, err = e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "gone", FailCode: int32(codes.NotFound)})
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "gone" {
		t.Fatalf("status through the proxy = %v", err)
	}

	var header, trailer metadata.MD
	md := metadata.AppendToOutgoingContext(ctx, "x-tenant", "acme")
	resp, err = e.echo.EchoUnary(md, &echov1.EchoRequest{Message: "metadata"}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if want := `tenant=[acme] auth=[] bin=[] method=/example.echo.v1.EchoService/EchoUnary`; resp.GetMessage() != want {
		t.Fatalf("target saw %q, want %q", resp.GetMessage(), want)
	}
	if header.Get("x-header")[0] != "h1" || trailer.Get("x-trailer")[0] != "t1" {
		t.Fatalf("headers %v, trailers %v did not come back through the proxy", header, trailer)
	}
}

func TestProxyRetriesATargetThatStartsLate(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close() // nothing listens there until the call was refused at least once
	e := setupProxy(t, addr)

	done := make(chan error, 1)
	go func() {
		resp, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "late"})
		if err == nil && resp.GetMessage() != "late" {
			err = fmt.Errorf("response %v", resp)
		}
		done <- err
	}()
	deadline := time.Now().Add(60 * time.Second)
	for e.worker.Stats().ProxyRetries == 0 { // the worker tried and was refused
		if time.Now().After(deadline) {
			t.Fatal("the proxy never retried")
		}
		select {
		case err := <-done:
			t.Fatalf("the call ended before the target started: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	lis, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("re-listening on %s: %v", addr, err)
	}
	target(t, lis, echoserver.Server{})
	if err := <-done; err != nil {
		t.Fatalf("call to a target that started late: %v", err)
	}
}
