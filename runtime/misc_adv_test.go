package runtime_test

// Adversarial faults of telemetry, topics and publishing: each test
// failed on the code before its fix, for the reason its comment gives,
// or pins down a behaviour probed and found right.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	otelcodes "go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// miscAdvPanicky panics in EchoUnary when the message says so.
type miscAdvPanicky struct{ echoserver.Server }

func (p miscAdvPanicky) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if req.GetMessage() == "panic" {
		panic("miscadv: asked to")
	}
	return p.Server.EchoUnary(ctx, req)
}

// collect reads mp's reader once.
func collect(t *testing.T, reader *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

// waitMetric collects until ok holds for the data, or 30 s pass; it
// returns the last collection and whether ok held.
func waitMetric(t *testing.T, reader *sdkmetric.ManualReader, ok func(metricdata.ResourceMetrics) bool) (metricdata.ResourceMetrics, bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		rm := collect(t, reader)
		if ok(rm) {
			return rm, true
		}
		if time.Now().After(deadline) {
			return rm, false
		}
		time.Sleep(2 * time.Millisecond) // polling a condition, bounded above
	}
}

// gaveUp counts DEADLINE_EXCEEDED as CANCELLED: a deadline ends a call
// with either, on the server side of gRPC too (see miscAdvCallEnds).
func gaveUp(c codes.Code) codes.Code {
	if c == codes.DeadlineExceeded {
		return codes.Canceled
	}
	return c
}

// byGaveUp is m, a metric's sums by code, with gaveUp applied.
func byGaveUp(m map[int64]int64) map[int64]int64 {
	out := map[int64]int64{}
	for c, n := range m {
		out[int64(gaveUp(codes.Code(c)))] += n
	}
	return out
}

