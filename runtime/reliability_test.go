package runtime_test

import (
	"context"
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
	routingv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/routing/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// counting counts handler runs per message and can fail or block on request.
type counting struct {
	echoserver.Server
	mu   sync.Mutex
	runs map[string]int
	fail codes.Code
}

// run counts one more run for message m and returns how many there were.
func (c *counting) run(m string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runs == nil {
		c.runs = map[string]int{}
	}
	c.runs[m]++
	return c.runs[m]
}

func (c *counting) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	n := c.run(req.GetMessage())
	if c.fail != codes.OK {
		return nil, status.Error(c.fail, "try later")
	}
	return &echov1.EchoResponse{Message: req.GetMessage(), Index: int32(n)}, nil
}

func (c *counting) count(m string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[m]
}

func TestIdempotencyKeyRunsOnce(t *testing.T) {
	impl := &counting{}
	e := setup(t, impl)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "order-7")
	first, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(first, second) {
		t.Fatalf("duplicate got %v, want the stored %v", second, first)
	}
	if n := impl.count("charge"); n != 1 {
		t.Fatalf("handler ran %d times for one idempotency key, want 1", n)
	}
	if d := e.worker.Stats().Duplicates; d != 1 {
		t.Fatalf("Stats().Duplicates = %d, want 1", d)
	}
	// Without a key, every call runs.
	plain := ctxFor(t, 30*time.Second)
	for range 2 {
		if _, err := e.echo.EchoUnary(plain, &echov1.EchoRequest{Message: "free"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := impl.count("free"); n != 2 {
		t.Fatalf("handler ran %d times for two calls without a key, want 2", n)
	}
}

// clientStreamCounter counts the runs of EchoClientStream.
type clientStreamCounter struct {
	echoserver.Server
	mu   sync.Mutex
	runs int
}

func (c *clientStreamCounter) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	c.mu.Lock()
	c.runs++
	c.mu.Unlock()
	return c.Server.EchoClientStream(s)
}

// TestIdempotencyKeyEmptyClientStreamRunsOnce: a keyed client stream that
// sends no message is one end-of-stream record; its repeat is answered from
// the stored outcome, not run again.
func TestIdempotencyKeyEmptyClientStreamRunsOnce(t *testing.T) {
	impl := &clientStreamCounter{}
	e := setup(t, impl)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "empty-7")
	var answers []*echov1.EchoResponse
	for range 2 {
		s, err := e.echo.EchoClientStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		answers = append(answers, r)
	}
	impl.mu.Lock()
	runs := impl.runs
	impl.mu.Unlock()
	if runs != 1 {
		t.Fatalf("handler ran %d times for one idempotency key, want 1", runs)
	}
	if !proto.Equal(answers[0], answers[1]) {
		t.Fatalf("the repeat got %v, want the stored %v", answers[1], answers[0])
	}
	if d := e.worker.Stats().Duplicates; d != 1 {
		t.Fatalf("Stats().Duplicates = %d, want 1", d)
	}
}

// endGate is a worker's Kafka client that holds the acknowledgement of the
// end-of-stream replies it produces until open is closed (the call stays in
// flight meanwhile), and closes handled once the worker handled the polled
// batch holding the second request record with idempotency key key.
type endGate struct {
	kafkaclient.Client
	replies string // the reply topic
	key     string
	open    chan struct{}
	handled chan struct{}
	seen    atomic.Int32 // request records with key polled
	batch   atomic.Bool  // the last batch polled holds the second
}

func (g *endGate) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	select {
	case <-g.open:
	default:
		if r.Topic == g.replies && r.Value == nil {
			g.Client.Produce(r, acks, func(r *kafkaclient.Record, err error) {
				go func() { <-g.open; done(r, err) }()
			})
			return
		}
	}
	g.Client.Produce(r, acks, done)
}

func (g *endGate) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	gr, err := g.Client.NewGroupReader(cfg)
	if err != nil {
		return nil, err
	}
	return &endGateReader{GroupReader: gr, g: g}, nil
}

type endGateReader struct {
	kafkaclient.GroupReader
	g *endGate
}

