package runtime_test

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// TestReplyAtReplyTopicLimit: unary responses of every size around the
// reply topic's max.message.bytes are answered, or end RESOURCE_EXHAUSTED,
// and the worker goes on serving, with or without WorkerExactlyOnce. The
// worker compared the least size of a batch holding the response (its
// bytes, without the varints framing them) with the limit: a response a
// few bytes over it passed, Kafka refused it, and the end went out without
// it (INTERNAL at the gateway), or the transaction failed.
func TestReplyAtReplyTopicLimit(t *testing.T) {
	const limit = 1000
	for _, eos := range []bool{false, true} {
		t.Run(fmt.Sprintf("exactly-once=%v", eos), func(t *testing.T) {
			e, client := eosEnv(t, echoserver.Server{}, eos)
			ctx := ctxFor(t, 120*time.Second)
			adm := kadm.NewClient(newKgo(t, e.brokers))
			resp, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "max.message.bytes", Value: kmsgStr(strconv.Itoa(limit))}}, e.topic("echo-responses"))
			if err == nil {
				err = resp[0].Err
			}
			if err != nil {
				t.Fatal(err)
			}
			for size := limit - 400; size <= limit; size++ {
				msg := strings.Repeat("x", size)
				r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: msg})
				if err == nil && r.GetMessage() != msg {
					t.Fatalf("a %d-byte message: answered %d bytes", size, len(r.GetMessage()))
				}
				if err != nil && status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("a %d-byte message to a reply topic with max.message.bytes %d: %v, want the response or RESOURCE_EXHAUSTED", size, limit, err)
				}
			}
			if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "small"}); err != nil || r.GetMessage() != "small" {
				t.Fatalf("the call after them: %v, %v", r, err)
			}
			if err := e.worker.Err(); err != nil {
				t.Fatalf("the worker stopped: %v", err)
			}
		})
	}
}

// TestBurstToSmallLimitTopics: concurrent calls whose requests and
// replies go to topics with a max.message.bytes below the size up to which
// the client batches records (librdkafka's batch.size, 1000000 bytes) are
// all answered, and the worker goes on, with or without WorkerExactlyOnce.
// librdkafka batched the records of several calls past the topic's limit
// and Kafka refused the batch: without exactly-once every call of the
// burst failed (RESOURCE_EXHAUSTED at the worker, INTERNAL at the
// gateway), with it the transaction failed and the worker stopped.
func TestBurstToSmallLimitTopics(t *testing.T) {
	for _, eos := range []bool{false, true} {
		t.Run(fmt.Sprintf("exactly-once=%v", eos), func(t *testing.T) {
			e, client := eosEnv(t, echoserver.Server{}, eos)
			ctx := ctxFor(t, 120*time.Second)
			adm := kadm.NewClient(newKgo(t, e.brokers))
			resp, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "max.message.bytes", Value: kmsgStr("20000")}},
				e.topic("echo-requests"), e.topic("echo-responses"))
			for _, r := range resp {
				err = errors.Join(err, r.Err)
			}
			if err != nil {
				t.Fatal(err)
			}
			msg := strings.Repeat("x", 3000) // seven fit in the limit, not eight
			const calls = 48
			errs := make(chan error, calls)
			for i := range calls {
				go func() {
					m := fmt.Sprintf("%d:%s", i, msg)
					r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: m})
					if err == nil && r.GetMessage() != m {
						err = fmt.Errorf("answered %d bytes", len(r.GetMessage()))
					}
					errs <- err
				}()
			}
			for range calls {
				if err := <-errs; err != nil {
					t.Errorf("a call among %d at once through request and reply topics with max.message.bytes 20000: %v", calls, err)
				}
			}
			if err := e.worker.Err(); err != nil {
				t.Fatalf("the worker stopped: %v", err)
			}
		})
	}
}
