package runtime_test

// Faults in the worker's request path found by review: each test shows one
// defect (see its comment), failed for that reason before its fix, and
// checks what the caller gets.

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// awaitEndWithin is replyWatch.await with its own bound: it returns the
// reply records of correlation id id (of attempt, when not empty) up to
// their end-of-stream record, or nil when none ended within d.
func awaitEndWithin(w *replyWatch, id, attempt string, d time.Duration) []*kafkaclient.Record {
	var got []*kafkaclient.Record
	bound := time.After(d)
	for {
		select {
		case rec := <-w.recs:
			if header(rec, "zilla:correlation-id") != id {
				continue
			}
			if attempt != "" && header(rec, "meta:"+wire.AttemptMetadata) != attempt {
				continue
			}
			got = append(got, rec)
			if rec.Value == nil {
				return got
			}
		case <-bound:
			return nil
		}
	}
}

// TestEndOnlyRequestOfUnservableCallIsAnswered writes the whole
// request of an empty client stream (or of a bidi call whose caller sent
// nothing): one end-of-stream record. When it names a method the worker
// does not serve, or lacks the method header, WIRE.md says the worker
// answers UNIMPLEMENTED (12) / INTERNAL (13) naming the problem; the worker
// skips it silently instead (dispatch.go routeNew: "if wm := w.lookup(...);
// wm == nil || !clientStreams { return }"), and the caller waits for its
// deadline.
func TestEndOnlyRequestOfUnservableCallIsAnswered(t *testing.T) {
	e := setup(t, &counting{})
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	cases := []struct {
		name, method, id, code, names string
	}{
		{"unknown method", "EchoNothingStream", "end-only-unknown", "12", "EchoNothingStream"},
		{"no method header", "", "end-only-no-method", "13", "zilla:method"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := requestHeaders(e, echoService, c.method, c.id)
			produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(c.id), Headers: h.headers()})
			awaitWorkerRead(t, e, c.id)
			got := awaitEndWithin(replies, c.id, "", 15*time.Second)
			if got == nil {
				t.Fatalf("no answer to an end-only request (%s) within 15 s after the worker read it: the caller waits for its deadline; want status %s", c.name, c.code)
			}
			end := got[len(got)-1]
			if s, msg := header(end, "zilla:status"), header(end, "zilla:message"); s != c.code || !strings.Contains(msg, c.names) {
				t.Fatalf("status %q message %q, want %s naming %q", s, msg, c.code, c.names)
			}
		})
	}
}

// TestRetryAfterAttemptWithoutEndIsAnswered: a keyed unary attempt
// whose request end-of-stream record never reaches Kafka (its gateway died
// after the message, or Kafka refused the end and the gateway answered its
// caller UNAVAILABLE, which invites a retry). The worker serves it and
// stores the outcome, and remembers the id as "trailing" to skip the rest
// of that attempt. The caller's retry, with the same idempotency key (so
// the same correlation id) but another attempt id, must be answered from
// the stored outcome; the worker instead skips all of its records as the
// first attempt's trailing records (repeats.skipTrailing comes before the
// stored-outcome lookup in routeKnown and ignores the attempt id), so the
// retry gets no answer at all.
func TestRetryAfterAttemptWithoutEndIsAnswered(t *testing.T) {
	impl := &counting{}
	e := setup(t, impl)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "no-end"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoUnary", e.topic("echo-responses"))
	sendAttempt(t, e, "EchoUnary", id, key, "a1", "once") // its end never comes
	if got := awaitEndWithin(replies, id, "a1", 30*time.Second); got == nil || header(got[len(got)-1], "zilla:status") != "0" {
		t.Fatal("the first attempt was not answered OK within 30 s")
	}
	sendAttempt(t, e, "EchoUnary", id, key, "a2", "once")
	sendAttempt(t, e, "EchoUnary", id, key, "a2", "")
	awaitWorkerRead(t, e, id)
	got := awaitEndWithin(replies, id, "a2", 15*time.Second)
	if got == nil {
		t.Fatal("the retry (attempt a2) got no answer within 15 s after the worker read it: its records were skipped as the first attempt's")
	}
	if s := header(got[len(got)-1], "zilla:status"); s != "0" || len(got) != 2 {
		t.Fatalf("the retry got %d records ending with status %q, want the stored response and an OK end", len(got), s)
	}
	if n := impl.count("once"); n != 1 {
		t.Fatalf("the handler ran %d times, want once", n)
	}
}

