package runtime_test

// A retry that supersedes an earlier attempt of the same keyed call whose
// request stream never ends (its gateway died midway): the worker cancels
// the earlier attempt, answers it ABORTED, and serves the retry once the
// earlier attempt's handler returned.

import (
	"context"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// handoff serves EchoClientStream (the messages of a run, joined) and
// EchoBidiStream (each message echoed), and tells the test of each run's
// first message (started). A run whose request stream fails, or whose
// response is refused (its context ended), sends its context's cause
// (cause) and holds until the test lets it go (letGo) before it returns.
// events notes, in order, each run's start and return, by its first
// message.
type handoff struct {
	echoserver.Server
	started chan string
	cause   chan error
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	events  []string
}

func newHandoff() *handoff {
	return &handoff{started: make(chan string, 8), cause: make(chan error, 8), release: make(chan struct{})}
}

// letGo lets the held runs return; it may be called more than once.
func (h *handoff) letGo() { h.once.Do(func() { close(h.release) }) }

func (h *handoff) note(ev string) {
	h.mu.Lock()
	h.events = append(h.events, ev)
	h.mu.Unlock()
}

func (h *handoff) noted() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

// hold tells the test why the run's context ended and holds until the test
// lets it go.
func (h *handoff) hold(ctx context.Context) {
	h.cause <- context.Cause(ctx)
	<-h.release
}

// recv reads the run's next request message with next; the first one
// starts the run (first). A failure other than the stream's end is held.
func (h *handoff) recv(ctx context.Context, next func() (*echov1.EchoRequest, error), first *string) (*echov1.EchoRequest, error) {
	m, err := next()
	switch {
	case err == io.EOF:
	case err != nil:
		h.hold(ctx)
	case *first == "":
		*first = m.GetMessage()
		h.note("start " + *first)
		h.started <- *first
	}
	return m, err
}

func (h *handoff) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	var first string
	defer func() { h.note("return " + first) }()
	var msgs []string
	for {
		m, err := h.recv(s.Context(), s.Recv, &first)
		if err == io.EOF {
			return s.SendAndClose(&echov1.EchoResponse{Message: strings.Join(msgs, ","), Index: int32(len(msgs))})
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, m.GetMessage())
	}
}

func (h *handoff) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	var first string
	defer func() { h.note("return " + first) }()
	for i := int32(0); ; i++ {
		m, err := h.recv(s.Context(), s.Recv, &first)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&echov1.EchoResponse{Message: m.GetMessage(), Index: i}); err != nil {
			// Superseded before its response to a message went out
			// (the retry may come as soon as the first message was read).
			h.hold(s.Context())
			return err
		}
	}
}

// awaitStart waits (bounded) for the next run to start, and checks its
// first message.
func (h *handoff) awaitStart(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-h.started:
		if got != want {
			t.Fatalf("a run started with %q, want %q", got, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no run started with %q within 30 s", want)
	}
}

// awaitSuperseded waits until a held run's context ended (until ctx ends),
// and checks that its cause says it was superseded.
func (h *handoff) awaitSuperseded(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case cause := <-h.cause:
		if cause == nil || !strings.Contains(cause.Error(), "superseded") {
			t.Fatalf("the first attempt's context ended with cause %v, want one saying it was superseded", cause)
		}
	case <-ctx.Done():
		t.Fatal("the first attempt's handler was not cancelled once the retry came: the retry waits behind an attempt whose request never ends")
	}
}

// TestRetrySupersedesClientStreamLeftOpen: a keyed client stream's first
// attempt (a1) sent two messages and its gateway died: neither its end nor
// its cancel ever comes, and it has no deadline. Its caller retries through
// another gateway with the same idempotency key (a2). The worker skipped
// every record of a2 while a1 waited for input (until WorkerMaxCallDuration,
// 10 minutes), and a2's caller waited for its own deadline. a2 must
// supersede a1: a1's handler is cancelled and a1 answered ABORTED, and a2
// is served, its handler starting only once a1's returned.
func TestRetrySupersedesClientStreamLeftOpen(t *testing.T) { retrySupersedes(t, "EchoClientStream") }

// TestRetrySupersedesBidiStreamLeftOpen is
// TestRetrySupersedesClientStreamLeftOpen for a bidi stream, whose first
// attempt answered its messages before its gateway died.
func TestRetrySupersedesBidiStreamLeftOpen(t *testing.T) { retrySupersedes(t, "EchoBidiStream") }

