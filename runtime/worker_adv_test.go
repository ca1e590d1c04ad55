package runtime_test

// Adversarial tests of the worker's request path under faults: each test
// shows what a caller gets when something goes wrong in the worker (see
// each test's comment for the fault it failed on before its fix).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// advCommittedClient returns an echo client of a new gateway on e's topics
// that reads replies read_committed, as exactly-once workers need.
func advCommittedClient(t *testing.T, e *env) echov1.EchoServiceClient {
	t.Helper()
	gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReadCommitted())
	t.Cleanup(func() { _ = gw.Close() })
	return echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
}

var errAdvCommit = errors.New("injected by the test: the transaction's commit failed")

// commitHooked is a worker's Kafka client whose transactional producers
// ask refuse before each Commit: an error it returns is Commit's, and
// nothing is committed.
type commitHooked struct {
	kafkaclient.Client
	refuse func(offs []kafkaclient.TopicPartitionOffset) error
}

func (f *commitHooked) NewTxnProducer(id string) (kafkaclient.TxnProducer, error) {
	tc, ok := f.Client.(kafkaclient.TxnClient)
	if !ok {
		return nil, errors.New("the test's client has no transactions")
	}
	p, err := tc.NewTxnProducer(id)
	if err != nil {
		return nil, err
	}
	return &commitHookedTxn{TxnProducer: p, refuse: f.refuse}, nil
}

type commitHookedTxn struct {
	kafkaclient.TxnProducer
	refuse func(offs []kafkaclient.TopicPartitionOffset) error
}

func (t *commitHookedTxn) Commit(ctx context.Context, gr kafkaclient.GroupReader, offs []kafkaclient.TopicPartitionOffset) error {
	if err := t.refuse(offs); err != nil {
		return err
	}
	return t.TxnProducer.Commit(ctx, gr, offs)
}

// failFirstCommit is a worker's Kafka client whose transactional producer
// fails its first commit that carries offsets, as a commit that timed out
// or lost its coordinator does; every later commit goes through.
type failFirstCommit struct {
	commitHooked
	failed chan struct{} // closed once the commit failed
	once   atomic.Bool
}

func newFailFirstCommit() *failFirstCommit {
	f := &failFirstCommit{failed: make(chan struct{})}
	f.refuse = func(offs []kafkaclient.TopicPartitionOffset) error {
		if len(offs) > 0 && f.once.CompareAndSwap(false, true) {
			close(f.failed)
			return errAdvCommit
		}
		return nil
	}
	return f
}

// TestWorkerAdvFailedTransactionCommitsNothingMore: with WorkerExactlyOnce,
// a call's reply goes into the open transaction and its offset is marked
// done; the transaction's commit fails, the worker aborts it (the reply is
// gone: read_committed gateways never see it) and stops, "nothing more is
// committed, and the group moves the partitions to other members, which
// serve the uncommitted requests again" (WorkerExactlyOnce). The worker
// committed again after the failure all the same (its committer ran on,
// and committed one last time when the worker stopped), with the offset of
// the call whose reply was aborted: no member ever served that request
// again, and its caller waited for its deadline.
func TestWorkerAdvFailedTransactionCommitsNothingMore(t *testing.T) {
	impl := &counting{}
	f := newFailFirstCommit()
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client { f.Client = kc; return f },
		func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	client := advCommittedClient(t, e)
	res := goUnary(ctxFor(t, 45*time.Second), client, "aborted-reply")
	select {
	case <-f.failed:
	case r := <-res:
		t.Fatalf("the call ended (%v, %v) before the transaction holding its reply was committed", r.r, r.err)
	case <-time.After(60 * time.Second):
		t.Fatal("no transaction commit within 60 s of the call")
	}
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.worker.Err(); !errors.Is(err, errAdvCommit) {
		t.Fatalf("worker.Err() = %v after its transaction failed, want the commit's failure", err)
	}
	// Another member of the group serves the request whose reply was
	// aborted: its offset was not committed.
	startWorker(t, e, impl, runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	r := <-res // bounded by the call's deadline
	if r.err != nil || r.r.GetMessage() != "aborted-reply" {
		t.Fatalf("the call whose reply was in the aborted transaction ended %v, %v; want its response from the next member "+
			"(the failed worker committed its request's offset after all, so nobody served it again)", r.r, r.err)
	}
	if n := impl.count("aborted-reply"); n != 2 {
		t.Fatalf("the handler ran %d times, want 2 (once per member)", n)
	}
}

// advUpload is a client-streaming and bidi handler that, once started,
// waits for the test's go-ahead without watching its context (it is busy,
// as a handler writing each message somewhere is), then reads its request
// stream to the end and reports how that read ended: nil for io.EOF, the
// caller's whole stream, on which a real handler commits what it read.
type advUpload struct {
	echov1.UnimplementedEchoServiceServer
	started chan struct{}
	proceed chan struct{}
	ended   chan error // how the reads ended, with the messages read
	read    atomic.Int32
}

func (u *advUpload) readAll(recv func() (*echov1.EchoRequest, error)) error {
	u.started <- struct{}{}
	<-u.proceed
	for {
		_, err := recv()
		if errors.Is(err, io.EOF) {
			u.ended <- nil
			return nil
		}
		if err != nil {
			u.ended <- err
			return err
		}
		u.read.Add(1)
	}
}

func (u *advUpload) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if err := u.readAll(s.Recv); err != nil {
		return err
	}
	return s.SendAndClose(&echov1.EchoResponse{Message: "committed", Index: u.read.Load()})
}