func total(m map[int64]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// miscAdvCallEnds ends calls of every kind in every way through client
// and returns the codes each way should be counted with, in order.
func miscAdvCallEnds(t *testing.T, client echov1.EchoServiceClient, workerInflight func() int64, check func(what string, code codes.Code)) map[codes.Code]int64 {
	t.Helper()
	want := map[codes.Code]int64{}
	ctx := ctxFor(t, 60*time.Second)
	expect := func(what string, err error, code codes.Code) {
		t.Helper()
		if status.Code(err) != code {
			t.Fatalf("%s: %v, want %s", what, err, code)
		}
		want[gaveUp(code)]++
		check(what, code)
	}
	// waitRunning waits until the worker runs n calls.
	waitRunning := func(what string, n int64) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); workerInflight() < n; time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the worker runs %d calls after 30 s, want %d", what, workerInflight(), n)
			}
		}
	}

	_, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "ok"})
	expect("unary OK", err, codes.OK)
	_, err = client.EchoUnary(ctx, &echov1.EchoRequest{Message: "nf", FailCode: int32(codes.NotFound)})
	expect("unary NOT_FOUND", err, codes.NotFound)
	_, err = client.EchoUnary(ctx, &echov1.EchoRequest{Message: "panic"})
	expect("unary whose handler panics", err, codes.Internal)

	// Past its deadline: the caller's deadline passes a moment before
	// the gateway's and the worker's, each counted from the caller's, so
	// that the caller's cancel (grpc-go's RST_STREAM, then the gateway's
	// cancel record) can reach them first, as it reaches a gRPC server.
	// Either code, once.
	dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = client.EchoUnary(dctx, &echov1.EchoRequest{Message: "slow", DelayMs: 60000})
	dcancel()
	expect("unary past its deadline", err, codes.DeadlineExceeded)

	// Cancelled while the handler runs.
	cctx, ccancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := client.EchoUnary(cctx, &echov1.EchoRequest{Message: "slow", DelayMs: 60000})
		errc <- err
	}()
	waitRunning("unary cancelled while running", 1)
	ccancel()
	expect("unary cancelled while running", <-errc, codes.Canceled)

	// A server stream whose caller goes after one response.
	sctx, scancel := context.WithCancel(ctx)
	ss, err := client.EchoServerStream(sctx, &echov1.EchoRequest{Message: "s", Repeat: 100000, DelayMs: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Recv(); err != nil {
		t.Fatal(err)
	}
	scancel()
	for range 100000 {
		if _, err = ss.Recv(); err != nil {
			break
		}
	}
	expect("server stream cancelled", err, codes.Canceled)

	// A client stream abandoned before its end.
	actx, acancel := context.WithCancel(ctx)
	cs, err := client.EchoClientStream(actx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.Send(&echov1.EchoRequest{Message: "a"}); err != nil {
		t.Fatal(err)
	}
	waitRunning("client stream", 1)
	acancel()
	// Not CloseAndRecv: a half-close after the cancel races with it, in
	// grpc-go too, and may reach the handler as the stream's end.
	err = cs.RecvMsg(new(echov1.EchoResponse))
	expect("client stream abandoned", err, codes.Canceled)

	// A bidi stream to its end.
	bs, err := client.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&echov1.EchoRequest{Message: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	_, err = bs.Recv()
	if err.Error() != "EOF" {
		t.Fatalf("bidi end: %v", err)
	}
	want[codes.OK]++
	return want
}

// TestMiscAdvCallMetricsEveryEnd: calls that end every way (OK, an error,
// a panic, a deadline, a cancel while running, a server stream whose
// caller goes, a client stream abandoned, a bidi stream) are each counted
// once with their code, have one duration each, and leave no call in
// flight, at the gateway, at a ClientConn and at the worker.
func TestMiscAdvCallMetricsEveryEnd(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	e := setup(t, miscAdvPanicky{}, runtime.WithMeterProvider(mp))
	gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WithMeterProvider(mp))
	t.Cleanup(func() { _ = gw.Close() })
	viaGateway := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	viaConn := e.conn(t, runtime.WithMeterProvider(mp))
	workerInflight := func() int64 { return sumByCode(t, collect(t, reader), "kafkarpc.worker.inflight")[-1] }

	for _, side := range []struct {
		name   string
		client echov1.EchoServiceClient
	}{{"gateway", viaGateway}, {"client", viaConn}} {
		t.Run(side.name, func(t *testing.T) {
			before := collect(t, reader)
			workerBefore := sumByCode(t, before, "kafkarpc.worker.calls")
			workerDurBefore := histogramCount(before, "kafkarpc.worker.duration")
			// After each call, the worker has ended it with its code and
			// runs nothing.
			seen := workerBefore
			check := func(what string, code codes.Code) {
				rm, ok := waitMetric(t, reader, func(rm metricdata.ResourceMetrics) bool {
					return total(sumByCode(t, rm, "kafkarpc.worker.calls")) > total(seen) && sumByCode(t, rm, "kafkarpc.worker.inflight")[-1] == 0
				})
				now := sumByCode(t, rm, "kafkarpc.worker.calls")
				if c := int64(gaveUp(code)); !ok || byGaveUp(now)[c] != byGaveUp(seen)[c]+1 {
					t.Errorf("%s: worker calls went from %v to %v, in flight %d; want one more %s", what, seen, now, sumByCode(t, rm, "kafkarpc.worker.inflight")[-1], code)
				}
				seen = now
			}
			want := miscAdvCallEnds(t, side.client, workerInflight, check)
			var n int64
			for _, v := range want {
				n += v
			}
			done := func(rm metricdata.ResourceMetrics) bool {
				return total(sumByCode(t, rm, "kafkarpc."+side.name+".calls")) >= n &&
					total(sumByCode(t, rm, "kafkarpc.worker.calls"))-total(workerBefore) >= n &&
					sumByCode(t, rm, "kafkarpc.worker.inflight")[-1] == 0 &&
					sumByCode(t, rm, "kafkarpc."+side.name+".inflight")[-1] == 0
			}
			rm, ok := waitMetric(t, reader, done)
			if !ok {
				t.Errorf("30 s after the calls: %s calls %v in flight %d; worker calls %v in flight %d",
					side.name, sumByCode(t, rm, "kafkarpc."+side.name+".calls"), sumByCode(t, rm, "kafkarpc."+side.name+".inflight")[-1],
					sumByCode(t, rm, "kafkarpc.worker.calls"), sumByCode(t, rm, "kafkarpc.worker.inflight")[-1])
			}
			got := byGaveUp(sumByCode(t, rm, "kafkarpc."+side.name+".calls"))
			for code, w := range want {
				if got[int64(code)] != w {
					t.Errorf("kafkarpc.%s.calls{%s} = %d, want %d (all: %v)", side.name, code, got[int64(code)], w, got)
				}
			}
			if total(got) != n {
				t.Errorf("kafkarpc.%s.calls counts %d calls, want %d: %v", side.name, total(got), n, got)
			}
			if d := histogramCount(rm, "kafkarpc."+side.name+".duration"); d != uint64(n) {
				t.Errorf("kafkarpc.%s.duration has %d observations, want %d", side.name, d, n)
			}
			wk := byGaveUp(sumByCode(t, rm, "kafkarpc.worker.calls"))
			for code, w := range want {
				if d := wk[int64(code)] - byGaveUp(workerBefore)[int64(code)]; d != w {
					t.Errorf("kafkarpc.worker.calls{%s} grew by %d, want %d (before %v, after %v)", code, d, w, workerBefore, wk)
				}
			}
			if d := histogramCount(rm, "kafkarpc.worker.duration") - workerDurBefore; d != uint64(n) {
				t.Errorf("kafkarpc.worker.duration got %d observations, want %d", d, n)
			}
		})
	}
}

// TestMiscAdvCallMetricsClosesAndFetches: calls in flight when their
// gateway, ClientConn or worker closes, fetches whose callers go, and a
// ClientConn call whose context ended before it began each leave no call in
// flight and are counted once, with the code their caller got.
func TestMiscAdvCallMetricsClosesAndFetches(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	e := setup(t, echoserver.Server{}, runtime.WithMeterProvider(mp))
	kafkatest.CreateTopics(t, e.kc, 3, e.topic("echo-events"))
	gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WithMeterProvider(mp))
	t.Cleanup(func() { _ = gw.Close() })
	viaGateway := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	cc, viaConn := connTo(t, e.kc, e.prefix, runtime.WithMeterProvider(mp))
	ctx := ctxFor(t, 60*time.Second)
	inflight := func(name string) int64 { return sumByCode(t, collect(t, reader), name)[-1] }
	waitInflight := func(what, name string, n int64) {
		t.Helper()
		if _, ok := waitMetric(t, reader, func(rm metricdata.ResourceMetrics) bool { return sumByCode(t, rm, name)[-1] == n }); !ok {
			t.Fatalf("%s: %s = %d after 30 s, want %d", what, name, inflight(name), n)
		}
	}
	// calls returns side's calls by code.
	calls := func(side string) map[int64]int64 { return sumByCode(t, collect(t, reader), "kafkarpc."+side+".calls") }
	// wantCalls waits until side's calls are want: a collection reads
	// the instruments one after the other, and can come by between a
	// call's end in the in-flight count and in the calls.
	wantCalls := func(what, side string, want map[int64]int64) {
		t.Helper()
		rm, ok := waitMetric(t, reader, func(rm metricdata.ResourceMetrics) bool {
			return fmt.Sprint(sumByCode(t, rm, "kafkarpc."+side+".calls")) == fmt.Sprint(want)
		})
		if !ok {
			t.Errorf("%s: kafkarpc.%s.calls = %v after 30 s, want %v", what, side, sumByCode(t, rm, "kafkarpc."+side+".calls"), want)
		}
	}

	// A fetch whose caller goes, through the gateway and a ClientConn.
	for _, f := range []struct {
		side   string
		client echov1.EchoServiceClient
	}{{"gateway", viaGateway}, {"client", viaConn}} {
		fctx, fcancel := context.WithCancel(ctx)
		s, err := f.client.EchoEvents(fctx, &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		waitInflight("fetch", "kafkarpc."+f.side+".inflight", 1)
		fcancel()
		_, err = s.Recv()
		if status.Code(err) != codes.Canceled {
			t.Fatalf("%s fetch after its caller's cancel: %v", f.side, err)
		}
		waitInflight("fetch whose caller went", "kafkarpc."+f.side+".inflight", 0)
		wantCalls("fetch whose caller went", f.side, map[int64]int64{int64(codes.Canceled): 1})
	}

	// A ClientConn call whose context ended before it began.
	dead, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := viaConn.EchoUnary(dead, &echov1.EchoRequest{Message: "never"}); status.Code(err) != codes.Canceled {
		t.Fatalf("a ClientConn call on a cancelled context: %v", err)
	}
	waitInflight("a call cancelled before it began", "kafkarpc.client.inflight", 0)
	wantCalls("a call cancelled before it began", "client", map[int64]int64{int64(codes.Canceled): 2})

	// A call and a fetch in flight when their gateway and their
	// ClientConn close.
	for _, c := range []struct {
		side   string
		client echov1.EchoServiceClient
		close  func() error
	}{{"gateway", viaGateway, gw.Close}, {"client", viaConn, cc.Close}} {
		errc := make(chan error, 1)
		before := calls(c.side)
		go func() {
			_, err := c.client.EchoUnary(ctx, &echov1.EchoRequest{Message: "slow", DelayMs: 60000})
			errc <- err
		}()
		fetch, err := c.client.EchoEvents(ctx, &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		waitInflight(c.side+" closing", "kafkarpc."+c.side+".inflight", 2)
		if err := c.close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err = <-errc:
		case <-ctx.Done():
			t.Fatalf("a call in flight when its %s closed did not end", c.side)
		}
		_, ferr := fetch.Recv()
		waitInflight(c.side+" closed", "kafkarpc."+c.side+".inflight", 0)
		if status.Code(err) == codes.OK || ferr == nil {
			t.Fatalf("a call and a fetch in flight when their %s closed ended %v and %v", c.side, err, ferr)
		}
		want := map[int64]int64{}
		for k, v := range before {
			want[k] = v
		}
		want[int64(status.Code(err))]++
		want[int64(status.Code(ferr))]++
		wantCalls(fmt.Sprintf("a call in flight when its %s closed, ended %v", c.side, err), c.side, want)
	}

	// A call in flight when the worker closes. The worker's side of the
	// two calls above ends once their cancels reach it: counted first.
	waitInflight("worker, before its close", "kafkarpc.worker.inflight", 0)
	errc := make(chan error, 1)
	viaConn2 := e.conn(t)
	before := calls("worker")
	go func() {
		_, err := viaConn2.EchoUnary(ctx, &echov1.EchoRequest{Message: "slow", DelayMs: 60000})
		errc <- err
	}()
	waitInflight("worker closing", "kafkarpc.worker.inflight", 1)
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	waitInflight("worker closed", "kafkarpc.worker.inflight", 0)
	if rm, ok := waitMetric(t, reader, func(rm metricdata.ResourceMetrics) bool {
		return total(sumByCode(t, rm, "kafkarpc.worker.calls")) == total(before)+1
	}); !ok {
		t.Errorf("a call in flight when the worker closed: kafkarpc.worker.calls went from %v to %v, want one more", before, sumByCode(t, rm, "kafkarpc.worker.calls"))
	}
}

// ackingProducer acknowledges every record at once, on the caller's
// goroutine, after running before (when set).
type ackingProducer struct {
	recs   []*kafkaclient.Record
	before func()
}

func (p *ackingProducer) Produce(r *kafkaclient.Record, _ kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	p.recs = append(p.recs, r)
	if p.before != nil {
		p.before()
	}
	r.Partition, r.Offset = 0, int64(len(p.recs)-1)
	done(r, nil)
}

// TestMiscAdvPublishEndedContext: Publish with a context that already
// ended wrote the record and then (at random) reported the context's
// error, so that a caller retrying on that error published the event
// twice. It now publishes nothing and says why.
func TestMiscAdvPublishEndedContext(t *testing.T) {
	p := &ackingProducer{}
	pub := runtime.NewPublisher[*echov1.EchoEvent](p, echov1.EchoServiceKafkaSpec.Method("EchoEvents"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 50 {
		at, err := pub.Publish(ctx, &echov1.EchoEvent{Message: "late"})
		if !errors.Is(err, context.Canceled) || at.Offset != -1 {
			t.Fatalf("Publish with a context that ended = %v, %v; want no record and an error wrapping context.Canceled", at, err)
		}
	}
	if len(p.recs) != 0 {
		t.Fatalf("Publish with a context that ended produced %d records, want none", len(p.recs))
	}
}

// TestMiscAdvPublishAckedWins: a record Kafka acknowledged as the
// context ended is published: Publish returned the context's error at
// random, and a caller that retried on it published the event twice.
func TestMiscAdvPublishAckedWins(t *testing.T) {
	for i := range 50 {
		ctx, cancel := context.WithCancel(context.Background())
		p := &ackingProducer{before: cancel}
		pub := runtime.NewPublisher[*echov1.EchoEvent](p, echov1.EchoServiceKafkaSpec.Method("EchoEvents"))
		at, err := pub.Publish(ctx, &echov1.EchoEvent{Message: "m"})
		if err != nil || at.Offset != 0 {
			t.Fatalf("publish %d, acknowledged as its context ended: %v, %v; want it published at offset 0", i, at, err)
		}
	}
}

// TestMiscAdvEnsureTopicsRace: two processes (two clients) creating the
// same topics at once both succeed: whoever loses the race to create a
// topic finds it exists (TOPIC_ALREADY_EXISTS is no error).
func TestMiscAdvEnsureTopicsRace(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	a, b := kafkatest.NewClient(t, brokers), kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("race") + "."
	for round := range 3 {
		var topics []runtime.Topic
		for i := range 6 {
			topics = append(topics, runtime.Topic{Name: fmt.Sprintf("%s%d-%d", prefix, round, i), Role: runtime.TopicRequest})
		}
		errc := make(chan error, 2)
		for _, kc := range []kafkaclient.Client{a, b} {
			go func() {
				errc <- runtime.EnsureTopics(ctxFor(t, 60*time.Second), kc, topics, runtime.EnsureTopicsOptions{Logger: kafkatest.Logger(t)})
			}()
		}
		for range 2 {
			if err := <-errc; err != nil {
				t.Fatalf("round %d: EnsureTopics racing another process: %v", round, err)
			}
		}
		if err := runtime.EnsureTopics(ctxFor(t, 60*time.Second), a, topics, runtime.EnsureTopicsOptions{VerifyOnly: true}); err != nil {
			t.Fatalf("round %d: after the race: %v", round, err)
		}
	}
}

// TestMiscAdvEnsureTopicsBadName: a topic name Kafka refuses (a space,
// 250 characters) fails EnsureTopics, and VerifyOnly, with an error naming
// it and saying why. The embedded broker created such topics, so that a
// program tested on it failed on Apache Kafka only, and VerifyOnly called
// the topic missing.
func TestMiscAdvEnsureTopicsBadName(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("bad") + "."
	for _, bad := range []string{prefix + "has space", prefix + strings.Repeat("x", 250)} {
		topics := []runtime.Topic{{Name: prefix + "good", Role: runtime.TopicReply}, {Name: bad, Role: runtime.TopicRequest, Methods: []string{"/s.S/M"}}}
		for _, verify := range []bool{true, false} {
			err := runtime.EnsureTopics(ctxFor(t, 60*time.Second), kc, topics, runtime.EnsureTopicsOptions{VerifyOnly: verify, Logger: kafkatest.Logger(t)})
			if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "not a valid Kafka topic name") {
				t.Errorf("EnsureTopics (VerifyOnly %v) with topic %q, a name Kafka refuses: %v; want an error naming it as not valid", verify, bad, err)
			}
		}
	}
}

// TestMiscAdvEnsureTopicsOutcomeTooFewPartitions: an outcome topic that
// exists with fewer partitions than a request topic given with it
// (existing, or about to be created) passed EnsureTopics, with VerifyOnly
// too; the worker then logged at run time that it could not load the
// outcomes of the last partitions, and repeats there ran again. It now
// fails, naming the topic and both counts.
func TestMiscAdvEnsureTopicsOutcomeTooFewPartitions(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("oc") + "."
	kafkatest.CreateTopics(t, kc, 1, prefix+"outcomes")
	kafkatest.CreateTopics(t, kc, 3, prefix+"requests")
	w := runtime.NewWorker(kc, runtime.WithTopicMapper(func(s string) string { return prefix + s }), runtime.WorkerOutcomeTopic("outcomes"))
	for _, c := range []struct {
		name     string
		request  string
		opts     runtime.EnsureTopicsOptions
		requests int
	}{
		{"existing request topic", "requests", runtime.EnsureTopicsOptions{}, 3},
		{"existing request topic, VerifyOnly", "requests", runtime.EnsureTopicsOptions{VerifyOnly: true}, 3},
		{"request topic to create", "new-requests", runtime.EnsureTopicsOptions{Partitions: 4}, 4},
	} {
		topics := append([]runtime.Topic{{Name: prefix + c.request, Role: runtime.TopicRequest}}, w.ExtraTopics()...)
		c.opts.Logger = kafkatest.Logger(t)
		err := runtime.EnsureTopics(ctxFor(t, 60*time.Second), kc, topics, c.opts)
		if err == nil || !strings.Contains(err.Error(), prefix+"outcomes has 1 partitions") || !strings.Contains(err.Error(), fmt.Sprint(c.requests)) {
			t.Errorf("%s: EnsureTopics = %v; want an error naming the outcome topic, its 1 partition and the request topic's %d", c.name, err, c.requests)
		}
	}
	// As many is right.
	kafkatest.CreateTopics(t, kc, 3, prefix+"outcomes3")
	w = runtime.NewWorker(kc, runtime.WithTopicMapper(func(s string) string { return prefix + s }), runtime.WorkerOutcomeTopic("outcomes3"))
	topics := append([]runtime.Topic{{Name: prefix + "requests", Role: runtime.TopicRequest}}, w.ExtraTopics()...)
	if err := runtime.EnsureTopics(ctxFor(t, 60*time.Second), kc, topics, runtime.EnsureTopicsOptions{VerifyOnly: true}); err != nil {
		t.Errorf("an outcome topic with as many partitions as the request topic: %v", err)
	}
}

// spanTree is the spans an exporter has, by name, each name's spans in
// the order they ended.
func spanTree(e *tracetest.InMemoryExporter) map[string][]sdktrace.ReadOnlySpan {
	out := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range e.GetSpans().Snapshots() {
		out[s.Name()] = append(out[s.Name()], s)
	}
	return out
}

// TestMiscAdvStreamSpans: every kind of call through a ClientConn, each
// under a span of the caller's, makes one send span (the caller's span's
// child), one handle span (send's child, in the worker) and one receive
// span (handle's child), all in the caller's trace, ended once, with the
// call's status on handle and receive.
func TestMiscAdvStreamSpans(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	e := setup(t, echoserver.Server{}, runtime.WithTracerProvider(tp))
	echo := e.conn(t, runtime.WithTracerProvider(tp))
	ctx := ctxFor(t, 60*time.Second)
	calls := []struct {
		method string
		code   codes.Code
		run    func(ctx context.Context) error
	}{
		{"EchoUnary", codes.NotFound, func(ctx context.Context) error {
			_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x", FailCode: int32(codes.NotFound)})
			return err
		}},
		{"EchoServerStream", codes.OK, func(ctx context.Context) error {
			s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "s", Repeat: 3})
			if err != nil {
				return err
			}
			for {
				if _, err := s.Recv(); err != nil {
					if err.Error() == "EOF" {
						return nil
					}
					return err
				}
			}
		}},
		{"EchoClientStream", codes.OK, func(ctx context.Context) error {
			s, err := echo.EchoClientStream(ctx)
			if err != nil {
				return err
			}
			for range 3 {
				if err := s.Send(&echov1.EchoRequest{Message: "c"}); err != nil {
					return err
				}
			}
			_, err = s.CloseAndRecv()
			return err
		}},
		{"EchoBidiStream", codes.OK, func(ctx context.Context) error {
			s, err := echo.EchoBidiStream(ctx)
			if err != nil {
				return err
			}
			for range 3 {
				if err := s.Send(&echov1.EchoRequest{Message: "b"}); err != nil {
					return err
				}
				if _, err := s.Recv(); err != nil {
					return err
				}
			}
			if err := s.CloseSend(); err != nil {
				return err
			}
			if _, err := s.Recv(); err.Error() != "EOF" {
				return err
			}
			return nil
		}},
	}
	for _, c := range calls {
		t.Run(c.method, func(t *testing.T) {
			spans.Reset()
			cctx, caller := tp.Tracer("test").Start(ctx, "caller")
			if err := c.run(cctx); status.Code(err) != c.code {
				t.Fatalf("call: %v, want %s", err, c.code)
			}
			caller.End()
			handleName := "handle /example.echo.v1.EchoService/" + c.method
			// The worker ends its span once Kafka acknowledged the
			// replies, and the connection its send span once Kafka
			// answered the requests: either may be after the caller got
			// its answer.
			sendName := "send " + e.topic("echo-requests")
			var tree map[string][]sdktrace.ReadOnlySpan
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(2 * time.Millisecond) {
				if tree = spanTree(spans); len(tree[handleName]) > 0 && len(tree[sendName]) > 0 || time.Now().After(deadline) {
					break
				}
			}
			send, handle, receive := tree[sendName], tree[handleName], tree["receive "+e.topic("echo-responses")]
			if len(send) != 1 || len(handle) != 1 || len(receive) != 1 || len(tree["caller"]) != 1 {
				t.Fatalf("spans %v; want one caller, send, handle and receive span", names(spans))
			}
			root := tree["caller"][0]
			for _, s := range []sdktrace.ReadOnlySpan{send[0], handle[0], receive[0]} {
				if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
					t.Errorf("span %q is not in the caller's trace", s.Name())
				}
			}
			if send[0].Parent().SpanID() != root.SpanContext().SpanID() {
				t.Errorf("send is not the caller's span's child")
			}
			if handle[0].Parent().SpanID() != send[0].SpanContext().SpanID() {
				t.Errorf("handle is not send's child")
			}
			if receive[0].Parent().SpanID() != handle[0].SpanContext().SpanID() {
				t.Errorf("receive is not handle's child")
			}
			wantStatus := otelcodes.Unset
			if c.code != codes.OK {
				wantStatus = otelcodes.Error
			}
			for _, s := range []sdktrace.ReadOnlySpan{handle[0], receive[0]} {
				if s.Status().Code != wantStatus {
					t.Errorf("span %q has status %v, want %v for a call that ended %s", s.Name(), s.Status(), wantStatus, c.code)
				}
			}
		})
	}
}

