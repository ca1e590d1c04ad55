package runtime

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// BenchmarkOutcomeLoad measures what a partition's new owner pays before it
// serves: loading the stored outcomes of three request partitions, 10,000
// outcomes of one 64-byte reply and its end record in all (as an echo
// call's), from the outcome topic on the test's broker (KAFKA_CLIENT).
//
//	go test -run '^$' -bench OutcomeLoad -benchtime 5x ./runtime/
func BenchmarkOutcomeLoad(b *testing.B) {
	const n, parts = 10000, 3
	kc := kafkatest.NewClient(b, kafkatest.Brokers(b))
	prefix := kafkatest.Unique("b") + "."
	kafkatest.CreateTopics(b, kc, parts, prefix+"outcomes")
	at := time.Now()
	errs := make(chan error, n)
	for i := range n {
		id := fmt.Sprintf("key-%d-%032x", i, i)
		v := appendOutcome(nil, &storedOutcome{at: at, topic: prefix + "requests", code: codes.OK, records: []kafkaclient.Record{
			{Value: make([]byte, 64), Headers: []kafkaclient.Header{{Key: "zilla:correlation-id", Value: []byte(id)}, {Key: "meta:kafkarpc-served-by", Value: make([]byte, 36)}}},
			{Headers: []kafkaclient.Header{{Key: "zilla:correlation-id", Value: []byte(id)}, {Key: "zilla:status", Value: []byte("0")}}},
		}})
		kc.Produce(&kafkaclient.Record{Topic: prefix + "outcomes", Partition: int32(i % parts), Key: []byte(id), Value: v},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errs <- err })
	}
	for range n {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	assigned := make([]kafkaclient.TopicPartition, parts)
	for p := range parts {
		assigned[p] = kafkaclient.TopicPartition{Topic: prefix + "requests", Partition: int32(p)}
	}
	b.ResetTimer()
	for range b.N {
		w := NewWorker(kc, WithTopicMapper(func(s string) string { return prefix + s }), WithLogger(kafkatest.Logger(b)), WorkerOutcomeTopic("outcomes"))
		for _, tp := range assigned {
			w.parts[tp] = newPartTrack()
		}
		w.outcomes.load(assigned)
		if got := w.stats.outcomesLoaded.Load(); got != n {
			b.Fatalf("loaded %d outcomes, want %d", got, n)
		}
		w.baseCancel()
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "outcomes/s")
}
