package runtime_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// TestBacklogStaysInKafka: a worker whose handler slots are all busy read
// every request as it came, each waiting call holding its request in
// memory (4000 of 32 KiB took 160 MiB): a backlog after an outage could
// exhaust the worker's memory, and then the next member's. With
// WorkerMaxQueuedCalls it stops fetching once that many wait (one batch,
// at most 512 records, past the bound) and reads on as the handlers catch
// up; every call is answered.
func TestBacklogStaysInKafka(t *testing.T) {
	const (
		bound = 20
		total = 2000
		batch = 512 // the most records one Poll returns
	)
	a := newLoadAdvGated(1)
	e := setup(t, a, runtime.WorkerMaxConcurrentCalls(1), runtime.WorkerMaxQueuedCalls(bound))
	ctx := ctxFor(t, 3*time.Minute)
	block := blockSlot(t, ctx, e, a)
	res := queueCalls(ctx, e, total)
	awaitReadPause(t, e.worker)
	// Whatever the worker reads, it reads at once: a second shows whether
	// it stopped.
	time.Sleep(time.Second)
	limit := uint64(1 + bound + 2*batch) // the busy call, the bound, the batch read at the bound and one fetched before the pause
	if n := e.worker.Stats().Calls; n > limit {
		t.Fatalf("the paused worker read %d of %d calls, want at most %d: the backlog went into its memory", n, total+1, limit)
	}
	close(a.release)
	if r := <-block; r.err != nil || r.r.GetMessage() != "block" {
		t.Fatalf("the busy call ended %v, %v", r.r, r.err)
	}
	for i, ch := range res {
		r := <-ch // bounded by ctx
		if want := fmt.Sprintf("queued-%d", i); r.err != nil || r.r.GetMessage() != want {
			t.Fatalf("call %d ended %v, %v; want its response once the worker read on", i, r.r, r.err)
		}
	}
}

// awaitReadPause waits (bounded) until w paused its reading once.
func awaitReadPause(t *testing.T, w *runtime.Worker) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); w.Stats().ReadPauses == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not pause its reading within 60 s: it read %d calls with one handler slot, busy", w.Stats().Calls)
		}
		time.Sleep(time.Millisecond) // polling the worker's state, bounded above
	}
}

// TestBacklogBoundLetsStreamsFinish: the worker's one handler slot is held
// by a client stream waiting for its next message, with more calls
// waiting for the slot than WorkerMaxQueuedCalls. Pausing the reading
// then would leave that message unread behind the pause, and the stream
// and every call behind it would wait for their deadlines: the worker
// reads on while a running handler waits for input.
func TestBacklogBoundLetsStreamsFinish(t *testing.T) {
	const queued = 50
	e := setup(t, echoserver.Server{}, runtime.WorkerMaxConcurrentCalls(1), runtime.WorkerMaxQueuedCalls(2))
	ctx := ctxFor(t, 60*time.Second)
	cs, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.Send(&echov1.EchoRequest{Message: "cs-0"}); err != nil {
		t.Fatal(err)
	}
	awaitCalls(t, e.worker, 1) // the stream's handler has the slot
	res := queueCalls(ctx, e, queued)
	awaitCalls(t, e.worker, queued+1) // every unary call waits for the slot
	if err := cs.Send(&echov1.EchoRequest{Message: "cs-1"}); err != nil {
		t.Fatal(err)
	}
	r, err := cs.CloseAndRecv()
	if err != nil || r.GetMessage() != "cs-0,cs-1" {
		t.Fatalf("the client stream ended %v, %v; want cs-0,cs-1 (its last message was left behind a pause?)", r, err)
	}
	for i, ch := range res {
		r := <-ch // bounded by ctx
		if want := fmt.Sprintf("queued-%d", i); r.err != nil || r.r.GetMessage() != want {
			t.Fatalf("call %d ended %v, %v", i, r.r, r.err)
		}
	}
}

// TestQueuedCallsMetrics: an operator watching a worker's backlog sees the
// calls waiting for a handler (kafkarpc.worker.calls.queued) and the
// pauses of its reading (kafkarpc.worker.read_pauses), as WorkerStats
// counts them, and the gauge back at 0 once every call was answered.
func TestQueuedCallsMetrics(t *testing.T) {
	const bound = 10
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	a := newLoadAdvGated(1)
	e := setup(t, a, runtime.WithMeterProvider(mp), runtime.WorkerMaxConcurrentCalls(1), runtime.WorkerMaxQueuedCalls(bound))
	ctx := ctxFor(t, 2*time.Minute)
	collect := func() (queued, pauses int64) {
		t.Helper()
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		for _, m := range metricsNamed(rm, "kafkarpc.worker.read_pauses") {
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				pauses += dp.Value
			}
		}
		return gaugeMax(rm, "kafkarpc.worker.calls.queued"), pauses
	}
	if q, p := collect(); q != 0 || p != 0 {
		t.Fatalf("before any call: queued %d, read pauses %d; want 0 and 0", q, p)
	}
	block := blockSlot(t, ctx, e, a)
	first := queueCalls(ctx, e, bound/2)
	awaitCalls(t, e.worker, 1+bound/2)
	if q, p := collect(); q != bound/2 || p != 0 {
		t.Fatalf("with %d calls waiting for the busy slot: queued %d, read pauses %d; want %d and 0", bound/2, q, p, bound/2)
	}
	more := queueCalls(ctx, e, 3*bound)
	awaitReadPause(t, e.worker)
	if q, p := collect(); q < bound || p != int64(e.worker.Stats().ReadPauses) {
		t.Fatalf("paused: queued %d, read pauses %d; want at least %d, and WorkerStats.ReadPauses (%d)", q, p, bound, e.worker.Stats().ReadPauses)
	}
	close(a.release)
	for _, ch := range append(append([]chan unaryResult{block}, first...), more...) {
		if r := <-ch; r.err != nil { // bounded by ctx
			t.Fatalf("a call ended %v", r.err)
		}
	}
	if q, _ := collect(); q != 0 {
		t.Fatalf("once every call was answered: queued %d, want 0", q)
	}
}
