package wire

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func keysOf(hs []Header) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Key+"="+string(h.Value))
	}
	return out
}

// TestRequestLayout checks a request record's headers against WIRE.md's
// order: overrides, service, method, reply-to, identity, correlation id,
// then meta:*, the timeout first.
func TestRequestLayout(t *testing.T) {
	names := DefaultNames()
	route := AppendRoute(nil, &names, []Header{{Key: "x-route", Value: []byte("test")}}, "example.EchoService", "EchoUnary", "responses")
	id := CorrelationID(names, "base", "example.EchoService", "EchoUnary", "responses", "test")
	hs := AppendRequest(nil, &names, &Request{
		Route:         route,
		Identity:      []byte("alice"),
		CorrelationID: []byte(id),
		Timeout:       1500 * time.Millisecond, HasTimeout: true,
		Metadata: metadata.MD{"x-b": {"2"}, "x-a": {"1"}, "trace-bin": {"\x00\xff"}, "authorization": {"secret"}},
		Keep:     func(name string) bool { return name != "authorization" },
	})
	want := []string{
		"x-route=test",
		"zilla:service=example.EchoService",
		"zilla:method=EchoUnary",
		"zilla:reply-to=responses",
		"zilla:identity=alice",
		"zilla:correlation-id=base-479f2c3fb58bc3f04bbe15440a657670",
		"meta:grpc-timeout=1500m",
		"meta:trace-bin=AP8=",
		"meta:x-a=1",
		"meta:x-b=2",
	}
	if got := keysOf(hs); !slices.Equal(got, want) {
		t.Fatalf("headers\n got %q\nwant %q", got, want)
	}

	e := Decode(&names, hs, []byte{})
	if string(e.Service) != "example.EchoService" || string(e.Method) != "EchoUnary" || string(e.ReplyTo) != "responses" ||
		string(e.CorrelationID) != id || string(e.Identity) != "alice" || e.EndOfStream {
		t.Fatalf("decoded %+v", e)
	}
	if !e.HasTimeout || e.Timeout != 1500*time.Millisecond {
		t.Fatalf("timeout = %v (%v)", e.Timeout, e.HasTimeout)
	}
	md, err := e.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if len(md) != 3 || md["trace-bin"][0] != "\x00\xff" || md["x-a"][0] != "1" || md["x-b"][0] != "2" {
		t.Fatalf("metadata = %v", md)
	}
	if e.IdempotencyKey != nil {
		t.Fatalf("idempotency key %q", e.IdempotencyKey)
	}
	if dl, ok := e.Deadline(time.Unix(100, 0)); !ok || !dl.Equal(time.Unix(100, 0).Add(1500*time.Millisecond)) {
		t.Fatalf("deadline = %v, %v", dl, ok)
	}

	end := Decode(&names, AppendCancel(hs, &names), nil)
	if !end.EndOfStream || !end.Cancel() {
		t.Fatalf("cancel record decoded as %+v", end)
	}
	if e := Decode(&names, hs, nil); e.Cancel() {
		t.Fatal("a plain end-of-stream record decoded as a cancel")
	}
}

// TestReplyLayout checks a reply's data and end-of-stream records.
func TestReplyLayout(t *testing.T) {
	names := DefaultNames()
	id := []byte("k-1")
	served := Header{Key: names.MetaPrefix + ServedByMetadata, Value: []byte("w1")}
	attempt := Header{Key: names.MetaPrefix + AttemptMetadata, Value: []byte("a1")}
	data := AppendReply(nil, &names, id, metadata.MD{"x-h": {"v"}}, served, attempt)
	if got, want := keysOf(data), []string{"zilla:correlation-id=k-1", "meta:x-h=v", "meta:kafkarpc-served-by=w1", "meta:kafkarpc-attempt=a1"}; !slices.Equal(got, want) {
		t.Fatalf("data headers %q, want %q", got, want)
	}
	st := status.New(codes.NotFound, "gone")
	end := AppendEnd(AppendReply(nil, &names, id, nil), &names, st, metadata.MD{"x-t": {"1"}})
	if got, want := keysOf(end), []string{"zilla:correlation-id=k-1", "zilla:status=5", "zilla:message=gone", "trailer:x-t=1"}; !slices.Equal(got, want) {
		t.Fatalf("end headers %q, want %q", got, want)
	}
	e := Decode(&names, data, []byte("x"))
	if string(e.ServedBy) != "w1" || string(e.Attempt) != "a1" || len(e.Meta) != 1 || e.Meta[0].Key != "meta:x-h" {
		t.Fatalf("data decoded %+v", e)
	}
	e = Decode(&names, end, nil)
	if got := e.Status(); got.Code() != codes.NotFound || got.Message() != "gone" {
		t.Fatalf("status %v", got)
	}
	tr, err := e.Trailer()
	if err != nil || tr["x-t"][0] != "1" {
		t.Fatalf("trailer %v, %v", tr, err)
	}
	if ok := Decode(&names, AppendEnd(nil, &names, nil, nil), nil); ok.Status() != nil {
		t.Fatalf("OK end decoded as %v", ok.Status())
	}
}

