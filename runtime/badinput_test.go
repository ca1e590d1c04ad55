package runtime_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// replyWatch reads a reply topic from its current end, from before the test
// produces anything.
type replyWatch struct {
	recs chan *kafkaclient.Record
}

func watchReplies(t *testing.T, kc kafkaclient.Client, topic string) *replyWatch {
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
				w.recs <- rec
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

// await returns the reply records of correlation id up to its end-of-stream
// record.
func (w *replyWatch) await(t *testing.T, id string) []*kafkaclient.Record {
	t.Helper()
	var got []*kafkaclient.Record
	timeout := time.After(30 * time.Second)
	for {
		select {
		case rec := <-w.recs:
			if v := header(rec, "zilla:correlation-id"); v != id {
				continue
			}
			got = append(got, rec)
			if rec.Value == nil {
				return got
			}
		case <-timeout:
			t.Fatalf("no end-of-stream reply for %q within 30 s (got %d records)", id, len(got))
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

// produce writes one record and returns it as delivered.
func produce(t *testing.T, kc kafkaclient.Client, rec *kafkaclient.Record) *kafkaclient.Record {
	t.Helper()
	done := make(chan error, 1)
	var got *kafkaclient.Record
	rec.Partition = kafkaclient.AnyPartition
	kc.Produce(rec, kafkaclient.AcksAll, func(r *kafkaclient.Record, err error) {
		got = r
		done <- err
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("producing: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("produce not acknowledged within 30 s")
	}
	return got
}

type hdrs []string

func (h hdrs) headers() []kafkaclient.Header {
	var out []kafkaclient.Header
	for i := 0; i < len(h); i += 2 {
		out = append(out, kafkaclient.Header{Key: h[i], Value: []byte(h[i+1])})
	}
	return out
}

func requestHeaders(e *env, service, method, id string) hdrs {
	h := hdrs{}
	if service != "" {
		h = append(h, "zilla:service", service)
	}
	if method != "" {
		h = append(h, "zilla:method", method)
	}
	h = append(h, "zilla:reply-to", e.topic("echo-responses"))
	if id != "" {
		h = append(h, "zilla:correlation-id", id)
	}
	return h
}

const echoService = "example.echo.v1.EchoService"

func TestBadRequests(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	good, _ := proto.Marshal(&echov1.EchoRequest{Message: "good"})
	reqTopic := e.topic("echo-requests")
	key := []byte("same-partition")

	cases := []struct {
		name     string
		headers  hdrs
		value    []byte
		code     string
		contains func(delivered *kafkaclient.Record) string
	}{
		{
			name:    "undecodable payload",
			headers: requestHeaders(e, echoService, "EchoUnary", "bad-payload"),
			value:   []byte{0x0a, 0xff, 0xff, 0xff}, // field 1, length that runs past the end
			code:    "13",
			contains: func(d *kafkaclient.Record) string {
				return fmt.Sprintf("%s/%d@%d", d.Topic, d.Partition, d.Offset)
			},
		},
		{
			name:     "no service",
			headers:  requestHeaders(e, "", "EchoUnary", "no-service"),
			value:    good,
			code:     "13",
			contains: func(*kafkaclient.Record) string { return "zilla:service" },
		},
		{
			name:     "no method",
			headers:  requestHeaders(e, echoService, "", "no-method"),
			value:    good,
			code:     "13",
			contains: func(*kafkaclient.Record) string { return "zilla:method" },
		},
		{
			name:     "unknown method",
			headers:  requestHeaders(e, echoService, "EchoNothing", "unknown-method"),
			value:    good,
			code:     "12",
			contains: func(*kafkaclient.Record) string { return "EchoNothing" },
		},
		{
			name:     "bad binary metadata",
			headers:  append(requestHeaders(e, echoService, "EchoUnary", "bad-bin"), "meta:x-bin", "%%%"),
			value:    good,
			code:     "3",
			contains: func(*kafkaclient.Record) string { return "meta:x-bin" },
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := header(&kafkaclient.Record{Headers: c.headers.headers()}, "zilla:correlation-id")
			d := produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: c.value, Headers: c.headers.headers()})
			produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: c.headers.headers()})
			got := replies.await(t, id)
			if len(got) != 1 {
				t.Fatalf("got %d reply records, want only the end-of-stream", len(got))
			}
			eos := got[0]
			if s := header(eos, "zilla:status"); s != c.code {
				t.Fatalf("zilla:status = %q, want %s (message %q)", s, c.code, header(eos, "zilla:message"))
			}
			if msg, want := header(eos, "zilla:message"), c.contains(d); !strings.Contains(msg, want) {
				t.Fatalf("zilla:message = %q, want it to name %q", msg, want)
			}
		})
	}

	t.Run("deadline passed before pick-up", func(t *testing.T) {
		before := e.worker.Stats().Calls
		h := append(requestHeaders(e, echoService, "EchoUnary", "expired"), "meta:grpc-timeout", "100m")
		past := time.Now().Add(-time.Minute)
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: h.headers(), Timestamp: past})
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: h.headers(), Timestamp: past})
		got := replies.await(t, "expired")
		if len(got) != 1 || header(got[0], "zilla:status") != "4" {
			t.Fatalf("replies %d, status %q, want one end-of-stream with status 4", len(got), header(got[len(got)-1], "zilla:status"))
		}
		if calls := e.worker.Stats().Calls - before; calls != 0 {
			t.Fatalf("worker started %d calls, want none: the deadline had passed", calls)
		}
	})

	// WIRE.md: "No correlation id: the record is skipped (and counted)".
	// An empty one is no id: the worker ran the record as a oneway call
	// (no reply, on a topic that is no oneway route), and for a stream
	// every record would start a call of its own.
	t.Run("empty correlation id is skipped as none", func(t *testing.T) {
		before, calls := e.worker.Stats().SkippedNoCorrelationID, e.worker.Stats().Calls
		h := append(requestHeaders(e, echoService, "EchoUnary", ""), "zilla:correlation-id", "")
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: h.headers()})
		ok := requestHeaders(e, echoService, "EchoUnary", "after-empty-id")
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: ok.headers()})
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: ok.headers()})
		replies.await(t, "after-empty-id")
		if n := e.worker.Stats().SkippedNoCorrelationID - before; n != 1 {
			t.Fatalf("SkippedNoCorrelationID grew by %d, want 1", n)
		}
		if n := e.worker.Stats().Calls - calls; n != 1 {
			t.Fatalf("the worker started %d calls, want 1: the record with an empty correlation id ran too", n)
		}
	})

	// A reply topic that is no Kafka topic name: no reply could reach the
	// caller, so the handler is not run, and the next request with the
	// same key is served at once.
	// sendReplyingTo sends a unary request per reply topic, then one that
	// replies to the test's topic, with the same key, and checks that the
	// last is answered OK.
	sendReplyingTo := func(t *testing.T, name string, replyTopics ...string) {
		t.Helper()
		for i, topic := range replyTopics {
			h := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:reply-to", topic, "zilla:correlation-id", fmt.Sprint(name, "-", i)}
			produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: h.headers()})
			produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: h.headers()})
		}
		ok := requestHeaders(e, echoService, "EchoUnary", "after-"+name)
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: ok.headers()})
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: ok.headers()})
		if got := replies.await(t, "after-"+name); header(got[len(got)-1], "zilla:status") != "0" {
			t.Fatalf("the request after them ended with status %q", header(got[len(got)-1], "zilla:status"))
		}
	}
	t.Run("reply topic that is no valid topic name is skipped", func(t *testing.T) {
		before, calls := e.worker.Stats().Malformed, e.worker.Stats().Calls
		// Kafka's internal topics are valid names, but a broker refuses
		// records to them as an invalid topic, which was retried until the
		// call's deadline (10 minutes), holding the next requests.
		bad := []string{"a\x00b", "bad topic", "x/y", strings.Repeat("x", 250), "__consumer_offsets", "__transaction_state"}
		sendReplyingTo(t, "bad-reply-to", bad...)
		if n := e.worker.Stats().Malformed - before; n != uint64(len(bad)) {
			t.Fatalf("Malformed grew by %d, want %d", n, len(bad))
		}
		if n := e.worker.Stats().Calls - calls; n != 1 {
			t.Fatalf("the worker started %d calls, want 1: a handler ran for a call that could not be answered", n)
		}
	})

	// A reply topic that does not exist: the worker cannot know that
	// before it answers, so the call runs; its reply is lost (counted), and
	// the next request with the same key waits for it no longer than the
	// client takes to say the topic is missing. librdkafka says so in its
	// produce call once it has looked the topic up, and that answer was
	// taken for one worth retrying until the call's deadline (10 minutes).
	t.Run("reply topic that does not exist does not hold the next request", func(t *testing.T) {
		lost := e.worker.Stats().LostReplies
		sendReplyingTo(t, "missing-reply-topic", e.topic("no-such-replies"), e.topic("no-such-replies"))
		if n := e.worker.Stats().LostReplies - lost; n != 2 {
			t.Fatalf("LostReplies grew by %d, want 2", n)
		}
	})

	t.Run("no correlation id is skipped and the next request served", func(t *testing.T) {
		before := e.worker.Stats().SkippedNoCorrelationID
		h := requestHeaders(e, echoService, "EchoUnary", "")
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: h.headers()})
		// The next request on the same partition is read after the skipped one.
		ok := requestHeaders(e, echoService, "EchoUnary", "after-skip")
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: ok.headers()})
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: ok.headers()})
		got := replies.await(t, "after-skip")
		if len(got) != 2 || header(got[1], "zilla:status") != "0" {
			t.Fatalf("good request after a skipped one: %d records, final status %q", len(got), header(got[len(got)-1], "zilla:status"))
		}
		var resp echov1.EchoResponse
		if err := proto.Unmarshal(got[0].Value, &resp); err != nil || resp.GetMessage() != "good" {
			t.Fatalf("reply = %v, %v", &resp, err)
		}
		if n := e.worker.Stats().SkippedNoCorrelationID - before; n != 1 {
			t.Fatalf("SkippedNoCorrelationID grew by %d, want 1", n)
		}
	})
}
