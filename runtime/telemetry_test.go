package runtime_test

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestTraceSpansBothKafkaHops records one call with an in-memory exporter:
// caller → gateway (otelgrpc) → send → handle (worker) → receive, one trace.
func TestTraceSpansBothKafkaHops(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	prop := propagation.TraceContext{}

	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("tr") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	opts := []runtime.Option{runtime.WithTopicMapper(func(s string) string { return prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WithTracerProvider(tp), runtime.WithPropagator(prop)}
	worker := runtime.NewWorker(kc, append([]runtime.WorkerOption{runtime.WorkerGroupID(prefix + "w")}, asWorker(opts)...)...)
	if err := echov1.RegisterEchoServiceKafkaWorker(worker, handlerSpan{}); err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Close() })
	gw := runtime.NewGateway(kc, asGateway(opts)...)
	t.Cleanup(func() { _ = gw.Close() })
	lis := listen(t)
	srv := grpc.NewServer(append(runtime.GatewayServerOptions(),
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(prop))))...)
	if err := echov1.RegisterEchoServiceKafkaGateway(srv, gw); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(prop))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	<-worker.Ready()

	var header metadata.MD
	if _, err := echov1.NewEchoServiceClient(cc).EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "traced"}, grpc.Header(&header)); err != nil {
		t.Fatal(err)
	}
	if len(header.Get("traceparent")) != 0 {
		t.Errorf("the worker's trace context leaked into the caller's response headers: %v", header)
	}
	// The worker ends its span once Kafka acknowledged the replies, which
	// may be just after the caller got them; so may the gateway's gRPC
	// server span, which grpc-go's server ends (stats.End) after it wrote
	// the call's status.
	// (The send span ends once Kafka answered the request's records,
	// which can come after the reply.)
	handleName, sendName := "handle /example.echo.v1.EchoService/EchoUnary", "send "+prefix+"echo-requests"
	byName := map[string]sdktrace.ReadOnlySpan{}
	serverEnded := false
	for deadline := time.Now().Add(30 * time.Second); (byName[handleName] == nil || byName[sendName] == nil || !serverEnded) && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		for _, s := range spans.GetSpans().Snapshots() {
			byName[s.Name()] = s
			serverEnded = serverEnded || s.SpanKind().String() == "server"
		}
	}
	chain := []string{
		"example.echo.v1.EchoService/EchoUnary", // otelgrpc client span
		"example.echo.v1.EchoService/EchoUnary", // otelgrpc server span (same name; checked by kind below)
		"send " + prefix + "echo-requests",
		"handle /example.echo.v1.EchoService/EchoUnary",
		"user work",
		"receive " + prefix + "echo-responses",
	}
	for _, name := range chain[2:] {
		if _, ok := byName[name]; !ok {
			t.Fatalf("no span %q; spans: %v", name, names(spans))
		}
	}
	send, handle, work, receive := byName[chain[2]], byName[chain[3]], byName[chain[4]], byName[chain[5]]
	traceID := send.SpanContext().TraceID()
	for _, s := range []sdktrace.ReadOnlySpan{handle, work, receive} {
		if s.SpanContext().TraceID() != traceID {
			t.Errorf("span %q is in trace %s, want %s", s.Name(), s.SpanContext().TraceID(), traceID)
		}
	}
	if handle.Parent().SpanID() != send.SpanContext().SpanID() {
		t.Errorf("handle's parent is %s, want the gateway's send span %s", handle.Parent().SpanID(), send.SpanContext().SpanID())
	}
	if work.Parent().SpanID() != handle.SpanContext().SpanID() {
		t.Errorf("the handler's own span is not a child of handle")
	}
	if receive.Parent().SpanID() != handle.SpanContext().SpanID() {
		t.Errorf("receive's parent is %s, want the worker's handle span %s", receive.Parent().SpanID(), handle.SpanContext().SpanID())
	}
	// The gateway's send span is a child of otelgrpc's server span.
	var server sdktrace.ReadOnlySpan
	for _, s := range spans.GetSpans().Snapshots() {
		if s.SpanContext().SpanID() == send.Parent().SpanID() {
			server = s
		}
	}
	if server == nil || server.SpanKind().String() != "server" {
		t.Errorf("send's parent is not the gateway's gRPC server span: %v", server)
	}
}