func retrySupersedes(t *testing.T, method string) {
	h := newHandoff()
	e := setup(t, h)
	t.Cleanup(h.letGo) // before the worker closes: a held run must not outlive the test
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	key := "left-open-" + method
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, method, e.topic("echo-responses"))
	sendAttempt(t, e, method, id, key, "a1", "a1-m0")
	sendAttempt(t, e, method, id, key, "a1", "a1-m1")
	h.awaitStart(t, "a1-m0")

	// The retry, through the gateway: well within its bound, not after
	// a1's (none: the worker's 10 minutes).
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 20*time.Second), "idempotency-key", key)
	var (
		send   func(string)
		finish func() []string // ends the request and returns the messages answered
	)
	switch method {
	case "EchoClientStream":
		s, err := e.echo.EchoClientStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		send = func(m string) {
			if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
				t.Fatalf("sending %s: %v", m, err)
			}
		}
		finish = func() []string {
			r, err := s.CloseAndRecv()
			if err != nil {
				t.Fatalf("the retry ended with %v", err)
			}
			return strings.Split(r.GetMessage(), ",")
		}
	default:
		s, err := e.echo.EchoBidiStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		send = func(m string) {
			if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
				t.Fatalf("sending %s: %v", m, err)
			}
		}
		finish = func() []string {
			if err := s.CloseSend(); err != nil {
				t.Fatal(err)
			}
			var got []string
			for {
				r, err := s.Recv()
				if err == io.EOF {
					return got
				}
				if err != nil {
					t.Fatalf("the retry ended with %v after %v", err, got)
				}
				got = append(got, r.GetMessage())
			}
		}
	}
	send("a2-m0")
	h.awaitSuperseded(t, ctx)
	awaitWorkerRead(t, e, id)
	select {
	case m := <-h.started:
		t.Fatalf("the retry's handler started (%q) while the first attempt's had not returned", m)
	default:
	}
	h.letGo()
	h.awaitStart(t, "a2-m0")
	send("a2-m1")
	send("a2-m2")
	if got, want := finish(), []string{"a2-m0", "a2-m1", "a2-m2"}; !slices.Equal(got, want) {
		t.Fatalf("the retry was answered %v, want %v (its own messages only)", got, want)
	}
	ev := h.noted()
	if r, s := slices.Index(ev, "return a1-m0"), slices.Index(ev, "start a2-m0"); r < 0 || s < r {
		t.Fatalf("handler events %v: the retry's run must start after the first attempt's returned", ev)
	}
	got := awaitEndWithin(replies, id, "a1", 30*time.Second)
	if got == nil {
		t.Fatal("no end-of-stream reply for the first attempt within 30 s")
	}
	end := got[len(got)-1]
	if s, msg := header(end, "zilla:status"), header(end, "zilla:message"); s != "10" || !strings.Contains(msg, "superseded") {
		t.Fatalf("the first attempt ended with status %s (%q), want 10 (ABORTED) saying it was superseded", s, msg)
	}
	if n := e.worker.Stats().Superseded; n != 1 {
		t.Fatalf("Stats().Superseded = %d, want 1", n)
	}
}

// supersedeA1 sends attempt a1 of the client stream id, keyed by key (its
// message "a1-m0", then more), waits until a1's handler started, sends
// attempt a2's first message, "a2-m0", waits until a2 superseded a1, and
// lets a1's handler go on. It returns a1's first record and its partition.
func supersedeA1(t *testing.T, e *outcomeEnv, h *handoff, id, key string, more ...string) (*kafkaclient.Record, kafkaclient.TopicPartition) {
	t.Helper()
	first := produce(t, e.kc, clientStreamRecord(e, id, ptr("a1-m0"), keyedAttempt(key, "a1")...))
	for _, m := range more {
		produce(t, e.kc, clientStreamRecord(e, id, ptr(m), keyedAttempt(key, "a1")...))
	}
	h.awaitStart(t, "a1-m0")
	produce(t, e.kc, clientStreamRecord(e, id, ptr("a2-m0"), keyedAttempt(key, "a2")...))
	h.awaitSuperseded(t, ctxFor(t, 30*time.Second))
	h.letGo()
	return first, kafkaclient.TopicPartition{Topic: first.Topic, Partition: first.Partition}
}

