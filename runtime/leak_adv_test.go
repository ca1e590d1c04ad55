package runtime_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// leakAdvGoroutines returns the stacks of every goroutine, by goroutine id.
func leakAdvGoroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := goruntime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, blk := range strings.Split(string(buf), "\n\n") {
		f := strings.Fields(blk)
		if len(f) > 1 && f[0] == "goroutine" {
			out[f[1]] = blk
		}
	}
	return out
}

// leakAdvCreator returns what started the goroutine of a stack: the
// function of its "created by" line (the goroutine's own function when it
// has none).
func leakAdvCreator(stk string) string {
	lines := strings.Split(stk, "\n")
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "created by "); ok {
			if i := strings.Index(rest, " in goroutine"); i >= 0 {
				rest = rest[:i]
			}
			return rest
		}
	}
	if len(lines) > 1 {
		return lines[1]
	}
	return stk
}

// leakAdvExtras returns the goroutines running now beyond those of base:
// for each creator (leakAdvCreator), those past base's number of
// goroutines it started. By creator, not by goroutine id, since Kafka
// clients replace some of theirs all the time (a fetch's response reader).
func leakAdvExtras(base map[string]string) []string {
	count := map[string]int{}
	for _, stk := range base {
		count[leakAdvCreator(stk)]++
	}
	now := leakAdvGoroutines()
	ids := make([]string, 0, len(now))
	for id := range now {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var extra []string
	for _, id := range ids {
		c := leakAdvCreator(now[id])
		if count[c] > 0 {
			count[c]--
			continue
		}
		extra = append(extra, now[id])
	}
	return extra
}

// leakAdvWait waits up to 30 s for the goroutines beyond those of base
// (leakAdvExtras) to end, and fails the test with their stacks, grouped by
// creator, if some do not.
func leakAdvWait(t testing.TB, base map[string]string, what string) {
	t.Helper()
	leakAdvWaitOf(t, base, what, false)
}

// leakAdvKafkaInternal reports whether a goroutine was started by a Kafka
// client library itself, or the embedded broker: while the clients run,
// they start and end such goroutines as they poll (a fetch in flight),
// whatever the calls do.
func leakAdvKafkaInternal(stk string) bool {
	c := leakAdvCreator(stk)
	return strings.HasPrefix(c, "github.com/twmb/franz-go/") || strings.HasPrefix(c, "github.com/confluentinc/")
}

// leakAdvWaitCalls is leakAdvWait for goroutines started for calls while
// the Kafka clients still run: those of the client libraries are left out
// (they are checked once everything closed).
func leakAdvWaitCalls(t testing.TB, base map[string]string, what string) {
	t.Helper()
	leakAdvWaitOf(t, base, what, true)
}

func leakAdvWaitOf(t testing.TB, base map[string]string, what string, ownOnly bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var extra []string
	for {
		extra = leakAdvExtras(base)
		if ownOnly {
			extra = slices.DeleteFunc(extra, leakAdvKafkaInternal)
		}
		if len(extra) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling, bounded by deadline
	}
	if len(extra) == 0 {
		return
	}
	groups := map[string]int{}
	sample := map[string]string{}
	for _, stk := range extra {
		key := leakAdvCreator(stk)
		groups[key]++
		sample[key] = stk
	}
	var b strings.Builder
	for k, n := range groups {
		fmt.Fprintf(&b, "--- %d goroutine(s) created by %s, like:\n%s\n", n, k, sample[k])
	}
	t.Errorf("%s: %d goroutines left after 30 s:\n%s", what, len(extra), b.String())
}

// leakAdvQuiet waits up to 30 s for cond to hold, and fails the test with
// what it says otherwise.
func leakAdvQuiet(t testing.TB, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: after 30 s: %s", what, msg)
			return
		}
		time.Sleep(50 * time.Millisecond) // polling, bounded by deadline
	}
}

// leakAdvEmpty says which of a worker's per-call tables are not empty.
func leakAdvEmpty(w *runtime.Worker) string {
	var bad []string
	for k, n := range runtime.WorkerTablesForTest(w) {
		if n != 0 {
			bad = append(bad, fmt.Sprintf("%s=%d", k, n))
		}
	}
	sort.Strings(bad)
	return strings.Join(bad, " ")
}