func (u *advUpload) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	return u.readAll(s.Recv)
}

// TestWorkerAdvCancelledClientStreamIsNoEOF: a caller cancels its client
// stream (or bidi call) midway; its gateway writes the request's end with
// zilla:status=1 (WIRE.md). A handler that was busy when the cancel came
// and reads its stream afterwards got io.EOF, the sign that the caller sent
// its whole stream, on which it commits what it read (an upload kept
// half-done); gRPC's own server gives such a Recv CANCELLED.
func TestWorkerAdvCancelledClientStreamIsNoEOF(t *testing.T) {
	for _, method := range []string{"EchoClientStream", "EchoBidiStream"} {
		t.Run(method, func(t *testing.T) {
			impl := &advUpload{started: make(chan struct{}, 1), proceed: make(chan struct{}), ended: make(chan error, 1)}
			e := setup(t, impl)
			id := "cancelled-" + method
			send := func(msg string, extra ...string) {
				t.Helper()
				hs := append(requestHeaders(e, echoService, method, id), extra...)
				var value []byte
				if msg != "" {
					value, _ = proto.Marshal(&echov1.EchoRequest{Message: msg})
				}
				produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Value: value, Headers: hs.headers()})
			}
			send("part 1")
			select {
			case <-impl.started:
			case <-time.After(30 * time.Second):
				t.Fatal("the handler did not start within 30 s of the first request record")
			}
			send("part 2")
			send("", "zilla:status", "1") // the caller cancelled
			awaitWorkerRead(t, e, id)
			close(impl.proceed)
			select {
			case err := <-impl.ended:
				if status.Code(err) != codes.Canceled {
					t.Fatalf("after the caller's cancel, the handler's read of its request stream ended with %v after %d messages; "+
						"want CANCELLED (io.EOF says the caller sent its whole stream)", err, impl.read.Load())
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the handler's reads did not end within 30 s")
			}
		})
	}
}

// advCareless is a server-streaming and bidi handler that sends index 0,
// works on past its call's end (it does not watch its context), sends
// index 1 without looking at Send's error, as careless handlers do, and
// returns nil.
type advCareless struct {
	echov1.UnimplementedEchoServiceServer
}

func (advCareless) carry(ctx context.Context, send func(*echov1.EchoResponse) error) error {
	if err := send(&echov1.EchoResponse{Message: "careless", Index: 0}); err != nil {
		return err
	}
	<-ctx.Done() // the work outlasts the call
	_ = send(&echov1.EchoResponse{Message: "careless", Index: 1})
	return nil
}

func (a advCareless) EchoServerStream(_ *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	return a.carry(s.Context(), s.Send)
}

func (a advCareless) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	return a.carry(s.Context(), s.Send)
}

