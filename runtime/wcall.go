package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// errCallerCancelled is the cause of a handler context the caller cancelled.
var errCallerCancelled = errors.New("kafkarpc: the caller cancelled the call")

// errAborted is the cause of a handler context the worker gave up.
var errAborted = errors.New("kafkarpc: the worker gave up the call (rebalance or shutdown)")

// wCall is one call being served by the worker.
type wCall struct {
	w       *Worker
	wm      *workerMethod // nil for a call rejected before it ran
	id      string        // correlation id; empty for oneway calls
	idb     []byte        // id as the replies' key and header value, shared by them (read only)
	replyTo string
	tp      kafkaclient.TopicPartition
	pt      *partTrack
	first   int64
	ctx     context.Context
	cancel  context.CancelCauseFunc
	done    chan struct{}

	key     string        // record key when calls with it must run in order, else ""
	turn    chan struct{} // closed when the calls before this one with the same key are done
	hasTurn bool          // guarded by Worker.mu

	inMu        sync.Mutex
	all         []*kafkaclient.Record // every request data record, kept for retries and dead letters
	next        int                   // index in all of the next record to hand out
	inEnded     bool
	inSig       chan struct{}
	undecodable bool // a request message could not be decoded

	attempts    int
	keepReplies bool                  // the caller sent an idempotency key: remember the replies
	stored      []kafkaclient.Record  // replies produced, when keepReplies
	replay      []kafkaclient.Record  // replies to send again instead of running a handler
	outbox      []*kafkaclient.Record // with exactly-once: everything to produce, sent by finish in one transaction

	waiters   []waiter             // duplicate attempts to answer with this call's replies; guarded by Worker.mu
	span      trace.Span           // "handle <method>", nil for calls answered without a handler
	traceHdrs []kafkaclient.Header // the handle span's context, sent back on the replies
	start     time.Time

	outMu      sync.Mutex
	header     metadata.MD
	trailer    metadata.MD
	frozen     bool // headers went out with the first reply
	replyHdrs  []kafkaclient.Header
	sent       int
	held       []byte // the response of a single-response call, sent by finish
	aborted    bool
	unacked    sync.WaitGroup
	produceErr error
	ending     atomic.Bool // finish began: the end of the replies is on its way
}

func (w *Worker) newCall(rec *kafkaclient.Record, pt *partTrack, id, replyTo string, wm *workerMethod) *wCall {
	return &wCall{
		w: w, wm: wm, id: id, idb: []byte(id), replyTo: replyTo,
		tp:    kafkaclient.TopicPartition{Topic: rec.Topic, Partition: rec.Partition},
		pt:    pt,
		first: rec.Offset,
		done:  make(chan struct{}),
		inSig: make(chan struct{}, 1),
	}
}

