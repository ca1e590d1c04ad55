package runtime_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestGatewayStreamMalformedReply: the gateway relays a server stream's
// replies without decoding them, but a reply that is not protobuf ends the
// call with INTERNAL naming the record, after the good replies before it.
// The worker is written here, answering as a Zilla binding would.
func TestGatewayStreamMalformedReply(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("m") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(_ *kafkaclient.Record, _ *echov1.EchoRequest, reply func([]byte, hdrs)) {
		good, _ := proto.Marshal(&echov1.EchoResponse{Message: "good", Index: 0})
		for _, v := range [][]byte{good, {0xff, 0xff}, nil} { // the last one ends the stream
			reply(v, nil)
		}
	})
	gw := runtime.NewGateway(kc, runtime.WithTopicMapper(func(s string) string { return prefix + s }), runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	echo := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := ctxFor(t, 30*time.Second)
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "x", Repeat: 2})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.GetMessage() != "good" {
		t.Fatalf("first response = %v, %v; want good", r, err)
	}
	_, err = s.Recv()
	if st := status.Convert(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), "not a valid protobuf message") ||
		!strings.Contains(st.Message(), prefix+"echo-responses/") {
		t.Fatalf("after a malformed reply: %v, want INTERNAL naming the record", err)
	}
}