// TestWorkerAdvStreamPastItsEndIsNoOK: a server stream (or bidi call)
// outlives its deadline (here the worker's WorkerMaxCallDuration; the
// caller set none); its next Send is refused, and the handler, ignoring
// that, returns nil. The worker ended the call OK: its caller got index 0
// and a normal end, a stream with its second message missing that looks
// whole. gRPC's own server ends such a call DEADLINE_EXCEEDED whatever the
// handler returns.
func TestWorkerAdvStreamPastItsEndIsNoOK(t *testing.T) {
	e := setup(t, advCareless{}, runtime.WorkerMaxCallDuration(500*time.Millisecond))
	for _, method := range []string{"EchoServerStream", "EchoBidiStream"} {
		t.Run(method, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background()) // no deadline of the caller's
			defer cancel()
			var recv func() (*echov1.EchoResponse, error)
			if method == "EchoServerStream" {
				s, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "careless"})
				if err != nil {
					t.Fatal(err)
				}
				recv = s.Recv
			} else {
				s, err := e.echo.EchoBidiStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Send(&echov1.EchoRequest{Message: "careless"}); err != nil {
					t.Fatal(err)
				}
				recv = s.Recv
			}
			var got []int32
			for range 3 { // two responses and the end at most
				r, err := recv()
				if err == nil {
					got = append(got, r.GetIndex())
					continue
				}
				if errors.Is(err, io.EOF) {
					t.Fatalf("the stream ended OK after %v: a response the handler sent past the call's deadline is missing; "+
						"want DEADLINE_EXCEEDED naming WorkerMaxCallDuration", got)
				}
				if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), "WorkerMaxCallDuration") {
					t.Fatalf("the stream ended %v after %v, want DEADLINE_EXCEEDED naming WorkerMaxCallDuration", err, got)
				}
				if len(got) != 1 || got[0] != 0 {
					t.Fatalf("responses %v before DEADLINE_EXCEEDED, want [0]", got)
				}
				return
			}
			t.Fatalf("responses %v and no end", got)
		})
	}
}

