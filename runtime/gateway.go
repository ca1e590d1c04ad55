package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Gateway relays gRPC calls through Kafka: it produces each call's request
// messages to the method's request topic and streams the correlated replies
// back from the reply topic. Generated ...KafkaGateway types call it; it does
// not need to know a method's kind to relay it.
//
// A Gateway is safe for concurrent use. It reads each reply topic with one
// reader, shared by every call, started by AddService before any request is
// produced. Partitions added to a reply topic later are read too, from
// their start, once the gateway notices them: it looks every 10 seconds.
// The same holds for the topics of fetch methods (fanout.go).
type Gateway struct {
	client kafkaclient.Client
	cfg    gatewayConfig
	filter metadataFilter
	keep   func(name string) bool // filter.keep, bound once: a method value allocates

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex // guards routers and preps writes
	routers map[string]*replyRouter
	preps   atomic.Pointer[map[*MethodSpec]*methodPrep]
	wg      sync.WaitGroup

	trc     tracing
	met     callMetrics
	dropped metric.Int64Counter

	fanout *fanout // fetch methods (fanout.go)
	// fetchMetrics is the registration of the fetch metrics' callback,
	// unregistered by Close; nil when the meter provider refused it.
	fetchMetrics metric.Registration

	topics topicGuard // which request topics exist (topics.go)
}

// NewGateway returns a Gateway producing and reading through client, which
// stays owned by the caller (close it after the Gateway).
func NewGateway(client kafkaclient.Client, opts ...GatewayOption) *Gateway {
	cfg := defaultGatewayConfig()
	for _, o := range opts {
		o.applyGateway(&cfg)
	}
	return newGateway(client, cfg)
}

// newGateway returns a Gateway of cfg; a ClientConn builds its own with it.
func newGateway(client kafkaclient.Client, cfg gatewayConfig) *Gateway {
	g := &Gateway{
		client:  client,
		cfg:     cfg,
		routers: map[string]*replyRouter{},
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.trc = newTracing(cfg.telemetryConfig)
	g.filter = newMetadataFilter(cfg.denied, cfg.allowed, append([]string{wire.IdempotencyKeyMetadata}, g.trc.fields...))
	g.keep = g.filter.keep
	meter := meterOf(cfg.telemetryConfig)
	g.met = newCallMetrics(meter, cfg.side)
	g.dropped, _ = meter.Int64Counter("kafkarpc."+cfg.side+".replies.dropped",
		metric.WithDescription("Reply records whose correlation id matched no call in flight here."))
	empty := map[*MethodSpec]*methodPrep{}
	g.preps.Store(&empty)
	g.fanout = newFanout(g)
	g.fetchMetrics = registerFetchMetrics(meter, g)
	return g
}

// routePrep is what the gateway computes once per route.
type routePrep struct {
	route  *Route
	hash   string               // "-" + md5 hex of the route, for correlation ids
	fixed  []kafkaclient.Header // overrides, service, method and, unless oneway, reply-to
	key    []byte               // static key, or nil for the correlation id
	router *replyRouter         // nil when oneway

	sendName string                  // "send <topic>"
	sendOpts []trace.SpanStartOption // the send span's kind and fixed attributes
	recvName string                  // "receive <reply topic>"
	recvOpts []trace.SpanStartOption
}

type methodPrep struct {
	routes []routePrep
	tel    *methodTelemetry
}

// AddService prepares the gateway for spec's methods: it precomputes each
// route's headers and starts one reader per reply topic, positioned at the
// topic's end offsets, before any call of the service is relayed. Calling it
// again for the same spec does nothing. The reply topics must exist.
func (g *Gateway) AddService(spec *ServiceSpec) error {
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.setupTimeout)
	defer cancel()
	for _, m := range spec.Methods {
		if err := g.cfg.fetch.keyClash(m); err != nil {
			return err
		}
		if _, err := g.prepare(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// prepare returns m's precomputed routes, computing them on first use.
func (g *Gateway) prepare(ctx context.Context, m *MethodSpec) (*methodPrep, error) {
	if p := (*g.preps.Load())[m]; p != nil {
		return p, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	old := *g.preps.Load()
	if p := old[m]; p != nil {
		return p, nil
	}
	if g.ctx.Err() != nil {
		return nil, status.Error(codes.Unavailable, "gateway is closed")
	}
	p := &methodPrep{routes: make([]routePrep, len(m.Routes)), tel: g.met.forMethod(m.FullMethod())}
	names := &g.cfg.names
	for i := range m.Routes {
		r := g.mapRoute(&m.Routes[i])
		rp := routePrep{route: r}
		rp.sendName = "send " + r.Topic
		rp.sendOpts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.String("messaging.system", "kafka"),
				attribute.String("messaging.destination.name", r.Topic), p.tel.method)}
		if r.ReplyTopic != "" {
			rp.recvName = "receive " + r.ReplyTopic
			rp.recvOpts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("messaging.system", "kafka"),
					attribute.String("messaging.destination.name", r.ReplyTopic), p.tel.method)}
		}
		overrides := make([]kafkaclient.Header, len(r.Overrides))
		for i, o := range r.Overrides {
			overrides[i] = kafkaclient.Header{Key: o.Name, Value: []byte(o.Value)}
		}
		replyTo := r.ReplyTopic
		if r.Oneway {
			replyTo = ""
		}
		rp.fixed = wire.AppendRoute(nil, names, overrides, m.Service, m.Method, replyTo)
		if r.Key != "" {
			rp.key = []byte(r.Key)
		}
		if !r.Oneway {
			rp.hash = wire.RouteHash(*names, m.Service, m.Method, r.ReplyTopic, overrideValues(r.Overrides)...)
			rt, err := g.routerLocked(ctx, r.ReplyTopic)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", m.FullMethod(), err)
			}
			rp.router = rt
		}
		p.routes[i] = rp
	}
	next := make(map[*MethodSpec]*methodPrep, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[m] = p
	g.preps.Store(&next)
	return p, nil
}

