package runtime

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// rawMessage is a message carried as its encoded bytes: the worker's proxy
// mode forwards calls without knowing their types.
type rawMessage struct{ b []byte }

// rawCodec passes rawMessage bytes through unchanged.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*rawMessage)
	if !ok {
		return nil, fmt.Errorf("kafkarpc: raw codec cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*rawMessage)
	if !ok {
		return fmt.Errorf("kafkarpc: raw codec cannot unmarshal into %T", v)
	}
	m.b = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" } // the bytes are protobuf; the content type stays application/grpc

// ProxyOption configures RegisterProxy.
type ProxyOption interface{ applyProxy(*proxyConfig) }

type proxyOptionFunc func(*proxyConfig)

func (f proxyOptionFunc) applyProxy(c *proxyConfig) { f(c) }

type proxyConfig struct {
	retryFor     time.Duration
	firstBackoff time.Duration
	maxBackoff   time.Duration
}

// ProxyRetry bounds the retries of a call the target refused with
// UNAVAILABLE before accepting it: attempts go on with exponential back-off
// (first, doubling up to max, with full jitter) until the call's deadline, or
// for d when the caller set no deadline. d <= 0 turns the retries off: the
// proxy cannot tell a refused call from a handler that ran and returned
// UNAVAILABLE before sending anything, which a retry runs again. With
// d > 0, first and max must be positive (RegisterProxy refuses them
// otherwise: a back-off of zero would retry without pause). Defaults: d
// 30 s, first 50 ms, max 2 s.
func ProxyRetry(d, first, max time.Duration) ProxyOption {
	return proxyOptionFunc(func(c *proxyConfig) { c.retryFor, c.firstBackoff, c.maxBackoff = d, first, max })
}

// RegisterProxy makes the worker forward the calls of every service it has no
// implementation for, as raw bytes, to the gRPC server behind cc: the worker
// then needs no generated code. topics are the request topics to consume (in
// addition to those of registered services). Request metadata, response
// headers, trailers and status map as they do for an implementation, and
// messages are relayed up to a record's limit (kafkaclient.MaxMessageBytes)
// whatever cc's default call options. A target
// that answers UNAVAILABLE before it accepted the call is retried (see
// ProxyRetry); once it accepted the call, its status is final. A oneway
// request record (no correlation id) is forwarded as a call of its one
// message, whose answer goes nowhere: the proxy cannot tell a oneway unary
// call from one message of a oneway client stream, so each message of the
// latter reaches the target as a call of its own. Must be called before
// Start.
func (w *Worker) RegisterProxy(cc grpc.ClientConnInterface, topics []string, opts ...ProxyOption) error {
	if len(topics) == 0 {
		return fmt.Errorf("kafkarpc: a proxy needs at least one request topic")
	}
	cfg := proxyConfig{retryFor: 30 * time.Second, firstBackoff: 50 * time.Millisecond, maxBackoff: 2 * time.Second}
	for _, o := range opts {
		o.applyProxy(&cfg)
	}
	if cfg.retryFor > 0 && (cfg.firstBackoff <= 0 || cfg.maxBackoff <= 0) {
		return fmt.Errorf("kafkarpc: ProxyRetry(%v, %v, %v): with retries on, the first and the longest back-off must be positive",
			cfg.retryFor, cfg.firstBackoff, cfg.maxBackoff)
	}
	w.regMu.Lock()
	defer w.regMu.Unlock()
	if w.started {
		return fmt.Errorf("kafkarpc: proxy registered after the worker started")
	}
	if w.proxy != nil {
		return fmt.Errorf("kafkarpc: proxy registered twice")
	}
	p := &proxy{cc: cc, cfg: cfg, retries: &w.stats.proxyRetries}
	w.proxy = p
	for _, t := range topics {
		if t := w.cfg.topic(t); !slices.Contains(w.topics, t) {
			w.topics = append(w.topics, t)
		}
	}
	if w.cfg.groupID == "" {
		w.cfg.groupID = "kafkarpc-proxy"
	}
	return nil
}

type proxy struct {
	cc      grpc.ClientConnInterface
	cfg     proxyConfig
	retries *atomic.Uint64
}

// method returns the workerMethod that forwards service/method. Every call
// is relayed as a bidi stream, which carries all four kinds alike.
func (p *proxy) method(service, method string) *workerMethod {
	spec := &MethodSpec{Service: service, Method: method, Kind: KindBidiStream}
	return &workerMethod{
		spec:    spec,
		proxied: true,
		stream: &grpc.StreamDesc{
			StreamName:    method,
			ServerStreams: true,
			ClientStreams: true,
			Handler:       func(_ any, ss grpc.ServerStream) error { return p.forward(spec.FullMethod(), ss) },
		},
	}
}

// forward relays one call to the target, retrying while the target refuses
// it with UNAVAILABLE before answering anything.
func (p *proxy) forward(fullMethod string, ss grpc.ServerStream) error {
	ctx := ss.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.NewOutgoingContext(ctx, md.Copy())
	in := newRequestPump(ss)
	backoff := p.cfg.firstBackoff
	giveUp := time.Now().Add(p.cfg.retryFor)
	if dl, ok := ctx.Deadline(); ok && p.cfg.retryFor > 0 {
		giveUp = dl
	}
	for {
		// The trailers are the call's only once the attempt is final: a
		// refused attempt that is retried leaves nothing in the answer.
		answered, trailer, err := p.attempt(out, fullMethod, ss, in)
		if answered || status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			ss.SetTrailer(trailer)
			return err
		}
		wait := time.Duration(rand.Int64N(int64(backoff) + 1)) // full jitter
		if p.cfg.retryFor <= 0 || time.Now().Add(wait).After(giveUp) {
			ss.SetTrailer(trailer)
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return contextStatus(ctx).Err()
		}
		backoff = min(2*backoff, p.cfg.maxBackoff)
		p.retries.Add(1)
	}
}

// requestPump reads the caller's requests once, on one goroutine, and keeps
// those a retry must send again.
type requestPump struct {
	msgs chan *rawMessage // closed at the end of the request stream
	err  error            // why msgs closed, when not io.EOF; read after msgs closed
	kept []*rawMessage    // requests sent to attempts that did not answer
}

func newRequestPump(ss grpc.ServerStream) *requestPump {
	r := &requestPump{msgs: make(chan *rawMessage)}
	go func() {
		defer close(r.msgs)
		for {
			m := new(rawMessage)
			if err := ss.RecvMsg(m); err != nil {
				if err != io.EOF {
					r.err = err
				}
				return
			}
			select {
			case r.msgs <- m:
			case <-ss.Context().Done():
				return
			}
		}
	}()
	return r
}

// attempt runs one try. answered reports whether the target sent anything
// (headers, a message or a status of its own), after which the call is not
// retried. trailer is the target's trailers, for the caller of attempt to
// relay if the attempt is final.
func (p *proxy) attempt(ctx context.Context, fullMethod string, ss grpc.ServerStream, in *requestPump) (answered bool, trailer metadata.MD, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The messages' limit is what a record carries, as for an
	// implementation, not gRPC's default 4 MiB receive limit of a cc dialed
	// without CallerDialOptions.
	cs, err := p.cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, fullMethod, grpc.ForceCodecV2(rawCodec{}),
		grpc.MaxCallRecvMsgSize(kafkaclient.MaxMessageBytes), grpc.MaxCallSendMsgSize(kafkaclient.MaxMessageBytes))
	if err != nil {
		return false, nil, err
	}
	snd := &attemptSender{in: in, keep: true}
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		snd.run(ctx, cancel, cs)
	}()
	defer func() {
		cancel()
		<-senderDone
	}()
	return relayReplies(cs, ss, snd)
}