// TestWorkerAdvMalformedRecordsInterleaved: malformed request records
// interleaved, on the same partition, with the records of good calls of
// every kind whose requests are still streaming in. Every good call is
// answered whole and right; every bad record with a correlation id and a
// usable reply topic is answered with a status naming its problem, and
// none takes a good call's records or replies.
func TestWorkerAdvMalformedRecordsInterleaved(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	reqTopic := e.topic("echo-requests")
	key := []byte("one-partition")
	msg := func(m string) []byte {
		b, _ := proto.Marshal(&echov1.EchoRequest{Message: m})
		return b
	}
	send := func(value []byte, hs ...kafkaclient.Header) {
		t.Helper()
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: value, Headers: hs})
	}
	good := func(method, id string) []kafkaclient.Header {
		return requestHeaders(e, echoService, method, id).headers()
	}
	h := func(kv ...string) []kafkaclient.Header { return hdrs(kv).headers() }

	// Bad records, each with what its answer must be ("" for none).
	type bad struct {
		id, code, names string
		hs              []kafkaclient.Header
		value           []byte
	}
	bads := []bad{
		{id: "nil-service", code: "13", names: "zilla:service", value: msg("x"),
			hs: append([]kafkaclient.Header{{Key: "zilla:service", Value: nil}}, h("zilla:method", "EchoUnary", "zilla:reply-to", e.topic("echo-responses"), "zilla:correlation-id", "nil-service")...)},
		{id: "empty-method", code: "13", names: "zilla:method", value: msg("x"),
			hs: h("zilla:service", echoService, "zilla:method", "", "zilla:reply-to", e.topic("echo-responses"), "zilla:correlation-id", "empty-method")},
		{id: "wrong-service", code: "12", names: "no.such.Service", value: msg("x"),
			hs: h("zilla:service", "no.such.Service", "zilla:method", "EchoUnary", "zilla:reply-to", e.topic("echo-responses"), "zilla:correlation-id", "wrong-service")},
		{id: "bad-timeout", code: "3", names: "grpc-timeout", value: msg("x"),
			hs: append(good("EchoUnary", "bad-timeout"), h("meta:grpc-timeout", "soon")...)},
		{id: "not-a-request", code: "13", names: "EchoRequest", value: []byte{0xff, 0xff, 0xff},
			hs: good("EchoUnary", "not-a-request")},
		{id: "\xff\xfe", code: "13", names: "zilla:method", value: msg("x"),
			hs: h("zilla:service", echoService, "zilla:reply-to", e.topic("echo-responses"), "zilla:correlation-id", "\xff\xfe")},
		{id: "no-reply-topic", value: msg("x"), hs: h("zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:correlation-id", "no-reply-topic")},
		{id: "bad-reply-topic", value: msg("x"), hs: append(h("zilla:reply-to", "no/such topic"), good("EchoUnary", "bad-reply-topic")...)},
		{value: msg("x"), hs: h("zilla:service", echoService, "zilla:method", "EchoBidiStream", "zilla:reply-to", e.topic("echo-responses"))},
		{id: "stray-cancel", value: nil, hs: append(good("EchoUnary", "stray-cancel"), h("zilla:status", "1")...)},
		{id: "stray-end", value: nil, hs: good("EchoServerStream", "stray-end")},
	}
	// Good calls whose requests stream in around the bad records.
	send(msg("a"), good("EchoClientStream", "good-client")...)
	send(msg("b1"), good("EchoBidiStream", "good-bidi")...)
	for i, b := range bads {
		send(b.value, b.hs...)
		switch i {
		case 2:
			send(msg("u"), good("EchoUnary", "good-unary")...)
			send(nil, good("EchoUnary", "good-unary")...)
		case 4:
			send(msg("b"), good("EchoClientStream", "good-client")...)
		case 6:
			send(msg("b2"), good("EchoBidiStream", "good-bidi")...)
		case 8:
			send(msg("s"), good("EchoServerStream", "good-server")...)
			send(nil, good("EchoServerStream", "good-server")...)
		}
		if b.value != nil && b.id != "" && b.code != "" {
			send(nil, b.hs...) // its end, as a gateway writes it
		}
	}
	send(msg("c"), good("EchoClientStream", "good-client")...)
	send(nil, good("EchoClientStream", "good-client")...)
	send(nil, good("EchoBidiStream", "good-bidi")...)

	want := map[string]func(recs []*kafkaclient.Record) string{
		"good-client": func(recs []*kafkaclient.Record) string {
			return advOneResponse(recs, "a,b,c", 3)
		},
		"good-unary": func(recs []*kafkaclient.Record) string { return advOneResponse(recs, "u", 0) },
		"good-server": func(recs []*kafkaclient.Record) string {
			return advOneResponse(recs, "s", 0)
		},
		"good-bidi": func(recs []*kafkaclient.Record) string {
			if len(recs) != 3 || header(recs[2], "zilla:status") != "0" {
				return fmt.Sprintf("%d records ending with status %q, want two responses and an OK end", len(recs), header(recs[len(recs)-1], "zilla:status"))
			}
			for i, m := range []string{"b1", "b2"} {
				var r echov1.EchoResponse
				if err := proto.Unmarshal(recs[i].Value, &r); err != nil || r.GetMessage() != m || r.GetIndex() != int32(i) {
					return fmt.Sprintf("response %d is %v (%v), want %q index %d", i, &r, err, m, i)
				}
			}
			return ""
		},
	}
	for _, b := range bads {
		if b.code == "" {
			continue
		}
		want[b.id] = func(recs []*kafkaclient.Record) string {
			end := recs[len(recs)-1]
			if len(recs) != 1 || header(end, "zilla:status") != b.code || !strings.Contains(header(end, "zilla:message"), b.names) {
				return fmt.Sprintf("%d records ending with status %q message %q, want one end with status %s naming %q",
					len(recs), header(end, "zilla:status"), header(end, "zilla:message"), b.code, b.names)
			}
			return ""
		}
	}
	got := map[string][]*kafkaclient.Record{}
	ended := 0
	for bound := time.After(60 * time.Second); ended < len(want); {
		select {
		case rec := <-replies.recs:
			id := header(rec, "zilla:correlation-id")
			if want[id] == nil {
				t.Errorf("a reply for correlation id %q, which has no answer coming: %d headers, value %q", id, len(rec.Headers), rec.Value)
				continue
			}
			got[id] = append(got[id], rec)
			if rec.Value == nil {
				ended++
			}
		case <-bound:
			for id := range want {
				if n := len(got[id]); n == 0 || got[id][n-1].Value != nil {
					t.Errorf("call %q: no end within 60 s (%d records)", id, n)
				}
			}
			t.FailNow()
		}
	}
	for id, check := range want {
		if problem := check(got[id]); problem != "" {
			t.Errorf("call %q: %s", id, problem)
		}
	}
	// The worker keeps serving that partition.
	awaitWorkerRead(t, e, string(key))
	if r, err := e.echo.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "after"}); err != nil || r.GetMessage() != "after" {
		t.Fatalf("a call after the malformed records: %v, %v", r, err)
	}
	// Nothing holds its commits: the group's next member, once this one
	// left, reads none of those records again (only a marker written now).
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	next := startWorker(t, e, echoserver.Server{})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: []byte("marker")})
	for deadline := time.Now().Add(30 * time.Second); next.Stats().SkippedNoCorrelationID == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the next member did not read the marker record within 30 s")
		}
		time.Sleep(time.Millisecond) // polling the worker's state, bounded above
	}
	if st := next.Stats(); st.Calls != 0 || st.SkippedNoCorrelationID != 1 {
		t.Fatalf("the next member started %d calls and skipped %d records without correlation id, want 0 and 1 (the marker): "+
			"the first member's commit stopped short of records it had answered or skipped", st.Calls, st.SkippedNoCorrelationID)
	}
}

