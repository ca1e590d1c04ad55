package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/fetchclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// deniedTopic fails every record to topic as both Kafka clients fail a
// record to a topic their principal may not write (the conformance suite's
// ProduceNotAuthorizedFails checks that they do).
type deniedTopic struct {
	kafkaclient.Client
	topic string
}

func (d deniedTopic) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic == d.topic {
		go done(r, fmt.Errorf("produce to %s: %w (TOPIC_AUTHORIZATION_FAILED)", r.Topic, kafkaclient.ErrNotAuthorized))
		return
	}
	d.Client.Produce(r, acks, done)
}

// TestReplyTopicNotAuthorizedDoesNotHold: a request naming a reply topic
// the worker may not write (anyone who can write the request topic can
// name one) was retried until the call's deadline, 10 minutes, holding the
// next requests with its key and its partition's commits. Its reply is
// lost at once instead, and the next request is served.
func TestReplyTopicNotAuthorizedDoesNotHold(t *testing.T) {
	var denied string
	e := setupWrapped(t, func(prefix string, kc kafkaclient.Client) kafkaclient.Client {
		denied = prefix + "denied-replies"
		return deniedTopic{Client: kc, topic: denied}
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}) })
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	good, _ := proto.Marshal(&echov1.EchoRequest{Message: "good"})
	reqTopic, key := e.topic("echo-requests"), []byte("same-partition")
	lost := e.worker.Stats().LostReplies
	h := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:reply-to", denied, "zilla:correlation-id", "denied-reply-topic"}
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: h.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: h.headers()})
	ok := requestHeaders(e, echoService, "EchoUnary", "after-denied-reply-topic")
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: ok.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: ok.headers()})
	if got := replies.await(t, "after-denied-reply-topic"); header(got[len(got)-1], "zilla:status") != "0" {
		t.Fatalf("the request after it ended with status %q", header(got[len(got)-1], "zilla:status"))
	}
	if n := e.worker.Stats().LostReplies - lost; n == 0 {
		t.Fatal("the reply to the topic the worker may not write was not counted lost")
	}
}

// TestGatewayRequestTopicNotAuthorized: a gateway whose principal may not
// write a method's request topic answered UNAVAILABLE, which gRPC retry
// policies and resuming clients retry; it answers PERMISSION_DENIED.
func TestGatewayRequestTopicNotAuthorized(t *testing.T) {
	e := setup(t, echoserver.Server{})
	gw := runtime.NewGateway(deniedTopic{Client: e.kc, topic: e.topic("echo-requests")},
		runtime.WithTopicMapper(func(s string) string { return e.prefix + s }), runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	_, err := client.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "x"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a request topic the gateway may not write: %v, want PERMISSION_DENIED", err)
	}
}

// undescribable fails every lookup of topic as both Kafka clients fail a
// lookup of a topic their principal may not describe (the conformance
// suite's LookupNotAuthorizedFails checks that they do).
type undescribable struct {
	kafkaclient.Client
	topic string
}

func (u undescribable) denied(topic string) error {
	return fmt.Errorf("metadata of %s: %w (TOPIC_AUTHORIZATION_FAILED)", topic, kafkaclient.ErrNotAuthorized)
}

func (u undescribable) Partitions(ctx context.Context, topic string) ([]int32, error) {
	if topic == u.topic {
		return nil, u.denied(topic)
	}
	return u.Client.Partitions(ctx, topic)
}

func (u undescribable) Offsets(ctx context.Context, topic string, partitions []int32, which kafkaclient.OffsetSpec) (map[int32]int64, error) {
	if topic == u.topic {
		return nil, u.denied(topic)
	}
	return u.Client.Offsets(ctx, topic, partitions, which)
}

// fetchCaller is a client of the echo service on e's topics, through a
// gateway or a ClientConn.
type fetchCaller struct {
	name string
	echo echov1.EchoServiceClient
}

// fetchCallers returns a caller through a gateway and one through a
// ClientConn, both on kc.
func fetchCallers(t *testing.T, e *fanoutEnv, kc kafkaclient.Client) []fetchCaller {
	t.Helper()
	gw := runtime.NewGateway(kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }), runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	viaGateway := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	_, viaConn := connTo(t, kc, e.prefix)
	return []fetchCaller{{"gateway", viaGateway}, {"ClientConn", viaConn}}
}