// startCall registers a call starting at rec and runs it on a goroutine of
// its own. ended says rec is all of the call's input (its other records are
// skipped elsewhere).
func (w *Worker) startCall(rec *kafkaclient.Record, pt *partTrack, id, replyTo string, wm *workerMethod, ended bool) {
	md, deadline, err := requestMetadata(rec, &w.cfg.names)
	if err != nil {
		w.stats.malformed.Add(1)
		w.rejectCall(rec, pt, id, replyTo, status.Newf(codes.InvalidArgument, "request at %s: %v", recordPlace(rec), err), ended)
		return
	}
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		w.rejectCall(rec, pt, id, replyTo, status.Newf(codes.DeadlineExceeded,
			"%s: deadline passed before the worker read the request at %s", wm.spec.FullMethod(), recordPlace(rec)), ended)
		return
	}
	if wm.tel == nil { // a proxied method: its workerMethod is made per call
		w.prepareTelemetry(wm)
	}
	c := w.newCall(rec, pt, id, replyTo, wm)
	ctx := metadata.NewIncomingContext(w.trc.extract(w.base, md), md)
	if who, ok := headerValue(rec.Headers, w.cfg.names.Identity); ok {
		ctx = context.WithValue(ctx, identityKey{}, string(who))
	}
	c.start = time.Now()
	ctx, c.span = w.trc.tracer.Start(ctx, wm.handleName, wm.handleOpts...)
	if c.span.IsRecording() {
		c.span.SetAttributes(attribute.String("messaging.destination.name", rec.Topic),
			attribute.Int("messaging.destination.partition.id", int(rec.Partition)), attribute.Int64("messaging.kafka.offset", rec.Offset),
			attribute.String("messaging.message.conversation_id", id))
	}
	c.traceHdrs = w.trc.traceHeaders(ctx, w.cfg.names.MetaPrefix)
	wm.tel.begin(ctx)
	var stopTimer context.CancelFunc = func() {}
	if !deadline.IsZero() {
		ctx, stopTimer = context.WithDeadline(ctx, deadline)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	c.cancel = func(cause error) { cancel(cause); stopTimer() }
	c.ctx = grpc.NewContextWithServerTransportStream(ctx, transportStream{c})
	c.keepReplies = id != "" && len(md.Get(wire.IdempotencyKeyMetadata)) > 0
	w.mu.Lock()
	if id != "" {
		w.calls[id] = c
	}
	w.waitTurn(c, string(rec.Key))
	pt.begin(rec.Offset)
	w.mu.Unlock()
	w.stats.calls.Add(1)
	c.feed(rec)
	if ended {
		c.endInput()
	}
	w.running.Add(1)
	go c.run()
}

