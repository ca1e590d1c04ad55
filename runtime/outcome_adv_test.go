package runtime_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Adversarial tests of stored outcomes (WorkerOutcomeTopic) and keyed
// retries across worker restarts and rebalances.

// advOutcomeRecord encodes an outcome record's value as README's "Record
// layout" describes it, as another program could write it.
func advOutcomeRecord(at time.Time, topic string, code codes.Code, recs []kafkaclient.Record) []byte {
	b := []byte{1, 'R'}
	b = binary.AppendUvarint(b, uint64(at.UnixMilli()))
	b = binary.AppendUvarint(b, uint64(len(topic)))
	b = append(b, topic...)
	b = binary.AppendUvarint(b, uint64(code))
	b = binary.AppendUvarint(b, uint64(len(recs)))
	nbytes := func(b, v []byte) []byte {
		if v == nil {
			return append(b, 0)
		}
		return append(binary.AppendUvarint(b, uint64(len(v))+1), v...)
	}
	for _, r := range recs {
		b = nbytes(b, r.Value)
		b = binary.AppendUvarint(b, uint64(len(r.Headers)))
		for _, h := range r.Headers {
			b = binary.AppendUvarint(b, uint64(len(h.Key)))
			b = append(b, h.Key...)
			b = nbytes(b, h.Value)
		}
	}
	return b
}

// advProduce writes rec and waits for Kafka's acknowledgement (bounded).
func advProduce(t *testing.T, kc kafkaclient.Client, rec *kafkaclient.Record) {
	t.Helper()
	errs := make(chan error, 1)
	kc.Produce(rec, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errs <- err })
	select {
	case err := <-errs:
		if err != nil {
			t.Fatalf("writing a record to %s: %v", rec.Topic, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("a record to %s not acknowledged within 30 s", rec.Topic)
	}
}

// TestOutcomeAdvDecodableButBrokenOutcome: the outcome topic holds, as the
// latest record of a keyed call's correlation id, a record another program
// wrote that decodes but is no call's outcome: its replies lack the
// end-of-stream record, or have it before a data record. The worker that
// loads it must not replay it (its caller would wait for an end that never
// comes, or take a stray end for the call's): it is counted as malformed,
// and the retry gets a whole, correct answer.
func TestOutcomeAdvDecodableButBrokenOutcome(t *testing.T) {
	rec := func(id string, v []byte, hs ...string) kafkaclient.Record {
		r := kafkaclient.Record{Value: v, Headers: []kafkaclient.Header{{Key: "zilla:correlation-id", Value: []byte(id)}}}
		for i := 0; i+1 < len(hs); i += 2 {
			r.Headers = append(r.Headers, kafkaclient.Header{Key: hs[i], Value: []byte(hs[i+1])})
		}
		return r
	}
	forged, _ := proto.Marshal(&echov1.EchoResponse{Message: "forged"})
	for _, tc := range []struct {
		name string
		recs func(id string) []kafkaclient.Record
	}{
		{"no end", func(id string) []kafkaclient.Record { return []kafkaclient.Record{rec(id, forged)} }},
		{"end before data", func(id string) []kafkaclient.Record {
			return []kafkaclient.Record{rec(id, nil, "zilla:status", "0"), rec(id, forged)}
		}},
		{"two ends", func(id string) []kafkaclient.Record {
			return []kafkaclient.Record{rec(id, forged), rec(id, nil, "zilla:status", "0"), rec(id, nil, "zilla:status", "0")}
		}},
		{"another call's correlation id", func(id string) []kafkaclient.Record {
			return []kafkaclient.Record{rec("other"+id, forged), rec("other"+id, nil, "zilla:status", "0")}
		}},
		{"no correlation id", func(string) []kafkaclient.Record {
			return []kafkaclient.Record{{Value: forged}, {Headers: []kafkaclient.Header{{Key: "zilla:status", Value: []byte("0")}}}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newOutcomeEnv(t, false)
			opt := runtime.WorkerOutcomeTopic(outcomeTopic)
			requests := watchReplies(t, e.kc, e.topic("echo-requests"))
			implA, implB := &counting{}, &counting{}
			a := e.start(t, e.kc, implA, opt)
			ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "adv-broken")
			first, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
			if err != nil {
				t.Fatal(err)
			}
			req := <-requests.recs
			id := header(req, "zilla:correlation-id")
			_ = a.Close()

			// A newer record of the same id, written by another program.
			advProduce(t, e.kc, &kafkaclient.Record{Topic: e.topic(outcomeTopic), Partition: req.Partition, Key: []byte(id),
				Value: advOutcomeRecord(time.Now(), e.topic("echo-requests"), codes.OK, tc.recs(id))})

			b := e.start(t, e.kc, implB, opt)
			rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			again, err := e.echo.EchoUnary(rctx, &echov1.EchoRequest{Message: "charge"})
			if err != nil {
				t.Fatalf("the retry after the restart failed: %v (code %v); want the call's answer", err, status.Code(err))
			}
			if again.GetMessage() != "charge" {
				t.Fatalf("the retry got %v, want the call's answer %v (not the forged record's)", again, first)
			}
			if n := implB.count("charge"); n > 1 {
				t.Fatalf("worker B ran the retry %d times", n)
			}
			if got := b.Stats().OutcomesMalformed; got != 1 {
				t.Fatalf("worker B counted %d malformed outcome records, want the 1 forged", got)
			}
		})
	}
}

// noCommit is a worker's Kafka client that produces as usual but commits
// no offset: a process that dies after its replies and its stored outcome
// were acknowledged, before the request's offset was committed.
type noCommit struct{ kafkaclient.Client }

type noCommitGroup struct{ kafkaclient.GroupReader }

func (n *noCommit) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	gr, err := n.Client.NewGroupReader(cfg)
	if err != nil {
		return nil, err
	}
	return &noCommitGroup{gr}, nil
}