// leakAdvCalls makes rounds rounds of calls of every kind through echo,
// each kind ending in each way a caller sees (OK, handler error, cancel
// before the call, mid-stream, after half-close, deadline), and checks
// each ends as it should.
func leakAdvCalls(t testing.TB, echo echov1.EchoServiceClient, rounds int) {
	t.Helper()
	outer := ctxFor(t, 5*time.Minute)
	check := func(what string, err error, want codes.Code) {
		t.Helper()
		if status.Code(err) != want {
			t.Fatalf("%s: %v, want %v", what, err, want)
		}
	}
	for i := range rounds {
		msg := fmt.Sprintf("m%d", i)
		// Unary: OK, handler error, cancelled before, deadline.
		_, err := echo.EchoUnary(outer, &echov1.EchoRequest{Message: msg})
		check("unary", err, codes.OK)
		_, err = echo.EchoUnary(outer, &echov1.EchoRequest{Message: msg, FailCode: int32(codes.NotFound)})
		check("unary failing", err, codes.NotFound)
		ctx, cancel := context.WithCancel(outer)
		cancel()
		_, err = echo.EchoUnary(ctx, &echov1.EchoRequest{Message: msg})
		check("unary cancelled before", err, codes.Canceled)
		ctx, cancel = context.WithTimeout(outer, 100*time.Millisecond)
		_, err = echo.EchoUnary(ctx, &echov1.EchoRequest{Message: msg, DelayMs: 60_000})
		cancel()
		check("unary past deadline", err, codes.DeadlineExceeded)

		// Server stream: OK, cancelled after the first response.
		ss, err := echo.EchoServerStream(outer, &echov1.EchoRequest{Message: msg, Repeat: 3})
		check("server stream", err, codes.OK)
		for range 3 {
			_, err = ss.Recv()
			check("server stream recv", err, codes.OK)
		}
		_, err = ss.Recv()
		if err != io.EOF {
			t.Fatalf("server stream end: %v", err)
		}
		ctx, cancel = context.WithCancel(outer)
		ss, err = echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: msg, Repeat: 1000, DelayMs: 20})
		check("server stream to cancel", err, codes.OK)
		_, err = ss.Recv()
		check("server stream to cancel recv", err, codes.OK)
		cancel()
		for err == nil {
			_, err = ss.Recv()
		}
		check("server stream cancelled", err, codes.Canceled)

		// Client stream: OK, cancelled mid-stream.
		cs, err := echo.EchoClientStream(outer)
		check("client stream", err, codes.OK)
		for j := range 2 {
			check("client stream send", cs.Send(&echov1.EchoRequest{Message: fmt.Sprint(j)}), codes.OK)
		}
		resp, err := cs.CloseAndRecv()
		check("client stream close", err, codes.OK)
		if resp.GetMessage() != "0,1" {
			t.Fatalf("client stream = %q", resp.GetMessage())
		}
		ctx, cancel = context.WithCancel(outer)
		cs, err = echo.EchoClientStream(ctx)
		check("client stream to cancel", err, codes.OK)
		check("client stream to cancel send", cs.Send(&echov1.EchoRequest{Message: "x"}), codes.OK)
		cancel()
		// grpc-go's client tears the stream down on its own goroutine: a
		// response that arrives first may still be returned.
		if _, err = cs.CloseAndRecv(); err != nil {
			check("client stream cancelled", err, codes.Canceled)
		}

		// Bidi: OK, cancelled mid-stream, cancelled after half-close.
		bs, err := echo.EchoBidiStream(outer)
		check("bidi", err, codes.OK)
		for j := range 2 {
			check("bidi send", bs.Send(&echov1.EchoRequest{Message: fmt.Sprint(j)}), codes.OK)
			_, err = bs.Recv()
			check("bidi recv", err, codes.OK)
		}
		check("bidi close", bs.CloseSend(), codes.OK)
		if _, err = bs.Recv(); err != io.EOF {
			t.Fatalf("bidi end: %v", err)
		}
		ctx, cancel = context.WithCancel(outer)
		bs, err = echo.EchoBidiStream(ctx)
		check("bidi to cancel", err, codes.OK)
		check("bidi to cancel send", bs.Send(&echov1.EchoRequest{Message: "x"}), codes.OK)
		_, err = bs.Recv()
		check("bidi to cancel recv", err, codes.OK)
		cancel()
		for err == nil {
			_, err = bs.Recv()
		}
		check("bidi cancelled", err, codes.Canceled)
		ctx, cancel = context.WithCancel(outer)
		bs, err = echo.EchoBidiStream(ctx)
		check("bidi half-closed", err, codes.OK)
		check("bidi half-closed send", bs.Send(&echov1.EchoRequest{Message: "x", DelayMs: 60_000}), codes.OK)
		check("bidi half-closed close", bs.CloseSend(), codes.OK)
		cancel()
		for err == nil {
			_, err = bs.Recv()
		}
		check("bidi cancelled after half-close", err, codes.Canceled)
	}
}

// leakAdvProxyTarget serves echoserver.Server as a plain gRPC server on
// loopback and returns a connection to it, both closed when t ends.
func leakAdvProxyTarget(t testing.TB) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	echov1.RegisterEchoServiceServer(s, echoserver.Server{})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// leakAdvStack is one way to run the calls: a worker serving the echo
// service (itself, or as a proxy), and a caller (a gateway behind a gRPC
// server, or a ClientConn).
type leakAdvStack struct {
	name  string
	proxy bool
	conn  bool
}

