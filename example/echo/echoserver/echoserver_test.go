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
// Kafka and called through a gateway, in one call to kafkarpctest.Start.
func TestEchoOverKafka(t *testing.T) {
	env := kafkarpctest.Start(t, kafkarpctest.Service{
		Spec:            echov1.EchoServiceKafkaSpec,
		RegisterGateway: echov1.RegisterEchoServiceKafkaGateway,
		RegisterWorker: func(w *runtime.Worker) error {
			return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{})
		},
	})
	client := echov1.NewEchoServiceClient(env.Conn)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMessage() != "hello" {
		t.Fatalf("EchoUnary = %q, want hello", resp.GetMessage())
	}
}
