//go:build integration

package integration

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Bounds of the outcome test.
const (
	outcomeAttempt = 10 * time.Second // deadline of one attempt
	outcomeBound   = 2 * time.Minute  // all attempts of one call
)

// servedByHeader is the reply header naming the worker process instance
// that produced a call's replies (wire.ServedByMetadata); a replayed stored
// outcome keeps the one of the worker that ran the call.
const servedByHeader = "meta:kafkarpc-served-by"

// TestOutcomeSurvivesWorkerKill: an echo-worker with --outcome-topic
// answers a keyed call and is SIGKILLed; a new echo-worker process of the
// same group, which never ran the call, answers its repeat from the stored
// outcome in the outcome topic: every reply record of the call's
// correlation id names the killed worker as the one that served it, none
// the new worker (which names itself on the replies of the calls it runs).
func TestOutcomeSurvivesWorkerKill(t *testing.T) {
	needKafka(t)
	group, topic := unique("outcome"), unique("outcomes")
	kc, err := confluent.New(confluent.Config{"bootstrap.servers": brokers}, confluent.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatalf("Kafka client: %v", err)
	}
	t.Cleanup(func() { _ = kc.Close() })

	workerArgs := []string{"--brokers", brokers, "--group", group, "--outcome-topic", topic}
	a := startProc(t, "echo-worker", workerArgs...)
	a.waitReady(t)
	addr := freeAddr(t)
	gateway := startGateway(t, addr)
	c := dial(t, addr)
	warmUp(t, c)
	replies := watchTopic(t, kc, "echo-responses")

	key, msg := unique("order"), unique("charge")
	keyed := func() {
		t.Helper()
		deadline := time.Now().Add(outcomeBound)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), outcomeAttempt)
			resp, err := c.EchoUnary(metadata.AppendToOutgoingContext(ctx, "idempotency-key", key), &echov1.EchoRequest{Message: msg})
			cancel()
			if err == nil {
				if resp.GetMessage() != msg {
					t.Fatalf("keyed call answered %q, want %q", resp.GetMessage(), msg)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("keyed call not answered within %s: %v", outcomeBound, err)
			}
			t.Logf("keyed call attempt failed (tried again): %v", err)
			<-time.After(200 * time.Millisecond) // back-off between attempts
		}
	}
	keyed()
	first := replies.awaitValue(t, []byte(msg))
	id := header(first, "zilla:correlation-id")
	servedA := header(first, servedByHeader)
	if id == "" || servedA == "" {
		t.Fatalf("reply of the keyed call lacks its correlation id or served-by header: %v", first.Headers)
	}

	a.kill(t)
	t.Logf("killed the worker that ran the call (pid %d); starting another", a.Pid())
	b := startProc(t, "echo-worker", workerArgs...)
	b.waitReady(t)
	keyed()

	// The new worker names itself on a call it runs.
	fresh := unique("fresh")
	ctx, cancel := context.WithTimeout(context.Background(), outcomeBound)
	defer cancel()
	if resp, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: fresh}); err != nil || resp.GetMessage() != fresh {
		t.Fatalf("a new call on the new worker: %v, %v", resp, err)
	}
	servedB := header(replies.awaitValue(t, []byte(fresh)), servedByHeader)
	if servedB == "" || servedB == servedA {
		t.Fatalf("the new worker's served-by %q, want one of its own (the killed worker's was %q)", servedB, servedA)
	}
	// Every reply of the keyed call's correlation id so far: the first
	// answer, the repeat's (and the original request's, served again when
	// its offset was not committed before the kill).
	count := func() (byA int) {
		for _, rec := range replies.seen() {
			if header(rec, "zilla:correlation-id") != id {
				continue
			}
			switch s := header(rec, servedByHeader); s {
			case "":
			case servedA:
				byA++
			default:
				t.Fatalf("a reply of the keyed call names worker %q (the new worker is %q): the handler ran again", s, servedB)
			}
		}
		return byA
	}
	// The watch may read the repeat's reply after the fresh call's (another
	// partition): wait for it, bounded.
	for until := time.After(outcomeBound); count() < 2; {
		select {
		case rec := <-replies.recs:
			replies.all = append(replies.all, rec)
		case <-until:
			t.Fatalf("%d replies of the keyed call name the killed worker within %s, want the first answer and the repeat's", count(), outcomeBound)
		}
	}
	gateway.stop(t)
	b.stop(t)
}

// topicWatch collects the records of a topic from its end at the start.
type topicWatch struct {
	recs chan *kafkaclient.Record
	all  []*kafkaclient.Record
}

func watchTopic(t *testing.T, kc kafkaclient.Client, topic string) *topicWatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	parts, err := kc.Partitions(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	ends, err := kc.Offsets(ctx, topic, parts, kafkaclient.Latest)
	if err != nil {
		t.Fatal(err)
	}
	r, err := kc.NewReader(kafkaclient.ReaderConfig{})
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
	w := &topicWatch{recs: make(chan *kafkaclient.Record, 1<<16)}
	pollCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for pollCtx.Err() == nil {
			recs, err := r.Poll(pollCtx)
			if err != nil {
				continue
			}
			for _, rec := range recs {
				select {
				case w.recs <- rec:
				default: // the test reads far fewer; never block the poll
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

// awaitValue returns the first record whose value contains v (bounded);
// the records read meanwhile are kept for seen.
func (w *topicWatch) awaitValue(t *testing.T, v []byte) *kafkaclient.Record {
	t.Helper()
	for _, rec := range w.all {
		if bytes.Contains(rec.Value, v) {
			return rec
		}
	}
	timeout := time.After(outcomeBound)
	for {
		select {
		case rec := <-w.recs:
			w.all = append(w.all, rec)
			if bytes.Contains(rec.Value, v) {
				return rec
			}
		case <-timeout:
			t.Fatalf("no record containing %q within %s", v, outcomeBound)
		}
	}
}

// seen returns the records read so far, and those waiting.
func (w *topicWatch) seen() []*kafkaclient.Record {
	for {
		select {
		case rec := <-w.recs:
			w.all = append(w.all, rec)
		default:
			return w.all
		}
	}
}

func header(rec *kafkaclient.Record, name string) string {
	for _, h := range rec.Headers {
		if h.Key == name {
			return string(h.Value)
		}
	}
	return ""
}
