package runtime

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

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

// gwCall is one call in flight at the gateway: the request side it produces
// and the mailbox its reply router fills.
type gwCall struct {
	g       *Gateway
	m       *MethodSpec
	rp      *routePrep
	id      string // correlation id; empty when oneway
	attempt []byte // the attempt id of a keyed call (wire.AttemptMetadata), else nil
	key     []byte // the record key of every record; set before the first is produced
	// stamp is the timestamp of every request record of a call with a
	// deadline: the instant its timeout header was measured, which the
	// worker counts the timeout from (WIRE.md). Zero without a deadline
	// (the client stamps the record when it is produced).
	stamp   time.Time
	headers []kafkaclient.Header
	start   time.Time
	tel     *methodTelemetry
	ctx     context.Context // the caller's
	send    trace.Span      // producing the request stream
	// sendOpen counts what keeps a recording send span open: the request
	// side until it ends, and each request record until Kafka answered
	// it, so that the span ends with a record Kafka refused (sendErr, the
	// first error) rather than before Kafka answered. Unused (zero) when
	// the span records nothing.
	sendOpen atomic.Int32
	sendErr  error // guarded by mu
	// spanless is set when, as the call began, the tracer recorded nothing
	// (tracing.idle) and ctx carried no span context: the call's spans
	// need not look for one in ctx again (tracing.startSpanless).
	spanless bool

	// request side
	reqMu      sync.Mutex
	reqEnded   bool
	cancelSent bool
	keyPending bool          // the key comes from the first request message (KeyField), not sent yet
	reqDone    chan struct{} // closed when the request side ended; made by awaitRequestEnd, the one reader
	unacked    sync.WaitGroup
	onProduced func(*kafkaclient.Record, error) // c.delivered, bound once
	recs       recordSlots                      // the first records produced (a unary call's two): no allocation each

	// reply side, filled by the router
	mu       sync.Mutex
	queue    []reply
	queued   int // replyBytes of the records in queue
	err      error
	signal   chan struct{} // capacity 1: something was queued or failed
	finished bool
	// The headers of the first reply record and of the end-of-stream
	// record, the only ones awaitReplies reads in full: a data record
	// between them is queued with its served-by header alone, so a long
	// stream's queue holds small elements (copying whole envelopes as the
	// queue grew was 7% of a server stream's CPU). Written by deliver
	// before the record is queued, read by awaitReplies after it took the
	// record from the queue (both under mu).
	firstEnv, endEnv wire.Envelope
	anyQueued        bool // a reply record was queued: the next is not the first
	endQueued        bool // the end-of-stream record was queued: later records are never read

	in  rawRequest // the request of a unary call relayed as bytes (Gateway.unaryRaw)
	out rawReply   // its response (unaryRaw)

	// Inline backing arrays, so that a unary call's slices cost no
	// allocation of their own: the reply queue's two (awaitReplies swaps
	// them), the request headers and the correlation id.
	qbuf  [2]reply
	qbuf2 [1]reply
	hbuf  [8]kafkaclient.Header
	idbuf [72]byte
	tbuf  [16]byte // the timeout header's value
}

// begin chooses the route, computes the correlation id and headers, and
// registers the call with its reply router. md is the caller's metadata:
// the incoming metadata of a gateway's gRPC call, the outgoing metadata of a
// ClientConn's call; it is read, never changed.
func (g *Gateway) begin(ctx context.Context, m *MethodSpec, md metadata.MD) (*gwCall, error) {
	return g.beginCall(new(gwCall), ctx, m, md)
}