// TestSupersededAttemptsLateRecordsAreSkipped: once a2 superseded a1 (as in
// TestRetrySupersedesClientStreamLeftOpen), a1's gateway writes more of a1
// after all: a message, its end, and one more message (a record read twice).
// They are skipped, none of them taking over from a2, which is answered
// with its own messages; a1's held first offset is released by its end, so
// that once both are over the partition's commits pass every record.
func TestSupersededAttemptsLateRecordsAreSkipped(t *testing.T) {
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	kc := newCommitLog(e.kc)
	h := newHandoff()
	w := e.start(t, kc, h)
	t.Cleanup(h.letGo)
	const id = "superseded-late"
	const key = "k-superseded-late"
	_, tp := supersedeA1(t, e, h, id, key, "a1-m1")
	h.awaitStart(t, "a2-m0")
	produce(t, e.kc, clientStreamRecord(e, id, ptr("a1-late"), keyedAttempt(key, "a1")...))
	produce(t, e.kc, clientStreamRecord(e, id, nil, keyedAttempt(key, "a1")...))
	produce(t, e.kc, clientStreamRecord(e, id, ptr("a1-after-end"), keyedAttempt(key, "a1")...))
	produce(t, e.kc, clientStreamRecord(e, id, ptr("a2-m1"), keyedAttempt(key, "a2")...))
	produce(t, e.kc, clientStreamRecord(e, id, nil, keyedAttempt(key, "a2")...))
	awaitEchoAnswer(t, replies, id, "a2", "a2-m0,a2-m1")
	produce(t, e.kc, unaryRecord(e, "after-superseded-late", "after"))
	last := produce(t, e.kc, endRecord(e, "after-superseded-late", "EchoUnary"))
	replies.await(t, "after-superseded-late")
	select {
	case m := <-h.started:
		t.Fatalf("a third run started with %q: a late record of the superseded attempt was served", m)
	default:
	}
	if n := w.Stats().Superseded; n != 1 {
		t.Fatalf("Stats().Superseded = %d, want 1: only a2 superseded anything", n)
	}
	kc.awaitPast(t, tp, last.Offset) // bounded: stuck at a1's first offset while its end was not taken as such
	_ = w.Close()
}

// TestSupersededAttemptHoldsCommitUntilItsEnd: a1, superseded by a2 (as in
// TestRetrySupersedesClientStreamLeftOpen), never sends its end. Once a2 is
// answered and a later call is done, the worker must still not commit past
// a1's first record: the partition's next owner would start inside a1 and
// take the rest of its request, were any to come, for a new call.
func TestSupersededAttemptHoldsCommitUntilItsEnd(t *testing.T) {
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	kc := newCommitLog(e.kc)
	h := newHandoff()
	w := e.start(t, kc, h)
	t.Cleanup(h.letGo)
	const id = "superseded-held"
	const key = "k-superseded-held"
	first, tp := supersedeA1(t, e, h, id, key)
	produce(t, e.kc, clientStreamRecord(e, id, nil, keyedAttempt(key, "a2")...))
	if got := awaitEndWithin(replies, id, "a2", 30*time.Second); got == nil || header(got[len(got)-1], "zilla:status") != "0" {
		t.Fatal("the retry was not answered OK within 30 s")
	}
	produce(t, e.kc, unaryRecord(e, "after-superseded-held", "after"))
	produce(t, e.kc, endRecord(e, "after-superseded-held", "EchoUnary"))
	replies.await(t, "after-superseded-held")
	_ = w.Close() // commits what it may, synchronously
	if hi := kc.highest(tp); hi > first.Offset {
		t.Fatalf("the worker committed offset %d, past the first record (%d) of the superseded attempt, whose end it never read", hi, first.Offset)
	}
}

// holdsEndAcks is a worker's Kafka client that reports the delivery of the
// reply end-of-stream records of attempt a1 only once release is closed;
// the records themselves reach Kafka at once.
type holdsEndAcks struct {
	kafkaclient.Client
	replies string
	release chan struct{}
}

func (h *holdsEndAcks) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic == h.replies && r.Value == nil && header(r, "meta:"+wire.AttemptMetadata) == "a1" {
		acked := done
		done = func(r *kafkaclient.Record, err error) {
			go func() { // not on the client's delivery goroutine, which the other records need
				<-h.release
				acked(r, err)
			}()
		}
	}
	h.Client.Produce(r, acks, done)
}

