package runtime_test

import (
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// TestStreamRelayedAsBytesStatsHandler: a server stream's responses,
// relayed as their records' bytes through FetchServerCodec, are each a
// message of its own, which gRPC's transport writes out after SendMsg
// returned and a stats handler may read after the call ended: every
// message the handler saw encodes as the response the caller got at its
// place. (A gateway that reused one message for the next response broke
// the stream itself: its caller failed on a garbled message.)
func TestStreamRelayedAsBytesStatsHandler(t *testing.T) {
	e := setup(t, echoserver.Server{})
	seen := newPayloadSeen()
	opts := append(runtime.GatewayServerOptions(), grpc.StatsHandler(seen))
	cc := serveWith(t, opts, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, e.gw); err != nil {
			t.Fatal(err)
		}
	})
	const n = 300
	ctx := ctxFor(t, 30*time.Second)
	stream, err := echov1.NewEchoServiceClient(cc).EchoServerStream(ctx, &echov1.EchoRequest{Message: "slab", Repeat: n})
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d responses: %v", len(got), err)
		}
		b, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b)
	}
	if len(got) != n {
		t.Fatalf("%d responses, want %d", len(got), n)
	}
	select {
	case <-seen.ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the stats handler saw no call end within 30 s")
	}
	seen.mu.Lock()
	defer seen.mu.Unlock()
	if len(seen.out) != n {
		t.Fatalf("the stats handler saw %d responses, want %d", len(seen.out), n)
	}
	for i, m := range seen.out {
		if !encodes(m, got[i]) {
			t.Fatalf("the stats handler's response %d (%T) does not encode as the caller's", i, m)
		}
	}
}