// beginCall is begin with the call's memory given: c is new, its fields
// zero but for in (a unary request relayed as bytes, decoded into the call's
// own memory before the call begins).
func (g *Gateway) beginCall(c *gwCall, ctx context.Context, m *MethodSpec, md metadata.MD) (*gwCall, error) {
	if m.Fetch != nil || len(m.Routes) == 0 {
		return nil, g.refused(ctx, m, status.Errorf(codes.Unimplemented, "%s: not a request/reply method", m.FullMethod()))
	}
	p, err := g.prepare(ctx, m)
	if err != nil {
		return nil, g.refused(ctx, m, status.Errorf(lookupCode(err), "%v", err)) // PERMISSION_DENIED: a reply topic the gateway may not read
	}
	if g.ctx.Err() != nil {
		// Close began: the call would end UNAVAILABLE (CANCELLED for a
		// ClientConn) before its reply, so nothing of it goes to Kafka,
		// where a worker would run it while its caller retries elsewhere.
		return nil, g.refused(ctx, m, status.Errorf(g.closedCode(), "%s: %s", m.FullMethod(), g.closingMessage()))
	}
	rp := p.route(md)
	c.g, c.m, c.rp, c.key, c.keyPending = g, m, rp, rp.key, rp.route.KeyField != nil && rp.key == nil
	c.signal, c.start, c.tel, c.ctx = signals.Get().(chan struct{}), time.Now(), p.tel, ctx
	c.onProduced = c.delivered
	c.queue = c.qbuf[:0]
	c.tel.begin(ctx)
	// What g.trc.start looks for, looked for once for all the call's spans.
	c.spanless = g.trc.idle() && !trace.SpanContextFromContext(ctx).IsValid()
	sendCtx, send := ctx, idleSpan
	if !c.spanless {
		sendCtx, send = g.trc.tracer.Start(ctx, rp.sendName, rp.sendOpts...)
	}
	c.send = send
	if send.IsRecording() {
		c.sendOpen.Store(1) // the request side
	}
	if err := ctx.Err(); err != nil {
		// The caller gave up already: nothing reaches the worker (grpc-go
		// creates no stream for a context that is done).
		return nil, c.abandon(status.FromContextError(err).Err())
	}
	if err := g.checkTopic(ctx, m, rp.route.Topic); err != nil {
		return nil, c.abandon(err) // topics.go: NOT_FOUND at once when the topic does not exist
	}
	if !c.spanless { // else sendCtx, ctx itself, carries no span context to inject
		md = g.trc.inject(sendCtx, md)
	}
	req := wire.Request{Route: rp.fixed, Metadata: md, Keep: g.keep}
	if g.cfg.identity != nil {
		if who, ok := g.cfg.identity(ctx); ok {
			req.Identity = []byte(who)
		}
	}
	if !rp.route.Oneway {
		if err := c.correlate(ctx, md, &req); err != nil {
			return nil, c.abandon(err)
		}
	} else if c.key == nil && !c.keyPending {
		c.key = []byte(wire.NewUUID()) // keeps a oneway stream's records in order on one partition
	}
	if dl, ok := ctx.Deadline(); ok {
		now := time.Now()
		if !now.Before(dl) {
			return nil, c.abandon(status.Error(codes.DeadlineExceeded, "deadline exceeded before the request was sent"))
		}
		// The worker counts the timeout from the record's timestamp, which
		// Kafka keeps in milliseconds, and reads it as written, in whole
		// units rounded down: stamp the record with the millisecond Kafka
		// keeps and round the timeout up, as gRPC does, so that the
		// worker's deadline is never before the caller's (it is at most a
		// unit after it).
		c.stamp = now.Truncate(time.Millisecond)
		req.Timeout, req.HasTimeout = ceilTimeout(dl.Sub(c.stamp)), true
	}
	if err := ctx.Err(); err != nil {
		// The caller gave up while the call waited for its topic's lookup
		// (or its reply partition's assignment): nothing reaches the
		// worker, as above.
		return nil, c.abandon(status.FromContextError(err).Err())
	}
	req.Scratch = c.tbuf[:0]
	c.headers = wire.AppendRequest(c.hbuf[:0], &g.cfg.names, &req) // grows out of hbuf when a call has more headers
	if rp.router != nil {
		if !rp.router.add(c) {
			return nil, c.abandon(status.Errorf(codes.AlreadyExists, "%s: a call with correlation id %q is already in flight", m.FullMethod(), c.id))
		}
		if rp.router.sharded && c.id != "" {
			// The reply topic may have grown since the id was drawn (or
			// its partition read): the router reads, for the calls it
			// holds, the partitions of the counts it learns, and this call
			// is held from now on, so look once more before sending.
			if err := rp.router.ensureReading(ctx, c.id); err != nil {
				rp.router.remove(c)
				if ctx.Err() != nil {
					return nil, c.abandon(status.FromContextError(ctx.Err()).Err())
				}
				return nil, c.abandon(status.Errorf(codes.Unavailable, "%s: %v", m.FullMethod(), err))
			}
		}
		// Asked once the call is registered: a refusal the router sees
		// after this either finds the call or was seen here.
		if err := rp.router.refusal(); err != nil {
			rp.router.remove(c)
			return nil, c.abandon(status.Errorf(codes.PermissionDenied, "%s: %v", m.FullMethod(), err))
		}
	}
	if c.id != "" && send.IsRecording() {
		send.SetAttributes(attribute.String("messaging.message.conversation_id", c.id))
	}
	return c, nil
}

