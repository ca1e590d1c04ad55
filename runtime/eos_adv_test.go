package runtime_test

// Adversarial tests of the exactly-once worker (WorkerExactlyOnce) in
// combination with the other features: each checks what a caller, or a
// reader of the topics, gets.

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestEosAdvMissingReplyTopicGoesToDeadLetter: README says a request whose
// zilla:reply-to names a topic that does not exist goes to the dead-letter
// topic (NOT_FOUND naming the topic), since nobody could read its answer.
// With WorkerExactlyOnce too: the option changes when records become
// visible, not which records the worker writes.
func TestEosAdvMissingReplyTopicGoesToDeadLetter(t *testing.T) {
	e := setupWith(t, func(w *runtime.Worker) error {
		return echov1.RegisterEchoServiceKafkaWorker(w, &counting{})
	}, runtime.WorkerDeadLetterTopic("dlq"), runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	kafkatest.CreateTopics(t, e.kc, 1, e.topic("dlq"))
	dead := watchReplies(t, e.kc, e.topic("dlq"))
	req, _ := proto.Marshal(&echov1.EchoRequest{Message: "nowhere"})
	h := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:reply-to", e.topic("no-such-replies"), "zilla:correlation-id", "nowhere"}
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("nowhere"), Value: req, Headers: h.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("nowhere"), Headers: h.headers()})
	select {
	case rec := <-dead.recs:
		if got := header(rec, wire.DeadLetterStatus); got != "5" {
			t.Errorf("dead letter status %q, want 5 (NOT_FOUND)", got)
		}
		if msg := header(rec, wire.DeadLetterMessage); !strings.Contains(msg, e.topic("no-such-replies")) {
			t.Errorf("dead letter message %q does not name the reply topic", msg)
		}
		if header(rec, "zilla:correlation-id") != "nowhere" {
			t.Errorf("dead letter is not the request: %v", headerKeys(rec))
		}
	case <-ctxFor(t, 60*time.Second).Done():
		t.Fatal("no dead letter within 60 s for a request whose reply topic does not exist")
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
}
