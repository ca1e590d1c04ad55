package runtime_test

import (
	"context"
	"math"
	"math/bits"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	kafkarpc "github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// memBroadcast is the yardstick of the fanout benchmark: a plain gRPC
// server whose EchoEvents sends every message of an in-memory log to every
// caller, from the first, then live as messages are added.
type memBroadcast struct {
	echov1.UnimplementedEchoServiceServer
	mu   sync.Mutex
	log  []*echov1.EchoEvent
	wake chan struct{}
}

func newMemBroadcast() *memBroadcast { return &memBroadcast{wake: make(chan struct{})} }

func (m *memBroadcast) add(evs ...*echov1.EchoEvent) {
	m.mu.Lock()
	m.log = append(m.log, evs...)
	close(m.wake)
	m.wake = make(chan struct{})
	m.mu.Unlock()
}

func (m *memBroadcast) EchoEvents(_ *emptypb.Empty, s grpc.ServerStreamingServer[echov1.EchoEvent]) error {
	if err := s.SendHeader(nil); err != nil {
		return err
	}
	next := 0
	for {
		m.mu.Lock()
		batch, wake := m.log[next:], m.wake
		m.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-wake:
				continue
			case <-s.Context().Done():
				return s.Context().Err()
			}
		}
		for _, ev := range batch {
			if err := s.Send(ev); err != nil {
				return err
			}
		}
		next += len(batch)
	}
}

// latencies is a lock-free log-linear histogram of durations: 16 buckets
// per power of two, so a quantile is within about 6 %.
type latencies struct{ n [64 * 16]atomic.Uint64 }

func (l *latencies) add(d time.Duration) {
	v := uint64(max(d, 1))
	e := bits.Len64(v) - 1
	m := uint64(0)
	if e >= 4 {
		m = (v >> (e - 4)) & 15
	} else {
		m = (v << (4 - e)) & 15
	}
	l.n[e*16+int(m)].Add(1)
}

func (l *latencies) quantile(q float64) time.Duration {
	var total uint64
	for i := range l.n {
		total += l.n[i].Load()
	}
	want := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i := range l.n {
		seen += l.n[i].Load()
		if seen >= want && seen > 0 {
			e, m := i/16, uint64(i%16)
			return time.Duration((16 + m) << e >> 4)
		}
	}
	return 0
}

// fanoutCallers is a set of streaming callers of EchoEvents counting their
// deliveries: each message carries its send time in nanoseconds, and each
// caller signals round when it received target messages.
type fanoutCallers struct {
	target atomic.Int64
	round  sync.WaitGroup
	timed  atomic.Bool // record latencies
	lat    latencies
	errs   chan error
}

func startCallers(b *testing.B, ctx context.Context, clients []echov1.EchoServiceClient, n int) *fanoutCallers {
	b.Helper()
	fc := &fanoutCallers{errs: make(chan error, n)}
	var ready sync.WaitGroup
	for i := range n {
		ready.Add(1)
		go func() {
			s, err := clients[i%len(clients)].EchoEvents(ctx, &emptypb.Empty{})
			if err == nil {
				_, err = s.Header()
			}
			ready.Done()
			if err != nil {
				fc.errs <- err
				return
			}
			var got int64
			for {
				ev, err := s.Recv()
				if err != nil {
					if ctx.Err() == nil {
						fc.errs <- err
					}
					return
				}
				if fc.timed.Load() {
					if ns, err := strconv.ParseInt(ev.GetMessage(), 10, 64); err == nil {
						fc.lat.add(time.Since(time.Unix(0, ns)))
					}
				}
				got++
				if got == fc.target.Load() {
					fc.round.Done()
				}
			}
		}()
	}
	ready.Wait()
	return fc
}