// route returns the first route of p whose conditions md meets, or the
// last (the method's default).
func (p *methodPrep) route(md metadata.MD) *routePrep {
	for i := range p.routes {
		if matchRoute(p.routes[i].route.When, md) {
			return &p.routes[i]
		}
	}
	return &p.routes[len(p.routes)-1]
}

// correlate gives a call that expects replies its correlation id (from the
// caller's idempotency-key, or fresh) and, when keyed, its attempt id, and
// puts both on req; the id is also the record key unless the route sets a
// key or a key field.
func (c *gwCall) correlate(ctx context.Context, md metadata.MD, req *wire.Request) error {
	rp := c.rp
	base := ""
	if v := md.Get(wire.IdempotencyKeyMetadata); len(v) > 0 && v[0] != "" {
		base = v[0]
	}
	if base == "" && !rp.router.sharded {
		// A fresh UUID and the route's hash, written once in c.idbuf: the
		// header, the key and (as c.id) the router's map key share it.
		b := wire.AppendUUID(c.idbuf[:0])
		b = append(b, rp.hash...)
		c.id = unsafe.String(unsafe.SliceData(b), len(b)) // b is never written again
		req.CorrelationID = b
		if c.key == nil && !c.keyPending {
			c.key = b
		}
		return nil
	}
	c.id = rp.router.correlationID(base, rp.hash)
	if base != "" {
		// A retry shares the correlation id of the earlier attempts: the
		// attempt id keeps their late replies out of this one.
		c.attempt = []byte(wire.NewUUID())
		req.Attempt = c.attempt
		if err := rp.router.ensureReading(ctx, c.id); err != nil {
			if ctx.Err() != nil {
				return status.FromContextError(ctx.Err()).Err() // the caller gave up, not Kafka
			}
			return status.Errorf(codes.Unavailable, "%s: %v", c.m.FullMethod(), err)
		}
	}
	req.CorrelationID = []byte(c.id) // one copy for the header and the key: records only read them
	if c.key == nil && !c.keyPending {
		c.key = req.CorrelationID
	}
	return nil
}

// unary sends in as the call's one request message and its end, then
// decodes the one response into out (a oneway call's out is reset once
// Kafka acknowledged the request). onHeader and onTrailer receive the
// worker's response metadata. The gateway's typed unary methods and a
// ClientConn's Invoke both end here.
func (c *gwCall) unary(ctx context.Context, in, out proto.Message, onHeader, onTrailer func(metadata.MD)) error {
	b, err := proto.Marshal(in)
	if err != nil {
		return status.Errorf(codes.Internal, "%s: encoding request: %v", c.m.FullMethod(), err)
	}
	oneway, err := c.exchange(ctx, b, onHeader, onTrailer, func(rec *kafkaclient.Record) error { return decodeReply(c.m, rec, out) })
	if oneway && err == nil {
		proto.Reset(out)
	}
	return err
}