// Poll is called again once the worker handled the records of the last.
func (r *endGateReader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	if r.g.batch.CompareAndSwap(true, false) {
		close(r.g.handled)
	}
	recs, err := r.GroupReader.Poll(ctx)
	for _, rec := range recs {
		if header(rec, "meta:idempotency-key") == r.g.key && r.g.seen.Add(1) == 2 {
			r.g.batch.Store(true)
		}
	}
	return recs, err
}

// TestEmptyClientStreamRepeatWhileCallEnds: the repeat of a keyed client
// stream that sends no message (one end-of-stream record) reaches the
// worker while the call it repeats is still in flight (the call's end is
// not yet acknowledged): it waits for that call's outcome and is answered
// with it, instead of being taken for the end of the call's own request.
func TestEmptyClientStreamRepeatWhileCallEnds(t *testing.T) {
	impl := &clientStreamCounter{}
	const key = "empty-8"
	var g *endGate
	e := setupWrapped(t, func(prefix string, kc kafkaclient.Client) kafkaclient.Client {
		g = &endGate{Client: kc, replies: prefix + "echo-responses", key: key, open: make(chan struct{}), handled: make(chan struct{})}
		return g
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", key)
	call := func() (*echov1.EchoResponse, error) {
		s, err := e.echo.EchoClientStream(ctx)
		if err != nil {
			return nil, err
		}
		return s.CloseAndRecv()
	}
	first, err := call()
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		r   *echov1.EchoResponse
		err error
	}
	repeat := make(chan result, 1)
	go func() {
		r, err := call()
		repeat <- result{r, err}
	}()
	select {
	case <-g.handled:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not read the repeat within 30 s")
	}
	close(g.open) // the first call ends now, its repeat read
	got := <-repeat
	if got.err != nil {
		t.Fatalf("the repeat: %v", got.err)
	}
	if !proto.Equal(got.r, first) {
		t.Fatalf("the repeat got %v, want the stored %v", got.r, first)
	}
	impl.mu.Lock()
	runs := impl.runs
	impl.mu.Unlock()
	if runs != 1 {
		t.Fatalf("handler ran %d times for one idempotency key, want 1", runs)
	}
}

func TestTransientFailureIsNotRemembered(t *testing.T) {
	impl := &counting{fail: codes.Unavailable}
	e := setup(t, impl)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "k")
	for range 2 {
		if _, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}); status.Code(err) != codes.Unavailable {
			t.Fatalf("err = %v, want UNAVAILABLE", err)
		}
	}
	if n := impl.count("m"); n != 2 {
		t.Fatalf("handler ran %d times, want 2: an UNAVAILABLE outcome must not be replayed", n)
	}
}

func TestRetriesThenDeadLetter(t *testing.T) {
	impl := &counting{fail: codes.Unavailable}
	e := setupWith(t, func(w *runtime.Worker) error {
		return echov1.RegisterEchoServiceKafkaWorker(w, impl)
	}, runtime.WorkerRetries(3), runtime.WorkerDeadLetterTopic("dlq"))
	kafkatest.CreateTopics(t, e.kc, 1, e.topic("dlq"))
	dead := watchReplies(t, e.kc, e.topic("dlq"))
	ctx := ctxFor(t, 60*time.Second)
	_, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "poison"}, grpc.WaitForReady(true))
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "try later" {
		t.Fatalf("caller got %v, want the final UNAVAILABLE", err)
	}
	if n := impl.count("poison"); n != 3 {
		t.Fatalf("handler ran %d times, want 3 attempts", n)
	}
	rec := <-dead.recs
	var req echov1.EchoRequest
	if err := proto.Unmarshal(rec.Value, &req); err != nil || req.GetMessage() != "poison" {
		t.Fatalf("dead letter value = %v, %v", &req, err)
	}
	want := map[string]string{
		wire.DeadLetterTopic:    e.topic("echo-requests"),
		wire.DeadLetterStatus:   "14",
		wire.DeadLetterMessage:  "try later",
		wire.DeadLetterAttempts: "3",
		wire.DeadLetterGroup:    e.worker.GroupID(),
		"zilla:method":          "EchoUnary",
	}
	for k, v := range want {
		if got := header(rec, k); got != v {
			t.Errorf("dead letter header %s = %q, want %q", k, got, v)
		}
	}
	if header(rec, wire.DeadLetterOffset) == "" || header(rec, wire.DeadLetterPartition) == "" {
		t.Errorf("dead letter lacks its partition and offset: %q", headerKeys(rec))
	}
}

