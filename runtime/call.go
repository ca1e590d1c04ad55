package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// errCallerCancelled is the cause of a handler context the caller cancelled.
var errCallerCancelled = errors.New("kafkarpc: the caller cancelled the call")

// errMaxCallDuration is wrapped by the cause of a call context that reached
// the worker's maximum call duration (WorkerMaxCallDuration).
var errMaxCallDuration = errors.New("kafkarpc: the call ran for the worker's maximum call duration")

// errAborted is the cause of a handler context the worker gave up.
var errAborted = errors.New("kafkarpc: the worker gave up the call (rebalance or shutdown)")

// errRequestOverflow is wrapped by the cause of a call context whose
// unread request messages passed WorkerRequestBufferBytes (call.feed).
var errRequestOverflow = errors.New("kafkarpc: the call's request overflowed the worker's buffer")

// overflowStatus is how a call whose request overflowed (err wraps
// errRequestOverflow) ends, and what its stream's RecvMsg returns.
func overflowStatus(err error) *status.Status {
	return status.New(codes.ResourceExhausted, err.Error())
}

// errSuperseded is the cause of a handler context that a newer attempt of
// the same call superseded (Worker.supersede).
var errSuperseded = errors.New("kafkarpc: superseded by a newer attempt of the same call (a retry with the same idempotency key)")

// Where a call's outcome stands, against a newer attempt superseding the
// call (call.decision, Worker.supersede).
const (
	outcomeOpen       int32 = iota // the handler may still run: a newer attempt supersedes the call, cancelling it
	outcomeStored                  // the handler returned an outcome to be stored: a newer attempt is answered from it
	outcomeNotStored               // the handler returned (or runs no more) with an outcome not stored: a newer attempt runs again
	outcomeSuperseded              // a newer attempt superseded the call while open: it ends ABORTED
)

// Where a call that runs a handler stands (call.phase).
const (
	handlerQueued    int32 = iota + 1 // waiting for its turn, the calls it supersedes, or a handler slot
	handlerRunning                    // took a slot: its handler runs (or ran)
	handlerAbandoned                  // given up before its handler started: left to the partition's next owner
)

// call is one call being served by the worker, from its first request record
// to the acknowledgement of its last reply. Its lifecycle: start (or answer,
// for a call that runs no handler), run on a goroutine of its own (wait for
// its key's turn and a slot, invoke the handler, retry), finish (write the
// end, wait for the acknowledgements, release the offset, answer waiters).
// Its request and reply streams (in, out) live in serverstream.go; its
// records reach Kafka through the worker's replyWriter (sent).
type call struct {
	w       *Worker
	wm      *workerMethod // nil for a call answered without a handler
	id      string        // correlation id; empty for oneway calls
	idb     []byte        // id as the replies' key and header value (the request's own header value; read only)
	replyTo string
	tp      kafkaclient.TopicPartition
	pt      *partTrack
	first   int64 // offset of the call's first request record
	ctx     context.Context
	done    doneSignal // closed once the call is over
	// ctxCancel and stopTimer (nil without a deadline) end ctx; see cancel.
	ctxCancel context.CancelCauseFunc
	stopTimer context.CancelFunc

	turn keyTurn      // its place among the calls sharing its record key; guarded by Worker.mu
	in   requestQueue // the request records
	out  replyState   // what the handler sent and set
	sent delivery     // its records on their way to Kafka
	// recs hold the call's first reply records (a unary call's response
	// and end); taken under out.mu, or by finish once the reply stream is
	// closed.
	recs recordSlots
	// acked is c.delivered as a func value, made once per call.
	acked func(*kafkaclient.Record, error)

	attempts    int                  // handler runs; the run goroutine's
	cutShort    bool                 // retry refused a retry only for the request's overflow; the run goroutine's
	keepReplies bool                 // the caller sent an idempotency key: remember the replies (unless they grew too large: storeReply)
	stored      []kafkaclient.Record // replies produced, when keepReplies (storeReply)
	storedBytes int                  // replySize of the replies produced, when keepReplies
	// outcomeSent: the outcome was handed to the outcome topic
	// (WorkerOutcomeTopic), not kept in memory only.
	outcomeSent bool
	replay      []kafkaclient.Record // replies to send again instead of running a handler
	endLost     bool                 // writeEnd found the held response refused and its end said so
	// attempt is the request's attempt id header (wire.AttemptMetadata),
	// repeated on every reply record so that the caller's gateway tells
	// this attempt's replies from another's; empty when the request had none.
	attempt    []kafkaclient.Header
	attemptHdr [1]kafkaclient.Header // attempt's room, in the call's own memory
	ending     atomic.Bool           // finish began: the end of the replies is on its way
	// phase is where a call that runs a handler stands against its
	// worker giving up the calls whose handlers have not started
	// (Worker.abandonQueued): handlerQueued from startCall until it takes
	// a handler slot, then handlerRunning, or handlerAbandoned when given
	// up first. Zero for calls answered without a handler.
	phase atomic.Int32
	// queued is set while the call counts among those whose handlers have
	// not started (readFlow.enqueue): from startCall until it took a slot
	// or finished.
	queued atomic.Bool
	// decision is outcomeOpen until the handler's outcome is decided
	// (decide) or a newer attempt superseded the call (Worker.supersede),
	// whichever comes first, and never changes after that.
	decision atomic.Int32
	// after are closed once the superseded calls with its correlation id
	// in flight when it started are over (nil when none was): its handler
	// runs only then. Set by admit, before the call runs; read by its
	// goroutine only.
	after []<-chan struct{}
	// extra are the first offsets of superseded calls of its correlation id
	// that it keeps unfinished until it is over (Worker.handOn), with its
	// own. Guarded by Worker.mu.
	extra []int64
	// streamsIn: its method takes a client stream, so that request records
	// of its left unread when it ends could be taken for a new call.
	streamsIn bool
	// trailed: release left the call's id trailing (its request was not
	// complete); Worker.endFed undoes that if the end reaches the call
	// after all. Guarded by Worker.mu.
	trailed bool

	span      trace.Span           // "handle <method>", nil for calls answered without a handler
	traceHdrs []kafkaclient.Header // the handle span's context, sent back on the replies
	start     time.Time
}