// advOneResponse checks recs, a call's reply records, for one response
// with message m and index i and an OK end; it returns what is wrong, or "".
func advOneResponse(recs []*kafkaclient.Record, m string, i int32) string {
	if len(recs) != 2 || header(recs[1], "zilla:status") != "0" {
		return fmt.Sprintf("%d records ending with status %q (%s), want a response and an OK end",
			len(recs), header(recs[len(recs)-1], "zilla:status"), header(recs[len(recs)-1], "zilla:message"))
	}
	var r echov1.EchoResponse
	if err := proto.Unmarshal(recs[0].Value, &r); err != nil || r.GetMessage() != m || r.GetIndex() != i {
		return fmt.Sprintf("response %v (%v), want %q index %d", &r, err, m, i)
	}
	return ""
}

// advInFlight serves every echo method; on its first run of each it
// tells started once it is midway (unary: running; server stream: one
// response sent; client stream: one message read; bidi: one message
// answered), and the unary and server-stream runs then wait for their
// context's end.
type advInFlight struct {
	echov1.UnimplementedEchoServiceServer
	counting
	started chan string
}

func (a *advInFlight) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if a.run("unary") == 1 {
		a.started <- "unary"
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

func (a *advInFlight) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	n := a.run("server")
	if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 0}); err != nil {
		return err
	}
	if n == 1 {
		a.started <- "server"
		<-s.Context().Done()
		return s.Context().Err()
	}
	return s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 1})
}

func (a *advInFlight) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	n := a.run("client")
	var msgs []string
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.SendAndClose(&echov1.EchoResponse{Message: strings.Join(msgs, ","), Index: int32(len(msgs))})
		}
		if err != nil {
			return err
		}
		if msgs = append(msgs, req.GetMessage()); n == 1 && len(msgs) == 1 {
			a.started <- "client"
		}
	}
}

func (a *advInFlight) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	n := a.run("bidi")
	for i := int32(0); ; i++ {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
		if n == 1 && i == 0 {
			a.started <- "bidi"
		}
	}
}

// TestWorkerAdvCloseWithCallsInFlight closes the only worker while a call
// of each kind runs on it, then starts another member of its group. What
// the callers get: a call that sent nothing yet (unary, a client stream
// still streaming in) is served whole by the next member; a call that
// sent replies (a server stream, a bidi call) ends UNAVAILABLE after
// them, never OK and never with another run's replies mixed in.
func TestWorkerAdvCloseWithCallsInFlight(t *testing.T) {
	impl := &advInFlight{started: make(chan string, 8)}
	e := setup(t, impl)
	ctx := ctxFor(t, 60*time.Second)
	unary := goUnary(ctx, e.echo, "u")
	server, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := server.Recv(); err != nil || r.GetIndex() != 0 {
		t.Fatalf("server stream's first response: %v, %v", r, err)
	}
	client, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Send(&echov1.EchoRequest{Message: "a"}); err != nil {
		t.Fatal(err)
	}
	bidi, err := e.echo.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bidi.Send(&echov1.EchoRequest{Message: "b1"}); err != nil {
		t.Fatal(err)
	}
	if r, err := bidi.Recv(); err != nil || r.GetMessage() != "b1" {
		t.Fatalf("bidi's first response: %v, %v", r, err)
	}
	for range 4 {
		select {
		case <-impl.started:
		case <-time.After(30 * time.Second):
			t.Fatal("the four calls were not all midway within 30 s")
		}
	}
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("server stream after its worker closed: %v, want UNAVAILABLE after its first response", err)
	}
	if _, err := bidi.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("bidi call after its worker closed: %v, want UNAVAILABLE after its first response", err)
	}
	for _, m := range []string{"b", "c"} {
		if err := client.Send(&echov1.EchoRequest{Message: m}); err != nil {
			t.Fatalf("client stream, sending %q after the worker closed: %v", m, err)
		}
	}
	clientRes := make(chan unaryResult, 1)
	go func() {
		r, err := client.CloseAndRecv()
		clientRes <- unaryResult{r, err}
	}()
	next := runtime.NewWorker(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(e.worker.GroupID()))
	if err := echov1.RegisterEchoServiceKafkaWorker(next, impl); err != nil {
		t.Fatal(err)
	}
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = next.Close() })
	if r := <-unary; r.err != nil || r.r.GetMessage() != "u" {
		t.Errorf("unary call in flight when its worker closed: %v, %v; want its response from the next member", r.r, r.err)
	}
	if r := <-clientRes; r.err != nil || r.r.GetMessage() != "a,b,c" || r.r.GetIndex() != 3 {
		t.Errorf("client stream in flight when its worker closed: %v, %v; want the next member's answer to all of it (a,b,c)", r.r, r.err)
	}
	// (The next member may run the server stream and the bidi call again:
	// a partition's commit stops below its oldest call not over, here the
	// unary call given up unserved. Their callers have their answers.)
}

