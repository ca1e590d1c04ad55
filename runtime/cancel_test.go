package runtime_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestCancelStopsServerStream reads 100 messages of a fast stream of
// 200,000 and cancels: the worker's handler must stop sending (its Send
// fails once the call is cancelled, as in gRPC) and end the call CANCELLED,
// not write the rest of the stream to Kafka.
func TestCancelStopsServerStream(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const total = 200000
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", "cancelled"))
	defer cancel()
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: total})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	cancel()
	id := wire.CorrelationID(wire.DefaultNames(), "cancelled", echoService, "EchoServerStream", e.topic("echo-responses"))
	recs := replies.await(t, id) // every reply of the call, up to its end
	end := recs[len(recs)-1]
	if got := header(end, "zilla:status"); got != "1" {
		t.Fatalf("the worker ended the call with status %q, want 1 (CANCELLED)", got)
	}
	if data := len(recs) - 1; data >= total {
		t.Fatalf("the worker wrote all %d messages of a stream its caller cancelled after 100", data)
	} else {
		t.Logf("the worker wrote %d of %d messages before it saw the cancel", data, total)
	}
}

// TestMaxCallDurationBoundsCallWithoutDeadline calls a slow stream without
// a deadline: the worker's maximum call duration ends it
// DEADLINE_EXCEEDED, naming the bound.
func TestMaxCallDurationBoundsCallWithoutDeadline(t *testing.T) {
	e := setup(t, echoserver.Server{}, runtime.WorkerMaxCallDuration(300e6))
	ctx, cancel := context.WithCancel(context.Background()) // no deadline
	defer cancel()
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 1000, DelayMs: 100})
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		st := status.Convert(err)
		if st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "WorkerMaxCallDuration") || !strings.Contains(st.Message(), "300ms") {
			t.Fatalf("the call ended %v, want DEADLINE_EXCEEDED naming WorkerMaxCallDuration and 300ms", err)
		}
		return
	}
}
