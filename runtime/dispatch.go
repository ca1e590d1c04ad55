package runtime

// How a request record travels through the worker.
//
// Worker.loop polls the consumer group and hands each record to handle
// (this file), which reads all of its headers once, with wire.Decode, into
// an Envelope that goes with the record wherever a later step needs a
// header: nothing looks a header up again. Under Worker.mu, handle notes the
// offset as read (partTrack) and routes the record by its correlation id:
// the record of a repeated attempt being skipped, or of a call that is over,
// is dropped (repeats); a record of a running call is fed to it, unless it
// starts a new attempt of a call whose input is complete, which then waits
// for that call's outcome (repeats.wait), or is of a newer attempt (another
// attempt id) while the call's client stream is still open: the newer
// attempt then supersedes the call (supersede), which leaves its correlation
// id to the newer attempt's call, started from this record and run once the
// superseded call is over; the superseded call is cancelled and ends
// ABORTED when its handler still ran. A record of no call in flight
// starts one (startCall, call.go), is answered from the stored replies of
// an earlier call with the same idempotency key (answerCall), or is
// rejected with a status when it cannot be served (rejectCall). A started
// call waits for the calls before it with the same record key (keyOrder)
// and for a handler slot, runs its handler on a goroutine of its own
// through a grpc.ServerStream adapter (serverstream.go), and hands its
// replies to the worker's replyWriter: produced at once, or kept for one
// transaction with WorkerExactlyOnce. Once Kafka acknowledged them, finish
// releases the call: its offset is marked done, so that the committer can
// commit past it, and the repeats that waited for it are answered.