// rejectCall answers a request with st without running a handler, and skips
// the rest of that call's records.
func (w *Worker) rejectCall(rec *kafkaclient.Record, pt *partTrack, id, replyTo string, st *status.Status, ended bool) {
	w.cfg.logger.Warn("kafkarpc: rejecting request", "correlation_id", id, "code", st.Code().String(),
		"message", st.Message(), "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
	w.answerCall(rec, pt, id, replyTo, st, nil, ended)
}

// answerCall answers a request without running a handler: with replay, the
// stored replies of an earlier call with the same id, or else with st. ended
// is as for startCall.
func (w *Worker) answerCall(rec *kafkaclient.Record, pt *partTrack, id, replyTo string, st *status.Status, replay []kafkaclient.Record, ended bool) {
	if id == "" {
		return // a oneway request: nobody to tell
	}
	c := w.newCall(rec, pt, id, replyTo, nil)
	c.replay = replay
	c.ctx, c.cancel = context.WithCancelCause(w.base)
	w.mu.Lock()
	w.calls[id] = c
	pt.begin(rec.Offset)
	w.mu.Unlock()
	c.feed(rec)
	if ended {
		c.endInput()
	}
	w.running.Add(1)
	go func() {
		defer w.running.Done()
		c.finish(st)
	}()
}

// endInput marks the call's input complete without an end-of-stream record
// of its own; only before the call runs.
func (c *wCall) endInput() {
	c.inMu.Lock()
	c.inEnded = true
	c.inMu.Unlock()
}

// feed hands one request record to the call.
func (c *wCall) feed(rec *kafkaclient.Record) {
	if rec.Value == nil {
		// A cancel may follow the end of the request stream (unary and
		// server-streaming calls end their requests at once).
		if v, ok := headerValue(rec.Headers, c.w.cfg.names.Status); ok && string(v) == "1" {
			c.cancel(errCallerCancelled)
		}
	}
	c.inMu.Lock()
	if c.inEnded {
		c.inMu.Unlock()
		return
	}
	if rec.Value == nil {
		c.inEnded = true
	} else {
		c.all = append(c.all, rec)
	}
	c.inMu.Unlock()
	select {
	case c.inSig <- struct{}{}:
	default:
	}
}

func (c *wCall) inputComplete() bool {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	return c.inEnded
}

// abort gives the call up: its handler is cancelled and nothing more it
// sends goes out.
func (c *wCall) abort() {
	c.outMu.Lock()
	c.aborted = true
	c.outMu.Unlock()
	c.cancel(errAborted)
}

func (c *wCall) run() {
	defer c.w.running.Done()
	if c.turn != nil { // calls with the same key run in the order of their records
		select {
		case <-c.turn:
		case <-c.ctx.Done():
			c.finish(contextStatus(c.ctx))
			return
		}
	}
	select {
	case c.w.sem <- struct{}{}:
	case <-c.ctx.Done():
		c.finish(contextStatus(c.ctx))
		return
	}
	st, panicked := c.invoke()
	for c.retry(st, panicked) {
		st, panicked = c.invoke()
	}
	<-c.w.sem
	if st.Code() != codes.OK && c.w.cfg.deadLetterTopic != "" && (c.isUndecodable() || c.retryable(st, panicked)) {
		c.deadLetter(st)
	}
	c.finish(st)
}

func (c *wCall) isUndecodable() bool {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	return c.undecodable
}

// retryable reports whether st (or a panic) is a failure worth another try.
func (c *wCall) retryable(st *status.Status, panicked bool) bool {
	return panicked || (st.Code() != codes.OK && slices.Contains(c.w.cfg.retryCodes, st.Code()))
}

// retry decides whether to run the handler again after st, and if so waits
// the back-off and rewinds the request stream. A call that sent a reply, or
// whose request cannot be decoded, is not retried.
func (c *wCall) retry(st *status.Status, panicked bool) bool {
	c.attempts++
	if c.attempts >= c.w.cfg.maxAttempts || !c.retryable(st, panicked) || c.isUndecodable() {
		return false
	}
	c.outMu.Lock()
	sent, aborted := c.sent, c.aborted
	c.outMu.Unlock()
	if sent > 0 || aborted {
		return false
	}
	wait := c.w.cfg.retryBackoff << (c.attempts - 1)
	if dl, ok := c.ctx.Deadline(); ok && time.Now().Add(wait).After(dl) {
		return false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.ctx.Done():
		return false
	}
	c.inMu.Lock()
	c.next = 0
	c.inMu.Unlock()
	c.outMu.Lock()
	c.header, c.trailer, c.frozen, c.held, c.sent = nil, nil, false, nil, 0
	c.outMu.Unlock()
	return true
}

// invoke runs the handler, turning a panic into INTERNAL.
func (c *wCall) invoke() (st *status.Status, panicked bool) {
	wm := c.wm
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
		resp, err := wm.unary.Handler(wm.impl, c.ctx, c.decodeFirst, c.w.cfg.unaryInterceptor)
		if err != nil {
			return toStatus(c.ctx, err), false
		}
		if err := (serverStream{c}).SendMsg(resp); err != nil {
			return toStatus(c.ctx, err), false
		}
		return nil, false
	}
	sd := wm.stream
	var err error
	if i := c.w.cfg.streamInterceptor; i != nil {
		err = i(wm.impl, serverStream{c}, &grpc.StreamServerInfo{
			FullMethod: wm.spec.FullMethod(), IsClientStream: sd.ClientStreams, IsServerStream: sd.ServerStreams,
		}, sd.Handler)
	} else {
		err = sd.Handler(wm.impl, serverStream{c})
	}
	return toStatus(c.ctx, err), false
}

// toStatus maps a handler's error to the status the caller gets.
func toStatus(ctx context.Context, err error) *status.Status {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return contextStatus(ctx)
	}
	return status.New(codes.Unknown, err.Error())
}

func contextStatus(ctx context.Context) *status.Status {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return status.New(codes.DeadlineExceeded, "deadline exceeded")
	}
	if cause := context.Cause(ctx); cause != nil && cause != context.Canceled {
		return status.New(codes.Canceled, cause.Error())
	}
	return status.New(codes.Canceled, "call cancelled")
}