// unaryRaw is unary for a request already encoded (b, only read): the
// response's bytes, checked to be well-formed protobuf but not decoded,
// become c.out (empty for a oneway call). Response metadata go to ctx's
// gRPC stream. A gateway's unary methods relayed as bytes end here
// (Gateway.ServiceDesc).
func (c *gwCall) unaryRaw(ctx context.Context, b []byte) error {
	oneway, err := c.exchange(ctx, b, func(md metadata.MD) { _ = grpc.SetHeader(ctx, md) }, func(md metadata.MD) { _ = grpc.SetTrailer(ctx, md) },
		func(rec *kafkaclient.Record) error {
			if err := checkRawReply(c.m, rec); err != nil {
				return err
			}
			c.out.set(rec.Value)
			return nil
		})
	if oneway && err == nil {
		c.out.set([]byte{})
	}
	return err
}

// exchange sends b as the call's one request message and its end, then
// hands the one response record to onReply (onHeader and onTrailer receive
// the worker's response metadata), or, when the call is oneway, waits until
// Kafka acknowledged the request and reports oneway.
func (c *gwCall) exchange(ctx context.Context, b []byte, onHeader, onTrailer func(metadata.MD), onReply func(*kafkaclient.Record) error) (oneway bool, err error) {
	c.sendData(b)
	c.sendEnd(false)
	if c.rp.route.Oneway {
		return true, c.awaitAcks(ctx)
	}
	got := false
	st := c.awaitReplies(ctx, onHeader, func(rec *kafkaclient.Record) error {
		if got {
			return status.Errorf(codes.Internal, "%s: worker sent more than one response to a unary call (%s)", c.m.FullMethod(), recordPlace(rec))
		}
		got = true
		return onReply(rec)
	}, onTrailer)
	if st != nil {
		return false, st
	}
	if !got {
		return false, status.Errorf(codes.Internal, "%s: worker ended the call without a response", c.m.FullMethod())
	}
	return false, nil
}

// signals holds wake-up channels (capacity 1) of calls that ended, for
// calls to come: a channel is one allocation per call otherwise. A channel
// may come with a token in it, or receive one later from the call it
// served (a produce failure reported after the call ended): to its new call
// that is a spurious wake-up, which awaitReplies, the one reader, takes as
// a reason to look at the queue again and nothing more.
var signals = sync.Pool{New: func() any { return make(chan struct{}, 1) }}

// ceilTimeout rounds d > 0 up to the unit wire.AppendTimeout writes it in
// (milliseconds up to 99999999 of them, else seconds, minutes, hours), so
// that the timeout written is not shorter than d. A d within an hour of the
// longest time.Duration (a deadline in the year 9999, say) stays as it is:
// rounded up it would not fit, and it is as long as a timeout gets.
func ceilTimeout(d time.Duration) time.Duration {
	const most = 99999999
	for _, u := range [...]time.Duration{time.Millisecond, time.Second, time.Minute, time.Hour} {
		n := d / u
		if d%u != 0 {
			n++
		}
		if n <= most || u == time.Hour {
			if n > math.MaxInt64/u {
				return d
			}
			return n * u
		}
	}
	return d
}

// releaseSignal gives the call's wake-up channel to calls to come. Called
// once, after end, by the goroutine that awaited the replies, when nothing
// will await them again.
func (c *gwCall) releaseSignal() { signals.Put(c.signal) }

// refused counts a call of m that failed with err before it could begin
// (its method's telemetry is not made yet, or it is no call of this
// gateway's kind): as a call that began and ended at once, so that the
// calls by code include it. Returns err.
func (g *Gateway) refused(ctx context.Context, m *MethodSpec, err error) error {
	method := attribute.String("rpc.method", m.FullMethod())
	g.met.begin(ctx, method)
	g.met.end(ctx, method, time.Now(), err)
	return err
}

