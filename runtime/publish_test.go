package runtime_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestPublisher publishes with the generated typed publisher of EchoEvents
// and receives the events through the gateway's fetch; the record carries
// the key and headers given.
func TestPublisher(t *testing.T) {
	e := setup(t, echoserver.Server{})
	kafkatest.CreateTopics(t, e.kc, 3, e.topic("echo-events"))
	pub := echov1.NewEchoService_EchoEvents_KafkaPublisher(e.kc, runtime.PublisherTopicMapper(func(s string) string { return e.prefix + s }))
	if pub.Topic() != e.topic("echo-events") {
		t.Fatalf("Topic() = %s", pub.Topic())
	}
	ctx := ctxFor(t, 60*time.Second)
	var last runtime.Published
	for _, m := range []string{"one", "two"} {
		p, err := pub.Publish(ctx, &echov1.EchoEvent{Message: m}, runtime.PublishKey([]byte("k")), runtime.PublishHeader("source", []byte("test")))
		if err != nil {
			t.Fatalf("Publish(%s): %v", m, err)
		}
		if p.Topic != e.topic("echo-events") || p.Offset < 0 || p.Partition < 0 {
			t.Fatalf("Publish(%s) = %v", m, p)
		}
		last = p
	}
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"one", "two"} {
		ev, err := s.Recv()
		if err != nil || ev.GetMessage() != want {
			t.Fatalf("EchoEvents: %v, %v, want %q", ev, err, want)
		}
	}
	// The record as written: key and header.
	rd, err := e.kc.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: last.Topic, Partition: last.Partition, Offset: last.Offset}}); err != nil {
		t.Fatal(err)
	}
	recs, err := rd.Poll(ctx)
	if err != nil || len(recs) == 0 {
		t.Fatalf("reading the published record: %v", err)
	}
	r := recs[0]
	if string(r.Key) != "k" || len(r.Headers) != 1 || r.Headers[0].Key != "source" || string(r.Headers[0].Value) != "test" {
		t.Fatalf("record key %q headers %v, want key k and header source=test", r.Key, r.Headers)
	}

	// Async, with the delivery result.
	done := make(chan error, 1)
	pub.PublishAsync(&echov1.EchoEvent{Message: "three"}, func(p runtime.Published, err error) {
		if err == nil && p.Offset < 0 {
			err = errors.New("no offset")
		}
		done <- err
	})
	if err := <-done; err != nil {
		t.Fatalf("PublishAsync: %v", err)
	}
	if ev, err := s.Recv(); err != nil || ev.GetMessage() != "three" {
		t.Fatalf("EchoEvents after PublishAsync: %v, %v", ev, err)
	}

	// A topic that does not exist.
	missing := echov1.NewEchoService_EchoEvents_KafkaPublisher(e.kc, runtime.PublisherTopicMapper(func(s string) string { return e.prefix + "missing-" + s }))
	if _, err := missing.Publish(ctx, &echov1.EchoEvent{Message: "x"}); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Publish to a missing topic: %v, want an error wrapping ErrUnknownTopic", err)
	}
	// A context that ended.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := pub.Publish(cctx, &echov1.EchoEvent{Message: "x"}); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with a cancelled context: %v", err)
	}
}

// heldProducer keeps every record it is given, acknowledging none: as a
// Kafka client does while a record waits in its batch.
type heldProducer struct{ recs []*kafkaclient.Record }

func (p *heldProducer) Produce(r *kafkaclient.Record, _ kafkaclient.Acks, _ func(*kafkaclient.Record, error)) {
	p.recs = append(p.recs, r)
}

// TestPublishCopiesKeyAndHeaders: a caller reusing its key or header
// buffer once PublishAsync returned (or once Publish returned on its
// context's end, the record still on its way) must not change the record
// Kafka writes. The options kept the caller's slices, so the record
// carried whatever the buffer held when the client serialised it.
func TestPublishCopiesKeyAndHeaders(t *testing.T) {
	p := &heldProducer{}
	pub := runtime.NewPublisher[*echov1.EchoEvent](p, echov1.EchoServiceKafkaSpec.Method("EchoEvents"))
	key, value := []byte("key-1"), []byte("value-1")
	pub.PublishAsync(&echov1.EchoEvent{Message: "m"}, func(runtime.Published, error) {},
		runtime.PublishKey(key), runtime.PublishHeader("h", value))
	copy(key, "key-2")
	copy(value, "value-2")
	if len(p.recs) != 1 {
		t.Fatalf("%d records produced, want 1", len(p.recs))
	}
	rec := p.recs[0]
	if string(rec.Key) != "key-1" || len(rec.Headers) != 1 || string(rec.Headers[0].Value) != "value-1" {
		t.Fatalf("the record has key %q and headers %v after the caller reused its buffers, want key-1 and h=value-1", rec.Key, rec.Headers)
	}
}