// TestMiscAdvSendSpanOfRefusedRequest: a request Kafka refused (larger
// than its topic's max.message.bytes) ended its send span OK, before
// Kafka answered, so that no span of the call said what failed. The send
// span now ends once Kafka answered the request's records, with the
// first refusal.
func TestMiscAdvSendSpanOfRefusedRequest(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("sp") + "."
	if err := kc.CreateTopics(ctxFor(t, 30*time.Second), []kafkaclient.TopicSpec{
		{Name: prefix + "echo-requests", Partitions: 1, Config: map[string]string{"max.message.bytes": "2000"}}}); err != nil {
		t.Fatal(err)
	}
	kafkatest.CreateTopics(t, kc, 1, prefix+"echo-responses")
	_, echo := connTo(t, kc, prefix, runtime.WithTracerProvider(tp))
	ctx, caller := tp.Tracer("test").Start(ctxFor(t, 30*time.Second), "caller")
	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: strings.Repeat("x", 10000)})
	caller.End()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a request over its topic's limit: %v, want RESOURCE_EXHAUSTED", err)
	}
	sendName := "send " + prefix + "echo-requests"
	var send []sdktrace.ReadOnlySpan
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if send = spanTree(spans)[sendName]; len(send) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(send) != 1 {
		t.Fatalf("spans %v; want one %q", names(spans), sendName)
	}
	if st := send[0].Status(); st.Code != otelcodes.Error || !strings.Contains(st.Description, "producing request") {
		t.Errorf("the send span of a request Kafka refused has status %v; want an error saying so", st)
	}
}