func TestUndecodableGoesToDeadLetterAtOnce(t *testing.T) {
	impl := &counting{}
	e := setupWith(t, func(w *runtime.Worker) error {
		return echov1.RegisterEchoServiceKafkaWorker(w, impl)
	}, runtime.WorkerRetries(5), runtime.WorkerDeadLetterTopic("dlq"))
	kafkatest.CreateTopics(t, e.kc, 1, e.topic("dlq"))
	dead := watchReplies(t, e.kc, e.topic("dlq"))
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	h := requestHeaders(e, echoService, "EchoUnary", "undecodable")
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Value: []byte{0x0a, 0xff}, Headers: h.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Headers: h.headers()})
	got := replies.await(t, "undecodable")
	if s := header(got[len(got)-1], "zilla:status"); s != "13" {
		t.Fatalf("caller status %q, want 13", s)
	}
	rec := <-dead.recs
	if header(rec, wire.DeadLetterAttempts) != "1" || header(rec, wire.DeadLetterStatus) != "13" {
		t.Fatalf("dead letter headers %v", rec.Headers)
	}
}

// ordered records the order in which Route handlers start and end, blocking
// the first one until released.
type ordered struct {
	routingv1.UnimplementedRoutingServiceServer
	mu      sync.Mutex
	log     []string
	started chan string
	release chan struct{}
}

func (o *ordered) Route(ctx context.Context, in *routingv1.Order) (*routingv1.Receipt, error) {
	o.mu.Lock()
	o.log = append(o.log, "start "+in.GetId())
	o.mu.Unlock()
	o.started <- in.GetId()
	if in.GetId() == "A" {
		<-o.release
	}
	o.mu.Lock()
	o.log = append(o.log, "end "+in.GetId())
	o.mu.Unlock()
	return &routingv1.Receipt{Id: in.GetId()}, nil
}

func TestSameKeyCallsRunInOrder(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("o") + "."
	for _, tpc := range []string{"routing-requests", "routing-responses", "acme-requests", "acme-responses", "notifications", "uploads", "upload-receipts", "watch.requests", "watch.responses", "watch_traced-responses"} {
		kafkatest.CreateTopics(t, kc, 3, prefix+tpc)
	}
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	impl := &ordered{started: make(chan string, 2), release: make(chan struct{})}
	worker := runtime.NewWorker(kc, mapper, runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(prefix+"w"))
	if err := routingv1.RegisterRoutingServiceKafkaWorker(worker, impl); err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Close() })
	gw := runtime.NewGateway(kc, mapper, runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	client := routingv1.NewRoutingServiceClient(serve(t, func(s *grpc.Server) {
		if err := routingv1.RegisterRoutingServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := ctxFor(t, 60*time.Second)
	errs := make(chan error, 2)
	call := func(id string) {
		_, err := client.Route(ctx, &routingv1.Order{Id: id}) // both use the static key "orders"
		errs <- err
	}
	go call("A")
	if got := <-impl.started; got != "A" {
		t.Fatalf("first handler started for %q", got)
	}
	go call("B")
	// B is read by the worker while A still runs: it must wait for A.
	deadline := time.Now().Add(60 * time.Second)
	for worker.Stats().Calls < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the worker never read the second call")
		}
		time.Sleep(time.Millisecond) // polling the worker's state, not a timing assumption
	}
	close(impl.release)
	if got := <-impl.started; got != "B" {
		t.Fatalf("second handler started for %q", got)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	impl.mu.Lock()
	defer impl.mu.Unlock()
	if got, want := strings.Join(impl.log, ", "), "start A, end A, start B, end B"; got != want {
		t.Fatalf("handlers ran %q, want %q", got, want)
	}
}

// firstFails fails the first run of EchoUnary with UNAVAILABLE; later runs
// answer with their run number.
type firstFails struct{ counting }

func (f *firstFails) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	n := f.run(req.GetMessage())
	if n == 1 {
		return nil, status.Error(codes.Unavailable, "try later")
	}
	return &echov1.EchoResponse{Message: req.GetMessage(), Index: int32(n)}, nil
}

// slowAck is a worker's Kafka client that reports the first reply
// end-of-stream record as delivered only once release is closed (the record
// itself goes out at once): the worker's call stays in flight after its
// caller has the answer.
type slowAck struct {
	kafkaclient.Client
	replies string
	release chan struct{}
	once    sync.Once
}

func (s *slowAck) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	hold := false
	if r.Topic == s.replies && r.Value == nil {
		s.once.Do(func() { hold = true })
	}
	if !hold {
		s.Client.Produce(r, acks, done)
		return
	}
	s.Client.Produce(r, acks, func(r *kafkaclient.Record, err error) {
		go func() {
			<-s.release
			done(r, err)
		}()
	})
}

