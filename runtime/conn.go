package runtime

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// ClientConn calls services served over Kafka from Go, without a gateway: it
// implements grpc.ClientConnInterface, so that a generated gRPC client built
// on it, echov1.NewEchoServiceClient(conn), makes its calls over Kafka.
//
// It is the gateway's call path without the gRPC server in front: the same
// request records (WIRE.md; a worker of this runtime or a Zilla kafka-grpc
// binding serves them unchanged), the same reply readers, and for fetch
// methods the same in-memory window of the topic, with event ids and resume
// as the gateway gives them. What a gateway reads from the incoming gRPC
// call, the connection reads from the call's context and call options: the
// deadline reaches the worker, cancelling the context cancels the call at the
// worker, outgoing metadata (metadata.NewOutgoingContext) becomes meta:
// headers under the same rules (GatewayDeniedMetadata,
// GatewayAllowedMetadata), the idempotency-key metadata works as through a
// gateway, and grpc.Header and grpc.Trailer receive the worker's response
// metadata. Errors are status errors, with the worker's code, message and
// details.
//
// The connection knows the services registered with Register; a call of any
// other method fails at once with UNIMPLEMENTED. Requests are marshalled with
// proto and replies unmarshalled into the generated response types: call
// options that pick a codec (grpc.CallContentSubtype, grpc.ForceCodec) and
// the transport's (grpc.WaitForReady, grpc.UseCompressor, ...) are
// ignored; grpc.Header, grpc.Trailer, grpc.OnFinish, grpc.MaxCallRecvMsgSize
// and grpc.MaxCallSendMsgSize are honoured (a message over the limit is
// RESOURCE_EXHAUSTED, as in grpc-go; without them the topics'
// max.message.bytes is the only limit), and grpc.Peer gets a KafkaAddr once
// the call began: the topic its requests go to, or a fetch reads.
//
// A ClientConn is safe for concurrent use: many goroutines may call through
// one connection, which reads each reply topic with one reader shared by all
// its calls. Close it before the Kafka client.
type ClientConn struct {
	g       *Gateway
	unary   grpc.UnaryClientInterceptor
	stream  grpc.StreamClientInterceptor
	mu      sync.Mutex // serialises Register
	methods atomic.Pointer[connMethods]
}

// connMethods is what a ClientConn can call: its registered services' Kafka
// methods by full name, and the services' names (a method not among the
// methods of a registered service has no Kafka options).
type connMethods struct {
	byName   map[string]*MethodSpec
	services map[string]bool
}

var _ grpc.ClientConnInterface = (*ClientConn)(nil)

type connConfig struct {
	gw     gatewayConfig
	unary  []grpc.UnaryClientInterceptor
	stream []grpc.StreamClientInterceptor
}

// ConnUnaryInterceptor installs interceptors around every unary call of the
// connection, as grpc.WithChainUnaryInterceptor does on a grpc.ClientConn:
// the first is the outermost; options given more than once add to the
// chain. An interceptor's cc argument is nil (there is no grpc.ClientConn).
// Default none.
func ConnUnaryInterceptor(i ...grpc.UnaryClientInterceptor) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.unary = append(c.unary, i...) })
}

// ConnStreamInterceptor installs interceptors around every streaming call of
// the connection (fetch methods included), as grpc.WithChainStreamInterceptor
// does: the first is the outermost; options given more than once add to the
// chain. An interceptor's cc argument is nil. Default none.
func ConnStreamInterceptor(i ...grpc.StreamClientInterceptor) ConnOption {
	return connOptionFunc(func(c *connConfig) { c.stream = append(c.stream, i...) })
}

type connOptionFunc func(*connConfig)

func (f connOptionFunc) applyConn(c *connConfig) { f(c) }