// TestMiscAdvPublishBadTopicName: a publisher whose topic (after its
// mapper) is a name Kafka refuses fails each publish naming the topic
// and why, producing nothing: the embedded broker took such records, so
// that a program tested on it failed on Apache Kafka only.
func TestMiscAdvPublishBadTopicName(t *testing.T) {
	p := &ackingProducer{}
	pub := runtime.NewPublisher[*echov1.EchoEvent](p, echov1.EchoServiceKafkaSpec.Method("EchoEvents"),
		runtime.PublisherTopicMapper(func(s string) string { return "staging/" + s }))
	at, err := pub.Publish(ctxFor(t, 10*time.Second), &echov1.EchoEvent{Message: "m"})
	if err == nil || !strings.Contains(err.Error(), `"staging/echo-events"`) || !strings.Contains(err.Error(), "not a valid Kafka topic name") || at.Offset != -1 {
		t.Errorf("Publish to topic staging/echo-events = %v, %v; want an error naming it as not a valid topic name", at, err)
	}
	if len(p.recs) != 0 {
		t.Errorf("%d records produced to a topic Kafka refuses, want none", len(p.recs))
	}
}

// miscAdvFlaky fails each call's first two attempts UNAVAILABLE (the
// second by panicking), then answers.
type miscAdvFlaky struct {
	echoserver.Server
	mu       sync.Mutex
	attempts map[string]int
}