// TestRetryWhileFailedAttemptEndsRunsAgain: a keyed client stream's first
// attempt (a1) fails UNAVAILABLE after its first message, its end still to
// come, and its caller retries at once (a2): a2's records arrive while a1,
// its handler returned, still waits for Kafka to acknowledge its end. a1's
// outcome is not stored, so a2 must run again once a1 is over. The worker
// skipped a2's message as another attempt's while a1's request streamed
// in, made a2's end wait for a1's outcome as an empty stream's whole
// request, and answered it ABORTED to retry once more.
func TestRetryWhileFailedAttemptEndsRunsAgain(t *testing.T) {
	h := &holdsEndAcks{release: make(chan struct{})}
	e := setupWrapped(t, func(prefix string, kc kafkaclient.Client) kafkaclient.Client {
		h.Client, h.replies = kc, prefix+"echo-responses"
		return h
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, failsFirst{}) })
	release := sync.OnceFunc(func() { close(h.release) })
	t.Cleanup(release) // before the worker closes: a1 waits for its acknowledgement
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "retry-while-ending"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoClientStream", e.topic("echo-responses"))
	sendAttempt(t, e, "EchoClientStream", id, key, "a1", "fail")
	if got := awaitEndWithin(replies, id, "a1", 30*time.Second); got == nil || header(got[len(got)-1], "zilla:status") != "14" {
		t.Fatal("the first attempt did not end UNAVAILABLE within 30 s")
	}
	sendAttempt(t, e, "EchoClientStream", id, key, "a2", "m0")
	sendAttempt(t, e, "EchoClientStream", id, key, "a2", "")
	awaitWorkerRead(t, e, id)
	release()
	awaitEchoAnswer(t, replies, id, "a2", "m0") // it runs again
	if n := e.worker.Stats().Superseded; n != 0 {
		t.Fatalf("Stats().Superseded = %d, want 0: the first attempt's handler had returned, nothing was cancelled", n)
	}
}

// TestRetryAfterEndedSupersedingAttemptWaitsForSupersededHandler: a2
// supersedes a1, whose handler is slow to return once cancelled, and a2
// ends while it waits for a1 (its caller cancelled it). Its caller retries
// once more (a3): no call of the correlation id is in flight, a1 being
// detached, and a3's handler ran at once, beside a1's, which still read
// a1's request: two attempts' handlers at once. a3 must wait for a1 too.
func TestRetryAfterEndedSupersedingAttemptWaitsForSupersededHandler(t *testing.T) {
	awaiting := make(chan string, 8)
	t.Cleanup(runtime.SetAwaitEarlierHook(func(_ string, attempt []byte) { awaiting <- string(attempt) }))
	ends := make(chan (<-chan struct{}), 8) // of the calls fed an end record: a2's cancel first
	t.Cleanup(runtime.SetFeedHook(func(_ string, end bool, done <-chan struct{}) {
		if end {
			ends <- done
		}
	}))
	h := newHandoff()
	e := setup(t, h)
	t.Cleanup(h.letGo) // before the worker closes: a held run must not outlive the test
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const method, key = "EchoClientStream", "superseding-ended"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, method, e.topic("echo-responses"))
	sendAttempt(t, e, method, id, key, "a1", "a1-m0")
	h.awaitStart(t, "a1-m0")
	sendAttempt(t, e, method, id, key, "a2", "a2-m0")
	h.awaitSuperseded(t, ctxFor(t, 30*time.Second))
	sendAttempt(t, e, method, id, key, "a2", "", "zilla:status", wire.CancelStatus)
	if got := awaitEndWithin(replies, id, "a2", 30*time.Second); got == nil || header(got[len(got)-1], "zilla:status") != "1" {
		t.Fatal("the second attempt did not end CANCELLED within 30 s")
	}
	// Once a2 is over, not while it ends: a3 would then wait for its
	// outcome, as a retry of a call still in flight does.
	select {
	case done := <-ends:
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the second attempt was not over within 30 s")
		}
	default:
		t.Fatal("the second attempt's cancel was not fed to its call")
	}
	sendAttempt(t, e, method, id, key, "a3", "a3-m0")
	sendAttempt(t, e, method, id, key, "a3", "")
	for bound := time.After(30 * time.Second); ; {
		select {
		case m := <-h.started:
			t.Fatalf("a run started with %q while the superseded first attempt's handler had not returned", m)
		case a := <-awaiting:
			if a != "a3" {
				continue // a2's wait
			}
		case <-bound:
			t.Fatal("the third attempt neither ran nor waited for the first within 30 s")
		}
		break
	}
	h.letGo()
	h.awaitStart(t, "a3-m0")
	awaitEchoAnswer(t, replies, id, "a3", "a3-m0")
	ev := h.noted()
	if r, s := slices.Index(ev, "return a1-m0"), slices.Index(ev, "start a3-m0"); r < 0 || s < r {
		t.Fatalf("handler events %v: the third attempt's run must start after the first attempt's returned", ev)
	}
}

