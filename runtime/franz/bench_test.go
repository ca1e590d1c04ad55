package franz_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
)

// factoryWith is the suite's franz factory with extra options.
func factoryWith(extra ...franz.Option) kafkaclienttest.Factory {
	f := kafkatest.Factory(kafkatest.Franz)
	f.New = func(brokers string, cfg kafkaclienttest.Config) (kafkaclient.Client, error) {
		return franz.New(append([]franz.Option{franz.WithSeedBrokers(brokers), franz.WithLogger(cfg.Logger)}, extra...)...)
	}
	return f
}

// BenchmarkDefaults measures the two-hop floor with each producer default
// against the alternative kgo would pick (the figures of the package doc):
//
//	go test -run '^$' -bench Defaults -benchtime 2000x ./runtime/franz/
func BenchmarkDefaults(b *testing.B) {
	for _, c := range []struct {
		name string
		opts []franz.Option
	}{
		{"defaults", nil},
		{"linger=1ms", []franz.Option{franz.WithProducerOpts(kgo.ProducerLinger(time.Millisecond))}},
		{"linger=10ms(kgo)", []franz.Option{franz.WithProducerOpts(kgo.ProducerLinger(10 * time.Millisecond))}},
		{"snappy(kgo)", []franz.Option{franz.WithProducerOpts(kgo.ProducerBatchCompression(kgo.SnappyCompression(), kgo.NoCompression()))}},
		{"fetchwait=5s(kgo)", []franz.Option{franz.WithConsumerOpts(kgo.FetchMaxWait(5 * time.Second))}},
	} {
		b.Run(c.name, func(b *testing.B) { kafkaclienttest.BenchTwoHopFloor(b, factoryWith(c.opts...)) })
	}
}

// BenchmarkTwoHopLoad is the two-hop floor with 1, 16 and 256 calls in
// flight: calls/s and latency with batching under load.
func BenchmarkTwoHopLoad(b *testing.B) {
	for _, n := range []int{1, 16, 256} {
		b.Run(fmt.Sprint("inflight=", n), func(b *testing.B) {
			kafkaclienttest.BenchTwoHopLoad(b, kafkatest.Factory(kafkatest.Franz), kafkaclienttest.Config{}, n)
		})
	}
}

// BenchmarkAssignWhileIdle measures how long a partition assigned to a
// reader that is idle on another partition of the same broker waits for its
// first record (already in the topic): kgo adds the partition to the fetch
// after the fetch in flight returns, which an idle broker holds for
// FetchMaxWait.
//
//	go test -run '^$' -bench AssignWhileIdle -benchtime 10x ./runtime/franz/
func BenchmarkAssignWhileIdle(b *testing.B) {
	for _, wait := range []time.Duration{franz.DefaultFetchMaxWait, 500 * time.Millisecond, 5 * time.Second} {
		b.Run(fmt.Sprint("fetchwait=", wait), func(b *testing.B) { benchAssignWhileIdle(b, wait) })
	}
}

func benchAssignWhileIdle(b *testing.B, wait time.Duration) {
	if b.N > 20 {
		b.Skipf("each round trip takes up to %v: run with -benchtime 10x", wait)
	}
	broker, err := embedded.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer broker.Close()
	c, err := franz.New(franz.WithSeedBrokers(broker.Addr()), franz.WithLogger(slog.New(slog.DiscardHandler)),
		franz.WithConsumerOpts(kgo.FetchMaxWait(wait)))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	topics := []kafkaclient.TopicSpec{{Name: "idle", Partitions: 1}}
	for i := range b.N {
		topics = append(topics, kafkaclient.TopicSpec{Name: fmt.Sprint("late-", i), Partitions: 1})
	}
	if err := c.CreateTopics(ctx, topics); err != nil {
		b.Fatal(err)
	}
	produce := func(topic string) {
		done := make(chan error, 1)
		c.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { done <- err })
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	rd, err := c.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: "idle", Partition: 0, Offset: 0}}); err != nil {
		b.Fatal(err)
	}
	produce("idle")
	if _, err := rd.Poll(ctx); err != nil { // fetching; the next fetch idles
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		late := fmt.Sprint("late-", i)
		produce(late)
		b.StartTimer()
		start := time.Now()
		if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: late, Partition: 0, Offset: 0}}); err != nil {
			b.Fatal(err)
		}
		recs, err := rd.Poll(ctx)
		if err != nil || len(recs) != 1 || recs[0].Topic != late {
			b.Fatalf("poll: %d records, %v", len(recs), err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1e3, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1e3, "max-ms")
}

// BenchmarkProduce produces records of 100 bytes with two headers, up to
// 256 delivery reports outstanding, to an embedded broker in this process:
// with -benchmem, allocs/op is per record, the broker's included.
//
//	go test -run '^$' -bench Produce -benchmem ./runtime/franz/
func BenchmarkProduce(b *testing.B) {
	const window = 256
	broker, err := embedded.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer broker.Close()
	c, err := franz.New(franz.WithSeedBrokers(broker.Addr()), franz.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: "produce", Partitions: 4}}); err != nil {
		b.Fatal(err)
	}
	value := make([]byte, 100)
	headers := []kafkaclient.Header{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("2")}}
	// free holds the records not handed to the client: a record is the
	// client's until its done, which gives it back.
	free := make(chan *kafkaclient.Record, window)
	for range window {
		free <- new(kafkaclient.Record)
	}
	failed := make(chan error, 1)
	done := func(r *kafkaclient.Record, err error) {
		if err != nil {
			select {
			case failed <- err:
			default:
			}
		}
		free <- r
	}
	produce := func(n int) {
		for i := range n {
			r := <-free
			*r = kafkaclient.Record{Topic: "produce", Partition: int32(i % 4), Value: value, Headers: headers}
			c.Produce(r, kafkaclient.AcksAll, done)
		}
		back := make([]*kafkaclient.Record, window) // every done has returned its record
		for k := range back {
			back[k] = <-free
		}
		for _, r := range back {
			free <- r
		}
	}
	produce(window) // metadata, connections
	b.ReportAllocs()
	b.ResetTimer()
	produce(b.N)
	b.StopTimer()
	select {
	case err := <-failed:
		b.Fatal(err)
	default:
	}
}