// NewClientConn returns a connection producing and reading through client,
// which stays owned by the caller (close it after the connection). opts are
// the common options (WithLogger, WithHeaderNames, WithTopicMapper,
// WithTracerProvider, WithMeterProvider, WithPropagator), the gateway options,
// which configure the connection's call path as they configure a gateway
// (GatewayDeniedMetadata, GatewayAllowedMetadata, GatewayIdentity,
// GatewayReplyShard, GatewayReadCommitted, GatewayReplyBufferBytes,
// GatewayCancelRecord, GatewaySetupTimeout, GatewayFetch...), and the
// connection's own (ConnUnaryInterceptor, ConnStreamInterceptor).
//
// Telemetry is the gateway's, with the metrics named kafkarpc.client.*
// instead of kafkarpc.gateway.* (kafkarpc.client.calls, .duration,
// .inflight, .replies.dropped, .fetch.*); the caller's span, if any, is the
// parent of the "send" span.
func NewClientConn(client kafkaclient.Client, opts ...ConnOption) *ClientConn {
	cfg := connConfig{gw: defaultGatewayConfig()}
	cfg.gw.side = "client"
	for _, o := range opts {
		o.applyConn(&cfg)
	}
	cc := &ClientConn{g: newGateway(client, cfg.gw), unary: chainUnary(cfg.unary), stream: chainStream(cfg.stream)}
	cc.methods.Store(&connMethods{byName: map[string]*MethodSpec{}, services: map[string]bool{}})
	return cc
}