// mapRoute returns r with its topics resolved by the topic mapper.
func (g *Gateway) mapRoute(r *Route) *Route {
	c := *r
	c.Topic = g.cfg.topic(r.Topic)
	if r.ReplyTopic != "" {
		c.ReplyTopic = g.cfg.topic(r.ReplyTopic)
	}
	return &c
}

// routerLocked returns the reply router of topic, starting it if needed.
func (g *Gateway) routerLocked(ctx context.Context, topic string) (*replyRouter, error) {
	if r := g.routers[topic]; r != nil {
		return r, nil
	}
	r, err := startReplyRouter(ctx, g, topic)
	if err != nil {
		return nil, err
	}
	g.routers[topic] = r
	g.wg.Add(2) // under g.mu, after prepare saw the gateway open: ordered with Close as count is
	go func() {
		defer g.wg.Done()
		r.run(g.ctx)
	}()
	go func() {
		defer g.wg.Done()
		r.watchPartitions(g.ctx)
	}()
	return r, nil
}

// Close stops the reply readers, fetch readers and background topic
// lookups, and returns once they ended; calls still waiting end with
// UNAVAILABLE, and calls that arrive later are refused UNAVAILABLE before
// anything of them reaches Kafka. It does not close the Kafka client.
func (g *Gateway) Close() error {
	g.mu.Lock() // ordered with background: no goroutine is counted after Wait began
	g.cancel()
	g.mu.Unlock()
	g.wg.Wait()
	if g.fetchMetrics != nil {
		_ = g.fetchMetrics.Unregister()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []error
	for _, r := range g.routers {
		errs = append(errs, r.close())
	}
	return errors.Join(errs...)
}

// background runs f on a goroutine of its own with the gateway's context,
// which Close ends and then waits for f to return; it reports false,
// running nothing, once the gateway is closing.
func (g *Gateway) background(f func(ctx context.Context)) bool {
	if !g.count() {
		return false
	}
	go func() {
		defer g.wg.Done()
		f(g.ctx)
	}()
	return true
}

// count counts a goroutine about to start in wg, so that Close waits for
// it (the goroutine calls wg.Done); false, counting nothing, once the
// gateway is closing. Close cancels under g.mu, so no count is added once
// its Wait may have begun.
func (g *Gateway) count() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ctx.Err() != nil {
		return false
	}
	g.wg.Add(1)
	return true
}