func (f *miscAdvFlaky) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	f.mu.Lock()
	f.attempts[req.GetMessage()]++
	n := f.attempts[req.GetMessage()]
	f.mu.Unlock()
	switch n {
	case 1:
		return nil, status.Error(codes.Unavailable, "not yet")
	case 2:
		panic("miscadv: flaky")
	}
	return f.Server.EchoUnary(ctx, req)
}

// TestMiscAdvRetriedCallCountedOnce: a call the worker ran three times
// (WorkerRetries) is one call in the worker's metrics (its final code,
// one duration, nothing left in flight) and one handle span.
func TestMiscAdvRetriedCallCountedOnce(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	e := setup(t, &miscAdvFlaky{attempts: map[string]int{}}, runtime.WithMeterProvider(mp), runtime.WithTracerProvider(tp), runtime.WorkerRetries(3))
	if r, err := e.conn(t).EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "flaky"}); err != nil || r.GetMessage() != "flaky" {
		t.Fatalf("a call answered on its third attempt: %v, %v", r, err)
	}
	rm, ok := waitMetric(t, reader, func(rm metricdata.ResourceMetrics) bool {
		return total(sumByCode(t, rm, "kafkarpc.worker.calls")) >= 1 && histogramCount(rm, "kafkarpc.worker.duration") >= 1
	})
	if calls := sumByCode(t, rm, "kafkarpc.worker.calls"); !ok || fmt.Sprint(calls) != "map[0:1]" {
		t.Errorf("kafkarpc.worker.calls = %v, want one OK call", calls)
	}
	if n := histogramCount(rm, "kafkarpc.worker.duration"); n != 1 {
		t.Errorf("kafkarpc.worker.duration has %d observations, want 1", n)
	}
	if n := sumByCode(t, rm, "kafkarpc.worker.inflight")[-1]; n != 0 {
		t.Errorf("kafkarpc.worker.inflight = %d, want 0", n)
	}
	var handles []sdktrace.ReadOnlySpan
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if handles = spanTree(spans)["handle /example.echo.v1.EchoService/EchoUnary"]; len(handles) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(handles) != 1 || handles[0].Status().Code != otelcodes.Unset {
		t.Errorf("handle spans %d, want one, OK: %v", len(handles), names(spans))
	}
}