// gate holds the message "slow" until released, counting runs.
type gate struct {
	counting
	started chan struct{}
	release chan struct{}
}

func (g *gate) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if req.GetMessage() == "slow" {
		g.started <- struct{}{}
		select {
		case <-g.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.counting.EchoUnary(ctx, req)
}

// TestRetryAfterWaitingAttemptWithoutEndIsAnswered: a keyed unary
// call runs (attempt a1); a retry (a2) arrives meanwhile and waits for a1's
// outcome, the rest of its records to be skipped until its end (dupes) --
// but a2's end record never reaches Kafka (its gateway died, or Kafka
// refused it). a1 ends OK and a2 is answered from it. The caller's next
// retry (a3) must be answered too; the worker skips all of its records as
// a2's (repeats.skipDuplicate matches the correlation id only, and the
// entry lives until an end record comes), so a3 gets no answer.
func TestRetryAfterWaitingAttemptWithoutEndIsAnswered(t *testing.T) {
	impl := &gate{started: make(chan struct{}, 1), release: make(chan struct{})}
	e := setup(t, impl)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "waiter-no-end"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoUnary", e.topic("echo-responses"))
	sendAttempt(t, e, "EchoUnary", id, key, "a1", "slow")
	sendAttempt(t, e, "EchoUnary", id, key, "a1", "")
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("a1's handler did not start within 30 s")
	}
	sendAttempt(t, e, "EchoUnary", id, key, "a2", "slow") // its end never comes
	awaitWorkerRead(t, e, id)
	close(impl.release)
	if got := awaitEndWithin(replies, id, "a2", 30*time.Second); got == nil || header(got[len(got)-1], "zilla:status") != "0" {
		t.Fatal("a2 was not answered OK from a1's outcome within 30 s")
	}
	sendAttempt(t, e, "EchoUnary", id, key, "a3", "slow")
	sendAttempt(t, e, "EchoUnary", id, key, "a3", "")
	awaitWorkerRead(t, e, id)
	got := awaitEndWithin(replies, id, "a3", 15*time.Second)
	if got == nil {
		t.Fatal("the next retry (attempt a3) got no answer within 15 s after the worker read it: its records were skipped as a2's")
	}
	if s := header(got[len(got)-1], "zilla:status"); s != "0" {
		t.Fatalf("a3 ended with status %q (%s), want 0 from the stored outcome", s, header(got[len(got)-1], "zilla:message"))
	}
	if n := impl.count("slow"); n != 1 {
		t.Fatalf("the handler ran %d times, want once", n)
	}
}