// GatewayStats are counters of a gateway's reply readers.
type GatewayStats struct {
	// RepliesRead counts the reply records read, for this gateway's calls
	// or not.
	RepliesRead uint64
	// RepliesDropped counts reply records whose correlation id matched no
	// call in flight here (late replies, replies for other instances, or
	// records without the header).
	RepliesDropped uint64
}

// Stats returns the gateway's counters. Safe for concurrent use.
func (g *Gateway) Stats() GatewayStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	var s GatewayStats
	for _, r := range g.routers {
		s.RepliesDropped += r.dropped.Load()
		s.RepliesRead += r.read.Load()
	}
	return s
}

// Unary relays a call with one request message and one response message:
// unary and client-streaming-shaped calls whose request is already known. The
// response is decoded into out. Response headers and trailers from the worker
// are set on ctx's gRPC stream when there is one. This is the typed path of
// generated gateway methods; the service descriptor of ServiceDesc relays
// most unary calls as bytes instead, with the same outcome.
func (g *Gateway) Unary(ctx context.Context, m *MethodSpec, in, out proto.Message) (err error) {
	md, _ := metadata.FromIncomingContext(ctx)
	c, err := g.begin(ctx, m, md)
	if err != nil {
		return err
	}
	defer func() {
		c.end(err)
		c.releaseSignal()
	}()
	return c.unary(ctx, in, out, func(md metadata.MD) { _ = grpc.SetHeader(ctx, md) }, func(md metadata.MD) { _ = grpc.SetTrailer(ctx, md) })
}

// relayRequests produces the request messages of a client stream as the
// caller sends them, and ends the request stream when the caller half-closes
// (or with a cancel when the stream fails before the replies ended). It runs
// on a goroutine of its own, beside the one relaying the replies.
func relayRequests[Req any, PReq interface {
	*Req
	proto.Message
}](c *gwCall, stream grpc.ServerStream) {
	if testHookRelayed != nil {
		defer testHookRelayed()
	}
	for {
		req := PReq(new(Req))
		err := stream.RecvMsg(req)
		if err == io.EOF {
			// A half-close read after the caller's cancel or deadline (both
			// reached the gateway; gRPC reads them in either order) ends
			// the stream with a cancel, as the cancel alone would: the
			// worker's handler must not take what it read for the whole
			// stream. Not once the replies ended: the call is over.
			c.sendEnd(stream.Context().Err() != nil && !c.over())
			return
		}
		if err != nil {
			// The stream also fails once the call returned because its
			// replies ended (a bidi or client stream the worker finished
			// first): that is no cancel, and the end already went out.
			c.sendEnd(!c.over())
			return
		}
		b, err := proto.Marshal(req)
		if err != nil {
			c.fail(status.Errorf(codes.Internal, "%s: encoding request: %v", c.m.FullMethod(), err))
			c.sendEnd(true)
			return
		}
		c.sendData(b)
	}
}

// testHookRelayed, when set (tests only), runs when relayRequests returns.
var testHookRelayed func()

// GatewayStream relays a streaming call on stream. in is the request of a
// server-streaming call; for client-streaming and bidi calls it is nil and
// the requests are read from stream until the caller half-closes. Replies are
// sent on stream as they arrive (the one reply of a client-streaming call once
// its end-of-stream record confirmed it).
func GatewayStream[Req, Resp any, PReq interface {
	*Req
	proto.Message
}, PResp interface {
	*Resp
	proto.Message
}](g *Gateway, m *MethodSpec, in PReq, stream grpc.ServerStream) (err error) {
	ctx := stream.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	c, err := g.begin(ctx, m, md)
	if err != nil {
		return err
	}
	defer func() { c.end(err) }()
	if in != nil {
		b, err := proto.Marshal(in)
		if err != nil {
			return status.Errorf(codes.Internal, "%s: encoding request: %v", m.FullMethod(), err)
		}
		c.sendData(b)
		c.sendEnd(false)
	} else {
		go relayRequests[Req, PReq](c, stream)
	}
	if c.rp.route.Oneway {
		if err := c.awaitRequestEnd(ctx); err != nil {
			return err
		}
		if err := c.awaitAcks(ctx); err != nil {
			return err
		}
		return stream.SendMsg(PResp(new(Resp)))
	}
	var held PResp // the response of a client-streaming call, sent once confirmed
	var carrier func([]byte) proto.Message
	if m.Kind.serverStreams() && zeroCopy(stream) {
		carrier = carrierFor[Resp, PResp]()
	}
	st := c.awaitReplies(ctx, func(md metadata.MD) { _ = stream.SetHeader(md) }, func(rec *kafkaclient.Record) error {
		if carrier != nil {
			return relayRaw(m, stream, rec, carrier)
		}
		resp := PResp(new(Resp))
		if err := decodeReply(m, rec, resp); err != nil {
			return err
		}
		if m.Kind.serverStreams() {
			if err := stream.SendMsg(resp); err != nil {
				return status.FromContextError(err).Err()
			}
			return nil
		}
		if held != nil {
			return status.Errorf(codes.Internal, "%s: worker sent more than one response to a %s call (%s)", m.FullMethod(), m.Kind, recordPlace(rec))
		}
		held = resp
		return nil
	}, func(md metadata.MD) { stream.SetTrailer(md) })
	if st != nil {
		return st
	}
	if !m.Kind.serverStreams() {
		if held == nil {
			return status.Errorf(codes.Internal, "%s: worker ended the call without a response", m.FullMethod())
		}
		return stream.SendMsg(held)
	}
	return nil
}

