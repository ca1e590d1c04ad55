package runtime_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
)

// startEchoOnFaults starts an echo gateway and worker, with the client
// KAFKA_CLIENT names, on a kfake cluster of the test's own whose requests
// the test may fail; opts are added to the kit's.
func startEchoOnFaults(t *testing.T, opts ...kafkarpctest.Option) (*kafkarpctest.Env, *kfake.Cluster) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	env := kafkarpctest.Start(t, kafkarpctest.Service{
		Spec:            echov1.EchoServiceKafkaSpec,
		RegisterGateway: echov1.RegisterEchoServiceKafkaGateway,
		RegisterWorker:  func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}) },
	}, append([]kafkarpctest.Option{kafkarpctest.WithBrokers(c.ListenAddrs()[0]), kafkarpctest.WithPartitions(1),
		kafkarpctest.WithClient(func(brokers string) (kafkaclient.Client, error) {
			return kafkatest.Factory(kafkatest.ClientName()).New(brokers, kafkaclienttest.Config{Logger: kafkatest.Logger(t)})
		})}, opts...)...)
	return env, c
}

// TestKcAdvRequestBatchTooLarge: a request Kafka refuses as too large,
// whether as MESSAGE_TOO_LARGE or as RECORD_LIST_TOO_LARGE (a batch larger
// than the topic's segment.bytes), ends the call RESOURCE_EXHAUSTED, which
// no retry cures, on both clients; the next call is served. With the
// confluent client RECORD_LIST_TOO_LARGE ended it UNAVAILABLE ("Message
// batch larger than configured server segment size"), inviting retries.
func TestKcAdvRequestBatchTooLarge(t *testing.T) {
	env, c := startEchoOnFaults(t)
	echo := echov1.NewEchoServiceClient(env.Conn)
	for _, ke := range []*kerr.Error{kerr.MessageTooLarge, kerr.RecordListTooLarge} {
		h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: env.Topic("echo-requests"), Err: ke, Count: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "refused"})
		cancel()
		h.Remove()
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("a request Kafka answered %s: %v, want RESOURCE_EXHAUSTED", ke.Message, err)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "next"})
		cancel()
		if err != nil || resp.GetMessage() != "next" {
			t.Fatalf("the call after one refused %s: %v, %v", ke.Message, resp, err)
		}
	}
}