// TestFetchTopicNotAuthorized: a fetch of a topic the gateway's (or
// ClientConn's) principal may not describe ended UNAVAILABLE, which
// fetchclient retries for as long as its context lives; it ends
// PERMISSION_DENIED naming the topic, and fetchclient gives up at once.
func TestFetchTopicNotAuthorized(t *testing.T) {
	e := setupFanout(t)
	denied := undescribable{Client: e.kc, topic: e.topic}
	for _, tc := range fetchCallers(t, e, denied) {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(ctxFor(t, 30*time.Second))
			defer cancel()
			var retried error
			sub := fetchclient.New(ctx, tc.echo.EchoEvents, fetchclient.WithRetryHook(func(_ int, err error) {
				retried = err
				cancel() // it would retry until ctx ends
			}))
			defer sub.Close()
			_, err := sub.Recv()
			if retried != nil {
				t.Fatalf("fetchclient retried after %v, want PERMISSION_DENIED", retried)
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), e.topic) {
				t.Fatalf("Recv = %v, want PERMISSION_DENIED naming %s", err, e.topic)
			}
		})
	}
}

// TestGatewayRequestTopicNotDescribable: a gateway whose principal may not
// describe a method's request topic let the call go on (its topic check
// took the lookup's error for a passing fault), so a principal allowed to
// write but not to describe the topic got through, and one allowed
// neither got UNAVAILABLE from the produce; the call ends
// PERMISSION_DENIED naming the topic, before anything is produced.
func TestGatewayRequestTopicNotDescribable(t *testing.T) {
	e := setup(t, echoserver.Server{})
	gw := runtime.NewGateway(undescribable{Client: e.kc, topic: e.topic("echo-requests")},
		runtime.WithTopicMapper(func(s string) string { return e.prefix + s }), runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	for i := range 2 { // the second call goes by what the first one's lookup found
		_, err := client.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "x"})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), e.topic("echo-requests")) {
			t.Fatalf("call %d to a request topic the gateway may not describe: %v, want PERMISSION_DENIED naming it", i+1, err)
		}
	}
}

// TestReplyTopicNotDescribable: a gateway or ClientConn whose principal may
// not describe a reply topic could not start reading it, and said only
// "reply topic ...: <the lookup's error>"; a call through a gateway whose
// service was not added first ended UNAVAILABLE, which retry policies
// retry. Registering fails with an error wrapping ErrNotAuthorized that
// says so, and such a call ends PERMISSION_DENIED naming the topic.
func TestReplyTopicNotDescribable(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replies := e.topic("echo-responses")
	denied := undescribable{Client: e.kc, topic: replies}
	mapper := runtime.WithTopicMapper(func(s string) string { return e.prefix + s })
	gw := runtime.NewGateway(denied, mapper, runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	cc := runtime.NewClientConn(denied, mapper, runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = cc.Close() })
	for what, err := range map[string]error{"Gateway.AddService": gw.AddService(echov1.EchoServiceKafkaSpec),
		"ClientConn.Register": cc.Register(echov1.EchoServiceKafkaSpec)} {
		if !errors.Is(err, kafkaclient.ErrNotAuthorized) || !strings.Contains(err.Error(), replies) || !strings.Contains(err.Error(), "may not describe") {
			t.Errorf("%s: %v, want an error wrapping ErrNotAuthorized naming %s and saying the principal may not describe it", what, err, replies)
		}
	}
	client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		echov1.RegisterEchoServiceServer(s, echov1.NewEchoServiceKafkaGateway(gw))
	}))
	_, err := client.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "x"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), replies) {
		t.Fatalf("a call whose reply topic the gateway may not describe: %v, want PERMISSION_DENIED naming it", err)
	}
}

// unreadable lets the client describe topic but not read it: every Poll of
// a reader assigned one of its partitions fails as both Kafka clients' do
// for a topic their principal may not read (the conformance suite's
// ReaderNotAuthorizedFails checks that they do).
type unreadable struct {
	kafkaclient.Client
	topic string
}

func (u unreadable) NewReader(cfg kafkaclient.ReaderConfig) (kafkaclient.Reader, error) {
	r, err := u.Client.NewReader(cfg)
	if err != nil {
		return nil, err
	}
	return &unreadableReader{Reader: r, topic: u.topic}, nil
}

