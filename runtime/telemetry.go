package runtime

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// instrumentationName names this package's tracer and meter.
const instrumentationName = "github.com/kafkarpc/protoc-gen-go-kafka/runtime"

// WithTracerProvider sets where the spans of the gateway, the worker and a
// ClientConn go.
// Default: otel.GetTracerProvider() at construction (a no-op unless the
// program installed one). Nothing global is needed: pass a provider here.
//
// The gateway writes a "send <request topic>" producer span as a child of
// the call's context (the otelgrpc server span, when the gateway's grpc.Server
// has the otelgrpc stats handler), ended once the request stream ended and
// Kafka answered each of its records (with the first one Kafka refused as
// its error), and sends its context in the request records
// as meta:traceparent and meta:tracestate (WIRE.md). The worker continues it
// with a "handle <method>" consumer span around the handler, whose context the
// handler gets, and sends that span's context back on the replies; the gateway
// ends the call with a "receive <reply topic>" consumer span, a child of the
// worker's span. One trace thus shows gateway → Kafka → worker → Kafka →
// gateway, whichever half is Zilla's. A ClientConn traces as the gateway
// does, its send span a child of the caller's context.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return bothOption{
		gw: func(c *gatewayConfig) { c.tracerProvider = tp },
		wk: func(c *workerConfig) { c.tracerProvider = tp },
	}
}

// WithMeterProvider sets where the metrics of the gateway, the worker and a
// ClientConn go.
// Default: otel.GetMeterProvider() at construction (a no-op unless the
// program installed one).
//
// Gateway: kafkarpc.gateway.calls (counter, by rpc.method and
// rpc.grpc.status_code), kafkarpc.gateway.duration (histogram, seconds),
// kafkarpc.gateway.inflight (up-down counter), kafkarpc.gateway.replies.dropped
// (counter, by messaging.destination.name), and for fetch methods
// kafkarpc.gateway.fetch.callers and .window.bytes (gauges),
// .delivered, .catchups and .laggards (counters). Worker: kafkarpc.worker.calls,
// kafkarpc.worker.duration, kafkarpc.worker.inflight (likewise),
// kafkarpc.worker.records.skipped (counter, by reason: no_correlation_id,
// malformed), kafkarpc.worker.dead_lettered, kafkarpc.worker.duplicates,
// kafkarpc.worker.superseded (calls given up for a newer attempt; see
// WorkerStats.Superseded), kafkarpc.worker.replies.lost (calls some of
// whose replies Kafka did not take; see WorkerStats.LostReplies), and
// kafkarpc.worker.lag (gauge, by topic and partition: records not yet read
// from the partitions the worker holds), kafkarpc.worker.calls.queued
// (gauge: calls read whose handlers have not started; see
// WorkerMaxQueuedCalls) and kafkarpc.worker.read_pauses (counter; see
// WorkerStats.ReadPauses). ClientConn: the gateway's
// instruments, named kafkarpc.client.* instead of kafkarpc.gateway.*.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return bothOption{
		gw: func(c *gatewayConfig) { c.meterProvider = mp },
		wk: func(c *workerConfig) { c.meterProvider = mp },
	}
}

// WithPropagator sets how trace context is written to and read from the
// records' metadata. Default propagation.TraceContext{} (W3C traceparent and
// tracestate).
func WithPropagator(p propagation.TextMapPropagator) Option {
	return bothOption{
		gw: func(c *gatewayConfig) { c.propagator = p },
		wk: func(c *workerConfig) { c.propagator = p },
	}
}

// telemetryConfig is the part of both configurations about telemetry.
type telemetryConfig struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	propagator     propagation.TextMapPropagator
}

// tracing is what both halves trace with.
type tracing struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	fields []string // header names the propagator writes
	// global is the tracer's provider when it is otel's global default,
	// which records nothing until the program installs a provider
	// (otel.SetTracerProvider) and then delegates to it; else nil.
	global trace.TracerProvider
}

func newTracing(c telemetryConfig) tracing {
	tp := c.tracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	p := c.propagator
	if p == nil {
		p = propagation.TraceContext{}
	}
	t := tracing{tracer: tp.Tracer(instrumentationName), prop: p, fields: p.Fields()}
	if isDefaultGlobal(tp) {
		t.global = tp
	}
	return t
}

