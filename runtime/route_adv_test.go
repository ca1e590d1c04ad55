package runtime_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// TestRouteAdvShardIndexOutOfRange configures a gateway as instance index of
// count with index outside 0..count-1 (a deployment's off-by-one: the
// fourth pod of three, or -1). Such an instance reads no reply partition of
// a topic, so no correlation id it can draw lands on one it reads: the
// gateway must refuse the configuration when it prepares the service,
// naming the index and the count, not take calls it can never answer.
func TestRouteAdvShardIndexOutOfRange(t *testing.T) {
	e := setup(t, echoserver.Server{})
	for _, tc := range []struct{ index, count int }{{3, 3}, {-1, 3}, {5, 2}} {
		t.Run(fmt.Sprintf("%d_of_%d", tc.index, tc.count), func(t *testing.T) {
			kc := kafkatest.NewClient(t, e.brokers)
			gw := runtime.NewGateway(kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
				runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReplyShard(tc.index, tc.count))
			t.Cleanup(func() { _ = gw.Close() })
			var regErr error
			client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
				regErr = echov1.RegisterEchoServiceKafkaGateway(s, gw)
			}))
			if regErr != nil {
				msg := regErr.Error()
				if !strings.Contains(msg, fmt.Sprint(tc.index)) || !strings.Contains(msg, "GatewayReplyShard") {
					t.Fatalf("registration refused with %q, want an error naming GatewayReplyShard and the index %d", msg, tc.index)
				}
				return
			}
			// Accepted: show what a caller gets (before the fix: DEADLINE_EXCEEDED,
			// and a gateway goroutine drawing ids forever).
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
				done <- err
			}()
			select {
			case err := <-done:
				t.Fatalf("GatewayReplyShard(%d, %d) accepted; a call through it ended %v", tc.index, tc.count, err)
			case <-time.After(30 * time.Second):
				t.Fatalf("GatewayReplyShard(%d, %d) accepted; a call with a 5 s deadline through it had not returned 30 s later", tc.index, tc.count)
			}
		})
	}
}
