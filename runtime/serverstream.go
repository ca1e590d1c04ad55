package runtime

import (
	"context"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// requestQueue is a call's request stream: the records the dispatcher fed
// it, kept for retries and dead letters, and how far the handler read.
type requestQueue struct {
	mu   sync.Mutex
	all  []*kafkaclient.Record  // every request data record (those not handed out yet, with release)
	one  [1]*kafkaclient.Record // all's first backing array: a unary call's request needs no other
	next int                    // index in all of the next record to hand out
	// release: nothing reads the records again once handed out (no retry,
	// no dead letter), so a client stream's records are let go as the
	// handler reads them rather than kept until the call's end (next
	// then counts from the first record not read).
	release bool
	// bound is WorkerRequestBufferBytes for a call whose handler reads a
	// client stream, else 0: no bound. unread is the size of the records
	// no attempt read yet (all[read:]; a retry reads them again from 0).
	// Past the bound, overflow is set (the call's context cause): the
	// records are let go, later ones dropped. Once the handler's last
	// attempt returned (settle), nothing counts any more.
	bound       int
	unread      int
	read        int
	overflow    error
	overGen     int // gen when overflow was set: past it, no attempt read after the overflow
	settled     bool
	ended       bool          // the request stream is complete
	cancelled   bool          // it ended with the caller's cancel, not the whole stream: no io.EOF
	undecodable bool          // a request message could not be decoded
	signal      chan struct{} // wakes a waiting recv; capacity 1, made by the first recv that waits
	gen         int           // the handler attempt reading (call.endAttempt)
}

// replyState is what a call's handler sent and set on its reply stream.
type replyState struct {
	mu        sync.Mutex
	header    metadata.MD
	trailer   metadata.MD
	frozen    bool                 // headers went out with the first reply
	replyHdrs []kafkaclient.Header // the headers of every data record, once frozen
	endHdrs   []kafkaclient.Header // room for the end record's headers, in replyHdrs' allocation
	sent      int                  // messages sent
	held      []byte               // the response of a single-response call, sent by finish
	aborted   bool                 // nothing more goes out
	refused   bool                 // a message the handler sent was refused: the call's context had ended
	closed    bool                 // finish took the header and trailer: later ones are refused
	gen       int                  // the handler attempt sending (call.endAttempt)
}

// feed hands one request record, whose headers env holds, to the call.
func (c *call) feed(rec *kafkaclient.Record, env *wire.Envelope) {
	// A cancel may follow the end of the request stream (unary and
	// server-streaming calls end their requests at once).
	if env.Cancel() {
		c.cancel(errCallerCancelled)
	}
	q := &c.in
	q.mu.Lock()
	if q.ended {
		q.mu.Unlock()
		return
	}
	var overflow error
	switch {
	case rec.Value == nil:
		q.ended = true
		q.cancelled = env.Cancel()
	case q.overflow != nil, q.settled && q.release:
		// Dropped: the call ends RESOURCE_EXHAUSTED, or no handler reads
		// the stream any more and nothing reads it again. The queue does
		// not end here, so that the rest of the request is still routed to
		// the call (and skipped once it is over), not taken for a new
		// attempt of it.
	default:
		q.all = append(q.all, rec)
		if q.bound > 0 && !q.settled {
			q.unread += recordSize(rec.Value, rec.Headers)
			if q.unread > q.bound {
				overflow = fmt.Errorf("%w: %d bytes of request messages not read, past WorkerRequestBufferBytes (%d): its handler reads more slowly than its caller sends",
					errRequestOverflow, q.unread, q.bound)
				q.overflow, q.overGen = overflow, q.gen
				clear(q.all)
				q.all, q.next, q.read, q.unread = q.all[:0], 0, 0, 0
			}
		}
	}
	signal := q.signal
	q.mu.Unlock()
	if overflow != nil {
		c.cancel(overflow)
		c.w.cfg.logger.Warn("kafkarpc: a call's request messages overflowed the worker's buffer: they are let go", "method", c.method(),
			"correlation_id", c.id, "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "error", overflow)
	}
	wake(signal)
}

// settle ends the counting of unread request bytes once the handler's last
// attempt returned (records that come after are no handler's to read, and
// are dropped when nothing reads them again), and returns the overflow
// that came before that return, or that refused a retry (cutShort), if
// any: the call then ends RESOURCE_EXHAUSTED whatever its handler
// returned, since it may have returned OK over the stream it got cut
// short. An overflow after the last return (in the few statements until
// settle) leaves the handler's outcome as it is. Called by run, after the
// last attempt's endAttempt and retry.
func (q *requestQueue) settle(cutShort bool) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.settled = true
	if q.overflow != nil && (q.overGen < q.gen || cutShort) {
		return q.overflow
	}
	return nil
}

// overflowed reports whether the call's request overflowed its bound.
func (q *requestQueue) overflowed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.overflow != nil
}

