package runtime_test

import (
	"bytes"
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
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// outcomeEnv is a gateway and the workers of one group, on topics of their
// own, the outcome topic created with EnsureTopics from a worker's
// ExtraTopics.
type outcomeEnv struct {
	kc     kafkaclient.Client
	prefix string
	group  string
	echo   echov1.EchoServiceClient
	eos    bool
}

const outcomeTopic = "outcomes"

func newOutcomeEnv(t *testing.T, eos bool) *outcomeEnv {
	t.Helper()
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	e := &outcomeEnv{kc: kc, prefix: kafkatest.Unique("t") + ".", eos: eos}
	e.group = e.prefix + "workers"
	probe := runtime.NewWorker(kc, e.mapper(), runtime.WorkerOutcomeTopic(outcomeTopic))
	topics := append(echov1.EchoServiceKafkaSpec.Topics(e.mapName), probe.ExtraTopics()...)
	_ = probe.Close()
	if got := topics[len(topics)-1]; got.Name != e.topic(outcomeTopic) || got.Role != runtime.TopicOutcome {
		t.Fatalf("ExtraTopics gave %+v, want the outcome topic %s", got, e.topic(outcomeTopic))
	}
	if err := runtime.EnsureTopics(ctxFor(t, 30*time.Second), kc, topics, runtime.EnsureTopicsOptions{}); err != nil {
		t.Fatal(err)
	}
	gopts := []runtime.GatewayOption{e.mapper(), runtime.WithLogger(kafkatest.Logger(t))}
	if eos {
		gopts = append(gopts, runtime.GatewayReadCommitted())
	}
	gw := runtime.NewGateway(kc, gopts...)
	t.Cleanup(func() { _ = gw.Close() })
	e.echo = echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	return e
}

func (e *outcomeEnv) topic(t string) string   { return e.prefix + t }
func (e *outcomeEnv) mapName(t string) string { return e.prefix + t }
func (e *outcomeEnv) mapper() runtime.Option  { return runtime.WithTopicMapper(e.mapName) }

// start starts a member of the group serving impl through kc and waits for
// its first assignment (after which its stored outcomes are loaded).
func (e *outcomeEnv) start(t *testing.T, kc kafkaclient.Client, impl echov1.EchoServiceServer, opts ...runtime.WorkerOption) *runtime.Worker {
	t.Helper()
	base := []runtime.WorkerOption{e.mapper(), runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(e.group)}
	if e.eos {
		base = append(base, runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	}
	w := runtime.NewWorker(kc, append(base, opts...)...)
	if err := echov1.RegisterEchoServiceKafkaWorker(w, impl); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	select {
	case <-w.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("worker got no partitions within 60 s")
	}
	return w
}

var errKilled = errors.New("injected by the test: the worker process is gone")

// killable is a worker's Kafka client that, once killed, takes nothing more
// to Kafka: no record, no offset commit, as a process that died. (The group
// member still leaves the group when the worker closes, so that the test
// does not wait for the session timeout: integration tests SIGKILL real
// processes.)
type killable struct {
	kafkaclient.Client
	dead atomic.Bool
}

func (k *killable) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if k.dead.Load() {
		go done(r, errKilled)
		return
	}
	k.Client.Produce(r, acks, done)
}

func (k *killable) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	gr, err := k.Client.NewGroupReader(cfg)
	if err != nil {
		return nil, err
	}
	return &killableGroup{GroupReader: gr, k: k}, nil
}

// NewTxnProducer wraps the client's transactional producer: once killed,
// it takes no record and commits nothing.
func (k *killable) NewTxnProducer(id string) (kafkaclient.TxnProducer, error) {
	tc, ok := k.Client.(kafkaclient.TxnClient)
	if !ok {
		return nil, errors.New("the test's client has no transactions")
	}
	p, err := tc.NewTxnProducer(id)
	if err != nil {
		return nil, err
	}
	return &killableTxn{TxnProducer: p, k: k}, nil
}

type killableTxn struct {
	kafkaclient.TxnProducer
	k *killable
}

