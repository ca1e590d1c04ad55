package runtime_test

// Faults and edge cases of runtime.ClientConn found by review (conn.go, connstream.go,
// gwcall.go, router.go). Each test compares a behaviour with what grpc-go's
// own ClientConn does in the same situation.

import (
	"context"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestConnStreamHeaderAfterEnd: once a stream has ended (RecvMsg
// returned io.EOF), Header() must keep returning the response headers, as
// grpc-go's clientStream does (the transport keeps them). connStream.Header
// selects between headerReady and ctx.Done, and finish cancels ctx after
// closing headerReady: both are ready, so Header() returns CANCELLED
// ("context canceled") about half of the time.
func TestConnStreamHeaderAfterEnd(t *testing.T) {
	e := setup(t, headerStream{})
	s, err := e.conn(t).EchoServerStream(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "m", Repeat: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v, want io.EOF", err)
	}
	for i := range 64 {
		h, err := s.Header()
		if err != nil || len(h.Get("x-stream")) != 1 {
			t.Fatalf("Header() #%d after the stream ended = %v, %v; want x-stream=open, nil (as grpc-go)", i, h, err)
		}
	}
}

// TestConnBidiHeaderWithoutMetadata: a bidi call whose worker sends
// responses without response metadata. After the first response was
// received, grpc-go's Header() returns at once (empty metadata): the server
// sent its headers before that message. connStream.Header waits for
// headerReady, which is closed only when a reply carries metadata or the
// call ends, so here it blocks until the caller ends the stream: a hang in
// the common pattern "Send, Recv, Header, Send ...".
func TestConnBidiHeaderWithoutMetadata(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	s, err := e.conn(t).EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&echov1.EchoRequest{Message: "a"}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.GetMessage() != "a" {
		t.Fatalf("Recv = %v, %v", r, err)
	}
	type result struct {
		md  metadata.MD
		err error
	}
	got := make(chan result, 1)
	go func() {
		md, err := s.Header()
		got <- result{md, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("Header() = %v, %v; want empty metadata, nil", r.md, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Header() still blocked 20 s after a response was received on an open bidi stream (grpc-go returns at once)")
	}
	// The stream still works.
	if err := s.Send(&echov1.EchoRequest{Message: "b"}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.GetMessage() != "b" {
		t.Fatalf("second Recv = %v, %v", r, err)
	}
	_ = s.CloseSend()
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("end: %v, want io.EOF", err)
	}
}

// TestConnUnaryHeaderTrailerNotStale: grpc.Header and grpc.Trailer
// describe the call they were given to. grpc-go sets *HeaderAddr and
// *TrailerAddr after every call that reached the server
// (HeaderCallOption.after, TrailerCallOption.after), to empty metadata when
// the server sent none. The connection writes them only when the reply
// carries metadata, so a variable reused across calls keeps the headers and
// trailers of an earlier call.
func TestConnUnaryHeaderTrailerNotStale(t *testing.T) {
	e := setup(t, metaEcho{})
	echo := e.conn(t)
	ctx := ctxFor(t, 30*time.Second)
	var header, trailer metadata.MD
	if _, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "metadata"}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	if len(header.Get("x-header")) != 1 || len(trailer.Get("x-trailer")) != 1 {
		t.Fatalf("first call: header %v trailer %v, want x-header and x-trailer", header, trailer)
	}
	// A call whose handler sets no metadata.
	if _, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "plain"}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	if len(header) != 0 || len(trailer) != 0 {
		t.Errorf("a call without response metadata left header %v, trailer %v: the previous call's (grpc-go sets both to empty)", header, trailer)
	}
	// A call that fails at the worker.
	header, trailer = metadata.Pairs("x-stale", "1"), metadata.Pairs("x-stale", "1")
	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "gone", FailCode: int32(codes.NotFound)}, grpc.Header(&header), grpc.Trailer(&trailer))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("failing call: %v, want NOT_FOUND", err)
	}
	if len(header) != 0 || len(trailer) != 0 {
		t.Errorf("a failed call without response metadata left header %v, trailer %v untouched (grpc-go sets both to empty)", header, trailer)
	}
}

// produceLog is a Kafka client that notes the topic of every record
// produced through it.
type produceLog struct {
	kafkaclient.Client
	mu     sync.Mutex
	topics []string
}