// endInput marks the call's input complete without an end-of-stream record
// of its own; only before the call runs.
func (c *call) endInput() {
	c.in.mu.Lock()
	c.in.ended = true
	c.in.mu.Unlock()
}

func (q *requestQueue) complete() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.ended
}

func (q *requestQueue) isUndecodable() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.undecodable
}

// endAttempt ends the stream of the handler attempt that just returned, as
// gRPC ends a stream when its handler returns: a goroutine the handler left
// behind gets an error from RecvMsg and SendMsg, and can neither take the
// request messages of the next attempt (a retry reads them again) nor send
// into its replies. Called on the call's goroutine after each attempt.
func (c *call) endAttempt() {
	q := &c.in
	q.mu.Lock()
	q.gen++
	signal := q.signal
	q.mu.Unlock()
	wake(signal) // a reader waiting in recv finds its attempt over
	c.out.mu.Lock()
	c.out.gen++
	c.out.mu.Unlock()
}

// wake wakes a recv waiting on signal, if any; signal may be nil.
func wake(signal chan struct{}) {
	if signal != nil {
		select {
		case signal <- struct{}{}:
		default:
		}
	}
}

// currentAttempt, as the gen of recv, reads for whichever attempt runs.
const currentAttempt = -1

// errAttemptOver is what a handler attempt's stream returns once the
// handler returned.
func (c *call) errAttemptOver() error {
	return status.Errorf(codes.Canceled, "%s: the stream is over: its handler returned", c.method())
}

// rewind starts the request stream over, for a retry.
func (q *requestQueue) rewind() {
	q.mu.Lock()
	q.next = 0 // unread stays: what an attempt read does not count again
	q.mu.Unlock()
}

// records returns a copy of the request data records.
func (q *requestQueue) records() []*kafkaclient.Record {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]*kafkaclient.Record(nil), q.all...)
}

// recv returns the next request record for handler attempt gen, or io.EOF
// at the end of the request stream; an error once that attempt is over.
func (c *call) recv(gen int) (*kafkaclient.Record, error) {
	q := &c.in
	for {
		q.mu.Lock()
		if gen != currentAttempt && q.gen != gen {
			signal := q.signal
			q.mu.Unlock()
			wake(signal) // the wake-up this reader took may have been the next attempt's
			return nil, c.errAttemptOver()
		}
		if q.next < len(q.all) {
			rec := q.all[q.next]
			q.next++
			if q.bound > 0 && q.next > q.read { // its first reading
				q.read = q.next
				q.unread -= recordSize(rec.Value, rec.Headers)
			}
			if q.release {
				q.all[q.next-1] = nil
				if q.next == len(q.all) || (q.next >= 64 && 2*q.next >= len(q.all)) {
					// Drained, or half read: the unread records move to the
					// front, so that a handler always a little behind does
					// not grow the slice without end.
					n := copy(q.all, q.all[q.next:])
					clear(q.all[n:])
					q.all, q.next, q.read = q.all[:n], 0, 0
				}
			}
			q.mu.Unlock()
			return rec, nil
		}
		ended, n, cancelled, overflow := q.ended, q.next, q.cancelled, q.overflow // n: read so far, for a call without a client stream (never released)
		if !ended && q.signal == nil {
			q.signal = make(chan struct{}, 1)
		}
		signal := q.signal
		q.mu.Unlock()
		if overflow != nil {
			// The call ends with the overflow (feed; run forces its
			// status): neither io.EOF nor the messages after those let
			// go. Its context ends before the handler can return.
			c.cancel(overflow)
			return nil, overflowStatus(overflow).Err()
		}
		if ended {
			if cancelled {
				// The caller gave up midway (its cancel ended the stream,
				// after cancelling c.ctx): io.EOF would tell the handler
				// that it has the whole stream. As gRPC's server, the
				// messages read before it and then CANCELLED.
				return nil, contextStatus(c.ctx).Err()
			}
			if n == 0 && !c.wm.spec.Kind.clientStreams() {
				return nil, status.Errorf(codes.Internal, "%s: request stream ended without a message", c.wm.spec.FullMethod())
			}
			return nil, io.EOF
		}
		c.w.flow.awaitInput()
		select {
		case <-signal:
			c.w.flow.inputCame()
		case <-c.ctx.Done():
			c.w.flow.inputCame()
			return nil, contextStatus(c.ctx).Err()
		}
	}
}