var leakAdvStacks = []leakAdvStack{
	{"gateway-worker", false, false},
	{"gateway-proxy", true, false},
	{"conn-worker", false, true},
	{"conn-proxy", true, true},
}

// Many calls of every kind, ending in every way a caller can end them,
// through a gateway and a ClientConn, served by a worker's own
// implementation and by a worker proxying to a gRPC server: once they are
// over, no goroutine started for them is left, and the gateway's and the
// worker's per-call tables are empty. Once everything is closed, no
// goroutine of the stack is left either.
func TestLeakAdvCallsEveryEnding(t *testing.T) {
	for _, st := range leakAdvStacks {
		t.Run(st.name, func(t *testing.T) {
			run := func(t *testing.T, rounds int, checkCalls bool) {
				var e *env
				if st.proxy {
					cc := leakAdvProxyTarget(t)
					e = setupWith(t, func(w *runtime.Worker) error {
						return w.RegisterProxy(cc, []string{"echo-requests"})
					})
				} else {
					e = setup(t, echoserver.Server{})
				}
				echo, gw := e.echo, e.gw
				if st.conn {
					var cc *runtime.ClientConn
					cc, echo = connTo(t, e.kc, e.prefix)
					gw = runtime.ConnGatewayForTest(cc)
				}
				// Warm up: every kind once, so that connections, readers
				// and lazily started goroutines exist before the baseline.
				leakAdvCalls(t, echo, 2)
				leakAdvQuiet(t, "after the warm-up", func() string { return leakAdvTables(gw, e.worker) })
				base := leakAdvGoroutines()
				leakAdvCalls(t, echo, rounds)
				leakAdvQuiet(t, "after the calls", func() string { return leakAdvTables(gw, e.worker) })
				if checkCalls {
					leakAdvWaitCalls(t, base, "after the calls")
				}
			}
			// Once, so that goroutines started once per process exist
			// before the baseline.
			t.Run("warm", func(t *testing.T) { run(t, 1, false) })
			base := leakAdvGoroutines()
			t.Run("calls", func(t *testing.T) { run(t, 12, true) })
			leakAdvWait(t, base, "after everything closed")
		})
	}
}

// leakAdvTables says what is left in the gateway's and the worker's
// per-call tables.
func leakAdvTables(gw *runtime.Gateway, w *runtime.Worker) string {
	var bad []string
	if n := runtime.PendingForTest(gw); n != 0 {
		bad = append(bad, fmt.Sprintf("gateway pending=%d", n))
	}
	if s := leakAdvEmpty(w); s != "" {
		bad = append(bad, "worker "+s)
	}
	return strings.Join(bad, "; ")
}

var (
	_ = errors.New
	_ = kafkatest.Unique
)

// Many fetch callers join and leave a gateway's fetch method, each ending
// in one of the ways a fetch call ends: cancelled after a few records,
// resumed from an id inside the window, resumed from before the window
// (a catch-up reader of its own), past its deadline while waiting for
// records, cancelled before its first record. Once they are gone, the
// gateway counts no caller and no goroutine started for them is left;
// once the gateway is closed, none of its own is left either.
func TestLeakAdvFetchCallers(t *testing.T) {
	const records, size = 400, 200
	run := func(t *testing.T, callers int, checkCalls bool) {
		// A window of about 100 records: resuming from the first ones
		// needs a catch-up reader.
		e := setupFanout(t, runtime.GatewayFetchWindow(100*(size+120)))
		e.produce(t, e.topic, records, 7, size)
		ctx := ctxFor(t, 3*time.Minute)
		var first, late []byte // event ids: the first record, one in the window
		read := func(i int, sctx context.Context, md []string, n int) {
			t.Helper()
			if md != nil {
				sctx = metadata.AppendToOutgoingContext(sctx, md...)
			}
			s, err := e.echo.EchoEvents(sctx, &emptypb.Empty{})
			if err != nil {
				t.Fatalf("caller %d: %v", i, err)
			}
			for k := range n {
				ev, err := s.Recv()
				if err != nil {
					t.Fatalf("caller %d, record %d: %v", i, k, err)
				}
				raw, _ := wire.EventIDFromMessage(ev, wire.DefaultEventIDField)
				if first == nil {
					first = raw
				}
				if k == n-1 && n > 50 {
					late = raw
				}
			}
		}
		cancelled := func(i int, md []string, n int) {
			t.Helper()
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			read(i, sctx, md, n)
		}
		cancelled(0, nil, records-10) // learns first and late
		var base map[string]string
		for i := range callers {
			if i == 5 {
				leakAdvQuiet(t, "fetch callers after the warm-up", func() string { return leakAdvFetchIdle(e.gw) })
				base = leakAdvGoroutines()
			}
			switch i % 5 {
			case 0:
				cancelled(i, nil, 3)
			case 1:
				cancelled(i, []string{"last-message-id", base64.RawURLEncoding.EncodeToString(late)}, 3)
			case 2:
				cancelled(i, []string{"last-message-id", base64.RawURLEncoding.EncodeToString(first)}, 20)
			case 3:
				// Reads to the end, then waits for records until its
				// deadline.
				sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				s, err := e.echo.EchoEvents(metadata.AppendToOutgoingContext(sctx, "last-message-id", base64.RawURLEncoding.EncodeToString(late)), &emptypb.Empty{})
				if err != nil {
					t.Fatalf("caller %d: %v", i, err)
				}
				for err == nil {
					_, err = s.Recv()
				}
				cancel()
				if status.Code(err) != codes.DeadlineExceeded {
					t.Fatalf("caller %d waiting past its deadline: %v", i, err)
				}
			case 4:
				sctx, cancel := context.WithCancel(ctx)
				s, err := e.echo.EchoEvents(sctx, &emptypb.Empty{})
				cancel()
				for err == nil {
					_, err = s.Recv()
				}
				if status.Code(err) != codes.Canceled {
					t.Fatalf("caller %d cancelled at once: %v", i, err)
				}
			}
		}
		leakAdvQuiet(t, "fetch callers after the calls", func() string { return leakAdvFetchIdle(e.gw) })
		if checkCalls {
			leakAdvWaitCalls(t, base, "after the fetch calls")
		}
	}
	t.Run("warm", func(t *testing.T) { run(t, 10, false) })
	base := leakAdvGoroutines()
	t.Run("calls", func(t *testing.T) { run(t, 60, true) })
	leakAdvWait(t, base, "after the gateway closed")
}