var errNoCommit = errors.New("injected by the test: the process died before committing")

func (g *noCommitGroup) Commit(context.Context, []kafkaclient.TopicPartitionOffset) error {
	return errNoCommit
}

// TestOutcomeAdvOutcomeWrittenOffsetNotCommitted: worker A answers a keyed
// call and its outcome is acknowledged, but the request's offset is never
// committed. Worker B (same group, a new process) reads the request again
// and then gets the caller's retry: both are answered from the stored
// outcome, the handler never runs again.
func TestOutcomeAdvOutcomeWrittenOffsetNotCommitted(t *testing.T) {
	e := newOutcomeEnv(t, false)
	opt := runtime.WorkerOutcomeTopic(outcomeTopic)
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	stored := watchReplies(t, e.kc, e.topic(outcomeTopic))
	implA, implB := &counting{}, &counting{}
	a := e.start(t, &noCommit{e.kc}, implA, opt)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "adv-uncommitted")
	first, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	req := <-requests.recs
	awaitKey(t, stored, header(req, "zilla:correlation-id"))
	_ = a.Close()

	b := e.start(t, e.kc, implB, opt)
	// The request read again by B is answered from the outcome: a
	// duplicate, counted, without a run.
	deadline := time.Now().Add(30 * time.Second)
	for b.Stats().Duplicates < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("worker B answered no duplicate within 30 s (handler runs: %d)", implB.count("charge"))
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	again, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(first, again) {
		t.Fatalf("the retry got %v, want the stored %v", again, first)
	}
	if n := implB.count("charge"); n != 0 {
		t.Fatalf("worker B ran the call %d times, want 0: its outcome was stored", n)
	}
}

// advBigStream is a server-streaming handler that counts its runs and sends
// req.Repeat responses, each its message followed by a block of bytes
// naming the response's index (so that every response differs).
type advBigStream struct {
	echov1.UnimplementedEchoServiceServer
	runs atomic.Int32
	size int
}

func (a *advBigStream) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	a.runs.Add(1)
	for i := range req.GetRepeat() {
		body := strings.Repeat(fmt.Sprintf("%08d", i), a.size/8)
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage() + body, Index: i}); err != nil {
			return err
		}
	}
	return nil
}