func (t *killableTxn) Produce(r *kafkaclient.Record, done func(*kafkaclient.Record, error)) {
	if t.k.dead.Load() {
		go done(r, errKilled)
		return
	}
	t.TxnProducer.Produce(r, done)
}

func (t *killableTxn) Commit(ctx context.Context, gr kafkaclient.GroupReader, offs []kafkaclient.TopicPartitionOffset) error {
	if t.k.dead.Load() {
		return errKilled
	}
	if g, ok := gr.(*killableGroup); ok {
		gr = g.GroupReader // the client's own, as the producer needs
	}
	return t.TxnProducer.Commit(ctx, gr, offs)
}

type killableGroup struct {
	kafkaclient.GroupReader
	k *killable
}

func (g *killableGroup) Commit(ctx context.Context, offs []kafkaclient.TopicPartitionOffset) error {
	if g.k.dead.Load() {
		return errKilled
	}
	return g.GroupReader.Commit(ctx, offs)
}

// produceJunk writes records that are no outcomes to every partition of
// the outcome topic, and returns how many.
func (e *outcomeEnv) produceJunk(t *testing.T) int {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	parts, err := e.kc.Partitions(ctx, e.topic(outcomeTopic))
	if err != nil {
		t.Fatal(err)
	}
	junk := [][]byte{{}, {0xff, 'R'}, {1, 'R', 0x80}, {1, 'R', 1, 3, 'a', 'b'}, {1, 'X', 0}}
	errs := make(chan error, len(parts)*len(junk))
	for _, p := range parts {
		for _, v := range junk {
			e.kc.Produce(&kafkaclient.Record{Topic: e.topic(outcomeTopic), Partition: p, Key: []byte("junk"), Value: v},
				kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errs <- err })
		}
	}
	for range len(parts) * len(junk) {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("junk records not acknowledged within 30 s")
		}
	}
	return len(parts) * len(junk)
}

// TestOutcomeAnsweredAfterWorkerDies: a keyed call answered by worker A is
// repeated after A is gone (killed: nothing more of it reaches Kafka, no
// offset commit, no graceful hand-over) and worker B, which never ran it,
// answers from the stored outcome without running its handler. Without the
// outcome topic, B runs the call again (what the option changes).
func TestOutcomeAnsweredAfterWorkerDies(t *testing.T) {
	for _, on := range []bool{true, false} {
		name := "with outcome topic"
		if !on {
			name = "without outcome topic"
		}
		t.Run(name, func(t *testing.T) { outcomeAfterKill(t, on) })
	}
}

func outcomeAfterKill(t *testing.T, on bool) {
	e := newOutcomeEnv(t, false)
	var opts []runtime.WorkerOption
	if on {
		opts = append(opts, runtime.WorkerOutcomeTopic(outcomeTopic))
	}
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	stored := watchReplies(t, e.kc, e.topic(outcomeTopic))
	implA, implB := &counting{}, &counting{}
	kcA := &killable{Client: e.kc}
	a := e.start(t, kcA, implA, opts...)

	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "order-7")
	first, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	if n := implA.count("charge"); n != 1 {
		t.Fatalf("worker A ran the call %d times, want 1", n)
	}
	req := <-requests.recs
	id := header(req, "zilla:correlation-id")
	if on {
		// The outcome record: keyed by the correlation id, in the
		// partition with the request's number.
		rec := awaitKey(t, stored, id)
		if rec.Partition != req.Partition || len(rec.Value) < 2 || rec.Value[0] != 1 || rec.Value[1] != 'R' {
			t.Fatalf("outcome record in partition %d with value % x..., want partition %d (the request's), format 1 'R'",
				rec.Partition, rec.Value[:min(len(rec.Value), 2)], req.Partition)
		}
	}

	kcA.dead.Store(true)
	_ = a.Close()
	junk := 0
	if on {
		junk = e.produceJunk(t)
	}
	b := e.start(t, e.kc, implB, opts...)

	again, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	if !on {
		if n := implB.count("charge"); n != 1 {
			t.Fatalf("without the outcome topic worker B ran the repeat %d times, want 1", n)
		}
		return
	}
	if n := implB.count("charge"); n != 0 {
		t.Fatalf("worker B ran the repeated call %d times, want 0: it had the stored outcome", n)
	}
	if !proto.Equal(first, again) {
		t.Fatalf("the repeat got %v, want the stored %v", again, first)
	}
	st := b.Stats()
	if st.Duplicates < 1 || st.OutcomesLoaded < 1 {
		t.Fatalf("worker B: Duplicates %d, OutcomesLoaded %d; want at least 1 of each", st.Duplicates, st.OutcomesLoaded)
	}
	if st.OutcomesMalformed != uint64(junk) {
		t.Fatalf("worker B skipped %d malformed outcome records, want the %d written", st.OutcomesMalformed, junk)
	}
	// B serves new calls as usual.
	if r, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "fresh"}); err != nil || r.GetMessage() != "fresh" {
		t.Fatalf("a new call on worker B: %v, %v", r, err)
	}
	if n := implB.count("fresh"); n != 1 {
		t.Fatalf("worker B ran a new call %d times, want 1", n)
	}
}