// leakAdvFetchIdle says what a gateway's fetch side still counts of its
// callers.
func leakAdvFetchIdle(gw *runtime.Gateway) string {
	st := gw.FetchStats()
	if st.Callers != 0 || st.Waiting != 0 {
		return fmt.Sprintf("fetch stats %+v", st)
	}
	return ""
}

// leakAdvHeap returns the live heap after a full collection.
func leakAdvHeap() uint64 {
	var m goruntime.MemStats
	goruntime.GC()
	goruntime.GC()
	goruntime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Starting and closing a Kafka client, a worker, a gateway (its reply
// reader and a fetch hub) and a ClientConn, each used for a call, fifty
// times over leaves no goroutine behind and does not grow the heap.
func TestLeakAdvStartCloseFifty(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	admin := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("l") + "."
	kafkatest.CreateTopics(t, admin, 3, prefix+"echo-requests", prefix+"echo-responses", prefix+"echo-events")
	v, _ := proto.Marshal(&echov1.EchoEvent{Message: "ev"})
	produced := make(chan error, 1)
	admin.Produce(&kafkaclient.Record{Topic: prefix + "echo-events", Partition: kafkaclient.AnyPartition, Value: v}, kafkaclient.AcksAll,
		func(_ *kafkaclient.Record, err error) { produced <- err })
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	logger := runtime.WithLogger(kafkatest.Logger(t))
	ctx := ctxFor(t, 5*time.Minute)
	once := func(i int) {
		kc, err := kafkatest.Factory(kafkatest.ClientName()).New(brokers, kafkaclienttest.Config{Logger: kafkatest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := kc.Close(); err != nil {
				t.Errorf("round %d: closing the Kafka client: %v", i, err)
			}
		}()
		w := runtime.NewWorker(kc, mapper, logger, runtime.WorkerGroupID(prefix+"workers"))
		if err := echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}); err != nil {
			t.Fatal(err)
		}
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := w.Close(); err != nil {
				t.Errorf("round %d: closing the worker: %v", i, err)
			}
		}()
		gw := runtime.NewGateway(kc, mapper, logger)
		if err := gw.AddService(echov1.EchoServiceKafkaSpec); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := gw.Close(); err != nil {
				t.Errorf("round %d: closing the gateway: %v", i, err)
			}
		}()
		cc := runtime.NewClientConn(kc, mapper, logger)
		defer func() {
			if err := cc.Close(); err != nil {
				t.Errorf("round %d: closing the ClientConn: %v", i, err)
			}
		}()
		if err := cc.Register(echov1.EchoServiceKafkaSpec); err != nil {
			t.Fatal(err)
		}
		echo := echov1.NewEchoServiceClient(cc)
		if r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"}); err != nil || r.GetMessage() != "x" {
			t.Fatalf("round %d: unary: %v, %v", i, r, err)
		}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s, err := echo.EchoEvents(sctx, &emptypb.Empty{})
		if err != nil {
			t.Fatalf("round %d: fetch: %v", i, err)
		}
		if ev, err := s.Recv(); err != nil || ev.GetMessage() != "ev" {
			t.Fatalf("round %d: fetch: %v, %v", i, ev, err)
		}
	}
	// Twice first, so that what a process starts once exists before the
	// baseline.
	once(0)
	once(1)
	base := leakAdvGoroutines()
	heap := leakAdvHeap()
	const rounds = 50
	for i := 2; i < rounds; i++ {
		once(i)
	}
	leakAdvWait(t, base, fmt.Sprintf("after %d rounds", rounds))
	after := leakAdvHeap()
	t.Logf("heap %d KiB before, %d KiB after %d rounds", heap>>10, after>>10, rounds)
	// Generous: a round that kept its gateway, worker or ClientConn (and
	// so its Kafka client: about 250 KiB) would exceed this.
	if after > heap+4<<20 {
		t.Errorf("heap grew from %d KiB to %d KiB over %d rounds", heap>>10, after>>10, rounds)
	}
}