func (w *Worker) newCall(rec *kafkaclient.Record, env *wire.Envelope, pt *partTrack, id string, wm *workerMethod) *call {
	c := &call{
		w: w, wm: wm, id: id, idb: env.CorrelationID,
		tp:    tpOf(rec),
		pt:    pt,
		first: rec.Offset,
	}
	c.in.all = c.in.one[:0]
	c.acked = c.delivered
	if wm == nil {
		wm = w.lookup(env.Service, env.Method)
	}
	c.streamsIn = wm != nil && wm.spec.Kind.clientStreams()
	c.in.release = c.streamsIn && w.cfg.maxAttempts <= 1 && w.cfg.deadLetterTopic == ""
	if c.streamsIn && c.wm != nil { // a handler reads its client stream
		c.in.bound = w.cfg.requestBufBytes
	}
	if env.Attempt != nil {
		c.attemptHdr[0] = kafkaclient.Header{Key: w.attemptKey, Value: env.Attempt}
		c.attempt = c.attemptHdr[:]
	}
	return c
}

// otherAttempt reports whether env, a request record with c's correlation
// id, belongs to another attempt than c's: both carry attempt ids, and
// they differ. (A gateway that writes none, such as Zilla's, is taken at
// its word.)
func (c *call) otherAttempt(env *wire.Envelope) bool {
	return len(c.attempt) > 0 && env.Attempt != nil && !bytes.Equal(env.Attempt, c.attempt[0].Value)
}

// attemptID is the call's attempt id, nil when its request had none.
func (c *call) attemptID() []byte {
	if len(c.attempt) == 0 {
		return nil
	}
	return c.attempt[0].Value
}

// ownAttempt reports whether env, a request record with c's correlation id,
// names c's own attempt. Without attempt ids (a gateway that writes none,
// such as Zilla's) it cannot tell, and says no.
func (c *call) ownAttempt(env *wire.Envelope) bool {
	return len(c.attempt) > 0 && bytes.Equal(env.Attempt, c.attempt[0].Value)
}

// startCall registers a call starting at rec, whose headers env holds, and
// runs it on a goroutine of its own. ended says rec is all of the call's
// input (its other records are skipped elsewhere). Its handler runs only
// once the superseded calls with its correlation id are over (admit).
func (w *Worker) startCall(rec *kafkaclient.Record, env *wire.Envelope, pt *partTrack, id string, wm *workerMethod, ended bool) {
	md, err := env.Metadata()
	if err == nil {
		err = env.TimeoutErr
	}
	if err != nil {
		w.stats.malformed.Add(1)
		w.rejectCall(rec, env, pt, id, status.Newf(codes.InvalidArgument, "request at %s: %v", recordPlace(rec), err), ended)
		return
	}
	deadline, hasDeadline := env.Deadline(rec.Timestamp)
	now := time.Now() // one reading for the checks below and the call's start
	if hasDeadline && !now.Before(deadline) {
		w.rejectCall(rec, env, pt, id, status.Newf(codes.DeadlineExceeded,
			"%s: deadline passed before the worker read the request at %s", wm.spec.FullMethod(), recordPlace(rec)), ended)
		return
	}
	if wm.tel == nil { // a proxied method: its workerMethod is made per call
		w.prepareTelemetry(wm)
	}
	c := w.newCall(rec, env, pt, id, wm)
	c.phase.Store(handlerQueued)
	c.queued.Store(true)
	w.flow.enqueue()
	var cause error // why the deadline ends the call, when it is the worker's bound
	if m := w.cfg.maxCallDuration; m > 0 {
		if limit := now.Add(m); !hasDeadline || limit.Before(deadline) {
			deadline, cause = limit, w.maxDurationErr
		}
	}
	c.openContext(rec, env, md, now, deadline, cause)
	c.sent.retry.until = deadline
	// An empty key is none: the gateway gave the call a fresh correlation
	// id, so no retry can find its outcome, which would only take room
	// from the outcomes of real keys.
	keys := md.Get(wire.IdempotencyKeyMetadata)
	c.keepReplies = id != "" && len(keys) > 0 && keys[0] != ""
	if w.admit(c, rec, env, true) {
		c.abort()
	}
	w.stats.calls.Add(1)
	c.feed(rec, env)
	if ended {
		c.endInput()
	}
	w.runners.run(c)
}

