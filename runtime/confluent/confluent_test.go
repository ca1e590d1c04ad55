package confluent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Vectors of Kafka's own UtilsTest.testMurmur2.
func TestMurmur2JavaVectors(t *testing.T) {
	for in, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		if got := murmur2([]byte(in)); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestCreateTopicsAndPartitions(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t, 20*time.Second)
	specs := []kafkaclient.TopicSpec{
		{Name: "t3", Partitions: 3},
		{Name: "tcfg", Partitions: 1, ReplicationFactor: -1, Config: map[string]string{"max.message.bytes": "4194304"}},
	}
	for i := 0; i < 2; i++ { // the second time every topic exists already
		if err := e.client.CreateTopics(ctx, specs); err != nil {
			t.Fatalf("CreateTopics #%d: %v", i+1, err)
		}
	}
	parts, err := e.client.Partitions(ctx, "t3")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(parts, []int32{0, 1, 2}) {
		t.Fatalf("partitions = %v", parts)
	}
	if _, err := e.client.Partitions(ctx, "missing"); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Partitions(missing) = %v, want ErrUnknownTopic", err)
	}
	if _, err := e.client.Offsets(ctx, "missing", []int32{0}, kafkaclient.Latest); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Offsets(missing) = %v, want ErrUnknownTopic", err)
	}
	// The missing topic was not auto-created by the lookups.
	if _, err := e.client.Partitions(ctx, "missing"); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Partitions(missing) again = %v", err)
	}
}

func TestKeyPartitioningMatchesJava(t *testing.T) {
	e := newEnv(t, nil)
	e.createTopic(t, "keyed", 3)
	rd := e.readerFrom(t, "keyed", kafkaclient.Latest)
	const n = 60
	want := map[string]int32{}
	for i := 0; i < n; i++ {
		k := key(i)
		r := e.produceSync(t, &kafkaclient.Record{Topic: "keyed", Partition: kafkaclient.AnyPartition, Key: k, Value: []byte("v")}, kafkaclient.AcksAll)
		want[string(k)] = javaPartition(k, 3)
		if r.Partition != want[string(k)] {
			t.Errorf("key %s delivered to partition %d, Java's partitioner says %d", k, r.Partition, want[string(k)])
		}
	}
	// The records are stored where the delivery reports say.
	seen := map[int32]bool{}
	for _, r := range readN(t, rd, n, 15*time.Second) {
		seen[r.Partition] = true
		if r.Partition != want[string(r.Key)] {
			t.Errorf("key %s read from partition %d, want %d", r.Key, r.Partition, want[string(r.Key)])
		}
	}
	if len(seen) != 3 {
		t.Errorf("60 keys used only partitions %v", seen)
	}
}

func TestRecordShapesRoundTrip(t *testing.T) {
	e := newEnv(t, nil)
	e.createTopic(t, "shapes", 1)
	rd := e.readerFrom(t, "shapes", kafkaclient.Latest)
	ts := time.UnixMilli(1_700_000_000_123)
	in := []*kafkaclient.Record{
		{Key: []byte("k"), Value: []byte("data"), Timestamp: ts, Headers: []kafkaclient.Header{
			{Key: "zilla:service", Value: []byte("example.Echo")},
			{Key: "b", Value: []byte("1")},
			{Key: "a", Value: []byte("2")},
			{Key: "b", Value: []byte("3")}, // repeated name, order kept
			{Key: "empty", Value: []byte{}},
		}},
		{Key: []byte("k"), Value: nil, Headers: []kafkaclient.Header{{Key: "zilla:status", Value: []byte("0")}}}, // tombstone
		{Key: []byte("k"), Value: []byte{}}, // empty value
		{Key: nil, Value: []byte("no key")},
	}
	before := time.Now().Add(-time.Second)
	for _, r := range in {
		r.Topic = "shapes"
		r.Partition = 0
		e.produceSync(t, r, kafkaclient.AcksAll)
	}
	out := readN(t, rd, len(in), 15*time.Second)
	for i, got := range out {
		want := in[i]
		if got.Topic != "shapes" || got.Partition != 0 || got.Offset != int64(i) {
			t.Errorf("#%d at %s/%d@%d", i, got.Topic, got.Partition, got.Offset)
		}
		if !bytes.Equal(got.Key, want.Key) || (got.Key == nil) != (want.Key == nil) {
			t.Errorf("#%d key %q (nil %v), want %q (nil %v)", i, got.Key, got.Key == nil, want.Key, want.Key == nil)
		}
		if !bytes.Equal(got.Value, want.Value) || (got.Value == nil) != (want.Value == nil) {
			t.Errorf("#%d value %q (nil %v), want %q (nil %v)", i, got.Value, got.Value == nil, want.Value, want.Value == nil)
		}
		if len(got.Headers) != len(want.Headers) {
			t.Errorf("#%d headers %v, want %v", i, got.Headers, want.Headers)
		} else {
			for j := range got.Headers {
				if got.Headers[j].Key != want.Headers[j].Key || !bytes.Equal(got.Headers[j].Value, want.Headers[j].Value) {
					t.Errorf("#%d header %d = %v, want %v", i, j, got.Headers[j], want.Headers[j])
				}
			}
		}
	}
	if !out[0].Timestamp.Equal(ts) {
		t.Errorf("timestamp %v, want %v", out[0].Timestamp, ts)
	}
	if out[1].Timestamp.Before(before) || out[1].Timestamp.After(time.Now()) {
		t.Errorf("zero timestamp produced as %v, want about now", out[1].Timestamp)
	}
}

