package runtime_test

import (
	"testing"

	"google.golang.org/grpc"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// proxyDiffKnown holds the differences of the proxy path found and not
// fixed, beyond the gateway's own (diffKnown).
var proxyDiffKnown = map[string]string{
	"unavailable": "a target's handler that fails UNAVAILABLE without sending headers or a message (trailers only) " +
		"runs again and again, until the caller's deadline or ProxyRetry's bound, and the caller waits that long: " +
		"the proxy cannot tell it from a target that refused the call, which it retries (README, proxy mode; " +
		"TestProxyRetryKeepsOnlyTheServingAttemptsTrailers); gRPC runs it once. Not fixed: the retry is the " +
		"proxy's design, as gRPC's retry policies (gRFC A6) retry a trailers-only UNAVAILABLE; a handler that " +
		"sent headers first runs once, as through gRPC",
}

// TestProxyDiff runs TestGatewayDiff's scenarios through a gRPC client
// against diffServer served by a plain gRPC server on 127.0.0.1, directly,
// and through a gateway relaying to a worker in proxy mode whose target is
// that same server, and compares what the caller sees. The differences
// TestGatewayDiff knows apply; others are the proxy's.
func TestProxyDiff(t *testing.T) {
	plainCC := serveWith(t, []grpc.ServerOption{grpc.MaxRecvMsgSize(kafkaclient.MaxMessageBytes)}, func(s *grpc.Server) {
		echov1.RegisterEchoServiceServer(s, diffServer{})
	})
	// The worker's target is the very server the caller reaches directly.
	e := setupProxy(t, plainCC.Target())
	gwCC := serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, e.gw); err != nil {
			t.Fatal(err)
		}
	})
	known := map[string]string{}
	for k, v := range diffKnown {
		known[k] = v
	}
	for k, v := range proxyDiffKnown {
		known[k] = v
	}
	runDiff(t, diffTarget{"grpc", plainCC, echov1.NewEchoServiceClient(plainCC)},
		diffTarget{"proxy", gwCC, echov1.NewEchoServiceClient(gwCC)}, known)
}