// advStreamAll reads a server stream to its end.
func advStreamAll(t *testing.T, open func() (grpc.ServerStreamingClient[echov1.EchoResponse], error)) []*echov1.EchoResponse {
	t.Helper()
	s, err := open()
	if err != nil {
		t.Fatal(err)
	}
	var got []*echov1.EchoResponse
	for range 100_000 {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatalf("after %d responses: %v", len(got), err)
		}
		got = append(got, r)
	}
	t.Fatal("a stream of over 100,000 responses")
	return nil
}

// TestOutcomeAdvLargeStreamAfterRestart: a keyed server stream whose
// responses add up to a little below the outcome record's limit (7.5 MiB in
// 125 responses of 60 KiB) is stored in the outcome topic whole; after its
// worker is killed, the next member answers the retry with every response,
// in order, without running the handler.
func TestOutcomeAdvLargeStreamAfterRestart(t *testing.T) {
	e := newOutcomeEnv(t, false)
	opt := runtime.WorkerOutcomeTopic(outcomeTopic)
	implA, implB := &advBigStream{size: 60 << 10}, &advBigStream{size: 60 << 10}
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	stored := watchReplies(t, e.kc, e.topic(outcomeTopic))
	kcA := &killable{Client: e.kc}
	a := e.start(t, kcA, implA, opt)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 120*time.Second), "idempotency-key", "adv-big-stream")
	req := &echov1.EchoRequest{Message: "big", Repeat: 125}
	first := advStreamAll(t, func() (grpc.ServerStreamingClient[echov1.EchoResponse], error) {
		return e.echo.EchoServerStream(ctx, req)
	})
	if len(first) != 125 {
		t.Fatalf("the call got %d responses, want 125", len(first))
	}
	// The outcome record in the topic (so A wrote it; the request's offset
	// may be committed or not: B answers either from the outcome).
	rec := awaitKey(t, stored, header(<-requests.recs, "zilla:correlation-id"))
	if n := a.Stats().OutcomesUnwritten; n != 0 || len(rec.Value) < 125*(60<<10) {
		t.Fatalf("worker A: %d outcomes unwritten, outcome record of %d bytes; want 0 and the whole stream", n, len(rec.Value))
	}
	kcA.dead.Store(true)
	_ = a.Close()
	b := e.start(t, e.kc, implB, opt)
	again := advStreamAll(t, func() (grpc.ServerStreamingClient[echov1.EchoResponse], error) {
		return e.echo.EchoServerStream(ctx, req)
	})
	if n := implB.runs.Load(); n != 0 {
		t.Fatalf("worker B ran the retry %d times, want 0: its outcome was stored", n)
	}
	if len(again) != len(first) {
		t.Fatalf("the retry got %d responses, want the %d stored", len(again), len(first))
	}
	for i := range first {
		if !proto.Equal(first[i], again[i]) {
			t.Fatalf("response %d of the retry differs from the call's", i)
		}
	}
	if st := b.Stats(); st.OutcomesLoaded != 1 || st.OutcomesMalformed != 0 {
		t.Fatalf("worker B: OutcomesLoaded %d, OutcomesMalformed %d; want 1 and 0", st.OutcomesLoaded, st.OutcomesMalformed)
	}
}

// revokeWatch is a worker's Kafka client that reports the partitions its
// group member has revoked.
type revokeWatch struct {
	kafkaclient.Client
	revoked chan []kafkaclient.TopicPartition
}

func (r *revokeWatch) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	inner := cfg.OnRevoked
	cfg.OnRevoked = func(parts []kafkaclient.TopicPartition, lost bool) {
		if inner != nil {
			inner(parts, lost)
		}
		if len(parts) > 0 {
			select {
			case r.revoked <- parts:
			default:
			}
		}
	}
	return r.Client.NewGroupReader(cfg)
}

