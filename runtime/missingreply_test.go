package runtime_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// lookupLog is a Kafka client that counts the partition lookups of one
// topic.
type lookupLog struct {
	kafkaclient.Client
	topic string
	mu    sync.Mutex
	n     int
}

func (l *lookupLog) Partitions(ctx context.Context, topic string) ([]int32, error) {
	if topic == l.topic {
		l.mu.Lock()
		l.n++
		l.mu.Unlock()
	}
	return l.Client.Partitions(ctx, topic)
}

func (l *lookupLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// TestMissingReplyTopicLookedUpOnce: requests naming a reply topic that
// does not exist (bad input from outside) do not each make the worker look
// the topic up before answering: it remembers the topic missing for a
// while (here for the whole test). Each such call waited for a lookup of
// its own, one after the other.
func TestMissingReplyTopicLookedUpOnce(t *testing.T) {
	defer runtime.SetMissingTopicTTL(time.Hour)()
	var log *lookupLog
	e := setupWrapped(t, func(prefix string, kc kafkaclient.Client) kafkaclient.Client {
		log = &lookupLog{Client: kc, topic: prefix + "no-such-replies"}
		return log
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}) })
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	good, _ := proto.Marshal(&echov1.EchoRequest{Message: "good"})
	reqTopic, key := e.topic("echo-requests"), []byte("same-partition")
	const bad = 10
	for i := range bad {
		h := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:reply-to", e.topic("no-such-replies"), "zilla:correlation-id", fmt.Sprint("missing-", i)}
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: h.headers()})
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: h.headers()})
	}
	// The same key: served after the ten.
	ok := requestHeaders(e, echoService, "EchoUnary", "after-missing")
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: ok.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: ok.headers()})
	if got := replies.await(t, "after-missing"); header(got[len(got)-1], "zilla:status") != "0" {
		t.Fatalf("the request after them ended with status %q", header(got[len(got)-1], "zilla:status"))
	}
	if n := log.count(); n != 1 {
		t.Errorf("the missing reply topic was looked up %d times for %d requests, want once", n, bad)
	}
}