// TestMiscAdvRefusedCallCounted: a ClientConn call refused before it
// began (its request over grpc.MaxCallSendMsgSize, or a fetch method
// called as a unary one) was in no metric: the calls by code, which a
// dashboard of failures reads, missed it. It is now counted once, with the
// code its caller got.
func TestMiscAdvRefusedCallCounted(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("rf") + "."
	kafkatest.CreateTopics(t, kc, 1, prefix+"echo-requests", prefix+"echo-responses")
	cc, echo := connTo(t, kc, prefix, runtime.WithMeterProvider(mp))
	ctx := ctxFor(t, 30*time.Second)
	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: strings.Repeat("x", 100)}, grpc.MaxCallSendMsgSize(10))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a request over MaxCallSendMsgSize: %v, want RESOURCE_EXHAUSTED", err)
	}
	err = cc.Invoke(ctx, echov1.EchoService_EchoEvents_FullMethodName, &emptypb.Empty{}, &echov1.EchoEvent{})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("a fetch method invoked as unary: %v, want UNIMPLEMENTED", err)
	}
	rm := collect(t, reader)
	if got := sumByCode(t, rm, "kafkarpc.client.calls"); len(got) != 2 || got[int64(codes.Unimplemented)] != 1 || got[int64(codes.ResourceExhausted)] != 1 {
		t.Errorf("kafkarpc.client.calls = %v, want one RESOURCE_EXHAUSTED and one UNIMPLEMENTED", got)
	}
	if n := histogramCount(rm, "kafkarpc.client.duration"); n != 2 {
		t.Errorf("kafkarpc.client.duration has %d observations, want 2", n)
	}
	if n := sumByCode(t, rm, "kafkarpc.client.inflight")[-1]; n != 0 {
		t.Errorf("kafkarpc.client.inflight = %d, want 0", n)
	}
}