// advWaits is a unary handler that tells started it runs, then waits for
// its context's end and returns its error.
type advWaits struct {
	echov1.UnimplementedEchoServiceServer
	started chan struct{}
}

func (a advWaits) EchoUnary(ctx context.Context, _ *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	a.started <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestWorkerAdvCloseDuringShutdown: an operator shuts the worker down
// gracefully (Shutdown with a generous context), a call in flight keeps
// it waiting, and Close is called to stop it at once ("calls in flight are
// cancelled as by a Shutdown whose context already ended"). Close waited
// for the first Shutdown's context instead: only the first context given
// counted, and the call's handler ran on until that context ended.
func TestWorkerAdvCloseDuringShutdown(t *testing.T) {
	impl := advWaits{started: make(chan struct{}, 1)}
	e := setup(t, impl)
	ctx := ctxFor(t, 90*time.Second)
	go func() { _, _ = e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "long"}) }() // its outcome is not the point
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	graceful, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	shutdown := make(chan struct{})
	go func() {
		defer close(shutdown)
		_ = e.worker.Shutdown(graceful)
	}()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_ = e.worker.Close()
	}()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return within 30 s while a graceful Shutdown waited for a call in flight: " +
			"it waits for the Shutdown's context (60 s) instead of cancelling the call at once")
	}
	select {
	case <-shutdown:
	case <-time.After(30 * time.Second):
		t.Fatal("the graceful Shutdown did not return within 30 s of Close stopping the worker")
	}
}

// advPanics panics midway on its first run of a message: a server stream
// after its first response; a bidi call whose first message is "late"
// after answering it, at its second message; one whose first message is
// "early" at once, before answering anything. Later runs answer in full.
type advPanics struct {
	counting
}

func (a *advPanics) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	n := a.run(req.GetMessage())
	for i := range int32(3) {
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
		if n == 1 {
			panic("server stream midway")
		}
	}
	return nil
}

func (a *advPanics) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	var first string
	n := 0
	for i := int32(0); ; i++ {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if i == 0 {
			first = req.GetMessage()
			n = a.run(first)
		}
		if n == 1 && (first == "early" || i == 1) {
			panic("bidi midway")
		}
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
}

// TestWorkerAdvPanicMidStream: a handler panics midway through a stream,
// with retries on. One that sent responses already is not run again (its
// caller has them): the caller gets them and INTERNAL, never a second
// run's responses after them nor an OK end. One that sent nothing is run
// again from the first request message, and its caller gets that run's
// whole answer. The worker serves on.
func TestWorkerAdvPanicMidStream(t *testing.T) {
	impl := &advPanics{}
	e := setup(t, impl, runtime.WorkerRetries(3, codes.Unavailable))
	ctx := ctxFor(t, 60*time.Second)

	s, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "server"})
	if err != nil {
		t.Fatal(err)
	}
	var got []int32
	for {
		r, err := s.Recv()
		if err == nil {
			got = append(got, r.GetIndex())
			continue
		}
		if status.Code(err) != codes.Internal || len(got) != 1 || got[0] != 0 {
			t.Errorf("server stream that panicked after its first response: %v, then %v; want [0], then INTERNAL", got, err)
		}
		break
	}

	bidi := func(msgs ...string) ([]string, error) {
		b, err := e.echo.EchoBidiStream(ctx)
		if err != nil {
			return nil, err
		}
		var got []string
		for _, m := range msgs {
			if err := b.Send(&echov1.EchoRequest{Message: m}); err != nil {
				break // the call ended: Recv says how
			}
			r, err := b.Recv()
			if err != nil {
				return got, err
			}
			got = append(got, r.GetMessage())
		}
		if err := b.CloseSend(); err != nil {
			return got, err
		}
		for {
			r, err := b.Recv()
			if errors.Is(err, io.EOF) {
				return got, nil
			}
			if err != nil {
				return got, err
			}
			got = append(got, r.GetMessage())
		}
	}
	if got, err := bidi("late", "second", "third"); status.Code(err) != codes.Internal || !slices.Equal(got, []string{"late"}) {
		t.Errorf("bidi call that panicked after its first response: %v, then %v; want [late], then INTERNAL", got, err)
	}
	if got, err := bidi("early", "second"); err != nil || !slices.Equal(got, []string{"early", "second"}) {
		t.Errorf("bidi call that panicked before any response, with retries: %v, then %v; want the retry's [early second] and OK", got, err)
	}
	for m, want := range map[string]int{"server": 1, "late": 1, "early": 2} {
		if n := impl.count(m); n != want {
			t.Errorf("handler runs for %q: %d, want %d", m, n, want)
		}
	}
	if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}); err != nil || r.GetMessage() != "after" {
		t.Fatalf("a call after the panics: %v, %v", r, err)
	}
}