// Register makes the connection call spec's methods (spec is the generated
// <Service>KafkaSpec): it starts one reader per reply topic, positioned at
// the topic's end offsets, before any call is made, as Gateway.AddService
// does; the reply topics must exist. A method registered before under the
// same full name is replaced. Safe for concurrent use.
func (cc *ClientConn) Register(spec *ServiceSpec) error {
	if err := cc.g.AddService(spec); err != nil {
		return err
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	old := cc.methods.Load()
	next := &connMethods{byName: make(map[string]*MethodSpec, len(old.byName)+len(spec.Methods)),
		services: make(map[string]bool, len(old.services)+1)}
	for k, v := range old.byName {
		next.byName[k] = v
	}
	for k := range old.services {
		next.services[k] = true
	}
	for _, m := range spec.Methods {
		next.byName[m.FullMethod()] = m
	}
	next.services[spec.Name] = true
	cc.methods.Store(next)
	return nil
}

// Close stops the connection's reply and fetch readers; calls still waiting
// end with CANCELLED (streams whose callers stopped reading, and fetches
// never started, included: their grpc.OnFinish runs), and later calls fail
// with CANCELLED, as with grpc-go. It does not close the Kafka client.
// Call it once, after which the connection is done.
func (cc *ClientConn) Close() error { return cc.g.Close() }

// Stats returns the counters of the connection's reply readers. Safe for
// concurrent use.
func (cc *ClientConn) Stats() GatewayStats { return cc.g.Stats() }

// FetchStats returns the state of the connection's fetch windows and
// callers. Safe for concurrent use.
func (cc *ClientConn) FetchStats() FetchStats { return cc.g.FetchStats() }

// method returns the spec of a full method name, or UNIMPLEMENTED, or
// CANCELLED once the connection is closed.
func (cc *ClientConn) method(name string) (*MethodSpec, error) {
	if cc.g.ctx.Err() != nil {
		return nil, status.Errorf(codes.Canceled, "%s: the kafka ClientConn is closed", name)
	}
	ms := cc.methods.Load()
	if m := ms.byName[name]; m != nil {
		return m, nil
	}
	if i := strings.LastIndexByte(name, '/'); i > 0 && ms.services[name[1:i]] {
		if !protoHasMethod(name[1:i], name[i+1:]) {
			// grpc-go's server says the same of a method it does not know.
			return nil, status.Errorf(codes.Unimplemented, "unknown method %s for service %s", name[i+1:], name[1:i])
		}
		return nil, status.Errorf(codes.Unimplemented, "%s: not a Kafka method: its service is registered with this kafka ClientConn, but the proto gives the method no (kafkarpc.kafka.v1.method) option and its service no (kafkarpc.kafka.v1.service) option", name)
	}
	return nil, status.Errorf(codes.Unimplemented, "%s: no such method registered with this kafka ClientConn (register the service's KafkaSpec with ClientConn.Register)", name)
}

// protoHasMethod reports whether the proto of service, as registered in
// protoregistry.GlobalFiles, declares method; true when the service's proto
// is not registered there (nothing to say otherwise).
func protoHasMethod(service, method string) bool {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return true
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	return !ok || sd.Methods().ByName(protoreflect.Name(method)) != nil
}

// Invoke makes a unary call over Kafka: it implements
// grpc.ClientConnInterface for generated clients. Safe for concurrent use.
func (cc *ClientConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if cc.unary != nil {
		return cc.unary(ctx, method, args, reply, nil, cc.invoke, opts...)
	}
	return cc.invoke(ctx, method, args, reply, nil, opts...)
}

func (cc *ClientConn) invoke(ctx context.Context, method string, args, reply any, _ *grpc.ClientConn, opts ...grpc.CallOption) (err error) {
	co := callOptionsOf(opts)
	defer func() { co.finish(err) }()
	if err := outgoingMetadataError(ctx, method); err != nil {
		return err // before anything, as grpc-go does
	}
	m, err := cc.method(method)
	if err != nil {
		cc.noReply(ctx, &co)
		return err
	}
	in, out, err := messages(m, args, reply)
	if err != nil {
		cc.noReply(ctx, &co)
		return cc.g.refused(ctx, m, err)
	}
	b, err := proto.Marshal(in)
	if err != nil {
		cc.noReply(ctx, &co)
		return cc.g.refused(ctx, m, status.Errorf(codes.Internal, "%s: encoding request: %v", m.FullMethod(), err))
	}
	if err := co.checkSend(len(b)); err != nil {
		cc.noReply(ctx, &co)
		return cc.g.refused(ctx, m, err) // nothing sent, as grpc-go sends no message over the limit
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	c, err := cc.g.begin(ctx, m, md)
	if err != nil {
		cc.noReply(ctx, &co)
		return err
	}
	co.peer(c.rp.route.Topic)
	defer func() {
		c.end(err)
		c.releaseSignal()
		if d := statusDetailsTrailer(err); d != nil {
			co.trailer(metadata.Join(co.lastTrailer, d))
		}
		co.after()
	}()
	oneway, err := c.exchange(ctx, b, co.header, co.trailer, func(rec *kafkaclient.Record) error { return co.decode(m, rec, out) })
	if oneway && err == nil {
		proto.Reset(out)
	}
	return err
}

// NewStream starts a streaming call over Kafka: it implements
// grpc.ClientConnInterface for generated clients. The call begins at once
// (its route chosen by the context's outgoing metadata); each SendMsg
// produces one request record, CloseSend the end-of-stream record. A fetch
// method reads its topic once the request (an empty message) is sent.
// As in grpc-go, a method that takes one request (or a desc without
// ClientStreams) half-closes at the first SendMsg: a second one fails with
// INTERNAL and ends the call. A fetch whose context already ended fails
// here, with the context's code.
// Safe for concurrent use; each stream is used as grpc.ClientStream says
// (one goroutine sending and one receiving at a time). As with gRPC, a
// caller that stops before RecvMsg returned an error or io.EOF cancels the
// context, or the call stays open until Close.
func (cc *ClientConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if cc.stream != nil {
		return cc.stream(ctx, desc, nil, method, cc.newStream, opts...)
	}
	return cc.newStream(ctx, desc, nil, method, opts...)
}

func (cc *ClientConn) newStream(ctx context.Context, desc *grpc.StreamDesc, _ *grpc.ClientConn, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	co := callOptionsOf(opts)
	if err := outgoingMetadataError(ctx, method); err != nil {
		co.finish(err) // before anything, as grpc-go does
		return nil, err
	}
	m, err := cc.method(method)
	if err != nil {
		cc.noReply(ctx, &co)
		co.finish(err)
		return nil, err
	}
	if err := ctx.Err(); err != nil && m.Fetch != nil {
		// As grpc-go's NewStream, which fails at once; a fetch would
		// only fail at its first RecvMsg (a request/reply call begins and
		// ends CANCELLED, producing nothing: TestConnCancelledContextSendsNothing).
		err = cc.g.refused(ctx, m, status.FromContextError(err).Err())
		co.finish(err) // grpc.Header and grpc.Trailer left as they were, as by grpc-go
		return nil, err
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	ctx, cancel := context.WithCancel(ctx)
	s := &connStream{cc: cc, m: m, ctx: ctx, cancel: cancel, co: co,
		headerReady: make(chan struct{}), done: make(chan struct{}),
		oneRequest: !m.Kind.clientStreams() || desc != nil && !desc.ClientStreams}
	if m.Fetch != nil {
		co.peer(cc.g.cfg.topic(m.Fetch.Topic))
		s.fetchMD = md
		s.raw = make(chan []byte)
		s.watchUnstarted()
		return s, nil
	}
	c, err := cc.g.begin(ctx, m, md)
	if err != nil {
		cancel()
		cc.noReply(ctx, &co)
		co.finish(err)
		return nil, err
	}
	s.c = c
	co.peer(c.rp.route.Topic)
	s.recs = make(chan *kafkaclient.Record)
	s.over, s.ask = make(chan struct{}), make(chan struct{})
	if !m.Kind.serverStreams() {
		s.verdict = make(chan error, 1)
	}
	go s.run()
	return s, nil
}

// noReply empties the grpc.Header and grpc.Trailer targets of a call
// refused before it reached Kafka (an unknown method, a route it may not
// use), as grpc-go's are once its stream began: a caller reusing them must
// not read an earlier call's. Not once Close began or ctx ended: grpc-go
// refuses such a call before its stream begins, leaving them as they were.
func (cc *ClientConn) noReply(ctx context.Context, co *callOptions) {
	if cc.g.ctx.Err() == nil && ctx.Err() == nil {
		co.after()
	}
}

// messages returns a call's request and reply as proto messages.
func messages(m *MethodSpec, args, reply any) (proto.Message, proto.Message, error) {
	in, ok := args.(proto.Message)
	if !ok {
		return nil, nil, status.Errorf(codes.Internal, "%s: request is a %T, not a proto message", m.FullMethod(), args)
	}
	out, ok := reply.(proto.Message)
	if !ok {
		return nil, nil, status.Errorf(codes.Internal, "%s: reply is a %T, not a proto message", m.FullMethod(), reply)
	}
	return in, out, nil
}

// callOptions are the grpc.CallOptions a ClientConn honours.
type callOptions struct {
	headers  []*metadata.MD
	trailers []*metadata.MD
	onFinish []func(error)
	maxRecv  int // grpc.MaxCallRecvMsgSize, or -1
	maxSend  int // grpc.MaxCallSendMsgSize, or -1
	peers    []*peer.Peer

	gotHeader, gotTrailer bool        // header or trailer wrote them
	lastTrailer           metadata.MD // what trailer wrote
}

func callOptionsOf(opts []grpc.CallOption) callOptions {
	co := callOptions{maxRecv: -1, maxSend: -1}
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			co.headers = append(co.headers, o.HeaderAddr)
		case grpc.TrailerCallOption:
			co.trailers = append(co.trailers, o.TrailerAddr)
		case grpc.OnFinishCallOption:
			co.onFinish = append(co.onFinish, o.OnFinish)
		case grpc.MaxRecvMsgSizeCallOption: // the last one given wins, as in grpc-go
			co.maxRecv = o.MaxRecvMsgSize
		case grpc.MaxSendMsgSizeCallOption:
			co.maxSend = o.MaxSendMsgSize
		case grpc.PeerCallOption:
			co.peers = append(co.peers, o.PeerAddr)
		}
	}
	return co
}

// KafkaAddr is the address a ClientConn gives grpc.Peer: the Kafka topic a
// call's requests go to (after the topic mapper), or the topic a fetch
// reads. Its Network is "kafka".
type KafkaAddr string

// Network returns "kafka".
func (KafkaAddr) Network() string { return "kafka" }

// String returns the topic.
func (a KafkaAddr) String() string { return string(a) }

// peer sets the grpc.Peer targets to topic, once the call began.
func (co *callOptions) peer(topic string) {
	for _, p := range co.peers {
		*p = peer.Peer{Addr: KafkaAddr(topic)}
	}
}

// checkSend refuses a request message of n bytes over grpc.MaxCallSendMsgSize,
// with grpc-go's status.
func (co *callOptions) checkSend(n int) error {
	if co.maxSend >= 0 && n > co.maxSend {
		return status.Errorf(codes.ResourceExhausted, "trying to send message larger than max (%d vs. %d)", n, co.maxSend)
	}
	return nil
}

// checkRecv refuses a response message of n bytes over
// grpc.MaxCallRecvMsgSize, with grpc-go's status.
func (co *callOptions) checkRecv(n int) error {
	if co.maxRecv >= 0 && n > co.maxRecv {
		return status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, co.maxRecv)
	}
	return nil
}