// recvMsg decodes the next request message into m.
func (c *call) recvMsg(m any, gen int) error {
	rec, err := c.recv(gen)
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
		c.in.mu.Lock()
		c.in.undecodable = true
		c.in.mu.Unlock()
		return status.Errorf(codes.Internal, "%s: request at %s is not a valid %s: %v",
			c.wm.spec.FullMethod(), recordPlace(rec), msg.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// decodeFirst is the request decoder handed to unary handlers, which call
// it before they return: it reads for the current attempt.
func (c *call) decodeFirst(m any) error {
	err := c.recvMsg(m, currentAttempt)
	if err == io.EOF {
		return status.Errorf(codes.Internal, "%s: request stream ended without a message", c.wm.spec.FullMethod())
	}
	return err
}

// sendMsg produces one reply message, or holds it for finish when the
// method has a single response.
func (c *call) sendMsg(m any, gen int) error {
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
	o := &c.out
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.gen != gen {
		return c.errAttemptOver()
	}
	if o.aborted || c.ctx.Err() != nil {
		// Given up, cancelled by the caller, or past the deadline: as
		// gRPC's SendMsg does once the stream's context is done, nothing
		// more goes out and the handler learns why. Should it return nil
		// all the same, its stream does not end OK over the gap (invoke).
		o.refused = true
		return contextStatus(c.ctx).Err()
	}
	if c.id == "" {
		return nil // oneway: the response goes nowhere
	}
	if !o.frozen {
		c.freezeHeaders()
	}
	o.sent++
	if !c.wm.spec.Kind.serverStreams() {
		// The one response of a unary or client-streaming call goes out with
		// the end-of-stream record, so that both tend to share one produce
		// request and one fetch at the gateway (measured: the gateway then
		// sees the end 7 µs after the response instead of 35 µs).
		o.held = b
		return nil
	}
	c.produce(b, o.replyHdrs)
	return nil
}

// freezeHeaders fixes the headers of the call's data records: the
// correlation id, the response headers, the trace context and the worker's
// incarnation, and the request's attempt id. Called with out.mu held.
func (c *call) freezeHeaders() {
	o := &c.out
	o.frozen = true
	n := 1 + len(o.header) + len(c.traceHdrs) + len(c.w.incarnation) + len(c.attempt)
	// One allocation for these and for the end record's headers (see
	// produceEnd), which a trailer set later may still outgrow.
	all := make([]kafkaclient.Header, 0, n+endHeaders+len(c.attempt)+len(o.trailer))
	hs := wire.AppendReply(all[:0:n], &c.w.cfg.names, c.idb, o.header, c.traceHdrs...)
	o.replyHdrs = append(append(hs, c.w.incarnation...), c.attempt...)
	o.endHdrs = all[n:n]
}

// setHeader adds md to the call's response headers, and sends them when
// send is set. gen is the handler attempt whose stream or context sets
// them: a goroutine an attempt that returned left behind is refused, as its
// SendMsg is.
func (c *call) setHeader(md metadata.MD, send bool, gen int) error {
	o := &c.out
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.gen != gen {
		return c.errAttemptOver()
	}
	if o.frozen || o.closed {
		return status.Error(codes.Internal, "transport: the stream is done or SendHeader was already called")
	}
	o.header = metadata.Join(o.header, withoutTransport(md))
	if send {
		c.freezeHeaders()
	}
	return nil
}

// setTrailer adds md to the call's trailer; once the call ended (a
// goroutine of the handler's setting it late) it is refused, as grpc-go
// refuses it on a stream that is done; so is a goroutine that an attempt
// that returned left behind (gen, as in setHeader).
func (c *call) setTrailer(md metadata.MD, gen int) error {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	if c.out.gen != gen {
		return c.errAttemptOver()
	}
	if c.out.closed {
		return status.Error(codes.Internal, "transport: the stream is done")
	}
	c.out.trailer = metadata.Join(c.out.trailer, withoutTransport(md))
	return nil
}

// close stops the reply stream: nothing more the handler sends goes out. It
// reports whether the call was aborted before, and how many messages it
// sent.
func (o *replyState) close() (aborted bool, sent int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	aborted, sent = o.aborted, o.sent
	o.aborted, o.closed = true, true
	return aborted, sent
}

// untouched reports whether nothing went out yet and the call was not
// aborted: a retry may start over.
func (o *replyState) untouched() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.sent == 0 && !o.aborted
}

// reset forgets what a failed attempt set, for a retry.
func (o *replyState) reset() {
	o.mu.Lock()
	o.header, o.trailer, o.frozen, o.held, o.sent, o.refused = nil, nil, false, nil, 0, false
	o.mu.Unlock()
}

// wasRefused reports whether a message the handler sent was refused
// because the call's context had ended.
func (o *replyState) wasRefused() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.refused
}