// TestWorkerAdvRebalanceMidStream: bidi calls and server streams run while
// a second worker joins the group (partitions move to it) and then the
// first leaves (all move to the second). Whichever partition each call is
// on, its caller gets a correct prefix of its answer, in order, without
// duplicates or another run's replies, ending OK only when the answer is
// whole, else UNAVAILABLE.
func TestWorkerAdvRebalanceMidStream(t *testing.T) {
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 120*time.Second)
	const (
		bidis, steps   = 8, 30
		joinAt, quitAt = 5, 15
		streams, total = 6, 40
	)
	var joined, quit sync.WaitGroup // the bidi calls that reached the join and the quit
	joined.Add(bidis)
	quit.Add(bidis)
	joinGate, quitGate := make(chan struct{}), make(chan struct{})
	problems := make(chan string, bidis+streams)
	var cut atomic.Int32 // calls that ended UNAVAILABLE
	var wg sync.WaitGroup
	for c := range bidis {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reached := map[int]func(){joinAt: joined.Done, quitAt: quit.Done}
			defer func() { // a call that ended early passes the remaining gates
				for _, done := range reached {
					done()
				}
			}()
			b, err := e.echo.EchoBidiStream(ctx)
			if err != nil {
				problems <- fmt.Sprintf("bidi %d: %v", c, err)
				return
			}
			for i := range steps {
				if done, ok := reached[i]; ok {
					delete(reached, i)
					done()
					if i == joinAt {
						<-joinGate
					} else {
						<-quitGate
					}
				}
				m := fmt.Sprintf("c%d-m%d", c, i)
				if err := b.Send(&echov1.EchoRequest{Message: m}); err != nil {
					_, err = b.Recv()
					if status.Code(err) != codes.Unavailable {
						problems <- fmt.Sprintf("bidi %d ended at message %d with %v, want UNAVAILABLE if not OK", c, i, err)
					}
					cut.Add(1)
					return
				}
				r, err := b.Recv()
				if err != nil {
					if status.Code(err) != codes.Unavailable {
						problems <- fmt.Sprintf("bidi %d ended at message %d with %v, want UNAVAILABLE if not OK", c, i, err)
					}
					cut.Add(1)
					return
				}
				if r.GetMessage() != m || r.GetIndex() != int32(i) {
					problems <- fmt.Sprintf("bidi %d: answer %d is %q index %d, want %q index %d", c, i, r.GetMessage(), r.GetIndex(), m, i)
					return
				}
			}
			if err := b.CloseSend(); err != nil {
				problems <- fmt.Sprintf("bidi %d: CloseSend: %v", c, err)
				return
			}
			if r, err := b.Recv(); !errors.Is(err, io.EOF) && status.Code(err) != codes.Unavailable {
				problems <- fmt.Sprintf("bidi %d after all %d answers: %v, %v; want the end (OK, or UNAVAILABLE)", c, steps, r, err)
			}
		}()
	}
	joined.Wait()
	for c := range streams {
		s, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: fmt.Sprint("s", c), Repeat: total, DelayMs: 10})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int32(0); ; i++ {
				r, err := s.Recv()
				switch {
				case errors.Is(err, io.EOF) && i == total:
					return
				case errors.Is(err, io.EOF):
					problems <- fmt.Sprintf("server stream %d ended OK after %d of its %d responses", c, i, total)
					return
				case err != nil:
					if status.Code(err) != codes.Unavailable {
						problems <- fmt.Sprintf("server stream %d ended at response %d with %v, want UNAVAILABLE if not OK", c, i, err)
					}
					cut.Add(1)
					return
				case r.GetIndex() != i || r.GetMessage() != fmt.Sprint("s", c):
					problems <- fmt.Sprintf("server stream %d: response %d is %q index %d", c, i, r.GetMessage(), r.GetIndex())
					return
				}
			}
		}()
	}
	startWorker(t, e, echoserver.Server{}) // partitions spread over two members
	close(joinGate)
	quit.Wait()
	if err := e.worker.Close(); err != nil { // the first member leaves: all move to the second
		t.Fatal(err)
	}
	close(quitGate)
	wg.Wait()
	close(problems)
	for p := range problems {
		t.Error(p)
	}
	t.Logf("%d of %d calls ended UNAVAILABLE midway, the others whole", cut.Load(), bidis+streams)
}