// relayRaw sends a reply record's value to the caller as it is, through
// FetchServerCodec: a stream's responses are not decoded and encoded again.
// The value must be well-formed protobuf; what the caller's generated code
// checks beyond that (UTF-8 strings, required fields) it checks itself.
func relayRaw(m *MethodSpec, stream grpc.ServerStream, rec *kafkaclient.Record, carrier func([]byte) proto.Message) error {
	if err := checkRawReply(m, rec); err != nil {
		return err
	}
	if err := stream.SendMsg(&fetchMessage{value: rec.Value, carrier: carrier}); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}

// checkRawReply checks that a reply record relayed as bytes (a stream's
// response, or a unary call's through ServiceDesc) is well-formed protobuf:
// INTERNAL naming the record when not.
func checkRawReply(m *MethodSpec, rec *kafkaclient.Record) error {
	if !wire.ValidWire(rec.Value) {
		return status.Errorf(codes.Internal, "%s: reply at %s is not a valid protobuf message", m.FullMethod(), recordPlace(rec))
	}
	return nil
}

// GatewayFetch streams the records of a fetch method's topic to the caller,
// each record's value sent as it is (never decoded) with the caller's event
// id appended as an unknown field; see fanout.go. in must be empty.
func GatewayFetch[Resp any, PResp interface {
	*Resp
	proto.Message
}](g *Gateway, m *MethodSpec, in proto.Message, stream grpc.ServerStream) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	return g.fanout.serveFetch(m, md, in, stream, carrierFor[Resp, PResp]())
}

func decodeReply(m *MethodSpec, rec *kafkaclient.Record, out proto.Message) error {
	if err := proto.Unmarshal(rec.Value, out); err != nil {
		return status.Errorf(codes.Internal, "%s: reply at %s is not a valid %s: %v",
			m.FullMethod(), recordPlace(rec), out.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// recordPlace names a record as topic/partition@offset.
func recordPlace(rec *kafkaclient.Record) string {
	return fmt.Sprintf("%s/%d@%d", rec.Topic, rec.Partition, rec.Offset)
}

// overrideValues returns the values of a route's override headers, in order.
func overrideValues(hs []Header) []string {
	vs := make([]string, len(hs))
	for i, h := range hs {
		vs[i] = h.Value
	}
	return vs
}

// closedCode is the code of a call that ends because Close began:
// UNAVAILABLE for a gateway's shutdown (its callers may retry elsewhere),
// CANCELLED for a ClientConn's Close, as grpc-go's ClientConn.Close ends
// its calls (grpc.ErrClientConnClosing).
func (g *Gateway) closedCode() codes.Code {
	if g.cfg.side == "client" {
		return codes.Canceled
	}
	return codes.Unavailable
}

// closingMessage says why a call ends once Close began (closedCode): the
// gateway's shutdown, or the ClientConn's Close.
func (g *Gateway) closingMessage() string {
	if g.cfg.side == "client" {
		return "the kafka ClientConn is closed"
	}
	return "the gateway is shutting down"
}