// TestRetryWhileAttemptWithoutEndRunsIsAnswered: a keyed unary attempt
// (a1) runs, its request end-of-stream record never comes (its gateway
// answered its caller UNAVAILABLE when Kafka refused the end, which invites
// a retry), and the retry (a2) arrives while a1's handler still runs. a2's
// one message is its whole request, so it must wait for a1's outcome and be
// answered from it; the worker skipped all of a2's records instead, as
// those of another attempt arriving while a1's request still streamed in
// (routeKnown: a1's input is not complete until its end), and a2's caller
// waited for its deadline.
func TestRetryWhileAttemptWithoutEndRunsIsAnswered(t *testing.T) {
	impl := &gate{started: make(chan struct{}, 1), release: make(chan struct{})}
	e := setup(t, impl)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "running-no-end"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoUnary", e.topic("echo-responses"))
	sendAttempt(t, e, "EchoUnary", id, key, "a1", "slow") // its end never comes
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("a1's handler did not start within 30 s")
	}
	sendAttempt(t, e, "EchoUnary", id, key, "a2", "slow")
	sendAttempt(t, e, "EchoUnary", id, key, "a2", "")
	awaitWorkerRead(t, e, id)
	close(impl.release)
	got := awaitEndWithin(replies, id, "a2", 15*time.Second)
	if got == nil {
		t.Fatal("the retry (attempt a2) got no answer within 15 s after a1 ended: its records were skipped while a1 ran")
	}
	if s := header(got[len(got)-1], "zilla:status"); s != "0" || len(got) != 2 {
		t.Fatalf("a2 got %d records ending with status %q (%s), want a1's response and an OK end", len(got), s, header(got[len(got)-1], "zilla:message"))
	}
	if n := impl.count("slow"); n != 1 {
		t.Fatalf("the handler ran %d times, want once", n)
	}
}

// replayGap is a worker's Kafka client under which, for the second time a
// call's response with index 0 is produced (a repeat answered from the
// stored replies), Kafka fails that record while the later ones of the
// call go through (a librdkafka idempotent producer that bumped its epoch
// after a timed-out batch does that): the failure is reported, in order,
// just before the acknowledgement of the response with index 1.
type replayGap struct {
	kafkaclient.Client
	replies string

	mu      sync.Mutex
	zeros   map[string]int
	pending func() // reports the held-back failure
}

func (g *replayGap) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic == g.replies && r.Value != nil {
		var m echov1.EchoResponse
		if proto.Unmarshal(r.Value, &m) == nil {
			g.mu.Lock()
			switch {
			case m.GetIndex() == 0:
				if g.zeros[string(r.Key)]++; g.zeros[string(r.Key)] == 2 {
					g.pending = func() { done(r, errInjected) }
					g.mu.Unlock()
					return
				}
			case m.GetIndex() == 1 && g.pending != nil:
				report := g.pending
				g.pending = nil
				inner := done
				done = func(rr *kafkaclient.Record, err error) {
					report() // in order, as a Kafka client reports a partition's records
					inner(rr, err)
				}
			}
			g.mu.Unlock()
		}
	}
	g.Client.Produce(r, acks, done)
}

// TestReplayedStreamEndWaitsForItsResponses: a keyed server stream's
// repeat is answered from the stored replies (call.writeEnd, replay case).
// A response Kafka takes only on a second try must still reach the caller
// before the end, as it does for a live stream (finish waits for a stream's
// responses before its end); the replay produces the stored end at once
// instead, so the end overtakes the retried response and the caller's
// repeat ends OK over a partial stream -- the known "keyed retry ends OK
// over a partial stream" defect, in the replay path.
func TestReplayedStreamEndWaitsForItsResponses(t *testing.T) {
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		return &replayGap{Client: kc, replies: p + "echo-responses", zeros: map[string]int{}}
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, &counting{}) })
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "replay-gap")
	for run := range 2 {
		s, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 3})
		if err != nil {
			t.Fatal(err)
		}
		got, err := indexes(s)
		if err != nil && err != io.EOF {
			t.Fatalf("call %d ended with %v after %v", run, err, got)
		}
		// The responses already on their way when the first one failed
		// land before its retry (as for a live stream): the order is not
		// checked, the whole outcome is.
		slices.Sort(got)
		if !equalInts(got, []int32{0, 1, 2}) {
			t.Fatalf("call %d (%s) received indexes %v and ended OK, want [0 1 2]", run, map[int]string{0: "first run", 1: "repeat answered from the stored replies"}[run], got)
		}
	}
	if n := e.worker.Stats().Calls; n != 1 {
		t.Fatalf("the handler ran %d times, want once", n)
	}
}