// isDefaultGlobal reports whether tp is otel's global provider as the
// program found it: none installed yet.
func isDefaultGlobal(tp trace.TracerProvider) bool {
	return tp == otel.GetTracerProvider() && fmt.Sprintf("%T", tp) == "*global.tracerProvider"
}

// idleSpan is what start returns when nothing would record: the span of a
// tracer that records nothing, under no parent.
var idleSpan trace.Span = noop.Span{}

// start starts a span as t.tracer.Start does. While nothing can record it
// (the tracer is otel's global default, no provider installed since) and
// ctx carries no span context to propagate, it returns ctx itself and a
// no-op span without allocating: what the global default would return, at
// no cost per call.
func (t tracing) start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if t.idle() && !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, idleSpan
	}
	return t.tracer.Start(ctx, name, opts...)
}

// idle reports whether a span started under no parent would record
// nothing: the tracer is otel's global default, no provider installed since.
func (t tracing) idle() bool { return t.global != nil && otel.GetTracerProvider() == t.global }

// startSpanless is start for a ctx already found to carry no span context.
// Finding none walks the whole chain of ctx's values, a dozen for a gRPC
// server's context: a gateway call looks once (beginCall), not at each of
// its spans.
func (t tracing) startSpanless(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if t.idle() {
		return ctx, idleSpan
	}
	return t.tracer.Start(ctx, name, opts...)
}

// carries reports whether md has any of the fields the propagator reads:
// without them, extract finds no span context in md.
func (t tracing) carries(md metadata.MD) bool {
	for _, f := range t.fields {
		if len(md.Get(f)) > 0 {
			return true
		}
	}
	return false
}

func meterOf(c telemetryConfig) metric.Meter {
	mp := c.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(instrumentationName)
}

// inject returns md with the trace context of ctx in place of any the caller
// sent, or md itself when ctx carries no span.
func (t tracing) inject(ctx context.Context, md metadata.MD) metadata.MD {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return md
	}
	md = md.Copy()
	for _, f := range t.fields {
		delete(md, f)
	}
	t.prop.Inject(ctx, mdCarrier(md))
	return md
}

// extract returns ctx with the remote span context found in md.
func (t tracing) extract(ctx context.Context, md metadata.MD) context.Context {
	return t.prop.Extract(ctx, mdCarrier(md))
}

// traceHeaders returns the trace context of ctx as "<prefix><field>" headers.
func (t tracing) traceHeaders(ctx context.Context, prefix string) []kafkaclient.Header {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	md := metadata.MD{}
	t.prop.Inject(ctx, mdCarrier(md))
	return wire.AppendMetadata(nil, prefix, md, nil)
}

// withoutTrace drops the propagator's fields from response headers: they
// carry the worker's span to the gateway, not to the caller.
func (t tracing) withoutTrace(md metadata.MD) metadata.MD {
	for _, f := range t.fields {
		if _, ok := md[f]; ok {
			md = md.Copy()
			for _, f := range t.fields {
				delete(md, f)
			}
			return md
		}
	}
	return md
}

// callMetrics are the instruments of one side's calls.
type callMetrics struct {
	calls    metric.Int64Counter
	duration metric.Float64Histogram
	inflight metric.Int64UpDownCounter
}

func newCallMetrics(m metric.Meter, side string) callMetrics {
	var cm callMetrics
	cm.calls, _ = m.Int64Counter("kafkarpc."+side+".calls", metric.WithDescription("Calls ended, by method and gRPC status code."))
	cm.duration, _ = m.Float64Histogram("kafkarpc."+side+".duration", metric.WithUnit("s"),
		metric.WithDescription("Call duration, by method and gRPC status code."))
	cm.inflight, _ = m.Int64UpDownCounter("kafkarpc."+side+".inflight", metric.WithDescription("Calls in flight, by method."))
	return cm
}

func (cm callMetrics) begin(ctx context.Context, method attribute.KeyValue) {
	cm.inflight.Add(ctx, 1, metric.WithAttributes(method))
}

func (cm callMetrics) end(ctx context.Context, method attribute.KeyValue, start time.Time, err error) {
	code := status.Code(err)
	attrs := metric.WithAttributes(method, attribute.Int("rpc.grpc.status_code", int(code)))
	cm.calls.Add(ctx, 1, attrs)
	cm.duration.Record(ctx, time.Since(start).Seconds(), attrs)
	cm.inflight.Add(ctx, -1, metric.WithAttributes(method)) // last, as in methodTelemetry.end
}

