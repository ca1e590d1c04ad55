package runtime_test

import (
	"context"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// BenchmarkUnaryVsFloor measures, interleaved in one run, one unary call at
// a time through gateway → Kafka → worker → Kafka → gateway, and the floor of
// that path: one plain gRPC call on loopback plus two Kafka hops (produce →
// consume → produce → consume) with the same client and settings on the same
// broker. It reports the p50 of each and their ratio:
//
//	ratio = p50(kafka rpc) / (p50(two hops) + p50(plain grpc))
//
// Run: go test -run '^$' -bench UnaryVsFloor -benchtime 2000x ./runtime/
func BenchmarkUnaryVsFloor(b *testing.B) {
	e := setup(b, echoserver.Server{})
	plain := echov1.NewEchoServiceClient(serve(b, func(s *grpc.Server) {
		echov1.RegisterEchoServiceServer(s, echoserver.Server{})
	}))
	hops := newTwoHops(b, e.kc, e.prefix)
	ctx := context.Background()
	req := &echov1.EchoRequest{Message: "ping"}
	value := []byte("\x0a\x04ping")

	rpc := func() {
		if _, err := e.echo.EchoUnary(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	grpcCall := func() {
		if _, err := plain.EchoUnary(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	floor := func() { hops.roundTrip(b, value) }
	for range 50 { // warm up connections, metadata and readers
		rpc()
		grpcCall()
		floor()
	}
	t := rotated(b, rpc, floor, grpcCall)
	pRPC, pFloor, pGRPC := p50(t[0]), p50(t[1]), p50(t[2])
	b.ReportMetric(float64(pRPC.Microseconds()), "rpc-p50-µs")
	b.ReportMetric(float64(pFloor.Microseconds()), "twohop-p50-µs")
	b.ReportMetric(float64(pGRPC.Microseconds()), "grpc-p50-µs")
	b.ReportMetric(float64(pRPC)/float64(pFloor+pGRPC), "ratio-to-floor")
}

// rotated runs each of fs b.N times, timed, in an order rotated every
// round so that none always follows another, and returns each one's times.
func rotated(b *testing.B, fs ...func()) [][]time.Duration {
	ts := make([][]time.Duration, len(fs))
	b.ResetTimer()
	for i := range b.N {
		for k := range fs {
			j := (i + k) % len(fs)
			start := time.Now()
			fs[j]()
			ts[j] = append(ts[j], time.Since(start))
		}
	}
	b.StopTimer()
	return ts
}

func p50(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// twoHops is the floor's Kafka part: a record produced to one topic, read,
// produced to a second topic, read.
type twoHops struct {
	kc       kafkaclient.Client
	a, b     string
	ra, rb   kafkaclient.Reader
	ctx      context.Context
	produced chan error
}

func newTwoHops(tb testing.TB, kc kafkaclient.Client, prefix string) *twoHops {
	tb.Helper()
	h := &twoHops{kc: kc, a: prefix + "floor-a", b: prefix + "floor-b", ctx: context.Background(), produced: make(chan error, 1)}
	kafkatest.CreateTopics(tb, kc, 1, h.a, h.b)
	h.ra = reader(tb, kc, h.a)
	h.rb = reader(tb, kc, h.b)
	return h
}

func reader(tb testing.TB, kc kafkaclient.Client, topic string) kafkaclient.Reader {
	tb.Helper()
	ctx := ctxFor(tb, 30*time.Second)
	ends, err := kc.Offsets(ctx, topic, []int32{0}, kafkaclient.Latest)
	if err != nil {
		tb.Fatal(err)
	}
	r, err := kc.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	if err := r.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: ends[0]}}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = r.Close() })
	return r
}

func (h *twoHops) roundTrip(tb testing.TB, value []byte) {
	for _, hop := range []struct {
		topic string
		r     kafkaclient.Reader
	}{{h.a, h.ra}, {h.b, h.rb}} {
		h.kc.Produce(&kafkaclient.Record{Topic: hop.topic, Partition: kafkaclient.AnyPartition, Key: []byte("k"), Value: value},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) {
				if err != nil {
					tb.Error(err)
				}
			})
		recs, err := hop.r.Poll(h.ctx)
		if err != nil || len(recs) != 1 {
			tb.Fatalf("floor hop %s: %d records, %v", hop.topic, len(recs), err)
		}
	}
}

// BenchmarkServerStreamVsFloor measures, interleaved in one run, one server
// stream of streamMsgs responses through gateway → Kafka → worker → Kafka →
// gateway, and the floor of that path: the same number of records produced
// to a topic and read by a raw reader (the stream's Kafka part), plus a
// plain gRPC stream of as many responses on loopback. It reports the p50 of
// each and their ratio, the time per message against the parts':
//
//	ratio = p50(kafka stream) / (p50(raw records) + p50(plain grpc stream))
//
// Run: go test -run '^$' -bench ServerStreamVsFloor -benchtime 200x ./runtime/
func BenchmarkServerStreamVsFloor(b *testing.B) {
	const streamMsgs = 1000
	e := setup(b, echoserver.Server{})
	plain := echov1.NewEchoServiceClient(serve(b, func(s *grpc.Server) {
		echov1.RegisterEchoServiceServer(s, echoserver.Server{})
	}))
	ctx := context.Background()
	req := &echov1.EchoRequest{Message: "ping", Repeat: streamMsgs}
	drain := func(c echov1.EchoService_EchoServerStreamClient, err error) {
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			if _, err := c.Recv(); err != nil {
				if err != io.EOF {
					b.Fatal(err)
				}
				break
			}
			n++
		}
		if n != streamMsgs {
			b.Fatalf("%d responses, want %d", n, streamMsgs)
		}
	}
	raw := newRawStream(b, e.kc, e.prefix)
	value, err := proto.Marshal(&echov1.EchoResponse{Message: "ping", Index: streamMsgs - 1})
	if err != nil {
		b.Fatal(err)
	}
	stream := func() { drain(e.echo.EchoServerStream(ctx, req)) }
	grpcStream := func() { drain(plain.EchoServerStream(ctx, req)) }
	floor := func() { raw.run(b, value, streamMsgs) }
	for range 3 { // warm up connections, metadata and readers
		stream()
		grpcStream()
		floor()
	}
	t := rotated(b, stream, floor, grpcStream)
	pStream, pFloor, pGRPC := p50(t[0]), p50(t[1]), p50(t[2])
	b.ReportMetric(float64(pStream.Microseconds()), "stream-p50-µs")
	b.ReportMetric(float64(pFloor.Microseconds()), "raw-p50-µs")
	b.ReportMetric(float64(pGRPC.Microseconds()), "grpc-p50-µs")
	b.ReportMetric(float64(pStream)/float64(pFloor+pGRPC), "ratio-to-floor")
}

// rawStream is a server stream's Kafka part: records produced with one key
// (one partition, as a stream's replies) while a raw reader reads them.
type rawStream struct {
	kc    kafkaclient.Client
	topic string
	r     kafkaclient.Reader
	ctx   context.Context
}

func newRawStream(tb testing.TB, kc kafkaclient.Client, prefix string) *rawStream {
	tb.Helper()
	s := &rawStream{kc: kc, topic: prefix + "floor-stream", ctx: context.Background()}
	kafkatest.CreateTopics(tb, kc, 1, s.topic)
	s.r = reader(tb, kc, s.topic)
	return s
}

// run produces n records of value and reads them back.
func (s *rawStream) run(tb testing.TB, value []byte, n int) {
	for range n {
		s.kc.Produce(&kafkaclient.Record{Topic: s.topic, Partition: kafkaclient.AnyPartition, Key: []byte("k"), Value: value},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) {
				if err != nil {
					tb.Error(err)
				}
			})
	}
	for got := 0; got < n; {
		recs, err := s.r.Poll(s.ctx)
		if err != nil {
			tb.Fatalf("raw stream: %d of %d records, %v", got, n, err)
		}
		got += len(recs)
	}
}