// advID is the correlation id of an EchoUnary call with idempotency key k.
func advID(e *outcomeEnv, k string) string {
	return wire.CorrelationID(wire.Names{}, k, "example.echo.v1.EchoService", "EchoUnary", e.topic("echo-responses"))
}

// advKeyOn returns the first of base-0, base-1, ... whose EchoUnary request
// goes to partition p of n.
func advKeyOn(e *outcomeEnv, base string, p, n int32) string {
	for i := range 10_000 {
		k := fmt.Sprintf("%s-%d", base, i)
		if kafkaclient.KeyPartition([]byte(advID(e, k)), n) == p {
			return k
		}
	}
	panic("no key found for partition")
}

// TestOutcomeAdvRevokedOutcomesTakeNoRoom: the outcomes a worker kept of a
// partition that a rebalance moved to another member (which loaded them
// from the outcome topic) must not take the memory room of the outcomes of
// the partitions it still serves. Worker A, alone, stores two outcomes of
// each of the 3 partitions (its bound holds 6); B joins and takes one
// partition; A then stores two more outcomes of its own partitions. A's own
// partitions' 6 outcomes fit its bound: every retry must be answered from
// them, none run again (before, A evicted, and deleted from the topic, its
// own oldest outcomes to keep B's).
func TestOutcomeAdvRevokedOutcomesTakeNoRoom(t *testing.T) {
	e := newOutcomeEnv(t, false)
	const body = 10 << 10 // each outcome counts for about 10.5 KiB
	opts := []runtime.WorkerOption{runtime.WorkerOutcomeTopic(outcomeTopic),
		runtime.WorkerIdempotencyWindow(10*time.Minute, 6*body+6*(1<<10))}
	impl := &counting{}
	kcA := &revokeWatch{Client: e.kc, revoked: make(chan []kafkaclient.TopicPartition, 4)}
	a := e.start(t, kcA, impl, opts...)
	ctx := ctxFor(t, 120*time.Second)
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	call := func(key string, p int32) {
		t.Helper()
		kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
		if _, err := e.echo.EchoUnary(kctx, &echov1.EchoRequest{Message: key + strings.Repeat("x", body)}); err != nil {
			t.Fatalf("call %s: %v", key, err)
		}
		if rec := awaitKey(t, requests, advID(e, key)); rec.Partition != p {
			t.Fatalf("call %s went to partition %d, want %d (the test's key choice is wrong)", key, rec.Partition, p)
		}
	}
	var keys [3][]string // by partition
	for round := range 2 {
		for p := range int32(3) {
			k := advKeyOn(e, fmt.Sprintf("old%d-p%d", round, p), p, 3)
			call(k, p)
			keys[p] = append(keys[p], k)
		}
	}
	implB := &counting{}
	e.start(t, e.kc, implB, opts...)
	var moved []kafkaclient.TopicPartition
	select {
	case moved = <-kcA.revoked:
	case <-ctx.Done():
		t.Fatal("worker A revoked nothing once B joined")
	}
	if len(moved) != 1 {
		t.Fatalf("B took %v from A, want one partition", moved)
	}
	var own []int32
	for p := range int32(3) {
		if p != moved[0].Partition {
			own = append(own, p)
		}
	}
	for _, p := range own {
		k := advKeyOn(e, "new-p", p, 3)
		call(k, p)
		keys[p] = append(keys[p], k)
	}
	for _, p := range own {
		for _, k := range keys[p] {
			kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", k)
			if _, err := e.echo.EchoUnary(kctx, &echov1.EchoRequest{Message: k + strings.Repeat("x", body)}); err != nil {
				t.Fatalf("retry %s: %v", k, err)
			}
			if n := impl.count(k+strings.Repeat("x", body)) + implB.count(k+strings.Repeat("x", body)); n != 1 {
				t.Errorf("the call with key %s (partition %d, A's throughout) ran %d times, want 1: its outcome was stored within A's bound",
					k, p, n)
			}
		}
	}
	_ = a
}

