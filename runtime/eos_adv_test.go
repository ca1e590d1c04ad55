package runtime_test

// Adversarial tests of the exactly-once worker (WorkerExactlyOnce) in
// combination with the other features: each checks what a caller, or a
// reader of the topics, gets.

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
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

// eosGated answers EchoUnary as echoserver does, once gate is closed (or
// its call's context ended); started receives each message when its
// handler begins.
type eosGated struct {
	echoserver.Server
	gate    chan struct{}
	started chan string
}

func (g *eosGated) EchoUnary(ctx context.Context, r *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	select {
	case g.started <- r.GetMessage():
	default:
	}
	select {
	case <-g.gate:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &echov1.EchoResponse{Message: r.GetMessage()}, nil
}

// TestEosAdvZombieFenced: a second worker instance with the same
// transactional id (a pod restarted while its old instance still runs)
// fences the first, whose calls in flight end after it was fenced. Every
// caller, reading committed replies, gets its answer once, OK: the
// fenced worker's replies never become visible, and its requests are
// served again by the new instance. The fenced worker stops (Err).
func TestEosAdvZombieFenced(t *testing.T) {
	txnID := kafkatest.Unique("txn-")
	impl := &eosGated{gate: make(chan struct{}), started: make(chan string, 16)}
	e, client := eosEnv(t, impl, false, runtime.WorkerExactlyOnce(txnID))
	const n = 3
	ctx := ctxFor(t, 120*time.Second)
	type result struct {
		m   string
		r   *echov1.EchoResponse
		err error
	}
	results := make(chan result, n)
	for i := range n {
		m := fmt.Sprintf("zombie-%d", i)
		go func() {
			r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: m})
			results <- result{m, r, err}
		}()
	}
	for range n {
		select {
		case <-impl.started:
		case <-ctx.Done():
			t.Fatal("the handlers did not start")
		}
	}
	// The new instance: same group, same transactional id. Its Start
	// fences the old instance's producer.
	w2 := runtime.NewWorker(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(e.worker.GroupID()), runtime.WorkerExactlyOnce(txnID))
	if err := echov1.RegisterEchoServiceKafkaWorker(w2, impl); err != nil {
		t.Fatal(err)
	}
	if err := w2.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w2.Close() })
	close(impl.gate)
	for range n {
		select {
		case res := <-results:
			if res.err != nil || res.r.GetMessage() != res.m {
				t.Errorf("call %s: %v, %v; want its echo", res.m, res.r, status.Code(res.err))
			}
		case <-ctx.Done():
			t.Fatal("calls not answered within 120 s")
		}
	}
	// The new instance serves on.
	if r, err := client.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "after"}); err != nil || r.GetMessage() != "after" {
		t.Fatalf("a call after the fencing: %v, %v", r, err)
	}
	if w2.Err() != nil {
		t.Fatalf("the new instance stopped: %v", w2.Err())
	}
	// The fenced instance stopped by itself, and says why.
	select {
	case <-e.worker.Done():
	case <-ctx.Done():
		t.Fatal("the fenced worker's Done was not closed within 120 s")
	}
	if e.worker.Err() == nil {
		t.Fatal("the fenced worker stopped with Err() nil")
	}
	select {
	case <-w2.Done():
		t.Fatalf("the new instance's Done is closed: %v", w2.Err())
	default:
	}
}

// TestEosAdvReplyRefused: README says a reply Kafka refuses with an error it
// marks not retriable (INVALID_RECORD, POLICY_VIOLATION) ends the call at
// once, FAILED_PRECONDITION, and the next call is served. With
// WorkerExactlyOnce as well.
func TestEosAdvReplyRefused(t *testing.T) {
	env, c := startEchoOnFaults(t,
		kafkarpctest.WithWorkerOptions(runtime.WorkerExactlyOnce(kafkatest.Unique("txn-"))),
		kafkarpctest.WithGatewayOptions(runtime.GatewayReadCommitted()))
	echo := echov1.NewEchoServiceClient(env.Conn)
	ke := kerr.InvalidRecord
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: env.Topic("echo-responses"), Err: ke, Count: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "refused"})
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