func TestReaderAtLatestGetsFirstRecord(t *testing.T) {
	e := newEnv(t, nil)
	e.createTopic(t, "latest", 3)
	// Some history, which must not be read.
	for i := 0; i < 6; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: "latest", Partition: kafkaclient.AnyPartition, Key: key(i), Value: []byte("old")}, kafkaclient.AcksAll)
	}
	rd := e.readerFrom(t, "latest", kafkaclient.Latest)
	// Produce at once after assigning: the very first record must arrive.
	e.client.Produce(&kafkaclient.Record{Topic: "latest", Partition: kafkaclient.AnyPartition, Key: []byte("first"), Value: []byte("new")}, kafkaclient.AcksAll, func(*kafkaclient.Record, error) {})
	got := readN(t, rd, 1, 10*time.Second)
	if len(got) != 1 || string(got[0].Value) != "new" {
		t.Fatalf("got %d records, first %q", len(got), got[0].Value)
	}
}

func TestReaderReassignCancelAndClose(t *testing.T) {
	e := newEnv(t, nil)
	e.createTopic(t, "re", 1)
	for i := 0; i < 5; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: "re", Partition: 0, Value: []byte{byte('0' + i)}}, kafkaclient.AcksAll)
	}
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: "re", Partition: 0, Offset: 3}}); err != nil {
		t.Fatal(err)
	}
	got := readN(t, rd, 2, 10*time.Second)
	if got[0].Offset != 3 || got[1].Offset != 4 {
		t.Fatalf("offsets %d, %d", got[0].Offset, got[1].Offset)
	}
	// Assigning again moves the position.
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: "re", Partition: 0, Offset: 1}}); err != nil {
		t.Fatal(err)
	}
	got = readN(t, rd, 4, 10*time.Second)
	if got[0].Offset != 1 || got[3].Offset != 4 {
		t.Fatalf("after reassign: offsets %d..%d", got[0].Offset, got[3].Offset)
	}
	// Nothing more: Poll ends with the context.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := rd.Poll(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Poll on an idle partition = %v, want DeadlineExceeded", err)
	}
	// Close while Poll waits.
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		_, err := rd.Poll(context.Background())
		errc <- err
	}()
	<-started
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, kafkaclient.ErrClosed) {
			t.Fatalf("Poll during Close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Poll did not return after Close")
	}
	if err := rd.Assign(nil); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Fatalf("Assign after Close = %v", err)
	}
}

func TestLargeRecord(t *testing.T) {
	e := newEnv(t, nil)
	e.createTopic(t, "big", 1)
	rd := e.readerFrom(t, "big", kafkaclient.Latest)
	val := make([]byte, 1<<20)
	for i := range val {
		val[i] = byte(i * 7)
	}
	e.produceSync(t, &kafkaclient.Record{Topic: "big", Partition: 0, Key: []byte("k"), Value: val}, kafkaclient.AcksAll)
	got := readN(t, rd, 1, 15*time.Second)
	if !bytes.Equal(got[0].Value, val) {
		t.Fatalf("1 MiB value corrupted (len %d)", len(got[0].Value))
	}
}

