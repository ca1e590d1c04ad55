package runtime

import (
	"context"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// workerTelemetry are the worker's traces and metrics.
type workerTelemetry struct {
	trc        tracing
	calls      callMetrics
	skipped    metric.Int64Counter
	deadLetter metric.Int64Counter
	duplicates metric.Int64Counter
	superseded metric.Int64Counter
	lost       metric.Int64Counter
	// lagReg is the registration of the lag gauge's callback, unregistered
	// once the worker stopped (stopMetrics), so that the meter provider
	// neither observes the worker nor keeps it, and its Kafka client, in
	// memory after that; nil when the provider refused it.
	lagReg metric.Registration
	// flowReg is the registration of the callback of the queued calls
	// gauge and the read pauses counter, unregistered as lagReg is.
	flowReg metric.Registration
}

// newWorkerTelemetry makes the worker's instruments; lag reports the
// consumer lag gauge, flow the calls waiting for a handler and the pauses
// of the reading.
func newWorkerTelemetry(cfg telemetryConfig, lag func(context.Context, func(int64, ...metric.ObserveOption)) error, flow *readFlow) workerTelemetry {
	t := workerTelemetry{trc: newTracing(cfg)}
	meter := meterOf(cfg)
	t.calls = newCallMetrics(meter, "worker")
	t.skipped, _ = meter.Int64Counter("kafkarpc.worker.records.skipped",
		metric.WithDescription("Request records not served as calls, by reason."))
	t.deadLetter, _ = meter.Int64Counter("kafkarpc.worker.dead_lettered", metric.WithDescription("Calls sent to the dead-letter topic."))
	t.duplicates, _ = meter.Int64Counter("kafkarpc.worker.duplicates",
		metric.WithDescription("Requests answered from the stored replies of an earlier call."))
	t.superseded, _ = meter.Int64Counter("kafkarpc.worker.superseded",
		metric.WithDescription("Calls cancelled and answered ABORTED for a newer attempt of the same call that came while their request still streamed in."))
	t.lost, _ = meter.Int64Counter("kafkarpc.worker.replies.lost",
		metric.WithDescription("Calls some of whose replies Kafka did not take; their callers were told UNAVAILABLE (RESOURCE_EXHAUSTED for a reply too large)."))
	lagGauge, err := meter.Int64ObservableGauge("kafkarpc.worker.lag",
		metric.WithDescription("Records not yet read from the partitions this worker holds, by topic and partition."))
	if err == nil {
		t.lagReg, _ = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
			return lag(ctx, func(v int64, opts ...metric.ObserveOption) { o.ObserveInt64(lagGauge, v, opts...) })
		}, lagGauge)
	}
	queued, qerr := meter.Int64ObservableGauge("kafkarpc.worker.calls.queued",
		metric.WithDescription("Calls read whose handlers have not started: waiting for a slot of WorkerMaxConcurrentCalls, their key's turn or an earlier attempt."))
	pauses, perr := meter.Int64ObservableCounter("kafkarpc.worker.read_pauses",
		metric.WithDescription("Times the worker stopped fetching requests because WorkerMaxQueuedCalls calls waited for a handler."))
	if qerr == nil && perr == nil {
		t.flowReg, _ = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			o.ObserveInt64(queued, max(flow.queued.Load(), 0))
			o.ObserveInt64(pauses, int64(flow.pauses.Load()))
			return nil
		}, queued, pauses)
	}
	return t
}

// stopMetrics unregisters the worker's observed instruments' callbacks.
// Called once the worker stopped; safe to call more than once.
func (t *workerTelemetry) stopMetrics() {
	for _, r := range []metric.Registration{t.lagReg, t.flowReg} {
		if r != nil {
			_ = r.Unregister()
		}
	}
}

// prepareTelemetry precomputes wm's metric options, span name and span
// options.
func (w *Worker) prepareTelemetry(wm *workerMethod) {
	full := wm.spec.FullMethod()
	wm.tel = w.tel.calls.forMethod(full)
	wm.handleName = "handle " + full
	wm.handleOpts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), wm.tel.method)}
}

// observeLag reports, for every partition the worker holds, the records
// between its end and the worker's position.
func (w *Worker) observeLag(ctx context.Context, observe func(int64, ...metric.ObserveOption)) error {
	w.mu.Lock()
	next := map[kafkaclient.TopicPartition]int64{}
	byTopic := map[string][]int32{}
	for tp, pt := range w.parts {
		next[tp] = pt.next
		byTopic[tp.Topic] = append(byTopic[tp.Topic], tp.Partition)
	}
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for topic, parts := range byTopic {
		ends, err := w.client.Offsets(ctx, topic, parts, kafkaclient.Latest)
		if err != nil {
			return err
		}
		for _, p := range parts {
			pos := next[kafkaclient.TopicPartition{Topic: topic, Partition: p}]
			if pos < 0 {
				continue // nothing read yet: the position is not known here
			}
			observe(max(ends[p]-pos, 0), metric.WithAttributes(
				attribute.String("messaging.destination.name", topic), attribute.Int("messaging.destination.partition.id", int(p))))
		}
	}
	return nil
}