// leavesReader is an EchoClientStream whose first attempt leaves a
// goroutine reading the request stream behind and fails with UNAVAILABLE
// (a retryable code); the retry waits for that goroutine's Recv to fail, as
// gRPC fails a stream's Recv once its handler returned, and then counts the
// request messages it reads.
type leavesReader struct {
	echoserver.Server
	attempts  atomic.Int32
	staleErr  chan error    // the left goroutine's last Recv error
	retrying  chan struct{} // closed when the retry starts reading
	mu        sync.Mutex
	staleMsgs []string // what the left goroutine took
}

func (h *leavesReader) EchoClientStream(s echov1.EchoService_EchoClientStreamServer) error {
	if h.attempts.Add(1) == 1 {
		if _, err := s.Recv(); err != nil {
			return err
		}
		go func() {
			for {
				m, err := s.Recv()
				if err != nil {
					h.staleErr <- err
					return
				}
				h.mu.Lock()
				h.staleMsgs = append(h.staleMsgs, m.GetMessage())
				h.mu.Unlock()
			}
		}()
		return status.Error(codes.Unavailable, "first attempt fails")
	}
	select {
	case err := <-h.staleErr:
		h.staleErr <- err // for the test
	case <-s.Context().Done():
		return status.Error(codes.FailedPrecondition, "the first attempt's reader still held the stream when the call ended")
	}
	close(h.retrying)
	n := 0
	for {
		if _, err := s.Recv(); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		n++
	}
	return s.SendAndClose(&echov1.EchoResponse{Index: int32(n)})
}