import (
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/topicname"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// handle routes one request record: to its call in flight, or as the start of
// a new call, or answers or skips it when it cannot be served.
func (w *Worker) handle(rec *kafkaclient.Record) {
	env := wire.Decode(&w.cfg.names, rec.Headers, rec.Value)
	if len(env.CorrelationID) == 0 {
		env.CorrelationID = nil // an empty id is none (WIRE.md: skipped, and counted)
	}
	w.mu.Lock()
	pt := w.track(rec)
	var (
		skip    bool
		feed    *call
		stored  *storedReply
		earlier *call
	)
	if env.CorrelationID != nil {
		skip, feed, stored, earlier = w.routeKnown(rec, &env, pt)
	}
	if skip || feed != nil {
		pt.seen(rec.Offset) // a record of a call whose offset is held, or none to serve
	}
	w.mu.Unlock()
	switch {
	case skip:
	case feed != nil:
		if testHookFeed != nil {
			testHookFeed(feed.id, rec.Value == nil, feed.done.wait())
		}
		feed.feed(rec, &env)
		if rec.Value == nil {
			w.endFed(feed)
		}
	default:
		if earlier != nil && earlier.decision.Load() == outcomeSuperseded {
			w.cancelSuperseded(earlier, rec, &env)
		}
		w.routeNew(rec, &env, pt, stored)
		// Only now that a call it starts holds its offset may a commit pass
		// it: marked read before, the record could be committed while its
		// call was not yet entered, and lost in a crash.
		w.mu.Lock()
		pt.seen(rec.Offset)
		w.mu.Unlock()
	}
}

// routeKnown routes a record by its correlation id among what the worker
// knows of that id: it reports whether the record is to be skipped (a
// repeated attempt, the rest of a call that is over or superseded, or a new
// attempt made to wait for the call in flight), or the running call to feed
// it to, or else the stored replies to answer a new call with, and the
// earlier attempt's call in flight that the new call supersedes, if any
// (supersede). Called with w.mu held.
func (w *Worker) routeKnown(rec *kafkaclient.Record, env *wire.Envelope, pt *partTrack) (skip bool, feed *call, stored *storedReply, earlier *call) {
	id, end := env.CorrelationID, env.EndOfStream
	c := w.calls[string(id)]
	if c != nil && env.Cancel() && c.ownAttempt(env) {
		// The running call's own cancel, which may come while another
		// attempt's records are skipped: it is c's, not that attempt's.
		return false, c, nil, nil
	}
	if w.repeats.skipDuplicate(id, env.Attempt, end) {
		if c != nil {
			w.repeats.noteSkipped(c, env)
		}
		return true, nil, nil, nil
	}
	if c != nil {
		other, complete := c.otherAttempt(env), c.in.complete()
		if other && (w.repeats.skipTrailing(id, env.Attempt, end) || w.repeats.wasSuperseded(id, env.Attempt)) {
			// The rest of an earlier attempt's request, whose call is over
			// (a retry of it runs) or was superseded: skipped as such, and
			// its end releases that call's held offset. It is neither c's
			// input nor a new attempt of c's: an attempt once superseded
			// never takes over from a newer one.
			return true, nil, nil, nil
		}
		if other && c.streamsIn && !complete && !env.Cancel() {
			// Another attempt while c's request still streams in: its
			// caller gave up on c (a gateway that died midway writes
			// neither c's end nor its cancel, and c would wait for them
			// until its deadline). The newer attempt is the one that
			// counts: it supersedes c and runs from this record, unless
			// c's handler already returned an outcome to be stored,
			// which the attempt then waits for as if c's request were
			// complete.
			if w.supersede(c) {
				return false, nil, w.repeats.lookup(id), c
			}
			complete = true
		}
		if other && !c.streamsIn {
			// Another attempt of a method without a client stream: its one
			// message is its whole request, whether or not c's own end
			// came (it may never come: Kafka refused it, and the caller,
			// told UNAVAILABLE, retried).
			complete = true
		}
		if complete || other { // not a record of c's own request still to come
			if (!end && complete) || (end && w.emptyStream(env)) {
				// A new attempt of a call still running here (a retry with
				// the same idempotency key; an empty client stream's is one
				// end record): once the call is over, the attempt is
				// answered (answerWaiters); its offset is held until then.
				// The rest of the attempt's records are skipped.
				w.repeats.wait(c, rec, env, pt)
				return true, nil, nil, nil
			}
			if other {
				// Another attempt's end or cancel: c must not take it as
				// its own end or cancel (a gateway writes a cancel once its
				// caller's cancellation reaches it, which can be after the
				// caller retried). Skipped.
				return true, nil, nil, nil
			}
		}
		return false, c, nil, nil
	}
	if w.repeats.skipTrailing(id, env.Attempt, end) || w.repeats.wasSuperseded(id, env.Attempt) {
		return true, nil, nil, nil
	}
	// An end-of-stream record too: the whole request of an empty client
	// stream repeated, or the end of an attempt whose earlier records were
	// answered and committed by the partition's previous owner (the rest of
	// an attempt is skipped as trailing only by the worker that answered
	// it). Either way it must not run the call again.
	return false, nil, w.repeats.lookup(id), nil
}

// supersede lets a newer attempt with c's correlation id take over from c,
// a call whose request still streams in, and reports whether it did: when
// c's handler still runs (or has yet to), c is marked superseded, and
// handle then cancels it (cancelSuperseded): it ends ABORTED, its outcome
// not stored; when the handler already returned an outcome not to be
// stored, c ends with it, and the newer attempt runs again, as a retry of
// a failed call does. It does not when c runs no handler (it is answered
// from stored replies, or rejected) or returned an outcome to be stored:
// the newer attempt is answered from that.
//
// Superseded, c leaves the calls in flight by id, for the newer attempt's
// call to take its place, and stays among the calls drained on rebalance
// and shutdown (detached) until it is over. The rest of c's request is
// skipped (trailing; its end releases c's held offset), and c's attempt is
// remembered as superseded, so that no record of it takes over again.
// Called with w.mu held.
func (w *Worker) supersede(c *call) bool {
	if c.wm == nil {
		return false
	}
	if !c.decision.CompareAndSwap(outcomeOpen, outcomeSuperseded) && c.decision.Load() != outcomeNotStored {
		return false
	}
	delete(w.calls, c.id)
	w.detached[c.id] = append(w.detached[c.id], c)
	w.repeats.supersede(c.id, c.attemptID())
	return true
}

// undetach takes c out of the superseded calls in flight, and reports
// whether it was one. Called with w.mu held.
func (w *Worker) undetach(c *call) bool {
	list := w.detached[c.id]
	i := slices.Index(list, c)
	if i < 0 {
		return false
	}
	if list = slices.Delete(list, i, i+1); len(list) == 0 {
		delete(w.detached, c.id)
	} else {
		w.detached[c.id] = list
	}
	return true
}

// cancelSuperseded cancels the handler of c, which the attempt of rec
// superseded, and counts and logs it.
func (w *Worker) cancelSuperseded(c *call, rec *kafkaclient.Record, env *wire.Envelope) {
	c.cancel(errSuperseded)
	w.countSuperseded()
	w.cfg.logger.Info("kafkarpc: a newer attempt supersedes a call whose request was still streaming in", "method", c.method(),
		"correlation_id", c.id, "attempt", string(c.attemptID()), "newer_attempt", string(env.Attempt),
		"topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "superseded_offset", c.first)
}

// testHookFeed, when set (tests only, before the worker starts), runs
// between routing a record to its call in flight and feeding it: the window
// in which the call may be released first.
var testHookFeed func(id string, end bool, done <-chan struct{})

// endFed completes what release did for c if the end of c's request reached
// c only after c was released (handle routes a record under w.mu and feeds
// it after unlocking): as skipTrailing does at that record when c is
// already gone, the trail is dropped and c's held offset released. Without
// it the offset stayed held until the call's deadline (at most
// WorkerMaxCallDuration), holding back the partition's commits.
func (w *Worker) endFed(c *call) {
	w.mu.Lock()
	if c.trailed {
		c.trailed = false
		w.repeats.lateEnd(c)
	}
	w.mu.Unlock()
}

// emptyStream reports whether env, an end-of-stream record, is the whole
// request of an empty client stream when it follows the end of its call's
// request: not a cancel, of a method with a client stream.
func (w *Worker) emptyStream(env *wire.Envelope) bool {
	if env.Cancel() {
		return false
	}
	wm := w.lookup(env.Service, env.Method)
	return wm != nil && wm.spec.Kind.clientStreams()
}

// routeNew serves a record of no call in flight: it starts a call, answers
// it from stored (the replies of an earlier call with its correlation id),
// rejects it, or skips it.
func (w *Worker) routeNew(rec *kafkaclient.Record, env *wire.Envelope, pt *partTrack, stored *storedReply) {
	names := &w.cfg.names
	if env.CorrelationID == nil {
		w.routeOneway(rec, env, pt)
		return
	}
	if env.EndOfStream {
		// An end-of-stream record of a call not in flight here: the whole
		// request of an empty client stream, or else the end (or a late
		// cancel) of a call that is over. With a stored outcome it is
		// answered from it, below, whichever it is.
		// One that names no method the worker serves is rejected below,
		// as its first record would be: it may be the whole request of an
		// empty client stream, whose caller waits for the answer.
		if env.Cancel() {
			return
		}
		if wm := w.lookup(env.Service, env.Method); wm != nil && !wm.spec.Kind.clientStreams() {
			return
		}
	}
	id := string(env.CorrelationID)
	if len(env.ReplyTo) == 0 {
		w.stats.malformed.Add(1)
		w.countSkipped("malformed")
		w.cfg.logger.Warn("kafkarpc: skipping request without reply topic", "header", names.ReplyTo,
			"correlation_id", id, "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
		return
	}
	if problem := topicname.Problem(env.ReplyTo); problem != "" {
		// No reply could reach its caller: the handler is not run for
		// it, and the record is not held while Kafka refuses the replies.
		w.stats.malformed.Add(1)
		w.countSkipped("malformed")
		w.cfg.logger.Warn("kafkarpc: skipping request whose reply topic is not a valid Kafka topic name", "header", names.ReplyTo,
			"reply_topic", string(env.ReplyTo), "problem", problem,
			"correlation_id", id, "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
		return
	}
	wm, fail := w.resolve(rec, env)
	switch {
	case fail != nil:
		w.stats.malformed.Add(1)
		w.countSkipped("malformed")
		w.rejectCall(rec, env, pt, id, fail, false)
	case stored != nil:
		w.countDuplicate()
		w.answerCall(rec, env, pt, id, nil, stored.records, false)
	default:
		w.startCall(rec, env, pt, id, wm, false)
	}
}

// resolve returns the method a request names, or the status to reject it
// with when it names none that the worker serves.
func (w *Worker) resolve(rec *kafkaclient.Record, env *wire.Envelope) (*workerMethod, *status.Status) {
	names := &w.cfg.names
	switch {
	case len(env.Service) == 0:
		return nil, status.Newf(codes.Internal, "request at %s has no %s header", recordPlace(rec), names.Service)
	case len(env.Method) == 0:
		return nil, status.Newf(codes.Internal, "request at %s has no %s header", recordPlace(rec), names.Method)
	}
	if wm := w.lookup(env.Service, env.Method); wm != nil {
		return wm, nil
	}
	return nil, status.Newf(codes.Unimplemented, "unknown method /%s/%s (request at %s)", env.Service, env.Method, recordPlace(rec))
}

// routeOneway serves a record without a correlation id. A oneway unary
// request is a whole call in one record. The records of a oneway client
// stream carry nothing to group them by: they are for other consumers of
// the topic, not for a worker; they and anything else without an id are
// skipped. A proxied method's kind is not known, nor its routes: the proxy
// forwards each of its records that carries a message as a call of that
// one message (a oneway unary call whole; of a oneway client stream, each
// message a call of its own).
func (w *Worker) routeOneway(rec *kafkaclient.Record, env *wire.Envelope, pt *partTrack) {
	switch wm := w.lookup(env.Service, env.Method); {
	case wm == nil:
	case wm.proxied && rec.Value != nil:
		w.startCall(rec, env, pt, "", wm, true)
		return
	case wm.spec.Kind == KindUnary && w.onewayRoute(wm.spec, rec.Topic):
		w.startCall(rec, env, pt, "", wm, false)
		return
	}
	w.stats.skippedNoID.Add(1)
	w.countSkipped("no_correlation_id")
	w.cfg.logger.Warn("kafkarpc: skipping request without correlation id", "header", w.cfg.names.CorrelationID,
		"topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
}

// onewayRoute reports whether topic is the request topic of a oneway route
// of m.
func (w *Worker) onewayRoute(m *MethodSpec, topic string) bool {
	for _, r := range m.Routes {
		if r.Oneway && w.cfg.topic(r.Topic) == topic {
			return true
		}
	}
	return false
}

// maxReplyTopics bounds the reply topic names the worker keeps.
const maxReplyTopics = 256

// replyTopic returns the reply topic named by b, without building a string
// per call for the topics the worker saw before. Called with w.mu held.
func (w *Worker) replyTopic(b []byte) string {
	if t, ok := w.replyTopics[string(b)]; ok {
		return t
	}
	t := string(b)
	if len(w.replyTopics) < maxReplyTopics {
		w.replyTopics[t] = t
	}
	return t
}