// advBackend is a unary handler that, on its first run of a message, tells
// started and waits for its context's end, then fails UNAVAILABLE as a
// handler does whose backend call was cut off; later runs answer.
type advBackend struct {
	counting
	started chan struct{}
}

func (a *advBackend) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if a.run(req.GetMessage()) == 1 {
		a.started <- struct{}{}
		<-ctx.Done()
		return nil, status.Error(codes.Unavailable, "backend call cut off")
	}
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

// TestWorkerAdvGivenUpCallIsNoDeadLetter: with a dead-letter topic, a call
// in flight when its worker closes is given up (its handler cancelled, its
// offset left uncommitted) and served again by the group's next member.
// Its handler failed UNAVAILABLE once cancelled, a code worth a retry, so
// the worker copied the request to the dead-letter topic as a poison
// request, although it was served: whoever replays the dead letters runs
// it a second time.
func TestWorkerAdvGivenUpCallIsNoDeadLetter(t *testing.T) {
	impl := &advBackend{started: make(chan struct{}, 1)}
	e := setup(t, impl, runtime.WorkerDeadLetterTopic("dlq"))
	kafkatest.CreateTopics(t, e.kc, 1, e.topic("dlq"))
	dead := watchReplies(t, e.kc, e.topic("dlq"))
	res := goUnary(ctxFor(t, 60*time.Second), e.echo, "given-up")
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	if err := e.worker.Close(); err != nil { // a dead letter it writes is acknowledged before Close returns
		t.Fatal(err)
	}
	startWorker(t, e, impl)
	if r := <-res; r.err != nil || r.r.GetMessage() != "given-up" {
		t.Fatalf("the call given up at close ended %v, %v; want its response from the next member", r.r, r.err)
	}
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("dlq"), Value: []byte("marker")})
	select {
	case rec := <-dead.recs:
		if string(rec.Value) != "marker" {
			t.Fatalf("a dead letter (status %s, %q) for a request given up at close and served by the next member",
				header(rec, wire.DeadLetterStatus), header(rec, wire.DeadLetterMessage))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the marker written to the dead-letter topic was not read within 30 s")
	}
}

// advCarelessOnce is advCareless on its first run of a message; later runs
// send both responses in time.
type advCarelessOnce struct {
	counting
}

func (a *advCarelessOnce) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if a.run(req.GetMessage()) == 1 {
		return advCareless{}.carry(s.Context(), s.Send)
	}
	for i := range int32(2) {
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
	return nil
}

// TestWorkerAdvKeyedStreamPastItsEndNotStored is
// TestWorkerAdvStreamPastItsEndIsNoOK with an idempotency key: the stream
// missing its second response ended OK, so the worker stored it as the
// call's outcome, and the caller's retry with the same key got that
// partial stream again, OK, without the handler running again.
func TestWorkerAdvKeyedStreamPastItsEndNotStored(t *testing.T) {
	impl := &advCarelessOnce{}
	e := setup(t, impl, runtime.WorkerMaxCallDuration(500*time.Millisecond))
	call := func() ([]int32, error) {
		ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", "careless-key"))
		defer cancel()
		s, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "careless"})
		if err != nil {
			return nil, err
		}
		var got []int32
		for range 3 { // two responses and the end at most
			r, err := s.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				return got, err
			}
			got = append(got, r.GetIndex())
		}
		return got, errors.New("no end after two responses")
	}
	if got, err := call(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("first call: %v, then %v; want [0], then DEADLINE_EXCEEDED", got, err)
	}
	got, err := call()
	if err != nil || !slices.Equal(got, []int32{0, 1}) {
		t.Fatalf("the retry with the same key got %v, then %v; want a second run's whole stream [0 1] and OK "+
			"(the first run's stream missed a response: no outcome to store)", got, err)
	}
	if n := impl.count("careless"); n != 2 {
		t.Fatalf("the handler ran %d times, want 2", n)
	}
}
