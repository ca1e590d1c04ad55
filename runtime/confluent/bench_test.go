package confluent

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// BenchmarkTwoHopFloor measures the floor of one RPC through Kafka with this
// client at one call in flight: produce a request, read it with a Reader,
// produce the reply, read that with another Reader. It is what a gateway and
// worker cannot beat; the runtime's overhead is measured against it.
// Reports ns/op plus p50/p90/p99 round-trip latency in microseconds.
func BenchmarkTwoHopFloor(b *testing.B) {
	e := newEnv(b, nil)
	e.createTopic(b, "bench-req", 1)
	e.createTopic(b, "bench-rep", 1)
	reqs := e.readerFrom(b, "bench-req", kafkaclient.Latest)
	reps := e.readerFrom(b, "bench-rep", kafkaclient.Latest)
	ctx := context.Background()
	payload := make([]byte, 64)
	failed := make(chan error, 1)
	done := func(_ *kafkaclient.Record, err error) {
		if err != nil {
			select {
			case failed <- err:
			default:
			}
		}
	}
	next := func(rd kafkaclient.Reader) {
		batch, err := rd.Poll(ctx)
		if err != nil || len(batch) != 1 {
			b.Fatalf("poll: %d records, %v", len(batch), err)
		}
	}
	hop := func() {
		e.client.Produce(&kafkaclient.Record{Topic: "bench-req", Partition: kafkaclient.AnyPartition, Key: []byte("corr"), Value: payload}, kafkaclient.AcksAll, done)
		next(reqs)
		e.client.Produce(&kafkaclient.Record{Topic: "bench-rep", Partition: kafkaclient.AnyPartition, Key: []byte("corr"), Value: payload}, kafkaclient.AcksAll, done)
		next(reps)
	}
	for range 50 { // warm up connections and fetch sessions
		hop()
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		hop()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	select {
	case err := <-failed:
		b.Fatal(err)
	default:
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.90), "p90-µs")
	b.ReportMetric(q(0.99), "p99-µs")
}