// decode decodes a reply record into out, unless it is over
// grpc.MaxCallRecvMsgSize.
func (co *callOptions) decode(m *MethodSpec, rec *kafkaclient.Record, out proto.Message) error {
	if err := co.checkRecv(len(rec.Value)); err != nil {
		return err
	}
	return decodeReply(m, rec, out)
}

func (co *callOptions) header(md metadata.MD) {
	co.gotHeader = true
	for _, p := range co.headers {
		*p = md
	}
}

func (co *callOptions) trailer(md metadata.MD) {
	co.gotTrailer, co.lastTrailer = true, md
	for _, p := range co.trailers {
		*p = md
	}
}

// after empties the grpc.Header and grpc.Trailer of a call that began but
// received no response headers or trailers, as grpc-go sets them after
// every call: what they held before (an earlier call's) is not this call's.
func (co *callOptions) after() {
	if !co.gotHeader {
		for _, p := range co.headers {
			*p = nil
		}
	}
	if !co.gotTrailer {
		for _, p := range co.trailers {
			*p = nil
		}
	}
}

// statusDetailsTrailer is the trailer grpc-status-details-bin of a call
// that ended with err, as a grpc-go caller finds it in its trailer when the
// status has details (the encoded google.rpc.Status); nil when it has none.
func statusDetailsTrailer(err error) metadata.MD {
	st, ok := status.FromError(err)
	if !ok || len(st.Proto().GetDetails()) == 0 {
		return nil
	}
	b, perr := proto.Marshal(st.Proto())
	if perr != nil {
		return nil
	}
	return metadata.Pairs("grpc-status-details-bin", string(b))
}

