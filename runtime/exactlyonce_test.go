package runtime_test

import (
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

func TestExactlyOnce(t *testing.T) {
	impl := &counting{}
	e := setupWith(t, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	// A gateway reading only committed replies.
	gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReadCommitted())
	t.Cleanup(func() { _ = gw.Close() })
	client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := ctxFor(t, 60*time.Second)
	if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"}); err != nil || r.GetMessage() != "x" {
		t.Fatalf("unary with exactly-once: %v, %v", r, err)
	}
	stream, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "s", Repeat: 50})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(50) {
		if r, err := stream.Recv(); err != nil || r.GetIndex() != i {
			t.Fatalf("stream %d: %v, %v", i, r, err)
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("stream end: %v", err)
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("worker stopped: %v", err)
	}

	// The offsets went into the transactions: a new member of the group,
	// after the first left, does not serve "x" again.
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	startWorker(t, e, impl, runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "y"}); err != nil || r.GetMessage() != "y" {
		t.Fatalf("unary after the hand-over: %v, %v", r, err)
	}
	if n := impl.count("x"); n != 1 {
		t.Fatalf("the handler ran %d times for x, want 1: the committed offset did not cover it", n)
	}
}

// TestRegisterRefusesBadImplementation: a nil implementation, or one of
// another service's handler type, is refused when registered, not answered
// INTERNAL "handler panicked" at every call.
func TestRegisterRefusesBadImplementation(t *testing.T) {
	w := runtime.NewWorker(noTxnClient{})
	if err := echov1.RegisterEchoServiceKafkaWorker(w, nil); err == nil || !strings.Contains(err.Error(), "nil implementation") {
		t.Errorf("nil implementation: %v, want an error saying so", err)
	}
	err := w.RegisterService(echov1.EchoServiceKafkaSpec, &echov1.EchoService_ServiceDesc, struct{}{})
	if err == nil || !strings.Contains(err.Error(), "does not implement echov1.EchoServiceServer") {
		t.Errorf("struct{}{} as implementation: %v, want an error naming the handler type", err)
	}
	if err := echov1.RegisterEchoServiceKafkaWorker(w, &counting{}); err != nil {
		t.Errorf("a good implementation after refused ones: %v", err)
	}
}

func TestExactlyOnceNeedsTransactions(t *testing.T) {
	w := runtime.NewWorker(noTxnClient{}, runtime.WorkerExactlyOnce("id"))
	if err := echov1.RegisterEchoServiceKafkaWorker(w, &counting{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err == nil {
		_ = w.Close()
		t.Fatal("Start with exactly-once on a client without transactions succeeded")
	}
}

// noTxnClient is a client without transactions; Start must refuse it before
// using it.
type noTxnClient struct{ kafkaclient.Client }