// countDuplicate counts a request answered from an earlier call's replies.
func (w *Worker) countDuplicate() {
	w.stats.duplicates.Add(1)
	w.tel.duplicates.Add(context.Background(), 1)
}

// countSuperseded counts a call given up for a newer attempt of it.
func (w *Worker) countSuperseded() {
	w.stats.superseded.Add(1)
	w.tel.superseded.Add(context.Background(), 1)
}

// countSkipped counts a request record not served as a call.
func (w *Worker) countSkipped(reason string) {
	w.tel.skipped.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", reason)))
}

// WorkerStats are counters of records a worker could not serve as calls.
type WorkerStats struct {
	// SkippedNoCorrelationID counts request records without a correlation id
	// (that are not oneway requests); they cannot be answered.
	SkippedNoCorrelationID uint64
	// Malformed counts requests answered with an error without running a
	// handler (missing service or method, unknown method, bad metadata) or
	// skipped for want of a reply topic (none, or not a valid Kafka topic
	// name).
	Malformed uint64
	// Calls counts calls started (handlers run, not counting retries).
	Calls uint64
	// Duplicates counts requests answered from the replies of an earlier
	// call with the same correlation id instead of running a handler.
	Duplicates uint64
	// Superseded counts calls given up for a newer attempt of the same
	// call (a retry with the same idempotency key, another attempt id)
	// that came while their request still streamed in and their handler
	// still ran: each was cancelled and answered ABORTED, and the newer
	// attempt served.
	Superseded uint64
	// DeadLettered counts calls whose requests went to the dead-letter
	// topic.
	DeadLettered uint64
	// Panics counts handlers that panicked.
	Panics uint64
	// ProxyRetries counts the attempts a proxying worker repeated because
	// the target was UNAVAILABLE before it took the call.
	ProxyRetries uint64
	// LostReplies counts calls some of whose replies Kafka did not take
	// (after the client's own retries); each such caller was sent an
	// UNAVAILABLE end-of-stream record saying so (RESOURCE_EXHAUSTED for a
	// reply too large).
	LostReplies uint64
	// OutcomesLoaded counts stored outcomes read from the outcome topic
	// (WorkerOutcomeTopic) into memory on partition assignments.
	OutcomesLoaded uint64
	// OutcomesMalformed counts records of the outcome topic skipped because
	// they could not be decoded (each logged).
	OutcomesMalformed uint64
	// OutcomesUnwritten counts outcomes Kafka did not take into the
	// outcome topic (each logged; kept in memory only).
	OutcomesUnwritten uint64
	// RequestReadsRefused counts Kafka's refusals, as the client reported
	// them, to let the worker read its request topics (the worker's
	// principal lacks READ on one: TOPIC_AUTHORIZATION_FAILED); the calls on
	// the partitions the worker holds wait meanwhile. The worker stays in
	// its group and keeps asking; the first refusal is logged at error
	// level (then at most once a minute while they keep coming). An
	// increase is what to alert on: librdkafka reports a refusal once,
	// kgo at every refused fetch.
	RequestReadsRefused uint64
	// Rejoins counts the times an exactly-once worker (WorkerExactlyOnce)
	// gave up its calls and rejoined its group because a transaction's
	// commit raced a rebalance (each logged at warning level): the
	// requests of those calls were served again, and their handlers ran
	// again. A steady increase says the group rebalances too often.
	Rejoins uint64
	// ReadPauses counts the times the worker stopped fetching requests
	// because WorkerMaxQueuedCalls calls waited for a handler: a steady
	// increase says the worker (or the group) has too few handler slots
	// for the load.
	ReadPauses uint64
}

type workerCounters struct {
	skippedNoID, malformed, calls, panics, proxyRetries, duplicates, superseded, deadLettered, lostReplies atomic.Uint64

	outcomesLoaded, outcomesMalformed, outcomesUnwritten atomic.Uint64

	readsRefused, rejoins atomic.Uint64
}

// Stats returns the worker's counters. Safe for concurrent use.
func (w *Worker) Stats() WorkerStats {
	return WorkerStats{
		SkippedNoCorrelationID: w.stats.skippedNoID.Load(),
		Malformed:              w.stats.malformed.Load(),
		Calls:                  w.stats.calls.Load(),
		Duplicates:             w.stats.duplicates.Load(),
		Superseded:             w.stats.superseded.Load(),
		DeadLettered:           w.stats.deadLettered.Load(),
		Panics:                 w.stats.panics.Load(),
		ProxyRetries:           w.stats.proxyRetries.Load(),
		LostReplies:            w.stats.lostReplies.Load(),
		OutcomesLoaded:         w.stats.outcomesLoaded.Load(),
		OutcomesMalformed:      w.stats.outcomesMalformed.Load(),
		OutcomesUnwritten:      w.stats.outcomesUnwritten.Load(),
		RequestReadsRefused:    w.stats.readsRefused.Load(),
		Rejoins:                w.stats.rejoins.Load(),
		ReadPauses:             w.flow.pauses.Load(),
	}
}