// finish writes the end-of-stream reply with st, waits until Kafka
// acknowledged every reply, and releases the call so that its offset can be
// committed. An aborted call that sent nothing writes nothing and stays
// uncommitted, so that the partition's next owner serves it again.
func (c *wCall) finish(st *status.Status) {
	c.ending.Store(true)
	c.outMu.Lock()
	aborted, sent, lost := c.aborted, c.sent, c.produceErr
	c.aborted = true // nothing more goes out
	c.outMu.Unlock()
	served := true
	switch {
	case aborted && sent == 0:
		served = false
	case c.id == "":
		// oneway: no replies
	case c.replay != nil:
		for _, r := range c.replay {
			c.produce(r.Value, r.Headers)
		}
	default:
		if aborted {
			st = status.New(codes.Unavailable, "the worker gave up the call midway (rebalance or shutdown); retry it")
		} else if lost != nil && c.w.txn == nil {
			// A reply already failed: the end says so instead of an
			// outcome with a gap in it.
			st = lostStatus(c.method(), lost, false)
			c.countLost()
		}
		if c.held != nil {
			if st.Code() == codes.OK {
				c.produce(c.held, c.replyHdrs)
			} else {
				c.sent = 0 // the error replaces the response; headers go with it
			}
		}
		c.produceEnd(st)
	}
	inTxn := c.flushOutbox()
	c.unacked.Wait()
	if served && c.id != "" && c.w.txn == nil && lost == nil && c.produceErr != nil {
		// A reply failed after the end went out, or the end itself failed:
		// tell the caller instead of leaving it waiting for its deadline;
		// unless repeats wait for the same outcome, whose replay goes to
		// the same correlation id and answers the caller too.
		c.w.mu.Lock()
		replayed := len(c.waiters) > 0 && c.keepReplies && remembered(st)
		c.w.mu.Unlock()
		if !replayed {
			c.reportLost(st)
		}
	}
	w := c.w
	w.mu.Lock()
	if inTxn {
		if w.txnOpen--; w.txnOpen == 0 {
			w.txnIdle.Broadcast()
		}
	}
	// The replies are the call's outcome even when Kafka lost some of them
	// (then a retry with the same key gets them), unless the end that went
	// out already reported the loss instead of the outcome.
	remember := c.keepReplies && served && lost == nil && remembered(st)
	if remember {
		size := 0
		for _, r := range c.stored {
			size += len(r.Value) + 64
		}
		w.replies.put(&storedReply{id: c.id, at: time.Now(), records: c.stored, size: size}, time.Now())
	}
	if c.key != "" {
		w.passTurn(c)
	}
	if c.id != "" && w.calls[c.id] == c {
		delete(w.calls, c.id)
		if !c.inputComplete() {
			w.trailing.add(c.id)
		}
	}
	waiters := c.waiters
	c.waiters = nil
	if served {
		c.pt.finish(c.first)
	}
	w.mu.Unlock()
	c.cancel(nil)
	if c.span != nil {
		spanEnd(c.span, st.Err())
		c.wm.tel.end(c.ctx, c.start, st.Err())
	}
	// Waiters first, so that whoever waits for the call (a drain on
	// rebalance or shutdown) finds a re-run among the calls in flight.
	rerun := served && !aborted
	for _, d := range waiters {
		if c.answerWaiter(d, remember, rerun) {
			rerun = false // one re-run at most
		}
	}
	close(c.done)
	if served && w.committer != nil {
		w.committer.poke()
	}
}

// answerWaiter serves a repeated request that arrived while the call ran,
// once the call is over: with the call's replies when they are its outcome
// to remember (or a replay of remembered ones); else, when rerun, by running
// the request again (a retry that reached the worker after its caller saw
// an outcome inviting it must not get that outcome back); else with
// ABORTED. A repeat that arrived while the handler still ran gets no re-run:
// its gateway, reading the same correlation id, already took the call's own
// end for it. The waiter's offset, held since it arrived, is released once
// its own call holds it.
func (c *wCall) answerWaiter(d waiter, remember, rerun bool) (ran bool) {
	w := c.w
	var wm *workerMethod
	if rerun && !remember && c.replay == nil {
		wm = w.rerunMethod(d)
	}
	switch {
	case remember || c.replay != nil:
		replay := c.replay
		if remember {
			replay = c.stored
		}
		w.countDuplicate()
		w.answerCall(d.rec, d.pt, c.id, d.replyTo, nil, replay, true)
	case wm != nil:
		// Its one request message is all its input; the rest of the
		// attempt's records are skipped as a duplicate's.
		w.startCall(d.rec, d.pt, c.id, d.replyTo, wm, true)
		ran = true
	default:
		w.answerCall(d.rec, d.pt, c.id, d.replyTo, status.New(codes.Aborted, "the call this request repeats ended without a stored outcome; retry it"), nil, true)
	}
	w.mu.Lock()
	d.pt.finish(d.rec.Offset)
	w.mu.Unlock()
	return ran
}

