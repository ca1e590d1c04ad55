package runtime_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestMessageLimitIsTheTopics checks that a gateway built with
// GatewayServerOptions, called with CallerDialOptions, takes a message
// between gRPC's 4 MiB default and the topics' 8 MiB limit both ways, and
// refuses a larger one with RESOURCE_EXHAUSTED naming the limit.
func TestMessageLimitIsTheTopics(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	big := strings.Repeat("x", 6<<20)
	resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: big})
	if err != nil {
		t.Fatalf("6 MiB EchoUnary: %v", err)
	}
	if len(resp.GetMessage()) != len(big) {
		t.Fatalf("6 MiB message came back with %d bytes", len(resp.GetMessage()))
	}
	_, err = e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: strings.Repeat("x", kafkaclient.MaxMessageBytes+1)})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), strconv.Itoa(kafkaclient.MaxMessageBytes)) {
		t.Fatalf("a message over the limit: %v, want RESOURCE_EXHAUSTED naming %d", err, kafkaclient.MaxMessageBytes)
	}
}
