package runtime

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// TestIdleTracingCostsNothing: with otel's global default provider and no
// provider installed, starting a span allocates nothing and changes no
// context; a parent span context is still carried on; and a provider
// installed later records the spans of a tracing made before it.
func TestIdleTracingCostsNothing(t *testing.T) {
	if !isDefaultGlobal(otel.GetTracerProvider()) {
		t.Fatalf("the global tracer provider is a %T: a test installed one", otel.GetTracerProvider())
	}
	trc := newTracing(telemetryConfig{})
	ctx := context.Background()
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)} // made once, as the gateway's routes do
	if allocs := testing.AllocsPerRun(100, func() {
		c, span := trc.start(ctx, "send x", opts...)
		span.End()
		if c != ctx || span.IsRecording() || span.SpanContext().IsValid() {
			t.Fatal("an idle span changed the context or records")
		}
	}); allocs != 0 {
		t.Errorf("an idle span costs %v allocations", allocs)
	}
	if allocs := testing.AllocsPerRun(100, func() {
		c, span := trc.startSpanless(ctx, "receive x", opts...)
		span.End()
		if c != ctx || span.IsRecording() {
			t.Fatal("an idle span under a context known to carry no span context changed the context or records")
		}
	}); allocs != 0 {
		t.Errorf("an idle span under a context known to carry no span context costs %v allocations", allocs)
	}
	if trc.carries(metadata.Pairs("user-agent", "x")) || !trc.carries(metadata.Pairs("traceparent", "00-01-02-01")) {
		t.Error("carries does not tell metadata with a trace context from metadata without")
	}

	// A remote parent (as the worker extracts from a request) is carried
	// on, as the global default tracer does.
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true})
	c, span := trc.start(trace.ContextWithRemoteSpanContext(ctx, parent), "handle m")
	if got := trace.SpanContextFromContext(c); got.TraceID() != parent.TraceID() {
		t.Fatalf("under a remote parent: span context %v", got)
	}
	span.End()

}

// TestInstalledProviderRecords: a provider installed with
// otel.SetTracerProvider after the tracing was made records its spans. It
// runs in a child process: installing one sets the global default's
// delegate for good.
func TestInstalledProviderRecords(t *testing.T) {
	if os.Getenv("KAFKARPC_TRACING_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestInstalledProviderRecords$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "KAFKARPC_TRACING_CHILD=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	trc := newTracing(telemetryConfig{})
	if trc.global == nil {
		t.Fatalf("the global tracer provider is a %T, not the default", otel.GetTracerProvider())
	}
	rec := tracetest.NewSpanRecorder()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	_, span := trc.start(context.Background(), "send y")
	span.End()
	_, span = trc.startSpanless(context.Background(), "receive y")
	span.End()
	if ended := rec.Ended(); len(ended) != 2 || ended[0].Name() != "send y" || ended[1].Name() != "receive y" {
		t.Fatalf("after otel.SetTracerProvider: %d spans recorded, want send y and receive y", len(ended))
	}
}
