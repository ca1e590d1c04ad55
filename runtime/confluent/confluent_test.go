package confluent

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
)

// librdkafka's error events (kafka.Error) reach slog as "librdkafka error:"
// records with their code, besides its log lines.
func TestErrorEventsReachSlog(t *testing.T) {
	e := newEnv(t, nil, WithProducerConfig(Config{"message.timeout.ms": 1500}))
	e.createTopic(t, "gone", 1)
	e.produceSync(t, &kafkaclient.Record{Topic: "gone", Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll)
	e.broker.Close()
	failed := make(chan error, 1)
	e.client.Produce(&kafkaclient.Record{Topic: "gone", Partition: 0, Value: []byte("y")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { failed <- err })
	select {
	case err := <-failed:
		if err == nil {
			t.Fatal("produce to a closed broker succeeded")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery report within 20s")
	}
	e.logs.WaitFor(t, 10*time.Second, func(c kafkaclienttest.LogRecord) bool {
		return strings.HasPrefix(c.Msg, "librdkafka error: ") && c.Level == slog.LevelError && c.Attrs["code"] != ""
	})
}

func TestLibrdkafkaLogsReachSlog(t *testing.T) {
	// debug=broker makes librdkafka log at level 7 while connecting.
	e := newEnv(t, Config{"debug": "broker"})
	e.createTopic(t, "logged", 1)
	c := e.logs.WaitFor(t, 10*time.Second, func(c kafkaclienttest.LogRecord) bool {
		return c.Attrs["component"] == "librdkafka" && c.Level == slog.LevelDebug && c.Attrs["tag"] != ""
	})
	if !strings.HasPrefix(c.Attrs["client"], "rdkafka#producer") || c.Attrs["syslog_level"] != "7" {
		t.Fatalf("log record attributes %v", c.Attrs)
	}
}

func TestSlogLevels(t *testing.T) {
	for lvl, want := range map[int]slog.Level{0: slog.LevelError, 3: slog.LevelError, 4: slog.LevelWarn, 5: slog.LevelInfo, 6: slog.LevelDebug, 7: slog.LevelDebug} {
		if got := slogLevel(lvl); got != want {
			t.Errorf("slogLevel(%d) = %v, want %v", lvl, got, want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := New(Config{"bootstrap.servers": "127.0.0.1:1", "queue.buffering.max.ms": 7, "fetch.wait.max.ms": int64(20), "acks": "1"},
		WithProducerConfig(Config{"message.max.bytes": 1 << 21}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := c.producerConfig(kafkaclient.AcksAll)
	if _, ok := p["linger.ms"]; ok || p["queue.buffering.max.ms"] != 7 {
		t.Errorf("linger alias not respected: %v", p)
	}
	if p["acks"] != "all" || p["enable.idempotence"] != true || p["partitioner"] != DefaultPartitioner || p["message.max.bytes"] != 1<<21 {
		t.Errorf("producer config %v", p)
	}
	if p1 := c.producerConfig(kafkaclient.AcksLeader); p1["acks"] != "1" || p1["enable.idempotence"] != false {
		t.Errorf("acks=1 producer config %v", p1)
	}
	cc := c.consumerConfig("g", true)
	if cc["fetch.wait.max.ms"] != "20" || cc["isolation.level"] != "read_committed" || cc["enable.auto.commit"] != false || cc["auto.offset.reset"] != "earliest" {
		t.Errorf("consumer config %v", cc)
	}
	if _, ok := cc["message.max.bytes"]; ok {
		t.Errorf("producer-only config leaked into consumers: %v", cc)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without bootstrap.servers succeeded")
	}
	if _, err := New(Config{"bootstrap.servers": "x", "k": struct{}{}}); err == nil {
		t.Error("New with an unsupported value type succeeded")
	}
}

func Example() {
	b, err := embedded.Start()
	if err != nil {
		panic(err)
	}
	defer b.Close()
	c, err := New(Config{"bootstrap.servers": b.Addr()}, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "requests", Partitions: 3}}); err != nil {
		panic(err)
	}
	done := make(chan struct{})
	c.Produce(&kafkaclient.Record{Topic: "requests", Partition: kafkaclient.AnyPartition, Key: []byte("21"), Value: []byte("hello")},
		kafkaclient.AcksAll, func(r *kafkaclient.Record, err error) {
			fmt.Println(r.Partition, r.Offset, err)
			close(done)
		})
	<-done
	// Output: 0 0 <nil>
}

func TestFatalErrorReplacesProducer(t *testing.T) {
	e := newEnv(t, nil)
	e.createTopic(t, "fatal", 1)
	e.produceSync(t, &kafkaclient.Record{Topic: "fatal", Partition: 0, Value: []byte("before")}, kafkaclient.AcksAll)
	e.client.mu.RLock()
	old := e.client.producers[kafkaclient.AcksAll]
	e.client.mu.RUnlock()
	old.p.TestFatalError(kafka.ErrOutOfOrderSequenceNumber, "injected by the test")
	e.logs.WaitFor(t, 10*time.Second, func(c kafkaclienttest.LogRecord) bool { return c.Attrs["fatal"] == "true" })
	if !old.fatal.Load() {
		t.Fatal("fatal error event seen but producer not marked")
	}
	r := e.produceSync(t, &kafkaclient.Record{Topic: "fatal", Partition: 0, Value: []byte("after")}, kafkaclient.AcksAll)
	if r.Offset != 1 {
		t.Fatalf("offset after replacement = %d", r.Offset)
	}
	e.client.mu.RLock()
	replaced := e.client.producers[kafkaclient.AcksAll] != old && len(e.client.retired) == 1
	e.client.mu.RUnlock()
	if !replaced {
		t.Fatal("producer not replaced")
	}
}