// TestOutcomeAdvEvictedKeyAfterRestart: worker A's memory bound holds two
// outcomes; of three keyed calls, the oldest leaves A's memory and is
// deleted from the outcome topic. After A is killed, worker B answers the
// retries of the two kept from the topic, without running them, and runs
// the evicted one's retry again (README: an outcome that left its owner's
// memory is gone), giving it a fresh, whole answer, not a stale one.
func TestOutcomeAdvEvictedKeyAfterRestart(t *testing.T) {
	e := newOutcomeEnv(t, false)
	const body = 10 << 10
	opts := []runtime.WorkerOption{runtime.WorkerOutcomeTopic(outcomeTopic),
		runtime.WorkerIdempotencyWindow(10*time.Minute, 2*body+2*(1<<10))}
	implA, implB := &counting{}, &counting{}
	kcA := &killable{Client: e.kc}
	a := e.start(t, kcA, implA, opts...)
	stored := watchReplies(t, e.kc, e.topic(outcomeTopic))
	ctx := ctxFor(t, 120*time.Second)
	msg := func(k string) string { return k + strings.Repeat("x", body) }
	keys := []string{"evict-1", "evict-2", "evict-3"}
	for _, k := range keys {
		kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", k)
		if _, err := e.echo.EchoUnary(kctx, &echov1.EchoRequest{Message: msg(k)}); err != nil {
			t.Fatal(err)
		}
	}
	// The first outcome's tombstone, written once the third was stored.
	for {
		rec := awaitKey(t, stored, advID(e, keys[0]))
		if rec.Value == nil {
			break
		}
	}
	kcA.dead.Store(true)
	_ = a.Close()
	b := e.start(t, e.kc, implB, opts...)
	if n := b.Stats().OutcomesLoaded; n != 2 {
		t.Fatalf("worker B loaded %d outcomes, want the 2 A kept", n)
	}
	// Newest first: the evicted one's re-run, stored, pushes the oldest
	// out of B's memory in turn.
	for i := len(keys) - 1; i >= 0; i-- {
		k := keys[i]
		kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", k)
		r, err := e.echo.EchoUnary(kctx, &echov1.EchoRequest{Message: msg(k)})
		if err != nil {
			t.Fatalf("retry %s: %v", k, err)
		}
		want := 0
		if i == 0 {
			want = 1
		}
		if n := implB.count(msg(k)); n != want {
			t.Errorf("worker B ran the retry of %s %d times, want %d", k, n, want)
		}
		if r.GetMessage() != msg(k) || r.GetIndex() != 1 {
			t.Errorf("the retry of %s got index %d and a message of %d bytes, want index 1 and its own message", k, r.GetIndex(), len(r.GetMessage()))
		}
	}
}

// advGate is a unary handler that counts its runs by message, reports each
// start, and answers only once released.
type advGate struct {
	counting
	started chan string
	release chan struct{}
}

func (g *advGate) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	n := g.run(req.GetMessage())
	g.started <- req.GetMessage()
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &echov1.EchoResponse{Message: req.GetMessage(), Index: int32(n)}, nil
}

// revokeStart is a worker's Kafka client that reports when its group
// member starts revoking partitions.
type revokeStart struct {
	kafkaclient.Client
	starting chan []kafkaclient.TopicPartition
}

func (r *revokeStart) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	inner := cfg.OnRevoked
	cfg.OnRevoked = func(parts []kafkaclient.TopicPartition, lost bool) {
		if len(parts) > 0 {
			select {
			case r.starting <- parts:
			default:
			}
		}
		if inner != nil {
			inner(parts, lost)
		}
	}
	return r.Client.NewGroupReader(cfg)
}