// TestRetryEndsTheStreamOfTheAttemptThatReturned: with WorkerRetries, a
// handler attempt that returned while a goroutine of its own still read the
// request stream (a proxy's request pump does) must not share the stream
// with the retry: that goroutine took request messages meant for the retry,
// which then saw a stream with a gap. As in gRPC, the stream of an attempt
// that returned fails its Recv, and the retry reads every message.
func TestRetryEndsTheStreamOfTheAttemptThatReturned(t *testing.T) {
	h := &leavesReader{staleErr: make(chan error, 1), retrying: make(chan struct{})}
	e := setup(t, h, runtime.WorkerRetries(2, codes.Unavailable))
	ctx := ctxFor(t, 30*time.Second)
	s, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&echov1.EchoRequest{Message: "m0"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.retrying:
	case <-ctx.Done():
		t.Fatal("the retry never started reading: the first attempt's goroutine still held the request stream")
	}
	for i := 1; i <= 5; i++ {
		if err := s.Send(&echov1.EchoRequest{Message: fmt.Sprintf("m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		t.Fatalf("call ended with %v", err)
	}
	if resp.GetIndex() != 6 {
		t.Errorf("the retry read %d request messages, want 6", resp.GetIndex())
	}
	if err := <-h.staleErr; status.Code(err) != codes.Canceled {
		t.Errorf("the left goroutine's Recv failed with %v, want CANCELED", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.staleMsgs) != 0 {
		t.Errorf("the first attempt's goroutine took %v after its attempt returned", h.staleMsgs)
	}
}

// TestRetryHeldKeepsEarlierAttemptHeld: a keyed client stream's first
// attempt (a1) is answered after its first message, its end still to come,
// so its first offset stays held (repeats.hold) lest a commit pass its
// unread records. A retry (a2, same correlation id) is answered from a1's
// stored outcome while its own end is still to come, and is held in turn;
// the worker kept one held offset per correlation id, so holding a2's
// released a1's, and the partition's commit passed a1's first record with
// a1's end unread: the next owner would read that end alone and run the
// handler on it as an empty stream.
func TestRetryHeldKeepsEarlierAttemptHeld(t *testing.T) {
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	kc := newCommitLog(e.kc)
	w := e.start(t, kc, &firstOnly{})
	const id = "held-twice"
	const key = "k-held-twice"
	first := produce(t, e.kc, clientStreamRecord(e, id, ptr("m0"), keyedAttempt(key, "a1")...))
	tp := kafkaclient.TopicPartition{Topic: first.Topic, Partition: first.Partition}
	produce(t, e.kc, clientStreamRecord(e, id, ptr("m1"), keyedAttempt(key, "a1")...))
	if got := replies.await(t, id); header(got[len(got)-1], "meta:"+wire.AttemptMetadata) != "a1" {
		t.Fatal("the first answer is not a1's")
	}
	produce(t, e.kc, clientStreamRecord(e, id, ptr("m0"), keyedAttempt(key, "a2")...))
	if got := replies.await(t, id); header(got[len(got)-1], "meta:"+wire.AttemptMetadata) != "a2" {
		t.Fatal("the second answer is not a2's")
	}
	produce(t, e.kc, unaryRecord(e, "later-held-twice", "later"))
	produce(t, e.kc, endRecord(e, "later-held-twice", "EchoUnary"))
	replies.await(t, "later-held-twice")
	_ = w.Close() // commits what it may, synchronously
	if h := kc.highest(tp); h > first.Offset {
		t.Fatalf("the worker committed offset %d, past the first record (%d) of attempt a1, whose end it never read", h, first.Offset)
	}
}

// failsFirst answers EchoClientStream UNAVAILABLE (an outcome not stored,
// which invites a retry) as soon as it reads the message "fail"; else it
// reads the whole request and answers with its messages.
type failsFirst struct{ echoserver.Server }

func (failsFirst) EchoClientStream(s echov1.EchoService_EchoClientStreamServer) error {
	var msgs []string
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&echov1.EchoResponse{Message: strings.Join(msgs, ",")})
		}
		if err != nil {
			return err
		}
		if m.GetMessage() == "fail" {
			return status.Error(codes.Unavailable, "try again")
		}
		msgs = append(msgs, m.GetMessage())
	}
}

// TestEarlierAttemptsEndDuringRetryReleasesItsHold: a keyed client
// stream's first attempt (a1) fails UNAVAILABLE after its first message,
// its end still to come: its first offset stays held until that end is
// read. The caller retries (a2, same correlation id), and a1's end, which
// its gateway writes once the call is over, is read while a2 runs. The
// worker took that end for a record relative to a2 (an empty client stream
// repeating a2, made to wait for a2's outcome) instead of the rest of a1:
// a1's held offset was never released by it, and the partition's commits
// stayed behind a1 until its deadline (WorkerMaxCallDuration, 10 minutes).
func TestEarlierAttemptsEndDuringRetryReleasesItsHold(t *testing.T) {
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	kc := newCommitLog(e.kc)
	w := e.start(t, kc, failsFirst{})
	const id = "end-during-retry"
	const key = "k-end-during-retry"
	first := produce(t, e.kc, clientStreamRecord(e, id, ptr("fail"), keyedAttempt(key, "a1")...))
	tp := kafkaclient.TopicPartition{Topic: first.Topic, Partition: first.Partition}
	if got := replies.await(t, id); header(got[len(got)-1], "zilla:status") != "14" {
		t.Fatalf("a1 ended with status %q, want 14", header(got[len(got)-1], "zilla:status"))
	}
	produce(t, e.kc, clientStreamRecord(e, id, ptr("m0"), keyedAttempt(key, "a2")...)) // a2 runs, reading its stream
	end := produce(t, e.kc, clientStreamRecord(e, id, nil, keyedAttempt(key, "a1")...))
	produce(t, e.kc, clientStreamRecord(e, id, nil, keyedAttempt(key, "a2")...))
	got := replies.await(t, id)
	if end := got[len(got)-1]; header(end, "zilla:status") != "0" || header(end, "meta:"+wire.AttemptMetadata) != "a2" {
		t.Fatalf("the next end is of attempt %q with status %q, want a2's OK end", header(end, "meta:"+wire.AttemptMetadata), header(end, "zilla:status"))
	}
	produce(t, e.kc, unaryRecord(e, "later-end-during-retry", "later"))
	produce(t, e.kc, endRecord(e, "later-end-during-retry", "EchoUnary"))
	replies.await(t, "later-end-during-retry")
	kc.awaitPast(t, tp, end.Offset) // bounded: stuck at a1's first offset while its end was not taken as its own
	_ = w.Close()
}

// rejoining is a worker's Kafka client whose group member, once rejoin is
// closed, leaves the group and joins it again at its next poll, as a
// member does that was fenced or restarted its consumer: its partitions
// are revoked (reported lost when lost is set, as after a session timeout,
// so that nothing is committed), then assigned to it again and read from
// their committed offsets. assigned is told of every non-empty assignment
// after that.
type rejoining struct {
	kafkaclient.Client
	rejoin   chan struct{}
	assigned chan struct{}
	lost     bool
}

func (r *rejoining) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	g := &rejoiningGroup{r: r, cfg: cfg}
	gr, err := r.Client.NewGroupReader(g.innerConfig())
	if err != nil {
		return nil, err
	}
	g.inner.Store(&gr)
	return g, nil
}