// Once a gateway, a ClientConn and a worker are closed, the meter provider
// they report to no longer observes them: their fetch gauges and counters
// and the worker's lag gauge are gone from what it collects (a closed
// gateway's fetch callers and deliveries are no longer counted), and the
// provider does not keep them, and their Kafka clients, in memory.
func TestLeakAdvClosedStopsObservableMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	brokers := kafkatest.Brokers(t)
	admin := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("l") + "."
	kafkatest.CreateTopics(t, admin, 3, prefix+"echo-requests", prefix+"echo-responses", prefix+"echo-events")
	v, _ := proto.Marshal(&echov1.EchoEvent{Message: "ev"})
	produced := make(chan error, 1)
	admin.Produce(&kafkaclient.Record{Topic: prefix + "echo-events", Partition: kafkaclient.AnyPartition, Value: v}, kafkaclient.AcksAll,
		func(_ *kafkaclient.Record, err error) { produced <- err })
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	logger := runtime.WithLogger(kafkatest.Logger(t))
	ctx := ctxFor(t, 2*time.Minute)

	kc, err := kafkatest.Factory(kafkatest.ClientName()).New(brokers, kafkaclienttest.Config{Logger: kafkatest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	w := runtime.NewWorker(kc, mapper, logger, runtime.WithMeterProvider(mp), runtime.WorkerGroupID(prefix+"workers"))
	if err := echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	gw := runtime.NewGateway(kc, mapper, logger, runtime.WithMeterProvider(mp))
	gwEcho := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	cc := runtime.NewClientConn(kc, mapper, logger, runtime.WithMeterProvider(mp))
	if err := cc.Register(echov1.EchoServiceKafkaSpec); err != nil {
		t.Fatal(err)
	}
	for _, echo := range []echov1.EchoServiceClient{gwEcho, echov1.NewEchoServiceClient(cc)} {
		if r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"}); err != nil || r.GetMessage() != "x" {
			t.Fatalf("unary: %v, %v", r, err)
		}
		sctx, cancel := context.WithCancel(ctx)
		s, err := echo.EchoEvents(sctx, &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	observables := []string{"kafkarpc.gateway.fetch.delivered", "kafkarpc.client.fetch.delivered", "kafkarpc.worker.lag",
		"kafkarpc.worker.calls.queued", "kafkarpc.worker.read_pauses"}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	for _, name := range observables {
		if leakAdvPoints(rm, name) == 0 {
			t.Errorf("%s: no data point while the gateway, ClientConn and worker run", name)
		}
	}

	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := kc.Close(); err != nil {
		t.Fatal(err)
	}
	rm = metricdata.ResourceMetrics{}
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Errorf("collecting once everything is closed: %v", err)
	}
	for _, name := range observables {
		if n := leakAdvPoints(rm, name); n != 0 {
			t.Errorf("%s: %d data points still observed once the gateway, ClientConn and worker are closed", name, n)
		}
	}
}

// leakAdvPoints counts the data points of the metrics called name.
func leakAdvPoints(rm metricdata.ResourceMetrics, name string) int {
	n := 0
	for _, m := range metricsNamed(rm, name) {
		switch d := m.Data.(type) {
		case metricdata.Gauge[int64]:
			n += len(d.DataPoints)
		case metricdata.Sum[int64]:
			n += len(d.DataPoints)
		}
	}
	return n
}

// leakAdvNoGroup is a Kafka client whose group readers cannot be made.
type leakAdvNoGroup struct {
	kafkaclient.Client
	kafkaclient.TxnClient
}

func (leakAdvNoGroup) NewGroupReader(kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	return nil, errors.New("leak test: no group reader")
}

// A worker with WorkerExactlyOnce whose Start fails (its group reader
// cannot be made) and is then closed leaves nothing running: the
// transactional producer Start made before it failed is closed, not left
// with its connections and goroutines (nor left to hold its transactional
// id open while a retried Start fences it).
func TestLeakAdvFailedStartClosesTxnProducer(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("l") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	tc, ok := kc.(kafkaclient.TxnClient)
	if !ok {
		t.Skipf("%T has no transactions", kc)
	}
	failing := leakAdvNoGroup{Client: kc, TxnClient: tc}
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	base := leakAdvGoroutines()
	for i := range 3 {
		w := runtime.NewWorker(failing, mapper, runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(prefix+"workers"),
			runtime.WorkerExactlyOnce(prefix+"txn"))
		if err := echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}); err != nil {
			t.Fatal(err)
		}
		if err := w.Start(); err == nil {
			t.Fatalf("round %d: Start succeeded without a group reader", i)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", i, err)
		}
	}
	leakAdvWait(t, base, "after three failed Starts and Closes")
}