// rerunMethod returns the method to run a waiter's request again with, or
// nil when it is not to run again: it arrived before the call was ending,
// carries no idempotency key (a repeated record, not a retry), or is not one
// message (a client stream's other records were skipped).
func (w *Worker) rerunMethod(d waiter) *workerMethod {
	if !d.late {
		return nil
	}
	names := &w.cfg.names
	if _, keyed := headerValue(d.rec.Headers, names.MetaPrefix+wire.IdempotencyKeyMetadata); !keyed {
		return nil
	}
	service, _ := headerValue(d.rec.Headers, names.Service)
	method, _ := headerValue(d.rec.Headers, names.Method)
	wm := w.lookup(string(service), string(method))
	if wm == nil || wm.spec.Kind.clientStreams() {
		return nil
	}
	return wm
}

// method is the call's full method name, or "" for a call answered without
// a handler.
func (c *wCall) method() string {
	if c.wm == nil {
		return ""
	}
	return c.wm.spec.FullMethod()
}

// lostStatus is the status a caller gets when Kafka did not take every reply
// of its call: the call ran, and what it answered did not all arrive.
// stored says whether a retry with the same idempotency key gets the
// outcome from the worker's memory.
func lostStatus(method string, err error, stored bool) *status.Status {
	retry := "retry it; it may run again"
	if stored {
		retry = "retry it with the same idempotency-key to get its outcome without running it again"
	}
	if method != "" {
		method += ": "
	}
	return status.Newf(codes.Unavailable, "%sthe worker answered the call but Kafka did not take every reply (%v); %s",
		method, err, retry)
}

// reportLost writes one more end-of-stream record, with lostStatus, after a
// reply of the call failed. A gateway that got the whole answer has ended the
// call and drops it; one still waiting ends the call with it. A failure of
// this record too is logged, and the caller waits for its deadline.
func (c *wCall) reportLost(outcome *status.Status) {
	c.outMu.Lock()
	err := c.produceErr
	c.outMu.Unlock()
	names := &c.w.cfg.names
	hs := []kafkaclient.Header{{Key: names.CorrelationID, Value: c.idb}}
	hs = append(hs, c.w.incarnation...)
	hs = wire.AppendStatus(hs, names, lostStatus(c.method(), err, c.keepReplies && remembered(outcome)))
	c.countLost()
	c.send(&kafkaclient.Record{Topic: c.replyTo, Partition: kafkaclient.AnyPartition, Key: c.idb, Headers: hs})
	c.unacked.Wait()
}

func (c *wCall) countLost() {
	c.w.stats.lostReplies.Add(1)
	c.w.lostCount.Add(context.Background(), 1)
}

// waiter is a repeated request that arrived while its call was running.
type waiter struct {
	rec     *kafkaclient.Record
	pt      *partTrack
	replyTo string
	late    bool // arrived once the call was ending: after its caller could have seen the outcome
}

// produceEnd writes the reply end-of-stream record.
func (c *wCall) produceEnd(st *status.Status) {
	names := &c.w.cfg.names
	hs := []kafkaclient.Header{{Key: names.CorrelationID, Value: c.idb}}
	if c.sent == 0 { // headers the handler set but never sent with a message
		hs = wire.AppendMetadata(hs, names.MetaPrefix, c.header, nil)
		hs = append(append(hs, c.traceHdrs...), c.w.incarnation...)
	}
	if st == nil {
		st = status.New(codes.OK, "")
	}
	hs = wire.AppendStatus(hs, names, st)
	hs = wire.AppendMetadata(hs, names.TrailerPrefix, c.trailer, nil)
	c.produce(nil, hs)
}