// TestOutcomeAdvRetryDuringRebalance: three keyed calls, one per
// partition, run on worker A; their callers' retries come through a
// second gateway while they run; worker B joins, and one partition moves to
// it while its call is still running (released once A starts revoking).
// Every attempt of a key gets the answer of its one run; a third attempt of
// each, after the rebalance, is answered from the stored outcome, whichever
// member owns its partition then.
func TestOutcomeAdvRetryDuringRebalance(t *testing.T) {
	e := newOutcomeEnv(t, false)
	opt := runtime.WorkerOutcomeTopic(outcomeTopic)
	gw2 := runtime.NewGateway(e.kc, e.mapper())
	t.Cleanup(func() { _ = gw2.Close() })
	echo2 := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw2); err != nil {
			t.Fatal(err)
		}
	}))
	implA := &advGate{started: make(chan string, 16), release: make(chan struct{})}
	implB := &advGate{started: make(chan string, 16), release: make(chan struct{})}
	close(implB.release)
	kcA := &revokeStart{Client: e.kc, starting: make(chan []kafkaclient.TopicPartition, 4)}
	e.start(t, kcA, implA, opt)
	ctx := ctxFor(t, 120*time.Second)

	type answer struct {
		key string
		r   *echov1.EchoResponse
		err error
	}
	answers := make(chan answer, 6)
	var keys []string
	for p := range int32(3) {
		keys = append(keys, advKeyOn(e, "rebalance-p", p, 3))
	}
	callOn := func(c echov1.EchoServiceClient, k string) {
		kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", k)
		r, err := c.EchoUnary(kctx, &echov1.EchoRequest{Message: k})
		answers <- answer{k, r, err}
	}
	for _, k := range keys {
		go callOn(e.echo, k)
	}
	for range keys {
		select {
		case <-implA.started:
		case <-ctx.Done():
			t.Fatal("the three calls did not all start on worker A")
		}
	}
	for _, k := range keys {
		go callOn(echo2, k)
	}
	wb := runtime.NewWorker(e.kc, e.mapper(), runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(e.group), opt)
	if err := echov1.RegisterEchoServiceKafkaWorker(wb, implB); err != nil {
		t.Fatal(err)
	}
	if err := wb.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wb.Close() })
	select {
	case <-kcA.starting:
	case <-ctx.Done():
		t.Fatal("worker A revoked nothing once B joined")
	}
	close(implA.release)
	got := map[string][]*echov1.EchoResponse{}
	for range 6 {
		select {
		case a := <-answers:
			if a.err != nil {
				t.Fatalf("an attempt of %s: %v", a.key, a.err)
			}
			got[a.key] = append(got[a.key], a.r)
		case <-ctx.Done():
			t.Fatal("not every attempt answered within the test's bound")
		}
	}
	select {
	case <-wb.Ready():
	case <-ctx.Done():
		t.Fatal("worker B never got its partitions")
	}
	for _, k := range keys {
		go callOn(e.echo, k)
	}
	for range keys {
		select {
		case a := <-answers:
			if a.err != nil {
				t.Fatalf("the third attempt of %s: %v", a.key, a.err)
			}
			got[a.key] = append(got[a.key], a.r)
		case <-ctx.Done():
			t.Fatal("not every third attempt answered within the test's bound")
		}
	}
	for _, k := range keys {
		if n := implA.count(k) + implB.count(k); n != 1 {
			t.Errorf("the call with key %s ran %d times (A %d, B %d), want 1", k, n, implA.count(k), implB.count(k))
		}
		for i, r := range got[k] {
			if r.GetMessage() != k || r.GetIndex() != 1 {
				t.Errorf("attempt %d of %s got %v, want its one run's answer (index 1)", i+1, k, r)
			}
		}
	}
}

// TestOutcomeAdvClientStreamAfterRestart: a keyed client stream answered
// by worker A, which then dies; worker B answers two retries (each sending
// its whole stream again) from the stored outcome without running the
// handler, and serves a new stream after them as usual.
//
// "uncommitted": A never commits an offset, so B reads the answered stream
// again too, and answers it from the outcome as well.
func TestOutcomeAdvClientStreamAfterRestart(t *testing.T) {
	t.Run("killed", func(t *testing.T) { advClientStreamAfterRestart(t, false) })
	t.Run("uncommitted", func(t *testing.T) { advClientStreamAfterRestart(t, true) })
}