// Keyed calls (idempotency-key), repeated once answered, retried after
// their caller cancelled them, and repeated while the first attempt still
// runs: once over, the worker's per-call tables are empty, what it keeps
// of replies for repeats stays within WorkerIdempotencyWindow's byte
// bound, and no goroutine started for the calls is left.
func TestLeakAdvKeyedCalls(t *testing.T) {
	const maxStored = 16 << 10
	run := func(t *testing.T, keys int, checkCalls bool) {
		e := setup(t, echoserver.Server{}, runtime.WorkerIdempotencyWindow(time.Minute, maxStored))
		// Concurrent attempts of one key come through two callers: one
		// caller refuses a second call with a key in flight.
		callers := []echov1.EchoServiceClient{e.echo, e.conn(t)}
		ctx := ctxFor(t, 3*time.Minute)
		var base map[string]string
		for i := range keys {
			if i == 3 {
				leakAdvQuiet(t, "after the warm-up", func() string { return leakAdvTables(e.gw, e.worker) })
				base = leakAdvGoroutines()
			}
			key := fmt.Sprintf("%s-k%d", e.prefix, i)
			kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
			msg := strings.Repeat("x", 100) + fmt.Sprint(i)
			switch i % 3 {
			case 0: // answered, then repeated
				for range 2 {
					r, err := e.echo.EchoUnary(kctx, &echov1.EchoRequest{Message: msg})
					if err != nil || r.GetMessage() != msg {
						t.Fatalf("key %d: %v, %v", i, r, err)
					}
				}
			case 1: // cancelled while running, then retried
				cctx, cancel := context.WithCancel(kctx)
				s, err := e.echo.EchoServerStream(cctx, &echov1.EchoRequest{Message: msg, Repeat: 100, DelayMs: 20})
				if err == nil {
					_, err = s.Recv()
				}
				if err != nil {
					t.Fatalf("key %d: %v", i, err)
				}
				cancel()
				for err == nil {
					_, err = s.Recv()
				}
				s, err = e.echo.EchoServerStream(kctx, &echov1.EchoRequest{Message: msg, Repeat: 2})
				if err != nil {
					t.Fatalf("key %d retried: %v", i, err)
				}
				n := 0
				for {
					if _, err = s.Recv(); err != nil {
						break
					}
					n++
				}
				if err != io.EOF || n != 2 {
					t.Fatalf("key %d retried: %d responses, then %v", i, n, err)
				}
			case 2: // repeated while the first attempt runs
				var wg sync.WaitGroup
				errs := make([]error, 2)
				for j := range 2 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, errs[j] = callers[j].EchoUnary(kctx, &echov1.EchoRequest{Message: msg, DelayMs: 50})
					}()
				}
				wg.Wait()
				for j, err := range errs {
					if err != nil {
						t.Fatalf("key %d, concurrent attempt %d: %v", i, j, err)
					}
				}
			}
		}
		leakAdvQuiet(t, "after the keyed calls", func() string { return leakAdvTables(e.gw, e.worker) })
		n, b := runtime.StoredRepliesForTest(e.worker)
		t.Logf("%d calls' replies stored, %d bytes", n, b)
		if b > maxStored {
			t.Errorf("stored replies: %d bytes, over the bound of %d", b, maxStored)
		}
		if checkCalls {
			leakAdvWaitCalls(t, base, "after the keyed calls")
		}
	}
	t.Run("warm", func(t *testing.T) { run(t, 6, false) })
	base := leakAdvGoroutines()
	t.Run("calls", func(t *testing.T) { run(t, 45, true) })
	leakAdvWait(t, base, "after everything closed")
}