// abandon ends the telemetry of a call that begin could not start.
func (c *gwCall) abandon(err error) error {
	spanEnd(c.send, err)
	c.tel.end(c.ctx, c.start, err)
	return err
}

// end unregisters the call and, if the request stream is still open, closes
// it: with a cancel status when the call did not finish normally. err is the
// call's outcome.
func (c *gwCall) end(err error) {
	c.sendEnd(!c.over())
	if c.rp.router != nil {
		c.rp.router.remove(c)
	}
	c.tel.end(c.ctx, c.start, err)
}

// over reports whether the call finished: its reply stream ended (or, for
// a oneway call, Kafka acknowledged its requests). A request stream ending
// after that is no cancel.
func (c *gwCall) over() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.finished
}

// produce produces one request record. Called with reqMu held.
func (c *gwCall) produce(value []byte, headers []kafkaclient.Header) {
	rec := c.recs.next()
	*rec = kafkaclient.Record{
		Topic:     c.rp.route.Topic,
		Partition: kafkaclient.AnyPartition,
		Key:       c.key,
		Value:     value,
		Headers:   headers,
		Timestamp: c.stamp,
	}
	c.unacked.Add(1)
	for { // counted only while the span is open: once closed it stays so
		if n := c.sendOpen.Load(); n == 0 || c.sendOpen.CompareAndSwap(n, n+1) {
			break
		}
	}
	c.g.client.Produce(rec, c.rp.route.Acks, c.onProduced)
}

// sendDone lets go of one thing that keeps the send span open (see
// sendOpen), with its error, if any; the last one ends the span with the
// first error.
func (c *gwCall) sendDone(err error) {
	if c.sendOpen.Load() == 0 {
		return // the span records nothing
	}
	c.mu.Lock()
	if c.sendErr == nil {
		c.sendErr = err
	}
	err = c.sendErr
	c.mu.Unlock()
	if c.sendOpen.Add(-1) == 0 {
		spanEnd(c.send, err)
	}
}

func (c *gwCall) delivered(rec *kafkaclient.Record, err error) {
	var failed error
	switch {
	case err == nil:
	case tooLarge(err):
		failed = status.Errorf(codes.ResourceExhausted, "%s: producing request to %s: %v", c.m.FullMethod(), rec.Topic, err) // a retry cannot succeed
		c.failProduce(failed)
	case errors.Is(err, kafkaclient.ErrNotAuthorized):
		failed = status.Errorf(codes.PermissionDenied, "%s: producing request to %s: %v", c.m.FullMethod(), rec.Topic, err) // a retry cannot succeed
		c.failProduce(failed)
	case errors.Is(err, kafkaclient.ErrRecordRefused):
		// INVALID_RECORD, POLICY_VIOLATION, ...: the topic takes no such
		// record until someone changes it; UNAVAILABLE would invite retries.
		failed = status.Errorf(codes.FailedPrecondition, "%s: producing request to %s: %v", c.m.FullMethod(), rec.Topic, err)
		c.failProduce(failed)
	default:
		// An error that does not say why may still mean the topic is gone:
		// librdkafka fails a record it had queued for a broker connection it
		// retires when the topic's metadata goes away ("Broker handle
		// destroyed"). One that says the topic is unknown may be stale:
		// librdkafka keeps a topic it saw missing as such for up to a second
		// after it is created again, in each of its producers. Look the
		// topic up, off the client's delivery goroutine, before answering:
		// NOT_FOUND once Kafka says it is missing, PERMISSION_DENIED when
		// the gateway may not describe it, else UNAVAILABLE, which
		// invites retries.
		topic := rec.Topic
		unavailable := status.Errorf(codes.Unavailable, "%s: producing request to %s: %v", c.m.FullMethod(), topic, err)
		if c.g.background(func(ctx context.Context) {
			defer c.unacked.Done() // after fail: awaitAcks reads the error once all are done
			failed := unavailable
			missing, denied := c.g.topics.confirmMissing(ctx, c.g.client, topic, min(c.g.cfg.setupTimeout, confirmTimeout))
			if missing {
				failed = c.g.topicMissing(c.m, topic, err)
			} else if denied {
				failed = status.Errorf(codes.PermissionDenied, "%s: producing request to %s: %v; the gateway may not describe the topic (%v)", c.m.FullMethod(), topic, err, kafkaclient.ErrNotAuthorized)
			}
			c.failProduce(failed) // the first error wins
			c.sendDone(failed)
		}) {
			return
		}
		failed = unavailable
		c.failProduce(unavailable)
	}
	c.sendDone(failed)
	c.unacked.Done()
}