func advClientStreamAfterRestart(t *testing.T, uncommitted bool) {
	e := newOutcomeEnv(t, false)
	opt := runtime.WorkerOutcomeTopic(outcomeTopic)
	implA, implB := &clientStreamCounter{}, &clientStreamCounter{}
	stored := watchReplies(t, e.kc, e.topic(outcomeTopic))
	kcA := &killable{Client: e.kc}
	var clientA kafkaclient.Client = kcA
	if uncommitted {
		clientA = &noCommit{kcA}
	}
	a := e.start(t, clientA, implA, opt)
	ctx := ctxFor(t, 120*time.Second)
	upload := func(key string, msgs ...string) *echov1.EchoResponse {
		t.Helper()
		c := ctx
		if key != "" {
			c = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
		}
		s, err := e.echo.EchoClientStream(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
				t.Fatal(err)
			}
		}
		r, err := s.CloseAndRecv()
		if err != nil {
			t.Fatalf("client stream (key %q): %v", key, err)
		}
		return r
	}
	first := upload("adv-upload", "a", "b", "c")
	awaitKey(t, stored, wire.CorrelationID(wire.Names{}, "adv-upload", "example.echo.v1.EchoService", "EchoClientStream", e.topic("echo-responses")))
	kcA.dead.Store(true)
	_ = a.Close()
	b := e.start(t, e.kc, implB, opt)
	for i := range 2 {
		if r := upload("adv-upload", "a", "b", "c"); !proto.Equal(r, first) {
			t.Fatalf("retry %d got %v, want the stored %v", i+1, r, first)
		}
	}
	if want := map[bool]uint64{false: 2, true: 3}[uncommitted]; b.Stats().Duplicates < want {
		t.Fatalf("worker B answered %d requests from the stored outcome, want at least %d", b.Stats().Duplicates, want)
	}
	if r := upload("", "x", "y"); r.GetMessage() != "x,y" {
		t.Fatalf("a new stream after the retries got %v, want x,y", r)
	}
	implB.mu.Lock()
	defer implB.mu.Unlock()
	if implB.runs != 1 {
		t.Fatalf("worker B ran %d client streams, want 1 (the new one): the retries had a stored outcome", implB.runs)
	}
}

// TestOutcomeAdvOutcomeTopicIsCallTopic: an outcome topic named as one of
// the spec's request or reply topics would make EnsureTopics create that
// topic compacted (the outcome topic's configuration), and compaction
// drops all but a call's last record. EnsureTopics refuses it before
// creating anything, naming the topic and both roles; a worker whose
// outcome topic is one of its request topics refuses to start.
func TestOutcomeAdvOutcomeTopicIsCallTopic(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	for _, name := range []string{"echo-requests", "echo-responses"} {
		t.Run(name, func(t *testing.T) {
			prefix := kafkatest.Unique("t") + "."
			mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
			w := runtime.NewWorker(kc, mapper, runtime.WorkerOutcomeTopic(name))
			if err := echov1.RegisterEchoServiceKafkaWorker(w, &counting{}); err != nil {
				t.Fatal(err)
			}
			topics := append(echov1.EchoServiceKafkaSpec.Topics(func(s string) string { return prefix + s }), w.ExtraTopics()...)
			err := runtime.EnsureTopics(ctxFor(t, 30*time.Second), kc, topics, runtime.EnsureTopicsOptions{})
			if err == nil || !strings.Contains(err.Error(), prefix+name) || !strings.Contains(err.Error(), "outcome") {
				t.Fatalf("EnsureTopics with the outcome topic named %s: %v; want an error naming the topic and its outcome role", prefix+name, err)
			}
			if _, err := kc.Partitions(ctxFor(t, 30*time.Second), prefix+"echo-requests"); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
				t.Fatalf("EnsureTopics created topics before refusing (looking up the request topic: %v)", err)
			}
			err = w.Start()
			defer func() { _ = w.Close() }()
			if name == "echo-requests" && (err == nil || !strings.Contains(err.Error(), prefix+name)) {
				t.Fatalf("Start with the outcome topic %s, its request topic: %v; want an error naming it", prefix+name, err)
			}
		})
	}
}