// Calls whose replies never come (no worker serves the topic) end at
// their deadline, and calls still waiting when the gateway or ClientConn
// closes end then: either way nothing of them is left in the reply
// router, and no goroutine started for them outlives them.
func TestLeakAdvNoReplyAndClose(t *testing.T) {
	run := func(t *testing.T, n int, checkCalls bool) {
		brokers := kafkatest.Brokers(t)
		kc := kafkatest.NewClient(t, brokers)
		prefix := kafkatest.Unique("l") + "."
		kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
		mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
		logger := runtime.WithLogger(kafkatest.Logger(t))
		gw := runtime.NewGateway(kc, mapper, logger)
		t.Cleanup(func() { _ = gw.Close() })
		gwEcho := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
			if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
				t.Fatal(err)
			}
		}))
		cc, connEcho := connTo(t, kc, prefix)
		ctx := ctxFor(t, 3*time.Minute)
		deadlined := func(echo echov1.EchoServiceClient, i int) {
			dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			var err error
			switch i % 3 {
			case 0:
				_, err = echo.EchoUnary(dctx, &echov1.EchoRequest{Message: "x"})
			case 1:
				var s grpc.ServerStreamingClient[echov1.EchoResponse]
				if s, err = echo.EchoServerStream(dctx, &echov1.EchoRequest{Message: "x"}); err == nil {
					_, err = s.Recv()
				}
			case 2:
				var s grpc.BidiStreamingClient[echov1.EchoRequest, echov1.EchoResponse]
				if s, err = echo.EchoBidiStream(dctx); err == nil {
					_ = s.Send(&echov1.EchoRequest{Message: "x"})
					_ = s.CloseSend()
					_, err = s.Recv()
				}
			}
			if status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("call %d without a reply: %v, want DEADLINE_EXCEEDED", i, err)
			}
		}
		var base map[string]string
		for i := range n {
			if i == 3 {
				leakAdvQuiet(t, "after the warm-up", func() string {
					if p := runtime.PendingForTest(gw) + runtime.PendingForTest(runtime.ConnGatewayForTest(cc)); p != 0 {
						return fmt.Sprintf("%d calls pending", p)
					}
					return ""
				})
				base = leakAdvGoroutines()
			}
			deadlined(gwEcho, i)
			deadlined(connEcho, i)
		}
		leakAdvQuiet(t, "after the calls", func() string {
			if p := runtime.PendingForTest(gw) + runtime.PendingForTest(runtime.ConnGatewayForTest(cc)); p != 0 {
				return fmt.Sprintf("%d calls pending", p)
			}
			return ""
		})
		if checkCalls {
			leakAdvWaitCalls(t, base, "after the calls without a reply")
		}
		// Calls waiting without a deadline when their gateway closes.
		const waiting = 20
		errc := make(chan error, 2*waiting)
		for i := range waiting {
			go func() {
				_, err := gwEcho.EchoUnary(ctx, &echov1.EchoRequest{Message: fmt.Sprint(i)})
				errc <- err
			}()
			go func() {
				_, err := connEcho.EchoUnary(ctx, &echov1.EchoRequest{Message: fmt.Sprint(i)})
				errc <- err
			}()
		}
		leakAdvQuiet(t, "calls waiting", func() string {
			if p := runtime.PendingForTest(gw) + runtime.PendingForTest(runtime.ConnGatewayForTest(cc)); p != 2*waiting {
				return fmt.Sprintf("%d calls pending, want %d", p, 2*waiting)
			}
			return ""
		})
		if err := gw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := cc.Close(); err != nil {
			t.Fatal(err)
		}
		for range 2 * waiting {
			select {
			case err := <-errc:
				if c := status.Code(err); c != codes.Unavailable && c != codes.Canceled {
					t.Errorf("call waiting when its gateway closed: %v", err)
				}
			case <-ctx.Done():
				t.Fatal("calls waiting when their gateway closed did not end")
			}
		}
		if p := runtime.PendingForTest(gw) + runtime.PendingForTest(runtime.ConnGatewayForTest(cc)); p != 0 {
			t.Errorf("%d calls pending once closed", p)
		}
	}
	t.Run("warm", func(t *testing.T) { run(t, 6, false) })
	base := leakAdvGoroutines()
	t.Run("calls", func(t *testing.T) { run(t, 30, true) })
	leakAdvWait(t, base, "after everything closed")
}