// roundTrip makes every caller expect total messages, runs send, and waits
// until each has them.
func (fc *fanoutCallers) roundTrip(b *testing.B, callers int, total int64, send func()) time.Duration {
	fc.target.Store(total)
	fc.round.Add(callers)
	start := time.Now()
	send()
	done := make(chan struct{})
	go func() {
		fc.round.Wait()
		close(done)
	}()
	select {
	case <-done:
	case err := <-fc.errs:
		b.Fatal(err)
	case <-time.After(5 * time.Minute):
		b.Fatal("a round did not complete within 5 minutes")
	}
	return time.Since(start)
}

// BenchmarkFetchFanout measures, interleaved in one run, 1,000 callers of a
// fetch through the gateway (Kafka → hub → gRPC) against the same 1,000
// callers of a plain gRPC server broadcasting the same messages from
// memory. b.N is the number of messages each sends (each reaching every
// caller):
//
//   - most go in throughput rounds of up to 500 messages sent at once, each
//     timed until every caller has all of them: deliveries (messages ×
//     callers) per second, and their ratio (fetch over memory);
//   - a fifth of them (at most 200) go one at a time, each timed from
//     produce (or append) to its delivery at every caller: p50 and p99 over
//     all those deliveries. A raw Kafka reader of the topic gives the same
//     figures for the Kafka hop alone (kafka-p50/p99).
//
// The gateway's server runs with FetchServerCodec (zerocopy) and without it
// (passthrough: one copy per message), gRPC's default windows otherwise.
//
// Run: go test -run '^$' -bench FetchFanout -benchtime 3000x ./runtime/
func BenchmarkFetchFanout(b *testing.B) {
	b.Run("zerocopy", func(b *testing.B) { benchFanout(b, zeroCopyServer) })
	b.Run("passthrough", func(b *testing.B) { benchFanout(b, nil) })
}

