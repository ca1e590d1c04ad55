package runtime_test

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestReplyShardsReadAThirdEach runs three gateway instances sharing the
// reply topic with GatewayReplyShard and measures the fraction of the reply
// records each one reads.
func TestReplyShardsReadAThirdEach(t *testing.T) {
	e := setup(t, echoserver.Server{})
	const n = 3
	var gws [n]*runtime.Gateway
	var clients [n]echov1.EchoServiceClient
	for i := range n {
		kc := kafkatest.NewClient(t, e.brokers) // a process of its own, as far as Kafka can tell
		gw := runtime.NewGateway(kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
			runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReplyShard(i, n))
		t.Cleanup(func() { _ = gw.Close() })
		gws[i] = gw
		clients[i] = echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
			if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
				t.Fatal(err)
			}
		}))
	}
	ctx := ctxFor(t, 60*time.Second)
	const calls = 300
	for i := range calls {
		msg := fmt.Sprint(i)
		if r, err := clients[i%n].EchoUnary(ctx, &echov1.EchoRequest{Message: msg}); err != nil || r.GetMessage() != msg {
			t.Fatalf("call %d: %v, %v", i, r, err)
		}
	}
	// A caller-chosen id may hash anywhere: the instance reads that partition too.
	var foreign string
	for k := 0; foreign == ""; k++ {
		key := fmt.Sprint("key-", k)
		id := wire.CorrelationID(wire.DefaultNames(), key, "example.echo.v1.EchoService", "EchoUnary", e.topic("echo-responses"))
		if kafkaclient.KeyPartition([]byte(id), 3)%n != 0 {
			foreign = key
		}
	}
	md := metadata.AppendToOutgoingContext(ctx, "idempotency-key", foreign)
	if r, err := clients[0].EchoUnary(md, &echov1.EchoRequest{Message: "keyed"}); err != nil || r.GetMessage() != "keyed" {
		t.Fatalf("keyed call on another instance's partition: %v, %v", r, err)
	}
	total := uint64(2 * (calls + 1)) // a data record and an end-of-stream record per call
	for i, gw := range gws {
		s := gw.Stats()
		frac := float64(s.RepliesRead) / float64(total)
		t.Logf("gateway %d of %d read %d of %d reply records (%.2f), dropped %d", i, n, s.RepliesRead, total, frac, s.RepliesDropped)
		if frac > 0.45 {
			t.Errorf("gateway %d read %.2f of the replies, want about 1/%d", i, frac, n)
		}
	}
}