type unreadableReader struct {
	kafkaclient.Reader
	topic  string
	denied atomic.Bool
}

func (r *unreadableReader) Assign(parts []kafkaclient.TopicPartitionOffset) error {
	for _, p := range parts {
		if p.Topic == r.topic {
			r.denied.Store(true)
		}
	}
	return r.Reader.Assign(parts)
}

func (r *unreadableReader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	if r.denied.Load() {
		return nil, fmt.Errorf("fetch %s partition 0: %w (TOPIC_AUTHORIZATION_FAILED)", r.topic, kafkaclient.ErrNotAuthorized)
	}
	return r.Reader.Poll(ctx)
}

// TestFetchTopicNotReadable: a fetch of a topic the gateway (or
// ClientConn) may describe but not read waited for records forever (its
// hub logged the refused reads and carried on); it ends PERMISSION_DENIED
// naming the topic, which fetchclient does not retry.
func TestFetchTopicNotReadable(t *testing.T) {
	e := setupFanout(t)
	e.produce(t, e.topic, 3, 3, 0)
	denied := unreadable{Client: e.kc, topic: e.topic}
	for _, tc := range fetchCallers(t, e, denied) {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 2 { // the second one starts a new hub: the first one's ended
				// A bound that detects a fetch waiting forever.
				ctx, cancel := context.WithCancel(ctxFor(t, 20*time.Second))
				var retried error
				sub := fetchclient.New(ctx, tc.echo.EchoEvents, fetchclient.WithRetryHook(func(_ int, err error) {
					retried = err
					cancel() // it would retry until ctx ends
				}))
				_, err := sub.Recv()
				sub.Close()
				cancel()
				if retried != nil {
					t.Fatalf("fetch %d: fetchclient retried after %v, want PERMISSION_DENIED", i+1, retried)
				}
				if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), e.topic) {
					t.Fatalf("fetch %d: Recv = %v, want PERMISSION_DENIED naming %s", i+1, err, e.topic)
				}
			}
		})
	}
}

// readGate stands for Kafka's ACLs on one topic for the readers of a
// client (gatedReads): held, a reader's Poll waits (a fetch not answered
// yet); refusing, it fails as both clients' Poll fails for a topic their
// principal may not read, at every Poll (franz) or once per reader, then
// waiting (librdkafka, which reports a refusal once); open, it reads.
type readGate struct {
	topic string
	once  bool

	mu      sync.Mutex
	state   int // gateHeld, gateRefusing or gateOpen
	changed chan struct{}
}

const (
	gateHeld = iota
	gateRefusing
	gateOpen
)

func newReadGate(topic string, once bool) *readGate {
	return &readGate{topic: topic, once: once, changed: make(chan struct{})}
}

func (g *readGate) set(state int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.state = state
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *readGate) get() (int, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state, g.changed
}

// gatedReads is a client whose readers of gate's topic read as the gate
// says; records produced to watch are announced on produced.
type gatedReads struct {
	kafkaclient.Client
	gate     *readGate
	watch    string
	produced chan struct{}
}

func (g gatedReads) NewReader(cfg kafkaclient.ReaderConfig) (kafkaclient.Reader, error) {
	r, err := g.Client.NewReader(cfg)
	if err != nil {
		return nil, err
	}
	return &gatedReader{Reader: r, gate: g.gate}, nil
}

func (g gatedReads) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic == g.watch {
		select {
		case g.produced <- struct{}{}:
		default: // counted enough
		}
	}
	g.Client.Produce(r, acks, done)
}

type gatedReader struct {
	kafkaclient.Reader
	gate  *readGate
	gated atomic.Bool // assigned a partition of the gate's topic
	told  bool        // refused once (Poll's own)
}

func (r *gatedReader) Assign(parts []kafkaclient.TopicPartitionOffset) error {
	for _, p := range parts {
		if p.Topic == r.gate.topic {
			r.gated.Store(true)
		}
	}
	return r.Reader.Assign(parts)
}