// openContext makes the handler's context: the request metadata, the
// caller's trace and identity, the "handle" span, the deadline, and the
// transport stream that grpc.SetHeader and friends use.
//
// now is when the call starts; cause, when not nil, is the context's cause
// once the deadline passes.
func (c *call) openContext(rec *kafkaclient.Record, env *wire.Envelope, md metadata.MD, now, deadline time.Time, cause error) {
	w, wm := c.w, c.wm
	// Not below a context of the worker's: it aborts its calls itself
	// when it stops (Worker.stopCalls).
	ctx := metadata.NewIncomingContext(w.tel.trc.extract(context.Background(), md), md)
	if env.Identity != nil {
		ctx = context.WithValue(ctx, identityKey{}, string(env.Identity))
	}
	c.start = now
	ctx, c.span = w.tel.trc.start(ctx, wm.handleName, wm.handleOpts...)
	if c.span.IsRecording() {
		c.span.SetAttributes(attribute.String("messaging.destination.name", rec.Topic),
			attribute.Int("messaging.destination.partition.id", int(rec.Partition)), attribute.Int64("messaging.kafka.offset", rec.Offset),
			attribute.String("messaging.message.conversation_id", c.id))
	}
	c.traceHdrs = w.tel.trc.traceHeaders(ctx, w.cfg.names.MetaPrefix)
	wm.tel.begin(ctx)
	if !deadline.IsZero() {
		ctx, c.stopTimer = context.WithDeadlineCause(ctx, deadline, cause)
	}
	ctx, c.ctxCancel = context.WithCancelCause(ctx)
	c.ctx = grpc.NewContextWithServerTransportStream(ctx, transportStream{c})
}

// cancel ends the call's context with cause (nil once the call is over).
func (c *call) cancel(cause error) {
	c.ctxCancel(cause)
	if c.stopTimer != nil {
		c.stopTimer()
	}
}

// admit enters c, a call starting at rec, in the dispatch tables: under its
// correlation id, in its record key's queue when ordered, its first offset
// held until it is served. It also sets c's reply topic and, for a call
// that runs a handler, the ends of the superseded calls with its
// correlation id still in flight (call.after): whether c supersedes one
// or comes once the call that did is over, its handler never runs beside
// theirs.
//
// It reports whether the worker already stopped: the caller then aborts c.
func (w *Worker) admit(c *call, rec *kafkaclient.Record, env *wire.Envelope, ordered bool) (stopped bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c.replyTo = w.replyTopic(env.ReplyTo)
	if c.id != "" {
		w.calls[c.id] = c
		if c.wm != nil {
			for _, d := range w.detached[c.id] {
				c.after = append(c.after, d.done.wait())
			}
		}
	} else {
		w.oneway[c] = struct{}{}
	}
	if ordered {
		w.keys.wait(c, rec.Key)
	}
	c.pt.begin(rec.Offset)
	return w.stopped
}