type rejoiningGroup struct {
	r     *rejoining
	cfg   kafkaclient.GroupConfig                 // the worker's
	inner atomic.Pointer[kafkaclient.GroupReader] // Commit may run on another goroutine
	mute  atomic.Bool                             // the inner reader's callbacks are not passed on
	// Poll's goroutine only (the callbacks run inside Poll and Close):
	parts    []kafkaclient.TopicPartition // assigned
	rejoined bool
}

// innerConfig is the worker's group config with its callbacks noted.
func (g *rejoiningGroup) innerConfig() kafkaclient.GroupConfig {
	cfg := g.cfg
	cfg.OnAssigned = func(parts []kafkaclient.TopicPartition) {
		if g.mute.Load() {
			return
		}
		g.parts = append(g.parts, parts...)
		g.cfg.OnAssigned(parts)
		if g.rejoined && len(parts) > 0 {
			g.r.assigned <- struct{}{}
		}
	}
	cfg.OnRevoked = func(parts []kafkaclient.TopicPartition, lost bool) {
		if g.mute.Load() {
			return
		}
		g.parts = slices.DeleteFunc(g.parts, func(tp kafkaclient.TopicPartition) bool { return slices.Contains(parts, tp) })
		g.cfg.OnRevoked(parts, lost)
	}
	return cfg
}

func (g *rejoiningGroup) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	if !g.rejoined {
		select {
		case <-g.r.rejoin:
			g.rejoined = true
			if g.r.lost {
				parts := g.parts
				g.parts = nil
				g.cfg.OnRevoked(parts, true)
				g.mute.Store(true) // the old member's revocation was reported, as lost
			}
			err := (*g.inner.Load()).Close()
			g.mute.Store(false)
			if err != nil {
				return nil, err
			}
			gr, err := g.r.Client.NewGroupReader(g.innerConfig())
			if err != nil {
				return nil, err
			}
			g.inner.Store(&gr)
		default:
		}
	}
	return (*g.inner.Load()).Poll(ctx)
}

func (g *rejoiningGroup) Commit(ctx context.Context, offs []kafkaclient.TopicPartitionOffset) error {
	return (*g.inner.Load()).Commit(ctx, offs)
}

func (g *rejoiningGroup) Close() error { return (*g.inner.Load()).Close() }

// tellsStart is echoserver.Server whose EchoClientStream tells started
// once it read its first request message.
type tellsStart struct {
	echoserver.Server
	started chan struct{}
}

func (h tellsStart) EchoClientStream(s echov1.EchoService_EchoClientStreamServer) error {
	var msgs []string
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&echov1.EchoResponse{Message: strings.Join(msgs, ","), Index: int32(len(msgs))})
		}
		if err != nil {
			return err
		}
		if msgs = append(msgs, m.GetMessage()); len(msgs) == 1 {
			select {
			case h.started <- struct{}{}:
			default:
			}
		}
	}
}