// TestDecodeEdges covers what a peer may send: repeated headers (the first
// counts), meta headers in several runs, empty values, a bad timeout.
func TestDecodeEdges(t *testing.T) {
	names := DefaultNames()
	hs := []Header{
		{Key: "meta:a", Value: []byte("1")},
		{Key: "zilla:correlation-id", Value: []byte("first")},
		{Key: "zilla:correlation-id", Value: []byte("second")},
		{Key: "meta:b", Value: []byte("2")},
		{Key: "zilla:service"},
		{Key: "meta:grpc-timeout", Value: []byte("12x")},
		{Key: "meta:idempotency-key", Value: []byte("k")},
	}
	e := Decode(&names, hs, []byte{})
	if string(e.CorrelationID) != "first" {
		t.Fatalf("correlation id %q, want the first", e.CorrelationID)
	}
	if e.Service == nil || len(e.Service) != 0 {
		t.Fatalf("present empty service decoded as %#v", e.Service)
	}
	if e.Method != nil {
		t.Fatalf("absent method decoded as %#v", e.Method)
	}
	if got := keysOf(e.Meta); !slices.Equal(got, []string{"meta:a=1", "meta:b=2", "meta:idempotency-key=k"}) {
		t.Fatalf("meta %q", got)
	}
	if string(e.IdempotencyKey) != "k" {
		t.Fatalf("idempotency key %q", e.IdempotencyKey)
	}
	if e.HasTimeout || e.TimeoutErr == nil || !strings.Contains(e.TimeoutErr.Error(), `"meta:grpc-timeout"`) {
		t.Fatalf("bad timeout: %v %v", e.HasTimeout, e.TimeoutErr)
	}
	bad := Decode(&names, []Header{{Key: "meta:x-bin", Value: []byte("!!")}}, nil)
	if _, err := bad.Metadata(); err == nil ||
		!strings.Contains(err.Error(), `"meta:x-bin"`) {
		t.Fatalf("bad binary metadata: %v", err)
	}
}

// TestCustomNames checks that every header name is configurable.
func TestCustomNames(t *testing.T) {
	names := Names{Service: "s", Method: "m", ReplyTo: "r", CorrelationID: "c", MetaPrefix: "md."}.WithDefaults()
	hs := AppendRequest(nil, &names, &Request{
		Route:         AppendRoute(nil, &names, nil, "svc", "M", "replies"),
		CorrelationID: []byte("id"),
		Metadata:      metadata.MD{"x": {"y"}},
	})
	if got, want := keysOf(hs), []string{"s=svc", "m=M", "r=replies", "c=id", "md.x=y"}; !slices.Equal(got, want) {
		t.Fatalf("headers %q, want %q", got, want)
	}
	e := Decode(&names, hs, []byte{})
	if string(e.CorrelationID) != "id" || string(e.ReplyTo) != "replies" || len(e.Meta) != 1 {
		t.Fatalf("decoded %+v", e)
	}
}

func TestDeadLetterHeaders(t *testing.T) {
	hs := AppendDeadLetter(nil, DeadLetter{Topic: "t", Partition: 2, Offset: 40, Code: 13, Message: "boom", Attempts: 3, Group: "g"})
	want := []string{"dead-letter:topic=t", "dead-letter:partition=2", "dead-letter:offset=40", "dead-letter:status=13",
		"dead-letter:message=boom", "dead-letter:attempts=3", "dead-letter:group=g"}
	if got := keysOf(hs); !slices.Equal(got, want) {
		t.Fatalf("headers %q, want %q", got, want)
	}
}

// TestDecodeAllocations keeps Decode allocation-free on a request whose meta
// headers are contiguous, as the gateway writes them.
func TestDecodeAllocations(t *testing.T) {
	names := DefaultNames()
	hs := AppendRequest(nil, &names, &Request{
		Route:         AppendRoute(nil, &names, nil, "svc", "M", "replies"),
		CorrelationID: []byte("id"), Timeout: time.Second, HasTimeout: true,
		Metadata: metadata.MD{"x": {"y"}, "traceparent": {"00-abc"}},
	})
	if n := testing.AllocsPerRun(100, func() { _ = Decode(&names, hs, []byte{}) }); n != 0 {
		t.Fatalf("Decode allocates %v times per record", n)
	}
}

func BenchmarkDecode(b *testing.B) {
	names := DefaultNames()
	hs := AppendRequest(nil, &names, &Request{
		Route:         AppendRoute(nil, &names, nil, "example.echo.v1.EchoService", "EchoUnary", "echo-responses"),
		CorrelationID: []byte(CorrelationID(names, NewUUID(), "example.echo.v1.EchoService", "EchoUnary", "echo-responses")),
		Timeout:       time.Second, HasTimeout: true,
		Metadata: metadata.MD{"traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
	})
	b.ReportAllocs()
	for b.Loop() {
		_ = Decode(&names, hs, []byte{})
	}
}
