package echoserver_test

import (
	"testing"
	"time"

	"context"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
)

// TestEchoOverKafka shows the test kit: the echo implementation served from
// Kafka and called over Kafka with no gRPC server (env.ClientConn), in one
// call to kafkarpctest.Start; with RegisterGateway, through a gateway too
// (env.Conn).
func TestEchoOverKafka(t *testing.T) {
	env := kafkarpctest.Start(t, kafkarpctest.Service{
		Spec:            echov1.EchoServiceKafkaSpec,
		RegisterGateway: echov1.RegisterEchoServiceKafkaGateway,
		RegisterWorker: func(w *runtime.Worker) error {
			return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{})
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, client := range map[string]echov1.EchoServiceClient{
		"ClientConn": echov1.NewEchoServiceClient(env.ClientConn),
		"gateway":    echov1.NewEchoServiceClient(env.Conn),
	} {
		resp, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if resp.GetMessage() != "hello" {
			t.Fatalf("%s: EchoUnary = %q, want hello", name, resp.GetMessage())
		}
	}
}