// serverStream is the grpc.ServerStream a handler attempt gets (gen: which
// attempt, see call.endAttempt; ctx: the attempt's context, attemptContext).
type serverStream struct {
	c   *call
	gen int
	ctx context.Context
}

func (s serverStream) SetHeader(md metadata.MD) error  { return s.c.setHeader(md, false, s.gen) }
func (s serverStream) SendHeader(md metadata.MD) error { return s.c.setHeader(md, true, s.gen) }
func (s serverStream) SetTrailer(md metadata.MD)       { _ = s.c.setTrailer(md, s.gen) }
func (s serverStream) Context() context.Context        { return s.ctx }
func (s serverStream) SendMsg(m any) error             { return s.c.sendMsg(m, s.gen) }
func (s serverStream) RecvMsg(m any) error             { return s.c.recvMsg(m, s.gen) }

// transportStream lets grpc.SetHeader, grpc.SendHeader, grpc.SetTrailer and
// grpc.Method work inside handlers: those of the call's first attempt, whose
// context is the call's (no allocation for the call that is not retried).
type transportStream struct{ c *call }

func (t transportStream) Method() string                  { return t.c.method() }
func (t transportStream) SetHeader(md metadata.MD) error  { return t.c.setHeader(md, false, 0) }
func (t transportStream) SendHeader(md metadata.MD) error { return t.c.setHeader(md, true, 0) }
func (t transportStream) SetTrailer(md metadata.MD) error { return t.c.setTrailer(md, 0) }

// retryTransportStream is transportStream for a retry, attempt gen: a
// goroutine an earlier attempt left behind holds that attempt's context, so
// what it sets through it is refused, as what it sends on its stream is.
type retryTransportStream struct {
	c   *call
	gen int
}

func (t retryTransportStream) Method() string { return t.c.method() }
func (t retryTransportStream) SetHeader(md metadata.MD) error {
	return t.c.setHeader(md, false, t.gen)
}
func (t retryTransportStream) SendHeader(md metadata.MD) error {
	return t.c.setHeader(md, true, t.gen)
}
func (t retryTransportStream) SetTrailer(md metadata.MD) error { return t.c.setTrailer(md, t.gen) }

// attemptContext is the context of handler attempt gen: the call's for the
// first, below it with the attempt's transport stream for a retry. All
// attempts end with the call's context.
func (c *call) attemptContext(gen int) context.Context {
	if gen == 0 {
		return c.ctx
	}
	return grpc.NewContextWithServerTransportStream(c.ctx, retryTransportStream{c, gen})
}