// rejectCall answers a request with st without running a handler, and skips
// the rest of that call's records.
func (w *Worker) rejectCall(rec *kafkaclient.Record, env *wire.Envelope, pt *partTrack, id string, st *status.Status, ended bool) {
	w.cfg.logger.Warn("kafkarpc: rejecting request", "correlation_id", id, "code", st.Code().String(),
		"message", st.Message(), "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
	w.answerCall(rec, env, pt, id, st, nil, ended)
}

// answerCall answers a request without running a handler: with replay, the
// stored replies of an earlier call with the same id, or else with st. ended
// is as for startCall.
func (w *Worker) answerCall(rec *kafkaclient.Record, env *wire.Envelope, pt *partTrack, id string, st *status.Status, replay []kafkaclient.Record, ended bool) {
	if id == "" {
		return // a oneway request: nobody to tell
	}
	c := w.newCall(rec, env, pt, id, nil)
	c.replay = replay
	c.ctx, c.ctxCancel = context.WithCancelCause(context.Background()) // ended by abort or finish (see Worker.stopCalls)
	if dl, ok := env.Deadline(rec.Timestamp); ok {
		c.sent.retry.until = dl
	} else if m := w.cfg.maxCallDuration; m > 0 {
		c.sent.retry.until = time.Now().Add(m)
	}
	if w.admit(c, rec, env, false) {
		c.abort()
	}
	c.feed(rec, env)
	if ended {
		c.endInput()
	}
	go c.finish(st)
}

// unqueue notes that the call no longer waits to run its handler; it may
// be called more than once.
func (c *call) unqueue() {
	if c.queued.Load() && c.queued.CompareAndSwap(true, false) {
		c.w.flow.dequeue()
	}
}

// abort gives the call up: its handler is cancelled and nothing more it
// sends goes out.
func (c *call) abort() {
	c.out.mu.Lock()
	c.out.aborted = true
	c.out.mu.Unlock()
	c.cancel(errAborted)
}

// run waits for the calls it superseded to be over, for its turn among the
// calls with its key and for a handler slot, runs the handler (again, as
// retries allow), dead-letters a poison request, and finishes the call.
func (c *call) run() {
	if len(c.after) > 0 && testHookAwaitEarlier != nil {
		testHookAwaitEarlier(c.id, c.attemptID())
	}
	for _, done := range c.after { // never two attempts' handlers at once, whatever their record keys
		select {
		case <-done:
		case <-c.ctx.Done():
			c.finish(contextStatus(c.ctx))
			return
		}
	}
	if c.turn.ch != nil { // calls with the same key run in the order of their records
		select {
		case <-c.turn.ch:
		case <-c.ctx.Done():
			c.finish(contextStatus(c.ctx))
			return
		}
	}
	// Done only when a slot has to be waited for: it makes the context's
	// channel, which a call that gets its slot at once (and whose handler
	// never asks for it) does without. A call ended meanwhile runs no
	// handler either way.
	slot := false
	select {
	case c.w.sem <- struct{}{}:
		slot = true
	default:
		select {
		case c.w.sem <- struct{}{}:
			slot = true
		case <-c.ctx.Done():
		}
	}
	c.unqueue()
	// A call given up before it took its slot (Worker.abandonQueued) runs
	// no handler: its abort, under way, ends its context.
	if c.ctx.Err() != nil || !c.phase.CompareAndSwap(handlerQueued, handlerRunning) {
		if slot {
			<-c.w.sem
		}
		<-c.ctx.Done()
		c.finish(contextStatus(c.ctx))
		return
	}
	st, panicked := c.invoke()
	for c.retry(st, panicked) {
		st, panicked = c.invoke()
	}
	<-c.w.sem
	if overflow := c.in.settle(c.cutShort); overflow != nil {
		st = overflowStatus(overflow)
	}
	st, superseded := c.decide(st)
	// A call the worker gave up (rebalance, shutdown) failed because it
	// was cancelled, not for its request: no poison. Left uncommitted
	// unless it sent replies, it is served again by the partition's next
	// owner, and a dead letter of it would be replayed a second time.
	// A call its caller cancelled is withdrawn, not poison either: no
	// retry ran after the cancel, and a replay would serve a call nobody
	// waits for. Nor is one whose request overflowed the worker's buffer
	// (however late): its request is no longer whole.
	cause := context.Cause(c.ctx)
	givenUp := errors.Is(cause, errAborted) || errors.Is(cause, errCallerCancelled) || c.in.overflowed()
	if !superseded && !givenUp && st.Code() != codes.OK && c.w.cfg.deadLetterTopic != "" && (c.in.isUndecodable() || c.retryable(st, panicked)) {
		c.deadLetter(st)
	}
	c.finish(st)
}

// testHookAwaitEarlier, when set (tests only, before the worker starts),
// runs when a call starts waiting for the superseded calls with its
// correlation id (call.after) to be over.
var testHookAwaitEarlier func(id string, attempt []byte)

// decide fixes the call's outcome once its handler returned or will not
// run: st, unless a newer attempt superseded the call first, which then
// ends ABORTED saying so (superseded). It may be called again: it answers
// the same.
func (c *call) decide(st *status.Status) (_ *status.Status, superseded bool) {
	next := outcomeNotStored
	if c.keepReplies && remembered(st) {
		next = outcomeStored // unless Kafka refuses a reply, or a rebalance aborts the call, before its end
	}
	if c.decision.CompareAndSwap(outcomeOpen, next) || c.decision.Load() != outcomeSuperseded {
		return st, false
	}
	return status.Newf(codes.Aborted, "%s: %v; the newer attempt is served", c.method(), errSuperseded), true
}

// retryable reports whether st (or a panic) is a failure worth another try.
func (c *call) retryable(st *status.Status, panicked bool) bool {
	return panicked || (st.Code() != codes.OK && slices.Contains(c.w.cfg.retryCodes, st.Code()))
}

// retry decides whether to run the handler again after st, and if so waits
// the back-off and rewinds the request stream. A call that sent a reply,
// whose request cannot be decoded, or whose context ended (before or
// during the back-off) is not retried. When it is not only because its
// request overflowed (WorkerRequestBufferBytes), it notes so (cutShort):
// st, which a retry would have replaced, is not its outcome.
func (c *call) retry(st *status.Status, panicked bool) bool {
	c.attempts++
	if c.attempts >= c.w.cfg.maxAttempts || !c.retryable(st, panicked) || c.in.isUndecodable() {
		return false
	}
	if !c.out.untouched() {
		return false
	}
	wait := c.w.cfg.retryBackoff << (c.attempts - 1)
	if dl, ok := c.ctx.Deadline(); ok && time.Now().Add(wait).After(dl) {
		return false
	}
	if c.ctx.Err() == nil {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.ctx.Done():
		}
	}
	if over := c.in.overflowed(); over || c.ctx.Err() != nil {
		c.cutShort = over
		return false
	}
	c.in.rewind()
	c.out.reset()
	return true
}