// watchCommitted is watchReplies reading committed records only, as a
// gateway with GatewayReadCommitted does.
func watchCommitted(t *testing.T, kc kafkaclient.Client, topic string) *replyWatch {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	parts, err := kc.Partitions(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	ends, err := kc.Offsets(ctx, topic, parts, kafkaclient.Latest)
	if err != nil {
		t.Fatal(err)
	}
	r, err := kc.NewReader(kafkaclient.ReaderConfig{ReadCommitted: true})
	if err != nil {
		t.Fatal(err)
	}
	var assign []kafkaclient.TopicPartitionOffset
	for _, p := range parts {
		assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: topic, Partition: p, Offset: ends[p]})
	}
	if err := r.Assign(assign); err != nil {
		t.Fatal(err)
	}
	w := &replyWatch{recs: make(chan *kafkaclient.Record, 1024)}
	pollCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			recs, err := r.Poll(pollCtx)
			if pollCtx.Err() != nil {
				return
			}
			if err != nil {
				continue
			}
			for _, rec := range recs {
				select {
				case w.recs <- rec:
				case <-pollCtx.Done():
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		stop()
		<-done
		_ = r.Close()
	})
	return w
}

// TestEosAdvDeadLetterRefused: a request record without a key whose value
// does not decode is answered INTERNAL (as grpc-go) and copied to the
// dead-letter topic; a compacted dead-letter topic refuses the copy
// (INVALID_RECORD: a compacted topic takes no record without a key).
// README: a dead letter's failure is logged, and the request is committed
// as its reply says it was handled. With WorkerExactlyOnce too: the
// caller gets its INTERNAL answer (committed), and the worker
// serves on. With confluent the refused copy failed the whole
// transaction and stopped the worker, and so would it every member that
// read the request next.
func TestEosAdvDeadLetterRefused(t *testing.T) {
	e, client := eosEnv(t, echoserver.Server{}, true, runtime.WorkerDeadLetterTopic("dlq"))
	ctx := ctxFor(t, 60*time.Second)
	if err := e.kc.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: e.topic("dlq"), Partitions: 1,
		Config: map[string]string{"cleanup.policy": "compact"}}}); err != nil {
		t.Fatal(err)
	}
	replies := watchCommitted(t, e.kc, e.topic("echo-responses"))
	h := requestHeaders(e, echoService, "EchoUnary", "no-key-garbage")
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Value: []byte{0xff, 0xff, 0xff}, Headers: h.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Headers: h.headers()})
	got := replies.await(t, "no-key-garbage")
	if st := header(got[len(got)-1], "zilla:status"); st != "13" {
		t.Errorf("the undecodable request ended with status %q, want 13 (INTERNAL, as grpc-go for a request that does not parse)", st)
	}
	for i := range 3 {
		m := fmt.Sprint("after-", i)
		if r, err := client.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: m}); err != nil || r.GetMessage() != m {
			t.Fatalf("a call after the refused dead letter: %v, %v", r, err)
		}
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
}

// TestEosAdvBidiPingPong: a bidi stream whose caller waits for each
// response before it sends the next message, the usual way to use one.
// With WorkerExactlyOnce the caller must get the response to its first
// message while the stream is open, or be told at once that the worker
// cannot serve it so; it must not wait for its deadline.
func TestEosAdvBidiPingPong(t *testing.T) {
	_, client := eosEnv(t, echoserver.Server{}, true)
	ctx := ctxFor(t, 30*time.Second)
	bs, err := client.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(3) {
		if err := bs.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		r, err := bs.Recv()
		if status.Code(err) == codes.DeadlineExceeded {
			t.Fatalf("Recv %d: %v: the caller waited for its deadline", i, err)
		}
		if err != nil {
			t.Logf("Recv %d: %v", i, err)
			return
		}
		if r.GetIndex() != i || r.GetMessage() != fmt.Sprint(i) {
			t.Fatalf("Recv %d: %v", i, r)
		}
	}
	_ = bs.CloseSend()
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("bidi end: %v", err)
	}
}
