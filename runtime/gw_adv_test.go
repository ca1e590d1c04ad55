package runtime_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
