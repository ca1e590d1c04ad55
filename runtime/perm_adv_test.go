package runtime_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// TestPermAdvRequestRefused: a request Kafka refuses with an error it marks
// not retriable (INVALID_RECORD, POLICY_VIOLATION, INVALID_TIMESTAMP) ends
// the call FAILED_PRECONDITION naming Kafka's error, on both clients; the
// next call is served. The gateway answered UNAVAILABLE, which tells
// callers to retry a record the topic will never take.
func TestPermAdvRequestRefused(t *testing.T) {
	env, c := startEchoOnFaults(t)
	echo := echov1.NewEchoServiceClient(env.Conn)
	for _, ke := range []*kerr.Error{kerr.InvalidRecord, kerr.PolicyViolation, kerr.InvalidTimestamp} {
		h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: env.Topic("echo-requests"), Err: ke, Count: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "refused"})
		cancel()
		h.Remove()
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), ke.Message) {
			t.Errorf("a request Kafka answered %s: %v, want FAILED_PRECONDITION naming %s", ke.Message, err, ke.Message)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "next"})
		cancel()
		if err != nil || resp.GetMessage() != "next" {
			t.Fatalf("the call after one refused %s: %v, %v", ke.Message, resp, err)
		}
	}
}

// TestPermAdvReplyRefused: a reply Kafka refuses with an error it marks not
// retriable (INVALID_RECORD, POLICY_VIOLATION) is not produced again until
// the call's deadline: the call ends FAILED_PRECONDITION naming Kafka's
// error (the worker's end-of-stream record, which Kafka takes, says so),
// on both clients; the next call is served. The response is 64 KiB, so
// that its end waits for Kafka's answer to it (README). The worker retried the reply
// as a passing failure: a reply the topic would never take held the caller
// to its whole deadline (here the fault refuses only the first produce, so
// the retry went through and the call ended OK, hiding the refusal).
func TestPermAdvReplyRefused(t *testing.T) {
	env, c := startEchoOnFaults(t)
	echo := echov1.NewEchoServiceClient(env.Conn)
	for _, ke := range []*kerr.Error{kerr.InvalidRecord, kerr.PolicyViolation} {
		h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: env.Topic("echo-responses"), Err: ke, Count: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: strings.Repeat("r", 64<<10)})
		cancel()
		h.Remove()
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), ke.Message) {
			t.Errorf("a reply Kafka answered %s: %v, want FAILED_PRECONDITION naming %s", ke.Message, err, ke.Message)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "next"})
		cancel()
		if err != nil || resp.GetMessage() != "next" {
			t.Fatalf("the call after one whose reply was refused %s: %v, %v", ke.Message, resp, err)
		}
	}
}