// awaitKey returns the first record of w with key (bounded).
func awaitKey(t *testing.T, w *replyWatch, key string) *kafkaclient.Record {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case rec := <-w.recs:
			if string(rec.Key) == key {
				return rec
			}
		case <-timeout:
			t.Fatalf("no record with key %q within 30 s", key)
		}
	}
}

// TestOutcomeSurvivesExactlyOnceWorker: with WorkerExactlyOnce the outcome
// record goes in the transaction of the replies; the next member, reading
// committed records only, answers the repeat from it, whether the first
// worker handed over (closed) or died (killed once the caller had its
// answer, which a gateway reading committed replies gives only once the
// transaction is committed).
func TestOutcomeSurvivesExactlyOnceWorker(t *testing.T) {
	for _, kill := range []bool{false, true} {
		name := "closed"
		if kill {
			name = "killed"
		}
		t.Run(name, func(t *testing.T) { outcomeExactlyOnce(t, kill) })
	}
}

func outcomeExactlyOnce(t *testing.T, kill bool) {
	e := newOutcomeEnv(t, true)
	implA, implB := &counting{}, &counting{}
	kcA := &killable{Client: e.kc}
	a := e.start(t, kcA, implA, runtime.WorkerOutcomeTopic(outcomeTopic))
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "order-8")
	first, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "pay"})
	if err != nil {
		t.Fatal(err)
	}
	kcA.dead.Store(kill)
	_ = a.Close()
	if err := a.Err(); err != nil && !kill {
		t.Fatalf("worker A stopped: %v", err)
	}
	b := e.start(t, e.kc, implB, runtime.WorkerOutcomeTopic(outcomeTopic))
	again, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "pay"})
	if err != nil {
		t.Fatal(err)
	}
	if n := implA.count("pay") + implB.count("pay"); n != 1 {
		t.Fatalf("the handler ran %d times for one key across two workers, want 1", n)
	}
	if !proto.Equal(first, again) {
		t.Fatalf("the repeat got %v, want the stored %v", again, first)
	}
	if err := b.Err(); err != nil {
		t.Fatalf("worker B stopped: %v", err)
	}
}

// syncBuffer is a log destination safe for concurrent writes, that tells
// a waiting await of each write.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	written chan struct{} // gets a token after a write; made by the first use
}

func (s *syncBuffer) signal() chan struct{} {
	if s.written == nil {
		s.written = make(chan struct{}, 1)
	}
	return s.written
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.signal() <- struct{}{}:
	default:
	}
	return s.b.Write(p)
}

