package kafkaclienttest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// BenchTwoHopFloor measures the floor of one RPC through Kafka with f's
// client at one call in flight: produce a request, read it with a Reader,
// produce the reply, read that with another Reader. It is what a gateway and
// worker cannot beat; the runtime's overhead is measured against it.
// It reports ns/op plus p50/p90/p99 round-trip latency in microseconds.
func BenchTwoHopFloor(b *testing.B, f Factory) {
	BenchTwoHopFloorWith(b, f, Config{})
}

// BenchTwoHopFloorWith is BenchTwoHopFloor with the client configured by
// cfg (its Logger is replaced by one that keeps the logs in memory).
func BenchTwoHopFloorWith(b *testing.B, f Factory, cfg Config) {
	e := newEnv(b, f, cfg)
	reqTopic := e.createTopic(b, "bench-req", 1)
	repTopic := e.createTopic(b, "bench-rep", 1)
	reqs := e.readerFrom(b, reqTopic, kafkaclient.Latest)
	reps := e.readerFrom(b, repTopic, kafkaclient.Latest)
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
		e.client.Produce(&kafkaclient.Record{Topic: reqTopic, Partition: kafkaclient.AnyPartition, Key: []byte("corr"), Value: payload}, kafkaclient.AcksAll, done)
		next(reqs)
		e.client.Produce(&kafkaclient.Record{Topic: repTopic, Partition: kafkaclient.AnyPartition, Key: []byte("corr"), Value: payload}, kafkaclient.AcksAll, done)
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

// BenchTwoHopLoad measures the two-hop floor under load: inflight callers
// each produce a request (keyed by a per-call id, over 3 partitions), an
// echo loop reads the requests and produces each back to a reply topic, and
// a dispatcher reads the replies and wakes the caller waiting for that id.
// b.N round trips in all. It reports calls/s and the round trip's p50 and
// p99 in microseconds: what batching under load gives.
func BenchTwoHopLoad(b *testing.B, f Factory, cfg Config, inflight int) {
	e := newEnv(b, f, cfg)
	reqTopic := e.createTopic(b, "load-req", 3)
	repTopic := e.createTopic(b, "load-rep", 3)
	reqs := e.readerFrom(b, reqTopic, kafkaclient.Latest)
	reps := e.readerFrom(b, repTopic, kafkaclient.Latest)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failed := make(chan error, 1)
	fail := func(err error) {
		select {
		case failed <- err:
		default:
		}
		cancel()
	}
	done := func(_ *kafkaclient.Record, err error) {
		if err != nil {
			fail(err)
		}
	}
	payload := make([]byte, 64)

	// The echo loop: the worker's side, without a group.
	go func() {
		for {
			batch, err := reqs.Poll(ctx)
			if err != nil {
				return
			}
			for _, r := range batch {
				e.client.Produce(&kafkaclient.Record{Topic: repTopic, Partition: kafkaclient.AnyPartition, Key: r.Key, Value: r.Value}, kafkaclient.AcksAll, done)
			}
		}
	}()
	// The dispatcher: the gateway's reply router.
	var mu sync.Mutex
	waiting := map[string]chan struct{}{}
	go func() {
		for {
			batch, err := reps.Poll(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			for _, r := range batch {
				if ch := waiting[string(r.Key)]; ch != nil {
					delete(waiting, string(r.Key))
					close(ch)
				}
			}
			mu.Unlock()
		}
	}()
	call := func(id string) bool {
		ch := make(chan struct{})
		mu.Lock()
		waiting[id] = ch
		mu.Unlock()
		e.client.Produce(&kafkaclient.Record{Topic: reqTopic, Partition: kafkaclient.AnyPartition, Key: []byte(id), Value: payload}, kafkaclient.AcksAll, done)
		select {
		case <-ch:
			return true
		case <-ctx.Done():
			return false
		case <-time.After(30 * time.Second):
			fail(fmt.Errorf("no reply for %s within 30s", id))
			return false
		}
	}
	for i := range 50 { // warm up
		if !call(fmt.Sprint("warm-", i)) {
			break
		}
	}
	var next atomic.Int64
	lats := make([][]time.Duration, inflight)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > int64(b.N) {
					return
				}
				t0 := time.Now()
				if !call(fmt.Sprint("c-", n)) {
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	select {
	case err := <-failed:
		b.Fatal(err)
	default:
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "calls/s")
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
}

// BenchFlush measures Flush against its floor, interleaved in one run: one
// record produced then Flush, against one record produced then a wait for
// its own delivery report (what Flush must wait for at least). It reports
// the p50 of each in microseconds and their ratio (flush-÷-floor), which a
// Flush that waits for nothing else keeps near 1 on any machine.
func BenchFlush(b *testing.B, f Factory) {
	e := newEnv(b, f, Config{})
	topic := e.createTopic(b, "bench-flush", 1)
	ctx := context.Background()
	payload := make([]byte, 64)
	errs := make(chan error, 1)
	produce := func(done func(*kafkaclient.Record, error)) {
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: payload}, kafkaclient.AcksAll, done)
	}
	report := func(_ *kafkaclient.Record, err error) { errs <- err }
	flush := func() {
		produce(report)
		if err := e.client.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	floor := func() {
		produce(report)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	for range 20 { // warm up the connection
		floor()
	}
	var tFlush, tFloor []time.Duration
	measure := func(fn func(), into *[]time.Duration) {
		start := time.Now()
		fn()
		*into = append(*into, time.Since(start))
	}
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			measure(flush, &tFlush)
			measure(floor, &tFloor)
		} else {
			measure(floor, &tFloor)
			measure(flush, &tFlush)
		}
	}
	b.StopTimer()
	p50 := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	pFlush, pFloor := p50(tFlush), p50(tFloor)
	b.ReportMetric(float64(pFlush.Nanoseconds())/1e3, "flush-p50-µs")
	b.ReportMetric(float64(pFloor.Nanoseconds())/1e3, "produce-p50-µs")
	b.ReportMetric(float64(pFlush)/float64(pFloor), "flush-÷-floor")
}
