package runtime_test

// Faults of the caller's side of a call (gateway.go, gwcall.go, router.go),
// shared by the gateway and ClientConn, found by review. Each test compares
// a behaviour with what a gRPC caller gets from a gRPC server.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestRepliesOnPartitionsAddedToReplyTopicArrive: an operator adds
// partitions to a reply topic while gateways and ClientConns run. A worker
// that knows the new partition count (one started afterwards, or any once
// its producer refreshed its metadata) writes the replies of the calls whose
// correlation id hashes to a new partition there. The reply router read
// only the partitions the topic had when it started: those calls waited
// for their deadline (without one, for ever), every time, until the
// process restarted.
func TestRepliesOnPartitionsAddedToReplyTopicArrive(t *testing.T) {
	defer runtime.SetPartitionsRefresh(100 * time.Millisecond)()
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("p") + "."
	requests, replies := prefix+"echo-requests", prefix+"echo-responses"
	kafkatest.CreateTopics(t, kc, 1, requests, replies)
	_, echo := connTo(t, kc, prefix)

	const grown = 4
	ctx := ctxFor(t, 60*time.Second)
	if _, err := kadm.NewClient(newKgo(t, brokers)).CreatePartitions(ctx, grown-1, replies); err != nil {
		t.Fatal(err)
	}
	// A worker whose client learns the topic as it is now.
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	w := runtime.NewWorker(kafkatest.NewClient(t, brokers), mapper, runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(prefix+"workers"))
	if err := echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	select {
	case <-w.Ready():
	case <-ctx.Done():
		t.Fatal("worker got no partitions")
	}

	// An idempotency key whose reply goes to one of the new partitions.
	key := ""
	for i := 0; key == ""; i++ {
		k := "key-" + string(rune('a'+i))
		id := wire.CorrelationID(wire.DefaultNames(), k, "example.echo.v1.EchoService", "EchoUnary", replies)
		if kafkaclient.KeyPartition([]byte(id), grown) != 0 {
			key = k
		}
	}
	callCtx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "idempotency-key", key), 20*time.Second)
	defer cancel()
	r, err := echo.EchoUnary(callCtx, &echov1.EchoRequest{Message: "grown"})
	if err != nil || r.GetMessage() != "grown" {
		t.Fatalf("call whose reply goes to a partition added to the reply topic: %v, %v; want its answer", r, err)
	}
}

// oversizedStream answers EchoServerStream with one response and then one
// larger than a reply record can be (kafkaclient.MaxMessageBytes, the
// topics' max.message.bytes).
type oversizedStream struct{ echoserver.Server }

func (oversizedStream) EchoServerStream(_ *echov1.EchoRequest, stream echov1.EchoService_EchoServerStreamServer) error {
	if err := stream.Send(&echov1.EchoResponse{Message: "first"}); err != nil {
		return err
	}
	return stream.Send(&echov1.EchoResponse{Message: strings.Repeat("y", kafkaclient.MaxMessageBytes+1)})
}

// EchoUnary and EchoClientStream answer with one response larger than a
// reply record can be.
func (oversizedStream) EchoUnary(context.Context, *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	return &echov1.EchoResponse{Message: strings.Repeat("y", kafkaclient.MaxMessageBytes+1)}, nil
}

func (o oversizedStream) EchoClientStream(stream grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	r, err := o.EchoUnary(stream.Context(), nil)
	if err != nil {
		return err
	}
	return stream.SendAndClose(r)
}

// TestTooLargeSingleResponseIsResourceExhausted: a unary or client-stream
// call whose one response Kafka refuses as too large ends RESOURCE_EXHAUSTED,
// as a server stream's does (TestTooLargeReplyIsResourceExhausted), and is
// counted as lost once. The end went out beside the refused response and
// said OK, so the caller got INTERNAL, "worker ended the call without a
// response", every time.
func TestTooLargeSingleResponseIsResourceExhausted(t *testing.T) {
	e := setup(t, oversizedStream{})
	check := func(kind string, err error) {
		t.Helper()
		if st := status.Convert(err); st.Code() != codes.ResourceExhausted || strings.Contains(st.Message(), "retry it") {
			t.Fatalf("%s with a response larger than the reply topic takes: %v; want RESOURCE_EXHAUSTED, without inviting a retry", kind, err)
		}
	}
	_, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "m"})
	check("unary call", err)
	cs, err := e.echo.EchoClientStream(ctxFor(t, 60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.Send(&echov1.EchoRequest{Message: "m"}); err != nil {
		t.Fatal(err)
	}
	_, err = cs.CloseAndRecv()
	check("client stream", err)
	if n := e.worker.Stats().LostReplies; n != 2 {
		t.Fatalf("LostReplies = %d, want 2: each call's refused response once", n)
	}
}

// TestTooLargeReplyIsResourceExhausted: a response Kafka refuses as larger
// than the reply topic takes ends the call with RESOURCE_EXHAUSTED, as gRPC
// ends a call whose message is over a size limit, and as the gateway ends
// one whose request record is too large. The end said UNAVAILABLE, "retry
// it; it may run again": a caller retrying on UNAVAILABLE ran the handler
// again for an answer Kafka refused again, every time.
func TestTooLargeReplyIsResourceExhausted(t *testing.T) {
	e := setup(t, oversizedStream{})
	s, err := e.echo.EchoServerStream(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.GetMessage() != "first" {
		t.Fatalf("first response = %v, %v", r, err)
	}
	_, err = s.Recv()
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || strings.Contains(st.Message(), "retry it") {
		t.Fatalf("after a response larger than the reply topic takes: %v; want RESOURCE_EXHAUSTED, without inviting a retry", err)
	}
}