func (r *gatedReader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	for r.gated.Load() {
		state, changed := r.gate.get()
		if state == gateOpen {
			break
		}
		if state == gateRefusing && (!r.told || !r.gate.once) {
			r.told = true
			return nil, fmt.Errorf("fetch %s partition 0: %w (TOPIC_AUTHORIZATION_FAILED)", r.gate.topic, kafkaclient.ErrNotAuthorized)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
	return r.Reader.Poll(ctx)
}

// TestReplyTopicNotReadable: calls through a reply topic the gateway (or
// ClientConn) may describe but not read produced their requests, which
// the workers served, and waited for their deadline (or forever) while
// the reply router logged the refused reads. A call waiting when Kafka
// refuses ends PERMISSION_DENIED naming the topic and the missing READ;
// calls after it end so before anything is produced, whatever their kind;
// and once Kafka lets the router read the topic again, calls work again.
func TestReplyTopicNotReadable(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replies, requests := e.topic("echo-responses"), e.topic("echo-requests")
	defer runtime.SetReplyRecheck(10*time.Millisecond, 100*time.Millisecond)()
	readable := make(chan bool, 16)
	defer runtime.SetReplyReadHook(func(topic string, ok bool) {
		if topic == replies {
			readable <- ok
		}
	})()
	mapper := runtime.WithTopicMapper(func(s string) string { return e.prefix + s })
	for _, refusal := range []struct {
		name string
		once bool
	}{{"refused at every poll", false}, {"refused once per reader", true}} {
		for _, via := range []string{"gateway", "gateway sharded", "ClientConn"} {
			t.Run(refusal.name+"/"+via, func(t *testing.T) {
				gate := newReadGate(replies, refusal.once)
				kc := gatedReads{Client: e.kc, gate: gate, watch: requests, produced: make(chan struct{}, 16)}
				var echo echov1.EchoServiceClient
				var finished atomic.Value // the ClientConn's OnFinish
				opts := []grpc.CallOption{}
				switch via {
				case "ClientConn":
					_, echo = connTo(t, kc, e.prefix)
					opts = append(opts, grpc.OnFinish(func(err error) { finished.Store(status.Code(err)) }))
				default:
					gopts := []runtime.GatewayOption{mapper, runtime.WithLogger(kafkatest.Logger(t))}
					if via == "gateway sharded" {
						gopts = append(gopts, runtime.GatewayReplyShard(0, 2))
					}
					gw := runtime.NewGateway(kc, gopts...)
					t.Cleanup(func() { _ = gw.Close() })
					echo = echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
						if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
							t.Fatal(err)
						}
					}))
				}
				denied := func(what string, err error) {
					t.Helper()
					msg := status.Convert(err).Message()
					if status.Code(err) != codes.PermissionDenied || !strings.Contains(msg, replies) || !strings.Contains(msg, "READ") {
						t.Fatalf("%s: %v, want PERMISSION_DENIED naming %s and the READ it needs", what, err, replies)
					}
				}

				// A call waiting for its reply when Kafka refuses the
				// router's reads.
				errc := make(chan error, 1)
				go func() {
					// A bound that detects a call waiting forever.
					_, err := echo.EchoUnary(ctxFor(t, 20*time.Second), &echov1.EchoRequest{Message: "waiting"})
					errc <- err
				}()
				<-kc.produced // its request
				gate.set(gateRefusing)
				denied("the call waiting when the refusal came", <-errc)
				if ok := <-readable; ok {
					t.Fatal("the router said it may read its topic again before it found it may not")
				}
				for len(kc.produced) > 0 { // the waiting call's end and cancel
					<-kc.produced
				}

				// Calls after it, of every kind: nothing is produced.
				ctx := ctxFor(t, 20*time.Second)
				_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}, opts...)
				denied("a unary call", err)
				if via == "ClientConn" && finished.Load() != codes.PermissionDenied {
					t.Fatalf("OnFinish saw %v, want PERMISSION_DENIED", finished.Load())
				}
				ss, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "after", Repeat: 2})
				if err == nil {
					_, err = ss.Recv()
				}
				denied("a server stream", err)
				bs, err := echo.EchoBidiStream(ctx)
				if err == nil {
					_ = bs.Send(&echov1.EchoRequest{Message: "after"}) // io.EOF once the call ended: Recv says why
					_, err = bs.Recv()
				}
				denied("a bidi stream", err)
				cs, err := echo.EchoClientStream(ctx)
				if err == nil {
					_, err = cs.CloseAndRecv()
				}
				denied("a client stream", err)
				if n := len(kc.produced); n > 0 {
					t.Fatalf("%d request records produced for calls whose replies cannot be read", n)
				}

				// Access granted: calls work again.
				gate.set(gateOpen)
				if ok := <-readable; !ok {
					t.Fatal("the router found again it may not read its topic once it may")
				}
				resp, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "granted"})
				if err != nil || resp.GetMessage() != "granted" {
					t.Fatalf("a call once the router may read its topic again: %v, %v", resp, err)
				}
			})
		}
	}
}