// await waits, bounded, until one line of the log contains every one of
// want, and returns the log. (A worker's Ready may come with an empty first
// assignment, before the one whose load logs.)
func (s *syncBuffer) await(t *testing.T, want ...string) string {
	t.Helper()
	s.mu.Lock()
	written := s.signal()
	s.mu.Unlock()
	timeout := time.After(60 * time.Second)
	for {
		got := s.String()
		for _, line := range strings.Split(got, "\n") {
			all := true
			for _, w := range want {
				all = all && strings.Contains(line, w)
			}
			if all {
				return got
			}
		}
		select {
		case <-written:
		case <-timeout:
			t.Fatalf("log within 60 s:\n%s\nwant a line containing each of %q", got, want)
		}
	}
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMissingOutcomeTopicIsLoggedAndServed: a worker whose outcome topic
// does not exist says so at error level, naming it, and serves on, with its
// outcomes in memory.
func TestMissingOutcomeTopicIsLoggedAndServed(t *testing.T) {
	e := newOutcomeEnv(t, false)
	var logs syncBuffer
	impl := &counting{}
	w := e.start(t, e.kc, impl, runtime.WorkerOutcomeTopic("no-such-topic"),
		runtime.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	logs.await(t, "level=ERROR", `outcome topic \"`+e.topic("no-such-topic")+`\" does not exist`)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "k")
	for range 2 {
		if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != "m" {
			t.Fatalf("call: %v, %v", r, err)
		}
	}
	if n := impl.count("m"); n != 1 {
		t.Fatalf("handler ran %d times for one key, want 1 (the outcome kept in memory)", n)
	}
	if err := w.Err(); err != nil {
		t.Fatalf("worker stopped: %v", err)
	}
}

// TestExpiredOutcomeIsDeleted: an outcome that leaves the owner's memory
// (here at once: a window of a nanosecond) is deleted from the outcome
// topic with a tombstone of its key.
func TestExpiredOutcomeIsDeleted(t *testing.T) {
	e := newOutcomeEnv(t, false)
	stored := watchReplies(t, e.kc, e.topic(outcomeTopic))
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	e.start(t, e.kc, &counting{}, runtime.WorkerOutcomeTopic(outcomeTopic), runtime.WorkerIdempotencyWindow(time.Nanosecond, 1<<20))
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "short")
	if _, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}); err != nil {
		t.Fatal(err)
	}
	id := header(<-requests.recs, "zilla:correlation-id")
	if rec := awaitKey(t, stored, id); rec.Value == nil {
		t.Fatal("the first record of the key is a tombstone, want the outcome")
	}
	if rec := awaitKey(t, stored, id); rec.Value != nil {
		t.Fatalf("the second record of the key has a %d-byte value, want a tombstone", len(rec.Value))
	}
}

// TestOutcomeTopicWithFewerPartitions: an outcome topic with fewer
// partitions than the request topic is said at error level, and the worker
// serves on (those partitions' outcomes in memory only).
func TestOutcomeTopicWithFewerPartitions(t *testing.T) {
	e := newOutcomeEnv(t, false)
	kafkatest.CreateTopics(t, e.kc, 1, e.topic("small"))
	var logs syncBuffer
	impl := &counting{}
	e.start(t, e.kc, impl, runtime.WorkerOutcomeTopic("small"),
		runtime.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	logs.await(t, "level=ERROR", "fewer partitions than the request topic", `request_partitions="[1 2]"`)
	for i := range 6 {
		ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", fmt.Sprint("k", i))
		for range 2 {
			if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: fmt.Sprint("m", i)}); err != nil || r.GetMessage() != fmt.Sprint("m", i) {
				t.Fatalf("call: %v, %v", r, err)
			}
		}
		if n := impl.count(fmt.Sprint("m", i)); n != 1 {
			t.Fatalf("handler ran %d times for one key, want 1", n)
		}
	}
}

// TestOutcomeLoadBound: a load that does not finish within its bound (here
// a nanosecond) is said at error level, and the worker serves on.
func TestOutcomeLoadBound(t *testing.T) {
	e := newOutcomeEnv(t, false)
	defer runtime.SetOutcomeLoadTimeout(time.Nanosecond)()
	var logs syncBuffer
	impl := &counting{}
	e.start(t, e.kc, impl, runtime.WorkerOutcomeTopic(outcomeTopic),
		runtime.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	logs.await(t, "level=ERROR", "loading stored outcomes", "not done within the load's bound of 1ns")
	if r, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != "m" {
		t.Fatalf("call: %v, %v", r, err)
	}
}