// sendData produces one request message, unless the request side ended.
func (c *gwCall) sendData(value []byte) {
	if value == nil {
		value = []byte{} // an empty message is not an end-of-stream
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if c.reqEnded {
		return
	}
	if c.keyPending {
		key, set, err := c.rp.route.KeyField.keyOf([]byte{}, value)
		switch {
		case err != nil:
			c.refuse(status.Errorf(codes.InvalidArgument, "%s: reading key_field %q: %v", c.m.FullMethod(), c.rp.route.KeyField.Path, err))
			return
		case !set && c.rp.route.KeyField.Required:
			c.refuse(status.Errorf(codes.InvalidArgument, "%s: the request does not set %s, which keys the call (key_field_required)", c.m.FullMethod(), c.rp.route.KeyField.Path))
			return
		}
		c.key, c.keyPending = key, false
	}
	c.produce(value, c.headers)
}

// refuse fails a call whose key field refused its first message, before any
// record was produced: the request side ends without a record, since no
// worker saw the call. Called with reqMu held.
func (c *gwCall) refuse(err error) {
	c.endRequest(err)
	c.fail(err)
}

// endRequest marks the request side ended. Called with reqMu held.
func (c *gwCall) endRequest(err error) {
	if !c.reqEnded {
		c.reqEnded = true
		if c.reqDone != nil {
			close(c.reqDone)
		}
		if c.sendOpen.Load() == 0 {
			spanEnd(c.send, err) // records nothing: no need to wait for Kafka's answers
		} else {
			c.sendDone(err)
		}
	}
}

// sendEnd ends the request stream with a null record. cancel adds
// zilla:status=1 (CANCELLED). When the stream already ended normally, a
// cancel is sent as one more null record if the gateway is so configured.
// Oneway calls write no end-of-stream record on a normal end.
func (c *gwCall) sendEnd(cancel bool) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if c.keyPending {
		// No request message went out: the key field has no value.
		switch kf := c.rp.route.KeyField; {
		case c.reqEnded:
			return // refused
		case cancel:
			c.endRequest(nil) // nothing reached Kafka, so there is nothing to cancel
			return
		case kf.Required:
			c.refuse(status.Errorf(codes.InvalidArgument, "%s: the call ended before its first request message, whose %s keys the call (key_field_required)", c.m.FullMethod(), kf.Path))
			return
		}
		c.key, c.keyPending = []byte{}, false
	}
	if c.reqEnded && (!cancel || c.cancelSent || !c.g.cfg.cancelAfterEnd || c.rp.route.Oneway) {
		return
	}
	switch {
	case c.rp.route.Oneway:
		// a oneway stream has no reader that could act on an end or a cancel
	case cancel:
		c.cancelSent = true
		c.produce(nil, wire.AppendCancel(c.headers, &c.g.cfg.names))
	default:
		c.produce(nil, c.headers)
	}
	c.endRequest(nil) // after the record: the send span waits for Kafka's answer to it
}

// fail ends the call's wait with err (the first error wins).
func (c *gwCall) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.wake()
}