// invoke runs the handler, turning a panic into INTERNAL, and ends the
// attempt's stream when it returns (endAttempt).
func (c *call) invoke() (st *status.Status, panicked bool) {
	wm := c.wm
	gen := c.in.gen // changes only on this goroutine (endAttempt): read without the lock
	ctx := c.attemptContext(gen)
	ss := serverStream{c, gen, ctx}
	defer c.endAttempt()
	defer func() {
		if p := recover(); p != nil {
			panicked = true
			c.w.stats.panics.Add(1)
			c.w.cfg.logger.Error("kafkarpc: handler panicked", "method", wm.spec.FullMethod(), "correlation_id", c.id,
				"topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first,
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			st = status.Newf(codes.Internal, "%s: handler panicked: %v", wm.spec.FullMethod(), p)
		}
	}()
	if wm.unary != nil {
		resp, err := wm.unary.Handler(wm.impl, ctx, c.decodeFirst, c.w.cfg.unaryInterceptor)
		if err != nil {
			return toStatus(c.ctx, err), false
		}
		if err := ss.SendMsg(resp); err != nil {
			return toStatus(c.ctx, err), false
		}
		return nil, false
	}
	sd := wm.stream
	var err error
	if i := c.w.cfg.streamInterceptor; i != nil {
		err = i(wm.impl, ss, &grpc.StreamServerInfo{
			FullMethod: wm.spec.FullMethod(), IsClientStream: sd.ClientStreams, IsServerStream: sd.ServerStreams,
		}, sd.Handler)
	} else {
		err = sd.Handler(wm.impl, ss)
	}
	if err == nil && c.out.wasRefused() {
		// The handler returned nil after a Send of its was refused (past
		// the deadline, cancelled, given up): an OK end would tell the
		// caller that the stream it got is whole.
		return contextStatus(c.ctx), false
	}
	return toStatus(c.ctx, err), false
}

// toStatus maps a handler's error to the status the caller gets.
func toStatus(ctx context.Context, err error) *status.Status {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		if st.Code() == codes.DeadlineExceeded && ctx.Err() != nil && len(st.Proto().GetDetails()) == 0 {
			// The handler passed its context's end on: say which deadline
			// it was (the caller's, or the worker's bound).
			return contextStatus(ctx)
		}
		return st
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if ctx.Err() != nil {
			return contextStatus(ctx)
		}
		// The handler's own context error (a backend's deadline, say),
		// not its call's end: as grpc-go, its code and its text.
		return status.FromContextError(err)
	}
	return status.New(codes.Unknown, err.Error())
}

func contextStatus(ctx context.Context) *status.Status {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		if cause := context.Cause(ctx); errors.Is(cause, errMaxCallDuration) {
			return status.New(codes.DeadlineExceeded, cause.Error())
		}
		return status.New(codes.DeadlineExceeded, "deadline exceeded")
	}
	cause := context.Cause(ctx)
	if errors.Is(cause, errRequestOverflow) {
		return overflowStatus(cause)
	}
	if cause != nil && cause != context.Canceled {
		return status.New(codes.Canceled, cause.Error())
	}
	return status.New(codes.Canceled, "call cancelled")
}