// handlerSpan starts a span of its own in the handler, as user code would.
type handlerSpan struct{ echoserver.Server }

func (h handlerSpan) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	_, span := tracerFrom(ctx).Start(ctx, "user work")
	defer span.End()
	return h.Server.EchoUnary(ctx, req)
}

func names(e *tracetest.InMemoryExporter) []string {
	var ns []string
	for _, s := range e.GetSpans().Snapshots() {
		ns = append(ns, s.Name())
	}
	return ns
}

// TestMetrics records known calls with a manual reader and checks the counts.
func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	e := setupWith(t, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}) },
		runtime.WithMeterProvider(mp))
	gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WithMeterProvider(mp))
	t.Cleanup(func() { _ = gw.Close() })
	client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := ctxFor(t, 30*time.Second)
	for _, fail := range []codes.Code{codes.OK, codes.OK, codes.NotFound} {
		_, _ = client.EchoUnary(ctx, &echov1.EchoRequest{Message: "m", FailCode: int32(fail)})
	}
	// The gateway records a call before its caller has the response; the
	// worker once Kafka acknowledged the replies, which may be later, and it
	// may not have read the last request's end-of-stream record yet: wait
	// (bounded) until the worker recorded the three calls and has no lag.
	// A collection may come by while the worker records a call's end: it
	// reads the instruments one after the other, and a counter's new data
	// point before the add, so that it can see the end in the duration and
	// not in the calls (worker calls map[0:2 5:0] beside three durations):
	// wait until both counted all three.
	var rm metricdata.ResourceMetrics
	for deadline := time.Now().Add(10 * time.Second); ; {
		rm = metricdata.ResourceMetrics{}
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		var ended int64
		for _, n := range sumByCode(t, rm, "kafkarpc.worker.calls") {
			ended += n
		}
		if (ended >= 3 && histogramCount(rm, "kafkarpc.worker.duration") >= 3 && gaugeMax(rm, "kafkarpc.worker.lag") == 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for _, side := range []string{"gateway", "worker"} {
		calls := sumByCode(t, rm, "kafkarpc."+side+".calls")
		if calls[0] != 2 || calls[int64(codes.NotFound)] != 1 {
			t.Errorf("kafkarpc.%s.calls by code = %v, want 2 OK and 1 NOT_FOUND", side, calls)
		}
		if n := histogramCount(rm, "kafkarpc."+side+".duration"); n != 3 {
			t.Errorf("kafkarpc.%s.duration has %d observations, want 3", side, n)
		}
		if v := sumByCode(t, rm, "kafkarpc."+side+".inflight"); v[-1] != 0 {
			t.Errorf("kafkarpc.%s.inflight = %d after the calls, want 0", side, v[-1])
		}
	}
	lags := metricsNamed(rm, "kafkarpc.worker.lag")
	for _, m := range lags {
		for _, dp := range m.Data.(metricdata.Gauge[int64]).DataPoints {
			if dp.Value != 0 {
				t.Errorf("worker lag %d on %v 10 s after every call was answered", dp.Value, dp.Attributes)
			}
		}
	}
	if len(lags) == 0 {
		t.Error("no kafkarpc.worker.lag gauge")
	}
}

// gaugeMax is the largest data point of an int64 gauge (0 without any).
func gaugeMax(rm metricdata.ResourceMetrics, name string) int64 {
	var m int64
	for _, mt := range metricsNamed(rm, name) {
		if g, ok := mt.Data.(metricdata.Gauge[int64]); ok {
			for _, dp := range g.DataPoints {
				m = max(m, dp.Value)
			}
		}
	}
	return m
}

// metricsNamed returns the metrics called name, of every scope.
func metricsNamed(rm metricdata.ResourceMetrics, name string) []metricdata.Metrics {
	var out []metricdata.Metrics
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				out = append(out, m)
			}
		}
	}
	return out
}

// sumByCode sums an int64 sum metric by rpc.grpc.status_code (-1 when the
// data point has none).
func sumByCode(t *testing.T, rm metricdata.ResourceMetrics, name string) map[int64]int64 {
	out := map[int64]int64{}
	for _, m := range metricsNamed(rm, name) {
		sum, ok := m.Data.(metricdata.Sum[int64])
		if !ok {
			t.Fatalf("%s is %T", name, m.Data)
		}
		for _, dp := range sum.DataPoints {
			code := int64(-1)
			if v, ok := dp.Attributes.Value(attribute.Key("rpc.grpc.status_code")); ok {
				code = v.AsInt64()
			}
			out[code] += dp.Value
		}
	}
	return out
}