func (p *produceLog) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	p.mu.Lock()
	p.topics = append(p.topics, r.Topic)
	p.mu.Unlock()
	p.Client.Produce(r, acks, done)
}

func (p *produceLog) count(topic string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, tp := range p.topics {
		if tp == topic {
			n++
		}
	}
	return n
}

// TestConnCancelledContextSendsNothing: a call made with a context
// already cancelled must not reach the worker. grpc-go checks the context
// before it creates a stream (clientStream.newAttemptLocked: cs.ctx.Err()):
// Invoke and NewStream fail with CANCELLED and nothing goes to the server.
// begin refuses a deadline already past, but not a cancelled context: the
// request and its end-of-stream record are produced (then a cancel record),
// so the worker may run the call, with its side effects, for a caller that
// was told CANCELLED.
func TestConnCancelledContextSendsNothing(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("rc") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	log := &produceLog{Client: kc}
	_, echo := connTo(t, log, prefix)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("unary with a cancelled context: %v, want CANCELLED", err)
	}
	if n := log.count(prefix + "echo-requests"); n != 0 {
		t.Errorf("unary with a cancelled context produced %d request records, want none (grpc-go sends nothing)", n)
	}

	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "charge"})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Canceled {
		t.Fatalf("server stream with a cancelled context: %v, want CANCELLED", err)
	}
	if n := log.count(prefix + "echo-requests"); n != 0 {
		t.Errorf("calls with a cancelled context produced %d request records, want none (grpc-go's NewStream fails first)", n)
	}
}

// scriptedWorker answers the requests of the echo service on prefix's
// topics as answer says, in the layout of WIRE.md (as a Zilla kafka-grpc
// binding would): answer gets each request data record, its message, and a
// reply function producing one reply record keyed by the correlation id.
func scriptedWorker(t *testing.T, kc kafkaclient.Client, prefix string, answer func(rec *kafkaclient.Record, req *echov1.EchoRequest, reply func(value []byte, hs hdrs))) {
	t.Helper()
	requests := watchReplies(t, kc, prefix+"echo-requests")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			var rec *kafkaclient.Record
			select {
			case rec = <-requests.recs:
			case <-ctx.Done():
				return
			}
			if rec.Value == nil {
				continue
			}
			var req echov1.EchoRequest
			if err := proto.Unmarshal(rec.Value, &req); err != nil {
				continue
			}
			id, replyTo := header(rec, "zilla:correlation-id"), header(rec, "zilla:reply-to")
			if id == "" || replyTo == "" {
				continue
			}
			answer(rec, &req, func(value []byte, hs hdrs) {
				kc.Produce(&kafkaclient.Record{Topic: replyTo, Partition: kafkaclient.AnyPartition, Key: []byte(id), Value: value,
					Headers: append(hdrs{"zilla:correlation-id", id}, hs...).headers()}, kafkaclient.AcksAll, func(*kafkaclient.Record, error) {})
			})
		}
	}()
}

// TestConnMalformedTrailer: an end-of-stream reply whose trailer
// cannot be decoded (a -bin trailer that is not base64). grpc-go fails the
// call with INTERNAL ("transport: malformed ...") on a header or trailer it
// cannot decode; the connection does so for a malformed header (openReply),
// but awaitReplies drops a malformed trailer silently and ends the call OK,
// so the caller loses the trailer without a word.
func TestConnMalformedTrailer(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("rt") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(_ *kafkaclient.Record, req *echov1.EchoRequest, reply func([]byte, hdrs)) {
		v, _ := proto.Marshal(&echov1.EchoResponse{Message: req.GetMessage()})
		reply(v, nil)
		reply(nil, hdrs{"zilla:status", "0", "trailer:x-sig-bin", "not base64!"})
	})
	_, echo := connTo(t, kc, prefix)
	var trailer metadata.MD
	resp, err := echo.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "x"}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.Internal {
		t.Fatalf("a reply with a malformed trailer: resp %v, err %v, trailer %v; want INTERNAL naming the trailer (as grpc-go, and as this conn does for a malformed header)", resp, err, trailer)
	}
}