// A retry (same idempotency key) of a call that failed with an outcome that
// invites one is run again even when it reaches the worker before the
// worker is done with the first attempt, rather than handed that outcome.
func TestRetryWhileFirstAttemptEndsRunsAgain(t *testing.T) {
	impl := &firstFails{}
	var slow *slowAck
	e := setupWrapped(t, func(prefix string, kc kafkaclient.Client) kafkaclient.Client {
		slow = &slowAck{Client: kc, replies: prefix + "echo-responses", release: make(chan struct{})}
		return slow
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(slow.release) }) }
	t.Cleanup(release)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "again")
	if _, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("first attempt: %v, want UNAVAILABLE", err)
	}
	watch := watchReplies(t, e.kc, e.topic("echo-requests")) // from after the first attempt
	retry := goUnary(ctx, e.echo, "m")
	// A record without a correlation id, on the partition of the attempts
	// (same key) and after the retry: once the worker skipped it, it has
	// read the retry, while the first attempt still waits for its ack.
	id := wire.CorrelationID(wire.DefaultNames(), "again", "example.echo.v1.EchoService", "EchoUnary", e.topic("echo-responses"))
	watch.await(t, id) // the retry is in Kafka
	awaitWorkerRead(t, e, id)
	release()
	r := <-retry
	if r.err != nil || r.r.GetIndex() != 2 {
		t.Fatalf("retry: %v, %v; want the handler's second run (index 2)", r.r, r.err)
	}
	if n := impl.count("m"); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

// blockFirst holds the first run of EchoUnary until release is closed;
// every run answers with its run number.
type blockFirst struct {
	counting
	started, release chan struct{}
}

func (b *blockFirst) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	n := b.run(req.GetMessage())
	if n == 1 {
		close(b.started)
		<-b.release
	}
	return &echov1.EchoResponse{Message: req.GetMessage(), Index: int32(n)}, nil
}

// A repeat that waited for its call (sent through another gateway while the
// call ran) and was answered with its replies leaves nothing behind: the
// next repeat with the same key is answered from the worker's memory, not
// skipped until its deadline.
func TestRepeatAfterWaiterIsAnswered(t *testing.T) {
	impl := &blockFirst{started: make(chan struct{}), release: make(chan struct{})}
	e := setup(t, impl)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(impl.release) }) }
	t.Cleanup(release)
	echo2 := extraGateway(t, e)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "waited")
	first := goUnary(ctx, e.echo, "m")
	select {
	case <-impl.started:
	case <-ctx.Done():
		t.Fatal("the first attempt never reached the handler")
	}
	watch := watchReplies(t, e.kc, e.topic("echo-requests"))
	second := goUnary(ctx, echo2, "m")
	id := wire.CorrelationID(wire.DefaultNames(), "waited", "example.echo.v1.EchoService", "EchoUnary", e.topic("echo-responses"))
	watch.await(t, id) // the repeat is in Kafka
	awaitWorkerRead(t, e, id)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	release()
	for i, ch := range []chan unaryResult{first, second} {
		if r := <-ch; r.err != nil || r.r.GetIndex() != 1 {
			t.Fatalf("attempt %d: %v, %v; want the first run's answer", i+1, r.r, r.err)
		}
	}
	// The third attempt goes through a gateway started once the replay to
	// the waiting repeat is in Kafka: a gateway that had a call with the
	// same correlation id registered meanwhile would take those replies
	// for it.
	replies.await(t, id) // the call's own replies
	replies.await(t, id) // the replay to the repeat
	echo3 := extraGateway(t, e)
	third, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := echo3.EchoUnary(third, &echov1.EchoRequest{Message: "m"})
	if err != nil || r.GetIndex() != 1 {
		t.Fatalf("third attempt: %v, %v; want the remembered answer", r, err)
	}
	if n := impl.count("m"); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// awaitWorkerRead returns once the worker has read every request record