// finish writes the end-of-stream reply with st, waits until Kafka
// acknowledged every reply, and releases the call so that its offset can be
// committed. An aborted call that sent nothing writes nothing and stays
// uncommitted, so that the partition's next owner serves it again; so does
// one whose replies are all still kept by the writer (WorkerExactlyOnce):
// they are dropped, and the next owner serves the call whole.
func (c *call) finish(st *status.Status) {
	c.unqueue() // ended before it took a slot
	c.in.settle(false)
	st = c.cardinality(st)
	st, _ = c.decide(st)
	c.ending.Store(true)
	aborted, sent := c.out.close()
	if aborted && sent > 0 && c.w.writer.discard(c) {
		sent = 0
	}
	if sent > 0 && c.wm != nil && c.wm.spec.Kind.serverStreams() {
		// A stream's end waits for its responses, retries included, so
		// that no end overtakes a response Kafka takes on a second try,
		// and none ends OK over a response Kafka refused. (flush: a
		// txnWriter keeps them until then.)
		_ = c.w.writer.flush(c)
	}
	lost := c.sent.failure() // a reply Kafka refused for good (only a directWriter sends before the end)
	served := !aborted || sent > 0
	if served {
		st = c.writeEnd(st, aborted, lost)
		if (c.replay != nil || c.endLost) && lost == nil {
			lost = c.sent.failure() // a replayed or large response given up: its end said so
		}
	}
	// The replies are the call's outcome even when Kafka lost some of them
	// after the end went out (then a retry with the same key gets them),
	// unless the end already reported the loss instead of the outcome.
	remember := c.keepReplies && served && lost == nil && remembered(st)
	var at time.Time
	if remember {
		at = time.Now()
		if o := c.w.outcomes; o != nil {
			// Acknowledged with the replies (or in their transaction),
			// before the offset is committed.
			o.write(c, st, at)
		}
	}
	if err := c.w.writer.flush(c); err != nil && served && c.id != "" && lost == nil {
		c.lostAfterEnd(st)
	}
	waiters := c.release(served, remember, at)
	c.w.writer.settle(c)
	c.cancel(nil)
	if c.span != nil {
		spanEnd(c.span, st.Err())
		c.wm.tel.end(c.ctx, c.start, st.Err())
	}
	// Waiters first, so that whoever waits for the call (a drain on
	// rebalance or shutdown) finds a re-run among the calls in flight.
	c.w.answerWaiters(c, waiters, remember, served && !aborted)
	c.done.close()
	if served && c.w.committer != nil {
		c.w.committer.poke()
	}
}

// writeEnd writes what ends a served call's replies, and returns the status
// it ended with: the stored replies of a replayed call; else the held
// response of a single-response call and the end-of-stream record, with
// UNAVAILABLE for an aborted call or one a reply of which Kafka already
// refused (lost; lostStatus), rather than an outcome with a gap in it. A oneway call
// writes nothing.
func (c *call) writeEnd(st *status.Status, aborted bool, lost error) *status.Status {
	switch {
	case c.id == "":
		return st
	case c.replay != nil:
		last := len(c.replay) - 1
		for i, r := range c.replay {
			if i == last && i > 0 && r.Value == nil {
				// As a live stream's, the stored end waits for the responses
				// before it, retries included: no end overtakes a response
				// Kafka takes on a second try, and none ends OK over a gap.
				_ = c.w.writer.flush(c)
				if lost := c.sent.failure(); lost != nil {
					st = lostStatus(c.method(), lost, true)
					c.countLost()
					c.produceEnd(st)
					return st
				}
			}
			c.produce(r.Value, c.replayHeaders(r.Headers))
		}
		return st
	case aborted:
		st = status.New(codes.Unavailable, "the worker gave up the call midway (rebalance or shutdown); retry it")
	case lost != nil:
		st = lostStatus(c.method(), lost, false)
		c.countLost()
	}
	if c.out.held != nil {
		if st.Code() == codes.OK && c.heldRefused() {
			// Kafka would refuse the response for good (larger than the
			// reply topic takes); with it goes the end, which would
			// tell the caller OK without a response (INTERNAL at the
			// gateway).
			st = lostStatus(c.method(), c.sent.failure(), false)
			c.countLost()
			c.endLost = true
			c.out.sent = 0
		} else if st.Code() == codes.OK {
			c.produce(c.out.held, c.out.replyHdrs)
			if len(c.out.held) >= ackBeforeEndBytes {
				// A large response may be refused (larger than the client
				// or the reply topic takes); its end waits for Kafka's
				// answer, so that a refusal ends the call with its status
				// (RESOURCE_EXHAUSTED) instead of an OK end without a
				// response, which a gateway can only take for a broken
				// worker (INTERNAL).
				_ = c.w.writer.flush(c)
				if lost := c.sent.failure(); lost != nil {
					st = lostStatus(c.method(), lost, false)
					c.countLost()
					c.endLost = true
				}
			}
		} else {
			c.out.sent = 0 // the error replaces the response; headers go with it
		}
	}
	c.produceEnd(st)
	return st
}