func (co *callOptions) finish(err error) {
	for _, f := range co.onFinish {
		f(err)
	}
}

func chainUnary(is []grpc.UnaryClientInterceptor) grpc.UnaryClientInterceptor {
	switch len(is) {
	case 0:
		return nil
	case 1:
		return is[0]
	}
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return is[0](ctx, method, req, reply, cc, unaryFrom(is[1:], invoker), opts...)
	}
}

// unaryFrom returns the invoker that runs is, then invoker.
func unaryFrom(is []grpc.UnaryClientInterceptor, invoker grpc.UnaryInvoker) grpc.UnaryInvoker {
	if len(is) == 0 {
		return invoker
	}
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		return is[0](ctx, method, req, reply, cc, unaryFrom(is[1:], invoker), opts...)
	}
}

func chainStream(is []grpc.StreamClientInterceptor) grpc.StreamClientInterceptor {
	switch len(is) {
	case 0:
		return nil
	case 1:
		return is[0]
	}
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return is[0](ctx, desc, cc, method, streamFrom(is[1:], streamer), opts...)
	}
}

// streamFrom returns the streamer that runs is, then streamer.
func streamFrom(is []grpc.StreamClientInterceptor, streamer grpc.Streamer) grpc.Streamer {
	if len(is) == 0 {
		return streamer
	}
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return is[0](ctx, desc, cc, method, streamFrom(is[1:], streamer), opts...)
	}
}