// deadlineStream answers a client stream with its handler's deadline, in
// Unix nanoseconds ("none" without one).
type deadlineStream struct{ echoserver.Server }

func (deadlineStream) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	for {
		if _, err := s.Recv(); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
	}
	dl, ok := s.Context().Deadline()
	if !ok {
		return s.SendAndClose(&echov1.EchoResponse{Message: "none"})
	}
	return s.SendAndClose(&echov1.EchoResponse{Message: strconv.FormatInt(dl.UnixNano(), 10)})
}

// TestConnStreamDeadlineNotExtended: the worker's deadline for a
// stream must not be later than the caller's. begin measures the timeout
// (meta:grpc-timeout) when the stream opens, but the worker counts it from
// the timestamp of the first request record (WIRE.md), produced at the
// first SendMsg: a caller that sends its first message d after NewStream
// gives the worker d more than it allowed itself. (grpc-go sends
// grpc-timeout with the stream's headers, measured when they are written.)
// The pause below is the scenario (time passing before the first message),
// not synchronisation.
func TestConnStreamDeadlineNotExtended(t *testing.T) {
	e := setup(t, deadlineStream{})
	ctx := ctxFor(t, 30*time.Second)
	callerDL, _ := ctx.Deadline()
	s, err := e.conn(t).EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const pause = 2 * time.Second
	time.Sleep(pause)
	if err := s.Send(&echov1.EchoRequest{Message: "late first message"}); err != nil {
		t.Fatal(err)
	}
	r, err := s.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := strconv.ParseInt(r.GetMessage(), 10, 64)
	if err != nil {
		t.Fatalf("handler deadline %q", r.GetMessage())
	}
	if over := time.Unix(0, ns).Sub(callerDL); over > pause/2 {
		t.Fatalf("the worker's deadline is %v after the caller's (the pause before the first message was %v)", over.Round(time.Millisecond), pause)
	}
}

// TestConnCloseEndsCallsInFlight: Close ends the calls in flight on the
// connection at once with CANCELLED (as grpc-go's ClientConn.Close does,
// TestConnDiffClose), saying the ClientConn is closed (not a gateway's
// shutdown), and a call after Close fails the same way.
func TestConnCloseEndsCallsInFlight(t *testing.T) {
	impl := metaEcho{started: make(chan struct{}, 1), cancelled: make(chan error, 1)}
	e := setup(t, impl)
	cc, echo := connTo(t, e.kc, e.prefix)
	done := make(chan error, 1)
	go func() {
		_, err := echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "block"})
		done <- err
	}()
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{<-done, func() error {
		_, err := echo.EchoUnary(ctxFor(t, 10*time.Second), &echov1.EchoRequest{Message: "after"})
		return err
	}()} {
		if status.Code(err) != codes.Canceled || !strings.Contains(status.Convert(err).Message(), "ClientConn is closed") {
			t.Errorf("got %v, want CANCELLED saying the ClientConn is closed", err)
		}
	}
}

