package runtime_test

// Small known faults, each confirmed by a test that failed on the code
// before its fix, for the reason its comment gives.

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// TestSmallAdvFetchKeyMetadataIsResumeName: GatewayFetchKeyMetadata naming
// metadata a fetch caller resumes with ("last-event-id", the method's
// "last-message-id", or either with "-bin") made the caller's resume id a
// record key filter: a resuming caller silently got no record at all. Now
// AddService and ClientConn.Register refuse it with an error naming both,
// and a call of the method ends with INTERNAL saying the same.
func TestSmallAdvFetchKeyMetadataIsResumeName(t *testing.T) {
	e := setupFanout(t)
	ctx := ctxFor(t, time.Minute)
	e.produceTo(t, 0, 3, 0)
	for _, name := range []string{"last-event-id", "Last-Message-Id", "last-event-id-bin"} {
		t.Run(name, func(t *testing.T) {
			lower := strings.ToLower(name)
			check := func(what string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), "GatewayFetchKeyMetadata") || !strings.Contains(err.Error(), `"`+lower+`"`) ||
					!strings.Contains(err.Error(), "EchoEvents") {
					t.Fatalf("%s with GatewayFetchKeyMetadata(%q) = %v; want an error naming the option, %q and the method", what, name, err, lower)
				}
			}
			gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
				runtime.GatewayFetchKeyMetadata(name))
			t.Cleanup(func() { _ = gw.Close() })
			check("AddService", gw.AddService(echov1.EchoServiceKafkaSpec))

			cc := runtime.NewClientConn(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
				runtime.GatewayFetchKeyMetadata(name))
			t.Cleanup(func() { _ = cc.Close() })
			check("ClientConn.Register", cc.Register(echov1.EchoServiceKafkaSpec))

			// A gateway served without AddService (NewEchoServiceKafkaGateway)
			// refuses the calls themselves.
			f := setupFanout(t, runtime.GatewayFetchKeyMetadata(name))
			f.produceTo(t, 0, 3, 0)
			s, err := f.echo.EchoEvents(metadata.NewOutgoingContext(ctx, metadata.Pairs("x-other", "1")), &emptypb.Empty{})
			if err != nil {
				t.Fatal(err)
			}
			ev, err := s.Recv()
			if status.Code(err) != codes.Internal {
				t.Fatalf("a fetch on a gateway with GatewayFetchKeyMetadata(%q) got %v, %v; want INTERNAL", name, ev, err)
			}
			check("a fetch call", err)
		})
	}
	// The default and other names still filter.
	s, err := e.echo.EchoEvents(metadata.NewOutgoingContext(ctx, metadata.Pairs("idempotency-key", "k1")), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Recv(); err != nil || ev.GetMessage() != "seq-000001" {
		t.Fatalf("a caller following key k1 got %v, %v; want seq-000001", ev, err)
	}
}