// attemptSender sends one attempt's requests: it replays what earlier
// attempts sent, then forwards new requests, keeping them until the target
// answers.
type attemptSender struct {
	in   *requestPump
	mu   sync.Mutex // guards keep and in.kept
	keep bool
}

func (a *attemptSender) run(ctx context.Context, cancel context.CancelFunc, cs grpc.ClientStream) {
	a.mu.Lock()
	replay := slices.Clone(a.in.kept)
	a.mu.Unlock()
	for _, m := range replay {
		if cs.SendMsg(m) != nil {
			return
		}
	}
	for {
		select {
		case m, ok := <-a.in.msgs:
			if !ok {
				if a.in.err != nil {
					cancel() // the caller went away
				} else {
					_ = cs.CloseSend()
				}
				return
			}
			a.mu.Lock()
			if a.keep {
				a.in.kept = append(a.in.kept, m)
			}
			a.mu.Unlock()
			if cs.SendMsg(m) != nil {
				return // RecvMsg reports the status
			}
		case <-ctx.Done():
			return
		}
	}
}

// taken notes that the target took the call (it sent headers or a
// message): the requests need not be kept for a retry any more.
func (a *attemptSender) taken() {
	a.mu.Lock()
	a.keep, a.in.kept = false, nil
	a.mu.Unlock()
}

// relayReplies copies the target's headers and messages to the caller's
// stream and returns its trailers. answered is as for attempt.
func relayReplies(cs grpc.ClientStream, ss grpc.ServerStream, snd *attemptSender) (answered bool, trailer metadata.MD, err error) {
	hdr, err := cs.Header()
	if err != nil {
		return false, nil, err
	}
	if len(hdr) > 0 {
		snd.taken()
		answered = true
		if err := ss.SetHeader(hdr); err != nil {
			return true, nil, err
		}
	}
	for {
		m := new(rawMessage)
		err := cs.RecvMsg(m)
		if err == io.EOF {
			return true, cs.Trailer(), nil
		}
		if err != nil {
			// A status with no headers or message before it (trailers only)
			// may come from a target that never took the call: retried by
			// the caller of attempt when it is UNAVAILABLE.
			return answered, cs.Trailer(), err
		}
		if !answered {
			snd.taken()
			answered = true
		}
		if err := ss.SendMsg(m); err != nil {
			return true, nil, err
		}
	}
}