// failProduce ends the call's wait with err, a request record's produce
// error, unless the worker's end-of-stream record is queued already: the
// worker served the call, and its answer is the call's (a retry on the
// produce error would run it again). Once the end is read the call is over
// and nothing is waiting; the first error wins otherwise, as in fail.
func (c *gwCall) failProduce(err error) {
	c.mu.Lock()
	if c.err == nil && !c.endQueued {
		c.err = err
	}
	c.mu.Unlock()
	c.wake()
}

// failure returns the error fail or deliver ended the call with, or nil.
func (c *gwCall) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *gwCall) wake() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// answers reports whether a reply record with env's headers is for this
// call: not an answer to another attempt with the same correlation id (a
// worker that writes no attempt id, such as Zilla's, is taken at its word).
// Called by the router; c.attempt never changes once the call is registered.
func (c *gwCall) answers(env *wire.Envelope) bool {
	return sameAttempt(c.attempt, env.Attempt)
}

// reply is a queued reply record with what awaitReplies needs of the
// headers the router decoded: all of them (env) for the first record and
// the end-of-stream record, the served-by header alone for the others.
type reply struct {
	rec      *kafkaclient.Record
	env      *wire.Envelope // &c.firstEnv, &c.endEnv, or nil
	servedBy []byte
}

// deliver queues a reply record; called by the router, never blocks. env is
// the router's and is copied when kept. Records after the end-of-stream
// record are dropped: awaitReplies returns at that record.
func (c *gwCall) deliver(rec *kafkaclient.Record, env *wire.Envelope) {
	c.mu.Lock()
	if c.err == nil && !c.endQueued {
		c.queued += replyBytes(rec)
		if c.queued > c.g.cfg.replyBufferBytes {
			c.err = status.Errorf(codes.ResourceExhausted, "%s: caller reads replies too slowly: more than %d bytes buffered", c.m.FullMethod(), c.g.cfg.replyBufferBytes)
			c.queue = nil
		} else {
			r := reply{rec: rec, servedBy: env.ServedBy}
			switch {
			case env.EndOfStream:
				c.endEnv, r.env, c.endQueued = *env, &c.endEnv, true
			case !c.anyQueued:
				c.firstEnv, r.env = *env, &c.firstEnv
			}
			c.anyQueued = true
			c.queue = append(c.queue, r)
		}
	}
	c.mu.Unlock()
	c.wake()
}

// replyBytes is what a queued reply record counts against
// GatewayReplyBufferBytes: its value, key and headers, and the record and
// queue entry holding them, so that a stream of empty messages is bounded
// too.
func replyBytes(rec *kafkaclient.Record) int {
	n := len(rec.Value) + len(rec.Key) + int(unsafe.Sizeof(*rec)+unsafe.Sizeof(reply{}))
	for i := range rec.Headers {
		n += len(rec.Headers[i].Key) + len(rec.Headers[i].Value) + int(unsafe.Sizeof(rec.Headers[i]))
	}
	return n
}