// refusedGroup is a client whose group readers' Polls fail, while refusing
// is set, as both clients' fail when the group's principal may not read
// topic; each refusal is announced on refusals.
type refusedGroup struct {
	kafkaclient.Client
	topic    string
	gate     *readGate // gateOpen or gateRefusing
	refusals chan struct{}
}

func (g refusedGroup) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	r, err := g.Client.NewGroupReader(cfg)
	if err != nil {
		return nil, err
	}
	return &refusedGroupReader{GroupReader: r, g: g}, nil
}

type refusedGroupReader struct {
	kafkaclient.GroupReader
	g refusedGroup
}

func (r *refusedGroupReader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	for {
		state, changed := r.g.gate.get()
		if state == gateRefusing {
			select {
			case r.g.refusals <- struct{}{}:
			default:
			}
			return nil, fmt.Errorf("fetch %s partition 0: %w (TOPIC_AUTHORIZATION_FAILED)", r.g.topic, kafkaclient.ErrNotAuthorized)
		}
		// Open: read until the gate changes.
		pctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-changed:
				cancel()
			case <-pctx.Done():
			}
		}()
		recs, err := r.GroupReader.Poll(pctx)
		cancel()
		if err != nil && ctx.Err() == nil && pctx.Err() != nil {
			continue // the gate changed
		}
		return recs, err
	}
}

// logRecords is a slog handler keeping every record.
type logRecords struct {
	mu  sync.Mutex
	all []slog.Record
}

func (h *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecords) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.all = append(h.all, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *logRecords) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecords) WithGroup(string) slog.Handler      { return h }

// matching returns the records at level whose message, or one of whose
// attributes, contains each of words.
func (h *logRecords) matching(level slog.Level, words ...string) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.all {
		if r.Level != level {
			continue
		}
		text := r.Message
		r.Attrs(func(a slog.Attr) bool {
			text += " " + a.Value.String()
			return true
		})
		all := true
		for _, w := range words {
			all = all && strings.Contains(text, w)
		}
		if all {
			out = append(out, r)
		}
	}
	return out
}

// TestWorkerRequestTopicNotReadable: a worker whose principal may not
// read its request topic logged each refused read at warn level, as any
// read error (franz's group reader did not even return them: it logged
// them itself at every fetch, in a hot loop), and nothing said at error
// level why the calls on its partitions waited. The first refusal is
// logged at error level naming the topic and the missing READ, the next
// ones are not (RequestReadsRefused counts them), and once the worker
// reads requests again it says so, and serves them.
func TestWorkerRequestTopicNotReadable(t *testing.T) {
	logs := &logRecords{}
	gate := newReadGate("", false)
	gate.set(gateOpen)
	var requests string
	refusals := make(chan struct{}, 16)
	e := setupWrapped(t, func(prefix string, kc kafkaclient.Client) kafkaclient.Client {
		requests = prefix + "echo-requests"
		return refusedGroup{Client: kc, topic: requests, gate: gate, refusals: refusals}
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}) },
		runtime.WithLogger(slog.New(logs)))
	gate.set(gateRefusing)
	for range 3 { // the worker asks again after each
		<-refusals
	}
	gate.set(gateOpen)
	resp, err := e.echo.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "granted"})
	if err != nil || resp.GetMessage() != "granted" {
		t.Fatalf("a call once the worker may read its request topic again: %v, %v", resp, err)
	}
	if n := len(logs.matching(slog.LevelError, requests, "READ")); n != 1 {
		for _, r := range logs.matching(slog.LevelWarn, requests) {
			t.Logf("warn: %s", r.Message)
		}
		t.Fatalf("%d error-level logs naming %s and the READ the worker needs, for 3 refusals or more; want 1", n, requests)
	}
	if len(logs.matching(slog.LevelInfo, "reading requests again")) != 1 {
		t.Fatal("the worker did not say it reads requests again")
	}
	if n := e.worker.Stats().RequestReadsRefused; n < 3 {
		t.Fatalf("RequestReadsRefused = %d after 3 refusals or more", n)
	}
}