func histogramCount(rm metricdata.ResourceMetrics, name string) uint64 {
	var n uint64
	for _, m := range metricsNamed(rm, name) {
		if h, ok := m.Data.(metricdata.Histogram[float64]); ok {
			for _, dp := range h.DataPoints {
				n += dp.Count
			}
		}
	}
	return n
}

// TestCredentialsStayOutOfKafka checks the request records themselves.
func TestCredentialsStayOutOfKafka(t *testing.T) {
	for _, c := range []struct {
		name    string
		opts    []runtime.GatewayOption
		present bool // authorization reaches Kafka
		tenant  bool // x-tenant reaches Kafka
	}{
		{"denied by default", nil, false, true},
		{"allowed explicitly", []runtime.GatewayOption{runtime.GatewayAllowedMetadata("authorization", "x-tenant")}, true, true},
		// The operator's names add to the credentials: authorization
		// stays out of Kafka.
		{"operator denies more", []runtime.GatewayOption{runtime.GatewayDeniedMetadata("X-Tenant")}, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := setup(t, echoserver.Server{})
			client := extraGateway(t, e, append([]runtime.GatewayOption{
				runtime.GatewayIdentity(func(context.Context) (string, bool) { return "alice", true })}, c.opts...)...)
			reqs := watchReplies(t, e.kc, e.topic("echo-requests"))
			ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second),
				"authorization", "Bearer s3cret", "cookie", "id=s3cret", "x-tenant", "acme", "idempotency-key", "cred-"+c.name)
			if _, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}); err != nil {
				t.Fatal(err)
			}
			id := wire.CorrelationID(wire.DefaultNames(), "cred-"+c.name, "example.echo.v1.EchoService", "EchoUnary", e.topic("echo-responses"))
			for _, rec := range reqs.await(t, id) {
				keys := headerKeys(rec)
				if got := slices.Contains(keys, "meta:authorization"); got != c.present {
					t.Errorf("meta:authorization in the record: %v, want %v (headers %q)", got, c.present, keys)
				}
				if slices.Contains(keys, "meta:cookie") {
					t.Errorf("meta:cookie reached Kafka: %q", keys)
				}
				if got := slices.Contains(keys, "meta:x-tenant"); got != c.tenant {
					t.Errorf("meta:x-tenant in the record: %v, want %v (headers %q)", got, c.tenant, keys)
				}
				if !slices.Contains(keys, "meta:idempotency-key") {
					t.Errorf("meta:idempotency-key did not reach Kafka, so the worker cannot remember the outcome: %q", keys)
				}
				if header(rec, "zilla:identity") != "alice" {
					t.Errorf("zilla:identity = %q, want alice", header(rec, "zilla:identity"))
				}
				if i := slices.Index(keys, "zilla:identity"); i < 0 || keys[i+1] != "zilla:correlation-id" {
					t.Errorf("zilla:identity not right before zilla:correlation-id: %q", keys)
				}
			}
			// A repeat with the same key is answered from the worker's
			// memory, whenever it arrives (the outcome was remembered
			// because the key reached the worker).
			resp, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"})
			if err != nil || resp.GetMessage() != "m" {
				t.Fatalf("repeat: %v, %v", resp, err)
			}
			if n := e.worker.Stats().Duplicates; n != 1 {
				t.Fatalf("worker Duplicates = %d, want 1", n)
			}
		})
	}
}

func asWorker(opts []runtime.Option) []runtime.WorkerOption {
	out := make([]runtime.WorkerOption, len(opts))
	for i, o := range opts {
		out[i] = o
	}
	return out
}

func asGateway(opts []runtime.Option) []runtime.GatewayOption {
	out := make([]runtime.GatewayOption, len(opts))
	for i, o := range opts {
		out[i] = o
	}
	return out
}

func listen(t *testing.T) net.Listener {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

func tracerFrom(ctx context.Context) trace.Tracer {
	return trace.SpanFromContext(ctx).TracerProvider().Tracer("user")
}