// TestCallGivenUpAtRevokeIsServedWhenItsPartitionComesBack: a client
// stream runs, waiting for more of its request, when its partition is
// revoked; the worker gives it up without a reply, leaving its offset
// uncommitted so that the partition's next owner serves it from its first
// record. When that next owner is the same worker (its member rejoined the
// group, as after being fenced), the call must be served; the worker had
// noted the given-up call's id as the rest of a call that is over
// (trailing, in call.release), so it skipped every record of the call read
// again, and its caller got no answer.
func TestCallGivenUpAtRevokeIsServedWhenItsPartitionComesBack(t *testing.T) {
	impl := tellsStart{started: make(chan struct{}, 1)}
	var rj *rejoining
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client {
		rj = &rejoining{Client: kc, rejoin: make(chan struct{}), assigned: make(chan struct{}, 8)}
		return rj
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	ctx := ctxFor(t, 90*time.Second)
	s, err := e.echo.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&echov1.EchoRequest{Message: "m0"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	close(rj.rejoin)
	// A record without a correlation id wakes the worker's poll, in which
	// its member leaves the group and joins it again.
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("wake"), Value: []byte("wake")})
	select {
	case <-rj.assigned:
	case <-time.After(60 * time.Second):
		t.Fatal("the worker's member was not assigned partitions again within 60 s")
	}
	if err := s.Send(&echov1.EchoRequest{Message: "m1"}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		t.Fatalf("the call ended with %v: the worker that got its partition back did not serve it", err)
	}
	if resp.GetMessage() != "m0,m1" {
		t.Fatalf("the call was answered %q, want %q", resp.GetMessage(), "m0,m1")
	}
}

// TestHeldCallReadAgainAfterRejoinHoldsCommit: a client stream is answered
// after its first message, its end still to come, so its first offset is
// held. Its partition is revoked and comes back to the same worker (its
// member rejoined the group), which reads the call again from its first
// record, as any next owner does. The worker still had the call's id as
// trailing (the rest of a call that is over), so it skipped the records
// read again without holding anything: its commit passed the call's first
// record with its end unread, and an owner after it would run the handler
// on that end alone, as an empty stream.
func TestHeldCallReadAgainAfterRejoinHoldsCommit(t *testing.T) {
	impl := &firstOnly{}
	var rj *rejoining
	var commits *commitLog
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client {
		commits = newCommitLog(kc)
		rj = &rejoining{Client: commits, rejoin: make(chan struct{}), assigned: make(chan struct{}, 8)}
		return rj
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	record := func(id, method string, msg *string) *kafkaclient.Record {
		var v []byte
		if msg != nil {
			v, _ = proto.Marshal(&echov1.EchoRequest{Message: *msg})
		}
		return &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("one-partition"), Value: v,
			Headers: requestHeaders(e, echoService, method, id).headers()}
	}
	const id = "held-rejoin"
	first := produce(t, e.kc, record(id, "EchoClientStream", ptr("m0")))
	tp := kafkaclient.TopicPartition{Topic: first.Topic, Partition: first.Partition}
	produce(t, e.kc, record(id, "EchoClientStream", ptr("m1")))
	replies.await(t, id)
	close(rj.rejoin)
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("wake"), Value: []byte("wake")})
	select {
	case <-rj.assigned:
	case <-time.After(60 * time.Second):
		t.Fatal("the worker's member was not assigned partitions again within 60 s")
	}
	produce(t, e.kc, record("later-held-rejoin", "EchoUnary", ptr("later")))
	produce(t, e.kc, record("later-held-rejoin", "EchoUnary", nil))
	replies.await(t, "later-held-rejoin")
	_ = e.worker.Close() // commits what it may, synchronously
	if h := commits.highest(tp); h > first.Offset {
		t.Fatalf("the worker committed offset %d, past the first record (%d) of a call whose end it never read", h, first.Offset)
	}
}