// awaitReplies consumes reply records until the end-of-stream record, an
// error, or ctx ending. onHeader gets the response headers of the first reply
// record, onData each data record, onTrailer the trailers of the last. It
// returns the call's final status (nil for OK).
func (c *gwCall) awaitReplies(ctx context.Context, onHeader func(metadata.MD), onData func(*kafkaclient.Record) error, onTrailer func(metadata.MD)) (err error) {
	first := true
	var servedBy []byte
	var receive trace.Span
	defer func() {
		if receive != nil {
			spanEnd(receive, err)
		}
	}()
	batch := c.qbuf2[:0]
	for {
		c.mu.Lock()
		if len(c.queue) > 0 { // else keep both arrays where they are: the queue may take two replies at once
			batch, c.queue = c.queue, batch[:0]
		} else {
			batch = batch[:0]
		}
		for i := range batch {
			c.queued -= replyBytes(batch[i].rec)
		}
		err := c.err
		c.mu.Unlock()
		if err != nil {
			return err
		}
		for i := range batch {
			rec, env := batch[i].rec, batch[i].env
			if first {
				first = false
				if receive, err = c.openReply(ctx, rec, env, onHeader); err != nil {
					return err
				}
				servedBy = env.ServedBy
			} else if by := batch[i].servedBy; by != nil && servedBy != nil && string(by) != string(servedBy) {
				return status.Errorf(codes.Unavailable, "%s: the worker serving the call stopped midway and another one served it again from the start; "+
					"retry the call (with the same idempotency-key, so that it does not run twice)", c.m.FullMethod())
			}
			if env != nil && env.EndOfStream {
				c.mu.Lock()
				c.finished = true
				c.mu.Unlock()
				md, err := env.Trailer()
				if err != nil { // as grpc-go fails a call whose trailer it cannot decode
					return status.Errorf(codes.Internal, "%s: reply at %s: %v", c.m.FullMethod(), recordPlace(rec), err)
				}
				if len(md) > 0 {
					onTrailer(md)
				}
				if st := env.Status(); st != nil {
					return st.Err()
				}
				return nil
			}
			if err := onData(rec); err != nil {
				return err
			}
		}
		clear(batch)
		select {
		case <-c.signal:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-c.g.ctx.Done():
			return status.Error(c.g.closedCode(), c.g.closingMessage())
		}
	}
}

// openReply handles the first reply record of a call: its metadata become
// the caller's response headers (onHeader), and the receiving span starts,
// continuing the worker's span carried in them and linked to the caller's.
func (c *gwCall) openReply(ctx context.Context, rec *kafkaclient.Record, env *wire.Envelope, onHeader func(metadata.MD)) (trace.Span, error) {
	md, err := env.Metadata()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%s: reply at %s: %v", c.m.FullMethod(), recordPlace(rec), err)
	}
	var receive trace.Span
	if c.spanless && !c.g.trc.carries(md) {
		// Neither the caller's context nor the worker's headers carry a
		// span context.
		_, receive = c.g.trc.startSpanless(ctx, c.rp.recvName, c.rp.recvOpts...)
	} else {
		_, receive = c.g.trc.start(c.g.trc.extract(ctx, md), c.rp.recvName, c.rp.recvOpts...)
	}
	if receive.IsRecording() {
		receive.AddLink(trace.LinkFromContext(ctx))
		receive.SetAttributes(attribute.String("messaging.message.conversation_id", c.id))
	}
	if md = c.g.trc.withoutTrace(md); len(md) > 0 {
		onHeader(md)
	}
	return receive, nil
}

// awaitRequestEnd waits until the request stream ended (the caller
// half-closed); UNAVAILABLE once the gateway is closing, as awaitReplies.
func (c *gwCall) awaitRequestEnd(ctx context.Context) error {
	c.reqMu.Lock()
	if c.reqEnded {
		c.reqMu.Unlock()
		return nil
	}
	if c.reqDone == nil {
		c.reqDone = make(chan struct{})
	}
	done := c.reqDone
	c.reqMu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-c.g.ctx.Done():
	}
	if c.g.ctx.Err() != nil { // also when the caller half-closed as Close began
		return status.Error(c.g.closedCode(), c.g.closingMessage())
	}
	return nil
}

// awaitAcks waits until Kafka acknowledged every request record produced so
// far, and reports the first produce error; UNAVAILABLE once the gateway
// is closing, as awaitReplies.
func (c *gwCall) awaitAcks(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		c.unacked.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-c.g.ctx.Done():
		return status.Error(c.g.closedCode(), c.g.closingMessage())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.finished = true
	}
	return c.err
}

// tooLarge reports whether a produce failed because the record exceeds a
// size limit of the client, the broker or the topic (message.max.bytes,
// max.message.bytes), whichever client reported it.
func tooLarge(err error) bool {
	if errors.Is(err, kafkaclient.ErrRecordTooLarge) {
		return true
	}
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "too large") || strings.Contains(msg, "too_large")
}