func (c *wCall) produce(value []byte, hs []kafkaclient.Header) {
	if c.keepReplies {
		c.stored = append(c.stored, kafkaclient.Record{Value: value, Headers: hs})
	}
	c.send(&kafkaclient.Record{
		Topic:     c.replyTo,
		Partition: kafkaclient.AnyPartition,
		Key:       c.idb,
		Value:     value,
		Headers:   hs,
	})
}

// send produces rec for the call: at once, or with exactly-once into the
// call's outbox, which finish sends in one transaction.
func (c *wCall) send(rec *kafkaclient.Record) {
	if c.w.txn != nil {
		c.outbox = append(c.outbox, rec)
		return
	}
	c.unacked.Add(1)
	c.w.client.Produce(rec, kafkaclient.AcksAll, c.delivered)
}

// flushOutbox sends the outbox into the open transaction; finish marks the
// call done once they are acknowledged, and the next commit covers both.
func (c *wCall) flushOutbox() bool {
	if c.w.txn == nil || len(c.outbox) == 0 {
		return false
	}
	w := c.w
	w.txnMu.RLock()
	w.mu.Lock()
	w.txnOpen++
	w.txnDirty = true
	w.mu.Unlock()
	for _, rec := range c.outbox {
		c.unacked.Add(1)
		w.txn.Produce(rec, c.delivered)
	}
	w.txnMu.RUnlock()
	c.outbox = nil
	return true
}