func benchFanout(b *testing.B, srvOpts []grpc.ServerOption) {
	const callers, perRound = 1000, 500
	e := setupFanoutServer(b, srvOpts)
	mem := newMemBroadcast()
	memAddr := serveMem(b, mem)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var gwClients, memClients []echov1.EchoServiceClient
	for range 8 {
		gwClients = append(gwClients, echov1.NewEchoServiceClient(dialFanout(b, e.addr)))
		memClients = append(memClients, echov1.NewEchoServiceClient(dialFanout(b, memAddr)))
	}
	gw := startCallers(b, ctx, gwClients, callers)
	mc := startCallers(b, ctx, memClients, callers)
	raw := tailRaw(b, ctx, e.kc, e.topic)
	stamp := func() *echov1.EchoEvent {
		return &echov1.EchoEvent{Message: strconv.FormatInt(time.Now().UnixNano(), 10)}
	}
	produce := func(n int) func() {
		return func() {
			errc := make(chan error, n)
			for range n {
				v, _ := proto.Marshal(stamp())
				e.kc.Produce(&kafkaclient.Record{Topic: e.topic, Partition: kafkaclient.AnyPartition, Key: []byte("k"), Value: v},
					kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
			}
			for range n {
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	broadcast := func(n int) func() {
		return func() {
			evs := make([]*echov1.EchoEvent, n)
			for i := range evs {
				evs[i] = stamp()
			}
			mem.add(evs...)
		}
	}
	var sent int64
	both := func(i, n int) (dGW, dMem time.Duration) {
		sent += int64(n)
		if i%2 == 0 {
			dGW = gw.roundTrip(b, callers, sent, produce(n))
			dMem = mc.roundTrip(b, callers, sent, broadcast(n))
		} else {
			dMem = mc.roundTrip(b, callers, sent, broadcast(n))
			dGW = gw.roundTrip(b, callers, sent, produce(n))
		}
		return dGW, dMem
	}
	both(0, 100) // warm up
	latencyMsgs := min(max(b.N/5, 1), 200)
	if b.N < 2 {
		latencyMsgs = 0
	}
	var tGW, tMem time.Duration
	b.ResetTimer()
	for i, left := 0, b.N-latencyMsgs; left > 0; i++ {
		n := min(left, perRound)
		dGW, dMem := both(i, n)
		tGW += dGW
		tMem += dMem
		left -= n
	}
	gw.timed.Store(true)
	mc.timed.Store(true)
	raw.timed.Store(true)
	for i := range latencyMsgs {
		both(i, 1)
	}
	b.StopTimer()
	gw.timed.Store(false)
	mc.timed.Store(false)
	raw.timed.Store(false)
	deliveries := float64((b.N - latencyMsgs) * callers)
	rGW, rMem := deliveries/tGW.Seconds(), deliveries/tMem.Seconds()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(rGW, "fetch-deliveries/s")
	b.ReportMetric(rMem, "memory-deliveries/s")
	b.ReportMetric(rGW/rMem, "ratio")
	b.ReportMetric(ms(gw.lat.quantile(0.50)), "fetch-p50-ms")
	b.ReportMetric(ms(gw.lat.quantile(0.99)), "fetch-p99-ms")
	b.ReportMetric(ms(mc.lat.quantile(0.50)), "memory-p50-ms")
	b.ReportMetric(ms(mc.lat.quantile(0.99)), "memory-p99-ms")
	b.ReportMetric(ms(raw.lat.quantile(0.50)), "kafka-p50-ms")
	b.ReportMetric(ms(raw.lat.quantile(0.99)), "kafka-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// rawTail is one raw Kafka reader of a topic, from its end, recording each
// record's produce-to-read latency while timed: the Kafka hop alone, the
// floor of the fetch's latency.
type rawTail struct {
	timed atomic.Bool
	lat   latencies
}

func tailRaw(b *testing.B, ctx context.Context, kc kafkaclient.Client, topic string) *rawTail {
	b.Helper()
	rt := &rawTail{}
	r, err := kc.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		b.Fatal(err)
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	parts, err := kc.Partitions(lctx, topic)
	if err != nil {
		b.Fatal(err)
	}
	end, err := kc.Offsets(lctx, topic, parts, kafkaclient.Latest)
	if err != nil {
		b.Fatal(err)
	}
	var assign []kafkaclient.TopicPartitionOffset
	for _, p := range parts {
		assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: topic, Partition: p, Offset: end[p]})
	}
	if err := r.Assign(assign); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev echov1.EchoEvent
		for {
			recs, err := r.Poll(ctx)
			if err != nil {
				return
			}
			now := time.Now()
			for _, rec := range recs {
				if !rt.timed.Load() || proto.Unmarshal(rec.Value, &ev) != nil {
					continue
				}
				if ns, err := strconv.ParseInt(ev.GetMessage(), 10, 64); err == nil {
					rt.lat.add(now.Sub(time.Unix(0, ns)))
				}
			}
		}
	}()
	b.Cleanup(func() {
		<-done // ctx ended first: the benchmark's deferred cancel
		_ = r.Close()
	})
	return rt
}

func serveMem(tb testing.TB, mem *memBroadcast) string {
	tb.Helper()
	lis, err := netListen()
	if err != nil {
		tb.Fatal(err)
	}
	s := grpc.NewServer(kafkarpc.GatewayServerOptions()...) // as the gateway's, which it is measured against
	echov1.RegisterEchoServiceServer(s, mem)
	go func() { _ = s.Serve(lis) }()
	tb.Cleanup(s.Stop)
	return lis.Addr().String()
}

// BenchmarkFetchVsRawReader measures, in one run, one fetch caller reading a
// topic of b.N records (at least 1,000) from the start through the gateway,
// and one raw Kafka reader (the same client library, no gateway, no gRPC)
// reading and decoding the same records: records per second of each and
// their ratio (fetch over raw). The gateway preloads nothing
// (GatewayFetchPreload(0)), so that the fetch reads Kafka too, with a catch-up
// reader, as the raw reader does.
//
// Run: go test -run '^$' -bench FetchVsRawReader -benchtime 50000x ./runtime/
func BenchmarkFetchVsRawReader(b *testing.B) {
	total := max(b.N, 1000)
	e := setupFanout(b, kafkarpc.GatewayFetchPreload(0))
	e.produce(b, e.topic, total, 7, 100)
	ctx := context.Background()
	readFetch := func() time.Duration {
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		start := time.Now()
		s, err := e.echo.EchoEvents(sctx, &emptypb.Empty{})
		if err != nil {
			b.Fatal(err)
		}
		for range total {
			if _, err := s.Recv(); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	readRaw := func() time.Duration {
		start := time.Now()
		r, err := e.kc.NewReader(kafkaclient.ReaderConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		parts, err := e.kc.Partitions(pctx, e.topic)
		if err != nil {
			b.Fatal(err)
		}
		first, err := e.kc.Offsets(pctx, e.topic, parts, kafkaclient.Earliest)
		if err != nil {
			b.Fatal(err)
		}
		var assign []kafkaclient.TopicPartitionOffset
		for _, p := range parts {
			assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: e.topic, Partition: p, Offset: first[p]})
		}
		if err := r.Assign(assign); err != nil {
			b.Fatal(err)
		}
		var ev echov1.EchoEvent
		for n := 0; n < total; {
			recs, err := r.Poll(pctx)
			if err != nil {
				b.Fatal(err)
			}
			for _, rec := range recs {
				// A raw consumer decodes what it reads; so does the
				// gRPC client of the fetch.
				if err := proto.Unmarshal(rec.Value, &ev); err != nil {
					b.Fatal(err)
				}
			}
			n += len(recs)
		}
		return time.Since(start)
	}
	readFetch() // warm up: the hub starts
	b.ResetTimer()
	tRaw := readRaw()
	tFetch := readFetch()
	b.StopTimer()
	b.ReportMetric(float64(total)/tFetch.Seconds(), "fetch-records/s")
	b.ReportMetric(float64(total)/tRaw.Seconds(), "raw-records/s")
	b.ReportMetric(tRaw.Seconds()/tFetch.Seconds(), "ratio")
	b.ReportMetric(0, "ns/op")
}

// TestFetchIdleCallerHeap measures the gateway's heap per idle fetch
// caller (one positioned at the end of its topic, waiting), beyond what the
// same number of idle callers of a plain gRPC streaming server cost: both
// in this process, client side included, so the difference is the fetch's
// own. Bound: 16 KiB.
func TestFetchIdleCallerHeap(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's shadow memory distorts heap figures")
	}
	const callers = 1000
	e := setupFanout(t)
	e.produce(t, e.topic, 10, 3, 0)
	mem := newMemBroadcast()
	memAddr := serveMem(t, mem)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heap := func() uint64 {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	open := func(addr string, warm func(echov1.EchoService_EchoEventsClient) error) (uint64, []context.CancelFunc) {
		c := echov1.NewEchoServiceClient(dialFanout(t, addr))
		before := heap()
		var cancels []context.CancelFunc
		for range callers {
			sctx, cancel := context.WithCancel(ctx)
			cancels = append(cancels, cancel)
			s, err := c.EchoEvents(sctx, &emptypb.Empty{})
			if err != nil {
				t.Fatal(err)
			}
			if err := warm(s); err != nil {
				t.Fatal(err)
			}
		}
		return heap() - before, cancels
	}
	// Each fetch caller first receives the 10 records, so that it waits at
	// the end of the topic with its batch buffer allocated, as an idle
	// caller of a busy topic would.
	fetchHeap, c1 := open(e.addr, func(s echov1.EchoService_EchoEventsClient) error {
		for range 10 {
			if _, err := s.Recv(); err != nil {
				return err
			}
		}
		return nil
	})
	memHeap, c2 := open(memAddr, func(s echov1.EchoService_EchoEventsClient) error {
		_, err := s.Header()
		return err
	})
	for _, c := range append(c1, c2...) {
		c()
	}
	per := (int64(fetchHeap) - int64(memHeap)) / callers
	t.Logf("heap: %d B per idle fetch caller, %d B per idle plain gRPC caller; fetch's own: %d B", fetchHeap/callers, memHeap/callers, per)
	if per > 16<<10 {
		t.Fatalf("an idle fetch caller costs %d B of heap beyond a plain gRPC caller; bound 16 KiB", per)
	}
}

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