// A worker with stored outcomes (WorkerOutcomeTopic) and a maximum call
// duration serves keyed calls (their outcomes stored, the oldest evicted
// past the byte bound), calls ended by the maximum duration, client
// streams left open by callers that went away (ended by the maximum
// duration too), and is closed with calls in flight: the worker's tables
// are empty, its stored outcomes within their bound, and no goroutine is
// left once the calls are over and everything is closed.
func TestLeakAdvWorkerEndings(t *testing.T) {
	const maxStored = 8 << 10
	run := func(t *testing.T, n int, checkCalls bool) {
		e := newOutcomeEnv(t, false)
		w := e.start(t, e.kc, echoserver.Server{}, runtime.WorkerOutcomeTopic(outcomeTopic),
			runtime.WorkerMaxCallDuration(300*time.Millisecond), runtime.WorkerIdempotencyWindow(time.Minute, maxStored))
		ctx := ctxFor(t, 3*time.Minute)
		var base map[string]string
		for i := range n {
			if i == 3 {
				leakAdvQuiet(t, "after the warm-up", func() string { return leakAdvEmpty(w) })
				base = leakAdvGoroutines()
			}
			msg := strings.Repeat("y", 200) + fmt.Sprint(i)
			kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", fmt.Sprintf("k%d", i))
			switch i % 3 {
			case 0:
				for range 2 {
					if r, err := e.echo.EchoUnary(kctx, &echov1.EchoRequest{Message: msg}); err != nil || r.GetMessage() != msg {
						t.Fatalf("call %d: %v, %v", i, r, err)
					}
				}
			case 1:
				_, err := e.echo.EchoUnary(kctx, &echov1.EchoRequest{Message: msg, DelayMs: 60_000})
				if status.Code(err) != codes.DeadlineExceeded {
					t.Fatalf("call %d past the worker's maximum: %v", i, err)
				}
			case 2:
				// A client stream whose caller gives up without closing it
				// (its deadline ends before the worker's maximum).
				dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				s, err := e.echo.EchoClientStream(dctx)
				if err == nil {
					_ = s.Send(&echov1.EchoRequest{Message: msg})
					<-dctx.Done()
					_, err = s.CloseAndRecv()
				}
				cancel()
				if status.Code(err) != codes.DeadlineExceeded {
					t.Fatalf("call %d: client stream left open: %v", i, err)
				}
			}
		}
		leakAdvQuiet(t, "after the calls", func() string { return leakAdvEmpty(w) })
		if k, b := runtime.StoredRepliesForTest(w); b > maxStored {
			t.Errorf("%d stored outcomes of %d bytes, over the bound of %d", k, b, maxStored)
		}
		if checkCalls {
			leakAdvWaitCalls(t, base, "after the calls")
		}
		// Closed with calls in flight: they end at their deadline (the
		// worker gave them up for the partition's next owner).
		const inFlight = 10
		errc := make(chan error, inFlight)
		for i := range inFlight {
			go func() {
				dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				_, err := e.echo.EchoUnary(dctx, &echov1.EchoRequest{Message: fmt.Sprint(i), DelayMs: 60_000})
				errc <- err
			}()
		}
		leakAdvQuiet(t, "calls in flight", func() string {
			if k := runtime.WorkerTablesForTest(w)["calls"]; k != inFlight {
				return fmt.Sprintf("%d calls in flight at the worker, want %d", k, inFlight)
			}
			return ""
		})
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		for range inFlight {
			if err := <-errc; status.Code(err) == codes.OK {
				t.Errorf("a call in flight when its worker closed succeeded")
			}
		}
		if s := leakAdvEmpty(w); s != "" {
			t.Errorf("closed worker's tables: %s", s)
		}
	}
	t.Run("warm", func(t *testing.T) { run(t, 6, false) })
	base := leakAdvGoroutines()
	t.Run("calls", func(t *testing.T) { run(t, 24, true) })
	leakAdvWait(t, base, "after everything closed")
}

// Fetch streams of a ClientConn whose callers stopped reading end
// CANCELLED when the connection closes, as grpc-go's streams end when
// their connection closes: the connection counts no fetch caller
// afterwards, and no goroutine started for them is left.
func TestLeakAdvConnCloseEndsStuckFetches(t *testing.T) {
	run := func(t *testing.T, stuck int, checkCalls bool) {
		e := setupFanout(t)
		ctx := ctxFor(t, 3*time.Minute)
		e.produce(t, e.topic, 10, 5, 100)
		cc, connEcho := connTo(t, e.kc, e.prefix)
		base := leakAdvGoroutines()
		var streams []grpc.ServerStreamingClient[echov1.EchoEvent]
		for range stuck {
			st, err := connEcho.EchoEvents(ctx, &emptypb.Empty{})
			if err == nil {
				_, err = st.Recv() // one record of ten: the fetch waits to hand over the next
			}
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, st)
		}
		leakAdvQuiet(t, "stuck fetches", func() string {
			if st := cc.FetchStats(); st.Callers != int64(stuck) || st.Delivered < uint64(stuck) {
				return fmt.Sprintf("ClientConn stats %+v, want %d callers", st, stuck)
			}
			return ""
		})
		if err := cc.Close(); err != nil {
			t.Fatal(err)
		}
		// The caller reads nothing more; the fetch ends of itself.
		leakAdvQuiet(t, "after the ClientConn closed", func() string {
			if st := cc.FetchStats(); st.Callers != 0 {
				return fmt.Sprintf("closed ClientConn stats %+v", st)
			}
			return ""
		})
		if checkCalls {
			leakAdvWaitCalls(t, base, "after the ClientConn closed")
		}
		for i, st := range streams {
			var err error
			for err == nil {
				_, err = st.Recv()
			}
			if status.Code(err) != codes.Canceled {
				t.Errorf("stuck fetch %d once the ClientConn closed: %v, want CANCELLED", i, err)
			}
		}
	}
	t.Run("warm", func(t *testing.T) { run(t, 1, false) })
	base := leakAdvGoroutines()
	t.Run("calls", func(t *testing.T) { run(t, 20, true) })
	leakAdvWait(t, base, "after everything closed")
}