func TestAcksLevels(t *testing.T) {
	e := newEnv(t, nil)
	e.createTopic(t, "acks", 1)
	rd := e.readerFrom(t, "acks", kafkaclient.Latest)
	for _, a := range []kafkaclient.Acks{kafkaclient.AcksAll, kafkaclient.AcksLeader, kafkaclient.AcksNone} {
		r := e.produceSync(t, &kafkaclient.Record{Topic: "acks", Partition: 0, Value: []byte(a.String())}, a)
		if a != kafkaclient.AcksNone && r.Offset < 0 {
			t.Errorf("acks=%s: offset %d", a, r.Offset)
		}
	}
	if err := e.client.Flush(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	got := readN(t, rd, 3, 10*time.Second)
	for i, want := range []string{"all", "1", "0"} {
		if string(got[i].Value) != want {
			t.Errorf("#%d = %q, want %q", i, got[i].Value, want)
		}
	}
}

func TestProduceToClosedBrokerFails(t *testing.T) {
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	logs := newCapture()
	c, err := New(Config{"bootstrap.servers": b.Addr()},
		WithLogger(slog.New(logs)),
		WithProducerConfig(Config{"message.timeout.ms": 1500}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t, 10*time.Second)
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "gone", Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	ok := make(chan error, 1)
	c.Produce(&kafkaclient.Record{Topic: "gone", Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { ok <- err })
	if err := <-ok; err != nil {
		t.Fatal(err)
	}
	b.Close()

	failed := make(chan error, 1)
	start := time.Now()
	c.Produce(&kafkaclient.Record{Topic: "gone", Partition: 0, Value: []byte("y")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { failed <- err })
	select {
	case err := <-failed:
		if err == nil {
			t.Fatal("produce to a closed broker succeeded")
		}
		t.Logf("failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery report within 20s")
	}
	// librdkafka's complaints about the lost connection went to slog.
	logs.waitFor(t, 10*time.Second, func(c captured) bool {
		return c.attrs["component"] == "librdkafka" && c.level >= slog.LevelWarn
	})
	// and so did its error events.
	logs.waitFor(t, 10*time.Second, func(c captured) bool {
		return strings.HasPrefix(c.msg, "librdkafka error: ") && c.level == slog.LevelError && c.attrs["code"] != ""
	})
	// After Close, Produce fails through done too.
	if err := c.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	after := make(chan error, 1)
	c.Produce(&kafkaclient.Record{Topic: "gone", Value: []byte("z")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { after <- err })
	if err := <-after; !errors.Is(err, kafkaclient.ErrClosed) {
		t.Fatalf("Produce after Close: %v", err)
	}
}

func TestQueueFullAndCloseFailPending(t *testing.T) {
	// Nothing listens on port 1: records stay queued.
	c, err := New(Config{"bootstrap.servers": "127.0.0.1:1"},
		WithLogger(slog.New(slog.DiscardHandler)),
		WithProducerConfig(Config{"queue.buffering.max.messages": 1}),
		WithCloseTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	second := make(chan error, 1)
	c.Produce(&kafkaclient.Record{Topic: "t", Value: []byte("1")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { first <- err })
	c.Produce(&kafkaclient.Record{Topic: "t", Value: []byte("2")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { second <- err })
	select {
	case err := <-second:
		if !errors.Is(err, ErrQueueFull) {
			t.Fatalf("second produce: %v, want ErrQueueFull", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a full queue did not fail the produce at once")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush = %v", err)
	}
	if err := c.Close(); err == nil {
		t.Error("Close reported no undelivered records")
	}
	select {
	case err := <-first:
		if err == nil {
			t.Fatal("undeliverable record reported delivered")
		}
		t.Logf("pending record at Close: %v", err)
	default:
		t.Fatal("Close returned before failing the pending record")
	}
	if err := c.Close(); err == nil {
		t.Error("second Close returned a different result")
	}
	if err := c.Flush(context.Background()); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Errorf("Flush after Close = %v", err)
	}
}

func TestLibrdkafkaLogsReachSlog(t *testing.T) {
	// debug=broker makes librdkafka log at level 7 while connecting.
	e := newEnv(t, Config{"debug": "broker"})
	e.createTopic(t, "logged", 1)
	c := e.logs.waitFor(t, 10*time.Second, func(c captured) bool {
		return c.attrs["component"] == "librdkafka" && c.level == slog.LevelDebug && c.attrs["tag"] != ""
	})
	if !strings.HasPrefix(c.attrs["client"], "rdkafka#producer") || c.attrs["syslog_level"] != "7" {
		t.Fatalf("log record attributes %v", c.attrs)
	}
}

func TestSlogLevels(t *testing.T) {
	for lvl, want := range map[int]slog.Level{0: slog.LevelError, 3: slog.LevelError, 4: slog.LevelWarn, 5: slog.LevelInfo, 6: slog.LevelInfo, 7: slog.LevelDebug} {
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
	e.logs.waitFor(t, 10*time.Second, func(c captured) bool { return c.attrs["fatal"] == "true" })
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