// heldRefused reports whether the call's single response is one Kafka
// would refuse for good, larger than the reply topic's max.message.bytes
// (topicLimits), and then fails it as a refusal by Kafka would: logged, the
// call's first delivery failure. Only a directWriter's response smaller
// than ackBeforeEndBytes is checked: a larger one waits for Kafka's own
// answer before the end, and a txnWriter checks every record before it
// enters the transaction.
func (c *call) heldRefused() bool {
	if _, direct := c.w.writer.(directWriter); !direct || len(c.out.held) >= ackBeforeEndBytes {
		return false
	}
	rec := kafkaclient.Record{Topic: c.replyTo, Partition: kafkaclient.AnyPartition, Key: c.idb, Value: c.out.held, Headers: c.out.replyHdrs}
	err := c.w.limits.refused(&rec)
	if err == nil || !tooLarge(err) {
		return false // a missing reply topic fails its produce (dead letters)
	}
	failed := rec // on the heap only when refused
	c.sent.unacked.Add(1)
	c.acked(&failed, err)
	return true
}

// ackBeforeEndBytes is the size from which a call's single response is
// acknowledged by Kafka before the end-of-stream record is produced
// (writeEnd): below it, the two go out together, without the round trip.
const ackBeforeEndBytes = 64 << 10

// release takes the call out of the worker's tables: its outcome stored
// (remember, as of at), its key's turn passed on, its correlation id freed (its
// remaining request records to be skipped when it was served and they are
// still to come), its
// offset marked done when served: at once, unless it takes a client stream
// and its input is not complete, then once its end-of-stream record is read
// or its deadline passed (repeats.hold). It returns the repeats that waited
// for it.
//
// A call a newer attempt superseded no longer holds its correlation id (the
// newer attempt's call does, untouched here); its remaining request records
// are skipped since it was superseded, and its offset is held likewise
// until its end-of-stream record is read, unless that was read already.
func (c *call) release(served, remember bool, at time.Time) []waiter {
	w := c.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if remember {
		w.repeats.remember(c.id, c.tp, c.stored, at, c.outcomeSent)
	}
	w.keys.pass(c)
	held := false
	superseded := w.undetach(c)
	if superseded {
		if w.repeats.trailing.has(c.id, c.attemptID()) { // its end is still to come
			if !served {
				// Given up unserved (rebalance or shutdown): its offset
				// stays uncommitted, as any such call's.
				w.repeats.trailing.remove(c.id, c.attemptID())
			} else if w.parts[c.tp] == c.pt {
				w.repeats.hold(c, true, c.sent.retry.until, w.expireHeld)
				held = true
			}
		}
	} else if c.id != "" && w.calls[c.id] == c {
		delete(w.calls, c.id)
		// A call given up unserved (rebalance or shutdown) is not over: its
		// offset stays uncommitted, and whoever reads its partition next,
		// this worker too once its partition comes back, serves it from
		// its first record. Its records are not to be skipped then.
		if served && !c.in.complete() {
			c.trailed = true
			w.repeats.trail(c.id, c.attemptID())
			if c.streamsIn && w.parts[c.tp] == c.pt {
				// Its offset stays held until the rest of its request is
				// read, or its deadline passes (repeats.hold). (Of a call
				// without a client stream only the end record can be left,
				// and a worker that reads it alone skips it.)
				w.repeats.hold(c, false, c.sent.retry.until, w.expireHeld)
				held = true
			}
		}
	}
	delete(w.oneway, c)
	if served && !held && !(superseded && w.handOn(c.id, c.pt, c.first, c.extra)) {
		c.pt.finishAll(c.first, c.extra)
	}
	return w.repeats.takeWaiters(c)
}

// handOn makes the call in flight with correlation id id, when it reads
// partition track pt, keep first and extra unfinished until it is over
// (call.extra): the first offsets of a superseded call of that id (first)
// and of those it superseded (extra), done otherwise. Were they finished while that newer attempt
// runs, the committed offset could pass them to stop inside the superseded
// attempt's records, and the partition's next owner would take the rest of
// them for an attempt that supersedes the newer one. It reports false,
// leaving the offsets to the caller to finish, when no such call is in
// flight. Called with w.mu held.
func (w *Worker) handOn(id string, pt *partTrack, first int64, extra []int64) bool {
	s := w.calls[id]
	if s == nil || s.pt != pt {
		return false
	}
	s.extra = append(append(s.extra, first), extra...)
	return true
}

// method is the call's full method name, or "" for a call answered without
// a handler.
func (c *call) method() string {
	if c.wm == nil {
		return ""
	}
	return c.wm.spec.FullMethod()
}

// cardinality returns st, or INTERNAL when the handler of a unary or
// client-streaming call sent more than one response (SendMsg twice): a
// gRPC caller gets that whatever the handler returned (grpc-go's client
// checks that such a call has one response), never one of the responses
// as the call's answer.
func (c *call) cardinality(st *status.Status) *status.Status {
	if c.wm == nil || c.wm.spec.Kind.serverStreams() {
		return st
	}
	c.out.mu.Lock()
	n := c.out.sent
	c.out.mu.Unlock()
	if n <= 1 {
		return st
	}
	return status.Newf(codes.Internal, "%s: cardinality violation: the handler sent %d responses to a %s call, which has one", c.method(), n, c.wm.spec.Kind)
}

