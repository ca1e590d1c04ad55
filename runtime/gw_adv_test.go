package runtime_test

import (
	"context"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// A caller whose deadline is as far away as a time.Duration reaches (a
// "no real deadline" date such as the year 9999) is served as by a plain gRPC
// server: the call succeeds.
func TestGwAdvFarDeadline(t *testing.T) {
	e := setup(t, echoserver.Server{})
	for _, dl := range []time.Time{time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), time.Now().Add(200 * 365 * 24 * time.Hour)} {
		ctx, cancel := context.WithDeadline(context.Background(), dl)
		stop := context.AfterFunc(ctxFor(t, 60*time.Second), cancel) // bounds the test
		resp, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "far"})
		stop()
		cancel()
		if err != nil {
			t.Fatalf("deadline %v: EchoUnary: %v", dl, err)
		}
		if resp.GetMessage() != "far" {
			t.Fatalf("deadline %v: got %q", dl, resp.GetMessage())
		}
	}
}