// TestSupersededAttemptHoldsCommitWhileItsRetryRuns: a2 supersedes a1, a1
// is over and its remaining records, its end included, are read while a2
// still waits for the rest of its request. The worker committed a2's first
// offset, a1's being done: inside a1's records. The partition's next owner
// (the worker crashed, or a rebalance) then read a1's late message as a new
// attempt that superseded a2, ran a handler on that part of a1's request,
// and answered a2 ABORTED. The commit must stay at a1's first record while
// a2 is not over: the next owner then reads a1 whole, superseded again, and
// serves a2.
func TestSupersededAttemptHoldsCommitWhileItsRetryRuns(t *testing.T) {
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	kcA, kcB := newCommitLog(e.kc), newCommitLog(e.kc)
	h := newHandoff()
	a := e.start(t, kcA, h)
	t.Cleanup(h.letGo)
	const id = "superseded-retry-runs"
	const key = "k-superseded-retry-runs"
	first, tp := supersedeA1(t, e, h, id, key)
	if got := awaitEndWithin(replies, id, "a1", 30*time.Second); got == nil || header(got[len(got)-1], "zilla:status") != "10" {
		t.Fatal("the first attempt did not end ABORTED within 30 s")
	}
	h.awaitStart(t, "a2-m0")
	produce(t, e.kc, clientStreamRecord(e, id, ptr("a1-late"), keyedAttempt(key, "a1")...))
	produce(t, e.kc, clientStreamRecord(e, id, nil, keyedAttempt(key, "a1")...))
	// A record without a correlation id after them, which the worker skips
	// (counted) once it read a1's end.
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("one-partition"), Value: []byte("marker")})
	for bound := time.Now().Add(30 * time.Second); a.Stats().SkippedNoCorrelationID == 0; {
		if time.Now().After(bound) {
			t.Fatal("worker A did not read the marker record within 30 s")
		}
		time.Sleep(time.Millisecond) // polling the worker's state, bounded above
	}
	_ = a.Close() // gives a2 up unserved; commits what it may, synchronously
	if hi := kcA.highest(tp); hi > first.Offset {
		t.Fatalf("worker A committed offset %d, past the first record (%d) of the superseded attempt while its retry was not over", hi, first.Offset)
	}

	hb := newHandoff()
	hb.letGo() // the first attempt, superseded again, returns at once
	e.start(t, kcB, hb)
	produce(t, e.kc, clientStreamRecord(e, id, ptr("a2-m1"), keyedAttempt(key, "a2")...))
	produce(t, e.kc, clientStreamRecord(e, id, nil, keyedAttempt(key, "a2")...))
	awaitEchoAnswer(t, replies, id, "a2", "a2-m0,a2-m1") // by the partition's next owner
}

// awaitEchoAnswer waits (30 s at most) for the replies to attempt of the
// echo call id and fails t unless they are one response whose message is
// want and an OK end: the attempt's own answer.
func awaitEchoAnswer(t *testing.T, replies *replyWatch, id, attempt, want string) {
	t.Helper()
	got := awaitEndWithin(replies, id, attempt, 30*time.Second)
	if got == nil {
		t.Fatalf("no answer to attempt %s within 30 s", attempt)
	}
	if s := header(got[len(got)-1], "zilla:status"); s != "0" || len(got) != 2 {
		t.Fatalf("attempt %s got %d records ending with status %s (%s), want a response and an OK end",
			attempt, len(got), s, header(got[len(got)-1], "zilla:message"))
	}
	var resp echov1.EchoResponse
	if err := proto.Unmarshal(got[0].Value, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.GetMessage() != want {
		t.Fatalf("attempt %s was answered %q, want %q: its own messages only", attempt, resp.GetMessage(), want)
	}
}