// endHeaders is the room an end record's headers take besides the attempt
// id and the trailer: the correlation id and wire.AppendEnd's status headers.
const endHeaders = 4

// produceEnd writes the reply end-of-stream record.
func (c *call) produceEnd(st *status.Status) {
	names := &c.w.cfg.names
	o := &c.out
	var hs []kafkaclient.Header
	if o.sent == 0 { // headers the handler set but never sent with a message
		hs = make([]kafkaclient.Header, 0, 4+len(o.header)+len(c.traceHdrs)+len(c.w.incarnation)+len(o.trailer))
		hs = wire.AppendReply(hs, names, c.idb, o.header, c.traceHdrs...)
		hs = append(append(hs, c.w.incarnation...), c.attempt...)
	} else {
		hs = o.endHdrs
		if cap(hs) < endHeaders+len(c.attempt)+len(o.trailer) {
			hs = make([]kafkaclient.Header, 0, endHeaders+len(c.attempt)+len(o.trailer))
		}
		hs = append(hs, kafkaclient.Header{Key: names.CorrelationID, Value: c.idb})
		hs = append(hs, c.attempt...)
	}
	c.produce(nil, wire.AppendEnd(hs, names, st, o.trailer))
}

// replayHeaders returns the headers of a stored reply record as this call
// sends them again: with this call's attempt id instead of the one the
// record was first sent with, so that the attempt being answered takes it.
func (c *call) replayHeaders(hs []kafkaclient.Header) []kafkaclient.Header {
	out := make([]kafkaclient.Header, 0, len(hs)+len(c.attempt))
	for _, h := range hs {
		if h.Key != c.w.attemptKey {
			out = append(out, h)
		}
	}
	return append(out, c.attempt...)
}

// produce writes one reply record (keeping it when the call's replies are
// to be remembered).
func (c *call) produce(value []byte, hs []kafkaclient.Header) {
	if c.keepReplies {
		c.storeReply(value, hs)
	}
	rec := c.recs.next()
	*rec = kafkaclient.Record{Topic: c.replyTo, Partition: kafkaclient.AnyPartition, Key: c.idb, Value: value, Headers: hs}
	c.w.writer.send(c, rec)
}

// storeReply keeps a reply of the call for its repeats (keepReplies),
// unless the call's replies grew past what the worker remembers of a call
// (WorkerIdempotencyWindow's maxBytes, measured as replySize): then none is
// kept and its outcome is not remembered (keepReplies is cleared: a repeat
// runs again), rather than
// every reply of a long stream being held in memory until its end only to
// be dropped there. Called under out.mu, or from finish once the reply
// stream is closed.
func (c *call) storeReply(value []byte, hs []kafkaclient.Header) {
	c.storedBytes += recordSize(value, hs)
	if c.storedBytes > c.w.cfg.idemMaxBytes && c.decision.Load() == outcomeOpen {
		// (Once decide took the outcome for stored, what finish writes,
		// a single-response call's response and the end, is kept: the
		// repeats waiting then get it, though the store may not keep it.)
		clear(c.stored)
		c.stored, c.keepReplies = nil, false
		return
	}
	c.stored = append(c.stored, kafkaclient.Record{Value: value, Headers: hs})
}

type identityKey struct{}

// IdentityFromContext returns the caller's identity that the gateway wrote
// on the request (GatewayIdentity), inside a handler served by a Worker.
// Safe for concurrent use.
func IdentityFromContext(ctx context.Context) (string, bool) {
	who, ok := ctx.Value(identityKey{}).(string)
	return who, ok
}

// expireHeld finishes the held offset of a call whose deadline passed
// before its end-of-stream record came (its caller died mid-stream), and
// asks for a commit.
func (w *Worker) expireHeld(h *heldCall) {
	w.mu.Lock()
	done := w.repeats.expireHeld(h)
	w.mu.Unlock()
	if done && w.committer != nil {
		w.committer.poke()
	}
}

// doneSignal is a channel closed once something is over, made only when
// somebody asks to wait for it (most calls are waited for by nobody).
// Safe for concurrent use.
type doneSignal struct{ ch atomic.Pointer[chan struct{}] }

// closedSignal is the channel of every doneSignal closed before anybody
// asked for one.
var closedSignal = func() *chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return &ch
}()

// wait returns a channel closed once close is called (already, when it was).
func (d *doneSignal) wait() <-chan struct{} {
	if p := d.ch.Load(); p != nil {
		return *p
	}
	ch := make(chan struct{})
	if d.ch.CompareAndSwap(nil, &ch) {
		return ch
	}
	return *d.ch.Load() // another waiter's, or closedSignal
}

// close closes the channel of every wait, past and future. Called once.
func (d *doneSignal) close() {
	if p := d.ch.Swap(closedSignal); p != nil && p != closedSignal {
		close(*p)
	}
}