// TestConnUndecodableStreamReplyIsTheCallsStatus: a server stream's reply
// that RecvMsg cannot decode ends the call INTERNAL, and grpc.OnFinish (and
// the call's metrics and span) get that INTERNAL too, as grpc-go's do, not
// the cancel with which the connection stops waiting for more replies.
func TestConnUndecodableStreamReplyIsTheCallsStatus(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("rt") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(_ *kafkaclient.Record, req *echov1.EchoRequest, reply func([]byte, hdrs)) {
		good, _ := proto.Marshal(&echov1.EchoResponse{Message: req.GetMessage()})
		reply(good, nil)
		reply([]byte{0xff, 0xff}, nil) // not a protobuf message
		for range 20 {
			reply(good, nil)
		}
		reply(nil, hdrs{"zilla:status", "0"})
	})
	_, echo := connTo(t, kc, prefix)
	finished := make(chan error, 1)
	s, err := echo.EchoServerStream(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "x", Repeat: 22},
		grpc.OnFinish(func(err error) { finished <- err }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("first reply: %v", err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.Internal {
		t.Fatalf("undecodable reply: %v, want INTERNAL", err)
	}
	select {
	case err := <-finished:
		if status.Code(err) != codes.Internal {
			t.Errorf("OnFinish got %v, want the INTERNAL that RecvMsg returned", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("OnFinish not called within 30 s of the call's end")
	}
}

// onewayClientStreamConn is a ClientConn on topics of the test's own, with
// EchoClientStream oneway (no reply topic).
func onewayClientStreamConn(t *testing.T) *runtime.ClientConn {
	t.Helper()
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("o") + "."
	kafkatest.CreateTopics(t, kc, 1, prefix+"echo-requests", prefix+"echo-responses")
	spec := echov1.EchoServiceKafkaSpec.Clone()
	r := &spec.Method("EchoClientStream").Routes[0]
	r.Oneway, r.ReplyTopic = true, ""
	cc := runtime.NewClientConn(kc, runtime.WithTopicMapper(func(s string) string { return prefix + s }), runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = cc.Close() })
	if err := cc.Register(spec); err != nil {
		t.Fatal(err)
	}
	return cc
}

// TestConnCloseEndsOnewayClientStream: Close ends every call in flight on
// the connection with CANCELLED, oneway client streams included, as
// grpc-go's Close ends its streams. A oneway stream waits for its caller's
// CloseSend and then for Kafka's acknowledgements, and neither wait looked
// at Close: the caller kept sending, its messages still went to Kafka after
// Close, and CloseAndRecv answered OK.
func TestConnCloseEndsOnewayClientStream(t *testing.T) {
	cc := onewayClientStreamConn(t)
	s, err := echov1.NewEchoServiceClient(cc).EchoClientStream(ctxFor(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&echov1.EchoRequest{Message: "before"}); err != nil {
		t.Fatal(err)
	}
	if err := cc.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.CloseAndRecv()
	if status.Code(err) != codes.Canceled || !strings.Contains(status.Convert(err).Message(), "ClientConn is closed") {
		t.Fatalf("oneway client stream after Close: %v; want CANCELLED saying the ClientConn is closed", err)
	}
}

// TestConnReplyBufferBoundsEmptyMessages: GatewayReplyBufferBytes bounds
// what is buffered for a caller that reads more slowly than its replies
// arrive; past it the call ends RESOURCE_EXHAUSTED. Only the replies'
// values counted, so a stream of empty messages (or of tiny ones, whose
// records are mostly key and headers) was buffered without bound: the
// memory the option promises to bound grew with every reply.
func TestConnReplyBufferBoundsEmptyMessages(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("rb") + "."
	kafkatest.CreateTopics(t, kc, 1, prefix+"echo-requests", prefix+"echo-responses")
	const n = 1000
	scriptedWorker(t, kc, prefix, func(rec *kafkaclient.Record, _ *echov1.EchoRequest, reply func([]byte, hdrs)) {
		for range n {
			reply([]byte{}, nil) // an empty EchoResponse
		}
		reply(nil, hdrs{"zilla:status", "0"})
		// A record no call waits for, after those on their partition: once
		// the connection dropped it, it has handled them all.
		kc.Produce(&kafkaclient.Record{Topic: header(rec, "zilla:reply-to"), Partition: kafkaclient.AnyPartition,
			Key: []byte(header(rec, "zilla:correlation-id")), Value: []byte{}, Headers: hdrs{"zilla:correlation-id", "nobody"}.headers()},
			kafkaclient.AcksAll, func(*kafkaclient.Record, error) {})
	})
	cc, echo := connTo(t, kc, prefix, runtime.GatewayReplyBufferBytes(16<<10))
	ctx := ctxFor(t, 30*time.Second)
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m"})
	if err != nil {
		t.Fatal(err)
	}
	for cc.Stats().RepliesDropped == 0 {
		if ctx.Err() != nil {
			t.Fatal("the replies did not all arrive within 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for got := 0; ; got++ {
		_, err := s.Recv()
		if err == io.EOF {
			t.Fatalf("%d empty messages were all buffered for a caller that read none, and the stream ended OK: want RESOURCE_EXHAUSTED past 16 KiB", got)
		}
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("after %d messages: %v, want RESOURCE_EXHAUSTED", got, err)
			}
			return
		}
	}
}

// TestConnUndecodableClientStreamReplyIsTheCallsStatus: the one response
// of a client-streaming call that RecvMsg cannot decode ends the call
// INTERNAL, and grpc.OnFinish gets that INTERNAL, as grpc-go's does (it
// decodes the response, and ends the call, inside that RecvMsg). The
// connection ran OnFinish with OK once the worker's end arrived, before
// the caller's RecvMsg decoded the response and returned INTERNAL.
func TestConnUndecodableClientStreamReplyIsTheCallsStatus(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("rc") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(_ *kafkaclient.Record, _ *echov1.EchoRequest, reply func([]byte, hdrs)) {
		reply([]byte{0xff, 0xff}, nil) // not a protobuf message
		reply(nil, hdrs{"zilla:status", "0"})
	})
	_, echo := connTo(t, kc, prefix)
	finished := make(chan error, 1)
	s, err := echo.EchoClientStream(ctxFor(t, 30*time.Second), grpc.OnFinish(func(err error) { finished <- err }))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&echov1.EchoRequest{Message: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CloseAndRecv(); status.Code(err) != codes.Internal {
		t.Fatalf("undecodable reply: %v, want INTERNAL", err)
	}
	select {
	case err := <-finished:
		if status.Code(err) != codes.Internal {
			t.Errorf("OnFinish got %v, want the INTERNAL that RecvMsg returned", err)
		}
	default:
		t.Error("OnFinish did not run before RecvMsg returned the call's end")
	}
}

// TestConnUndecodableFetchRecordIsTheCallsStatus: a fetched record that
// RecvMsg cannot decode ends the fetch INTERNAL, and grpc.OnFinish gets
// that INTERNAL, as grpc-go's does, not the cancel with which the
// connection stops the fetch; so do the call's metrics.
func TestConnUndecodableFetchRecordIsTheCallsStatus(t *testing.T) {
	e := setupFanout(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	_, echo := connTo(t, e.kc, e.prefix, runtime.WithMeterProvider(mp))
	// A protobuf message whose string field 1 (message) is not UTF-8: a
	// gateway relays it (it is well-formed), an EchoEvent cannot hold it.
	errc := make(chan error, 1)
	e.kc.Produce(&kafkaclient.Record{Topic: e.topic, Partition: 0, Value: []byte{0x0a, 0x01, 0xff}}, kafkaclient.AcksAll,
		func(_ *kafkaclient.Record, err error) { errc <- err })
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	finished := make(chan error, 1)
	s, err := echo.EchoEvents(ctxFor(t, 30*time.Second), &emptypb.Empty{}, grpc.OnFinish(func(err error) { finished <- err }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.Internal {
		t.Fatalf("undecodable record: %v, want INTERNAL", err)
	}
	select {
	case err := <-finished:
		if status.Code(err) != codes.Internal {
			t.Errorf("OnFinish got %v, want the INTERNAL that RecvMsg returned", err)
		}
	default:
		t.Error("OnFinish did not run before RecvMsg returned the call's end")
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	if calls := sumByCode(t, rm, "kafkarpc.client.calls"); calls[int64(codes.Internal)] != 1 || len(calls) != 1 {
		t.Errorf("kafkarpc.client.calls by code = %v, want the one INTERNAL", calls)
	}
}

// TestConnOnewayClientStreamHeaderBeforeRecv: a oneway client stream has
// no worker reply to carry headers; once Kafka acknowledged its requests
// the call is answered, and Header() returns, as through the gateway,
// without the caller reading the response first. Since the response is
// handed to RecvMsg before the call ends, Header() called after CloseSend
// and before RecvMsg waited for the RecvMsg its caller had not made yet,
// until the call's context ended.
func TestConnOnewayClientStreamHeaderBeforeRecv(t *testing.T) {
	cc := onewayClientStreamConn(t)
	// The deadline only bounds a hang: the call is answered once Kafka
	// acknowledged one record.
	s, err := echov1.NewEchoServiceClient(cc).EchoClientStream(ctxFor(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&echov1.EchoRequest{Message: "m"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Header(); err != nil {
		t.Fatalf("Header() of a oneway client stream after CloseSend: %v; want the (empty) headers once Kafka acknowledged the requests", err)
	}
	if _, err := s.CloseAndRecv(); err != nil {
		t.Fatalf("CloseAndRecv: %v, want OK", err)
	}
}