// with record key key already in Kafka: it writes a record without a
// correlation id after them, on their partition, and waits (bounded) until
// the worker skipped it.
func awaitWorkerRead(t *testing.T, e *env, key string) {
	t.Helper()
	before := e.worker.Stats().SkippedNoCorrelationID
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Partition: kafkaclient.AnyPartition, Key: []byte(key), Value: []byte("marker")})
	for deadline := time.Now().Add(30 * time.Second); e.worker.Stats().SkippedNoCorrelationID == before; {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not read the marker record within 30 s")
		}
		time.Sleep(time.Millisecond) // polling the worker's state, bounded above
	}
}

// unaryResult is how a unary call ended.
type unaryResult struct {
	r   *echov1.EchoResponse
	err error
}

// goUnary calls EchoUnary with message m on a goroutine of its own.
func goUnary(ctx context.Context, c echov1.EchoServiceClient, m string) chan unaryResult {
	ch := make(chan unaryResult, 1)
	go func() {
		r, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: m})
		ch <- unaryResult{r, err}
	}()
	return ch
}

// extraGateway starts one more gateway on e's topics, with opts, and
// returns a client of it.
func extraGateway(t *testing.T, e *env, opts ...runtime.GatewayOption) echov1.EchoServiceClient {
	t.Helper()
	gw := runtime.NewGateway(e.kc, append([]runtime.GatewayOption{runtime.WithTopicMapper(func(s string) string { return e.prefix + s })}, opts...)...)
	t.Cleanup(func() { _ = gw.Close() })
	return echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
}

// TestMissingReplyTopicGoesToDeadLetter sends a request whose reply topic
// does not exist: nobody can read its answer, so with a dead-letter topic
// the request is copied there, saying why, and the worker goes on serving.
func TestMissingReplyTopicGoesToDeadLetter(t *testing.T) {
	e := setupWith(t, func(w *runtime.Worker) error {
		return echov1.RegisterEchoServiceKafkaWorker(w, &counting{})
	}, runtime.WorkerDeadLetterTopic("dlq"))
	kafkatest.CreateTopics(t, e.kc, 1, e.topic("dlq"))
	dead := watchReplies(t, e.kc, e.topic("dlq"))
	req, _ := proto.Marshal(&echov1.EchoRequest{Message: "nowhere"})
	h := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:reply-to", e.topic("no-such-replies"), "zilla:correlation-id", "nowhere"}
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("nowhere"), Value: req, Headers: h.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("nowhere"), Headers: h.headers()})
	select {
	case rec := <-dead.recs:
		if got := header(rec, wire.DeadLetterStatus); got != "5" {
			t.Errorf("dead letter status %q, want 5 (NOT_FOUND)", got)
		}
		if msg := header(rec, wire.DeadLetterMessage); !strings.Contains(msg, e.topic("no-such-replies")) {
			t.Errorf("dead letter message %q does not name the reply topic", msg)
		}
		if header(rec, "zilla:correlation-id") != "nowhere" {
			t.Errorf("dead letter is not the request: %v", headerKeys(rec))
		}
	case <-ctxFor(t, 60*time.Second).Done():
		t.Fatal("no dead letter within 60 s for a request whose reply topic does not exist")
	}
	if r, err := e.echo.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "next"}); err != nil || r.GetMessage() != "next" {
		t.Fatalf("next call: %v, %v", r, err)
	}
}