// spanStatus ends span with the call's status.
func spanEnd(span trace.Span, err error) {
	if code := status.Code(err); code != codes.OK {
		span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(code)))
		span.SetStatus(otelcodes.Error, status.Convert(err).Message())
	}
	span.End()
}

// mdCarrier lets a propagator read and write gRPC metadata (lower-case
// names; http.Header's carrier would capitalise them).
type mdCarrier metadata.MD

func (c mdCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c mdCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c mdCarrier) Keys() []string {
	ks := make([]string, 0, len(c))
	for k := range c {
		ks = append(ks, k)
	}
	return ks
}

// methodTelemetry is what one side precomputes per method so that a call
// builds no attribute set (sorting, hashing, allocating) and no option
// slice for its metrics: with a no-op provider a call's metrics then cost a
// few interface calls.
type methodTelemetry struct {
	cm       callMetrics
	method   attribute.KeyValue
	inflight []metric.AddOption
	endAdd   [17][]metric.AddOption // by gRPC status code
	endRec   [17][]metric.RecordOption
}

func (cm callMetrics) forMethod(fullMethod string) *methodTelemetry {
	mt := &methodTelemetry{cm: cm, method: attribute.String("rpc.method", fullMethod)}
	mt.inflight = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(mt.method))}
	for code := range mt.endAdd {
		o := metric.WithAttributeSet(attribute.NewSet(mt.method, attribute.Int("rpc.grpc.status_code", code)))
		mt.endAdd[code] = []metric.AddOption{o}
		mt.endRec[code] = []metric.RecordOption{o}
	}
	return mt
}

func (mt *methodTelemetry) begin(ctx context.Context) { mt.cm.inflight.Add(ctx, 1, mt.inflight...) }

func (mt *methodTelemetry) end(ctx context.Context, start time.Time, err error) {
	code := status.Code(err)
	if int(code) >= len(mt.endAdd) {
		mt.cm.end(ctx, mt.method, start, err)
		return
	}
	// Counted before it leaves the in-flight gauge: a reader that sees
	// the gauge at 0 sees every call that was in it counted.
	mt.cm.calls.Add(ctx, 1, mt.endAdd[code]...)
	mt.cm.duration.Record(ctx, time.Since(start).Seconds(), mt.endRec[code]...)
	mt.cm.inflight.Add(ctx, -1, mt.inflight...)
}

// registerFetchMetrics reports the fanout hub's state: callers and the bytes
// and records of the windows (gauges), and deliveries, catch-ups and
// laggards (counters). Gateway.Close unregisters the callback it returns
// (nil when the provider refused it), so that the meter provider neither
// observes a closed gateway nor keeps it in memory.
func registerFetchMetrics(m metric.Meter, g *Gateway) metric.Registration {
	side := g.cfg.side
	callers, _ := m.Int64ObservableGauge("kafkarpc."+side+".fetch.callers", metric.WithDescription("Fetch calls in progress."))
	windowBytes, _ := m.Int64ObservableGauge("kafkarpc."+side+".fetch.window.bytes", metric.WithUnit("By"),
		metric.WithDescription("Bytes of the fetched topics' in-memory windows."))
	delivered, _ := m.Int64ObservableCounter("kafkarpc."+side+".fetch.delivered", metric.WithDescription("Messages sent to fetch callers."))
	catchUps, _ := m.Int64ObservableCounter("kafkarpc."+side+".fetch.catchups",
		metric.WithDescription("Fetch callers that started behind the window and read Kafka with a reader of their own."))
	laggards, _ := m.Int64ObservableCounter("kafkarpc."+side+".fetch.laggards",
		metric.WithDescription("Fetch callers ended with UNAVAILABLE because they fell too far behind."))
	reg, _ := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := g.FetchStats()
		o.ObserveInt64(callers, s.Callers)
		o.ObserveInt64(windowBytes, s.WindowBytes)
		o.ObserveInt64(delivered, int64(s.Delivered))
		o.ObserveInt64(catchUps, int64(s.CatchUps))
		o.ObserveInt64(laggards, int64(s.Laggards))
		return nil
	}, callers, windowBytes, delivered, catchUps, laggards)
	return reg
}