func (c *wCall) delivered(rec *kafkaclient.Record, err error) {
	if err != nil && c.w.cfg.deadLetterTopic != "" && rec.Topic == c.w.cfg.topic(c.w.cfg.deadLetterTopic) {
		// Not a reply: the caller has its answer. Logged, and the request
		// is committed as its reply says it was handled.
		c.w.cfg.logger.Error("kafkarpc: copying a request to the dead-letter topic", "correlation_id", c.id, "dead_letter_topic", rec.Topic,
			"error", err, "topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first)
		c.unacked.Done()
		return
	}
	if err != nil {
		c.w.cfg.logger.Error("kafkarpc: producing reply", "correlation_id", c.id, "reply_topic", rec.Topic, "error", err,
			"topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first)
		c.outMu.Lock()
		if c.produceErr == nil {
			c.produceErr = err
		}
		c.outMu.Unlock()
	}
	c.unacked.Done()
}

// recv returns the next request record, or io.EOF at the end of the request
// stream.
func (c *wCall) recv() (*kafkaclient.Record, error) {
	for {
		c.inMu.Lock()
		if c.next < len(c.all) {
			rec := c.all[c.next]
			c.next++
			c.inMu.Unlock()
			return rec, nil
		}
		ended, n := c.inEnded, c.next
		c.inMu.Unlock()
		if ended {
			if n == 0 && !c.wm.spec.Kind.clientStreams() {
				return nil, status.Errorf(codes.Internal, "%s: request stream ended without a message", c.wm.spec.FullMethod())
			}
			return nil, io.EOF
		}
		select {
		case <-c.inSig:
		case <-c.ctx.Done():
			return nil, contextStatus(c.ctx).Err()
		}
	}
}

// recvMsg decodes the next request message into m.
func (c *wCall) recvMsg(m any) error {
	rec, err := c.recv()
	if err != nil {
		return err
	}
	if raw, ok := m.(*rawMessage); ok {
		raw.b = rec.Value
		return nil
	}
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s: %T is not a protobuf message", c.wm.spec.FullMethod(), m)
	}
	if err := proto.Unmarshal(rec.Value, msg); err != nil {
		c.inMu.Lock()
		c.undecodable = true
		c.inMu.Unlock()
		return status.Errorf(codes.Internal, "%s: request at %s is not a valid %s: %v",
			c.wm.spec.FullMethod(), recordPlace(rec), msg.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// decodeFirst is the request decoder handed to unary handlers.
func (c *wCall) decodeFirst(m any) error {
	err := c.recvMsg(m)
	if err == io.EOF {
		return status.Errorf(codes.Internal, "%s: request stream ended without a message", c.wm.spec.FullMethod())
	}
	return err
}

// sendMsg produces one reply message.
func (c *wCall) sendMsg(m any) error {
	var b []byte
	switch msg := m.(type) {
	case *rawMessage:
		b = msg.b
	case proto.Message:
		var err error
		if b, err = proto.Marshal(msg); err != nil {
			return status.Errorf(codes.Internal, "%s: encoding response: %v", c.wm.spec.FullMethod(), err)
		}
	default:
		return status.Errorf(codes.Internal, "%s: %T is not a protobuf message", c.wm.spec.FullMethod(), m)
	}
	if b == nil {
		b = []byte{}
	}
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.aborted {
		return contextStatus(c.ctx).Err()
	}
	if c.id == "" {
		return nil // oneway: the response goes nowhere
	}
	if !c.frozen {
		c.frozen = true
		names := &c.w.cfg.names
		c.replyHdrs = append(append(wire.AppendMetadata([]kafkaclient.Header{{Key: names.CorrelationID, Value: c.idb}},
			names.MetaPrefix, c.header, nil), c.traceHdrs...), c.w.incarnation...)
	}
	c.sent++
	if !c.wm.spec.Kind.serverStreams() {
		// The one response of a unary or client-streaming call goes out with
		// the end-of-stream record, so that both tend to share one produce
		// request and one fetch at the gateway (measured: the gateway then
		// sees the end 7 µs after the response instead of 35 µs).
		c.held = b
		return nil
	}
	c.produce(b, c.replyHdrs)
	return nil
}

func (c *wCall) setHeader(md metadata.MD, send bool) error {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.frozen {
		return status.Error(codes.Internal, "transport: the stream is done or SendHeader was already called")
	}
	c.header = metadata.Join(c.header, md)
	if send {
		c.frozen = true
		names := &c.w.cfg.names
		c.replyHdrs = append(append(wire.AppendMetadata([]kafkaclient.Header{{Key: names.CorrelationID, Value: c.idb}},
			names.MetaPrefix, c.header, nil), c.traceHdrs...), c.w.incarnation...)
	}
	return nil
}

func (c *wCall) setTrailer(md metadata.MD) {
	c.outMu.Lock()
	c.trailer = metadata.Join(c.trailer, md)
	c.outMu.Unlock()
}

// serverStream is the grpc.ServerStream a streaming handler gets.
type serverStream struct{ c *wCall }

func (s serverStream) SetHeader(md metadata.MD) error  { return s.c.setHeader(md, false) }
func (s serverStream) SendHeader(md metadata.MD) error { return s.c.setHeader(md, true) }
func (s serverStream) SetTrailer(md metadata.MD)       { s.c.setTrailer(md) }
func (s serverStream) Context() context.Context        { return s.c.ctx }
func (s serverStream) SendMsg(m any) error             { return s.c.sendMsg(m) }
func (s serverStream) RecvMsg(m any) error             { return s.c.recvMsg(m) }

// transportStream lets grpc.SetHeader, grpc.SendHeader, grpc.SetTrailer and
// grpc.Method work inside handlers.
type transportStream struct{ c *wCall }

func (t transportStream) Method() string {
	if t.c.wm == nil {
		return ""
	}
	return t.c.wm.spec.FullMethod()
}
func (t transportStream) SetHeader(md metadata.MD) error  { return t.c.setHeader(md, false) }
func (t transportStream) SendHeader(md metadata.MD) error { return t.c.setHeader(md, true) }
func (t transportStream) SetTrailer(md metadata.MD) error { t.c.setTrailer(md); return nil }

type identityKey struct{}

// IdentityFromContext returns the caller's identity that the gateway wrote
// on the request (GatewayIdentity), inside a handler served by a Worker.
func IdentityFromContext(ctx context.Context) (string, bool) {
	who, ok := ctx.Value(identityKey{}).(string)
	return who, ok
}
