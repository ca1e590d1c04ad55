package runtime_test

import (
	"context"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// firstOnly answers EchoClientStream with its first request message and
// returns without reading the rest of the stream; it notes the first
// message of every run ("<eof>" for a run on an empty stream).
type firstOnly struct {
	echoserver.Server
	mu     sync.Mutex
	firsts []string
}

func (f *firstOnly) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	first := "<eof>"
	if m, err := s.Recv(); err == nil {
		first = m.GetMessage()
	} else if err != io.EOF {
		return err
	}
	f.mu.Lock()
	f.firsts = append(f.firsts, first)
	f.mu.Unlock()
	return s.SendAndClose(&echov1.EchoResponse{Message: first})
}

func (f *firstOnly) runs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.firsts)
}

// commitLog is a worker's Kafka client that notes every offset its group
// reader commits.
type commitLog struct {
	kafkaclient.Client
	mu     sync.Mutex
	offs   []kafkaclient.TopicPartitionOffset
	signal chan struct{}
}

func newCommitLog(kc kafkaclient.Client) *commitLog {
	return &commitLog{Client: kc, signal: make(chan struct{}, 1)}
}

func (l *commitLog) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	gr, err := l.Client.NewGroupReader(cfg)
	if err != nil {
		return nil, err
	}
	return &loggedGroup{GroupReader: gr, l: l}, nil
}

type loggedGroup struct {
	kafkaclient.GroupReader
	l *commitLog
}

func (g *loggedGroup) Commit(ctx context.Context, offs []kafkaclient.TopicPartitionOffset) error {
	err := g.GroupReader.Commit(ctx, offs)
	if err == nil {
		g.l.mu.Lock()
		g.l.offs = append(g.l.offs, offs...)
		g.l.mu.Unlock()
		select {
		case g.l.signal <- struct{}{}:
		default:
		}
	}
	return err
}

// highest returns the highest offset committed for tp, or -1.
func (l *commitLog) highest(tp kafkaclient.TopicPartition) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := int64(-1)
	for _, o := range l.offs {
		if o.Topic == tp.Topic && o.Partition == tp.Partition {
			h = max(h, o.Offset)
		}
	}
	return h
}

// awaitPast waits (bounded) until an offset past off is committed for tp.
func (l *commitLog) awaitPast(t *testing.T, tp kafkaclient.TopicPartition, off int64) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for l.highest(tp) <= off {
		select {
		case <-l.signal:
		case <-timeout:
			t.Fatalf("no offset past %d committed for %v within 30 s (highest %d)", off, tp, l.highest(tp))
		}
	}
}

// clientStreamRecord is one request record of EchoClientStream call id
// (msg nil: its end-of-stream record), keyed so that every record of the
// test is in one partition.
func clientStreamRecord(e *outcomeEnv, id string, msg *string, extra ...string) *kafkaclient.Record {
	h := append(hdrs{"zilla:service", echoService, "zilla:method", "EchoClientStream",
		"zilla:reply-to", e.topic("echo-responses"), "zilla:correlation-id", id}, extra...)
	var v []byte
	if msg != nil {
		v, _ = proto.Marshal(&echov1.EchoRequest{Message: *msg})
		if v == nil {
			v = []byte{}
		}
	}
	return &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("one-partition"), Value: v, Headers: h.headers()}
}

func unaryRecord(e *outcomeEnv, id, msg string) *kafkaclient.Record {
	h := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary",
		"zilla:reply-to", e.topic("echo-responses"), "zilla:correlation-id", id}
	v, _ := proto.Marshal(&echov1.EchoRequest{Message: msg})
	return &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("one-partition"), Value: v, Headers: h.headers()}
}

// endRecord is the end-of-stream record of a call id of method.
func endRecord(e *outcomeEnv, id, method string) *kafkaclient.Record {
	h := hdrs{"zilla:service", echoService, "zilla:method", method,
		"zilla:reply-to", e.topic("echo-responses"), "zilla:correlation-id", id}
	return &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte("one-partition"), Headers: h.headers()}
}

func ptr(s string) *string { return &s }

// TestServedCallHoldsCommitUntilItsEnd: a client-streaming handler returns
// after the first of several request messages; the call is answered while
// the rest of its request (its end-of-stream record) is still to come.
// Worker A must not commit past the call's first record then, even with a
// later call done: were it committed, the partition's next owner would
// start inside the call and run the handler on the rest of its request (or
// on its bare end record, as an empty stream). Worker B, taking over with
// the end still to come, reads the call again from its first record; once
// the end record is read, B commits past it.
func TestServedCallHoldsCommitUntilItsEnd(t *testing.T) {
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	implA, implB := &firstOnly{}, &firstOnly{}
	kcA, kcB := newCommitLog(e.kc), newCommitLog(e.kc)
	a := e.start(t, kcA, implA)

	const id = "held-1"
	first := produce(t, e.kc, clientStreamRecord(e, id, ptr("m0")))
	tp := kafkaclient.TopicPartition{Topic: first.Topic, Partition: first.Partition}
	produce(t, e.kc, clientStreamRecord(e, id, ptr("m1")))
	produce(t, e.kc, clientStreamRecord(e, id, ptr("m2")))
	if got := replies.await(t, id); len(got) != 2 || header(got[1], "zilla:status") != "0" {
		t.Fatalf("worker A answered the call with %d records, status %q; want a response and status 0", len(got), header(got[len(got)-1], "zilla:status"))
	}
	// A later call in the same partition, done: it cannot move the
	// commit past the held call either.
	produce(t, e.kc, unaryRecord(e, "later-1", "later"))
	produce(t, e.kc, endRecord(e, "later-1", "EchoUnary"))
	replies.await(t, "later-1")
	_ = a.Close() // commits what it may, synchronously
	if h := kcA.highest(tp); h > first.Offset {
		t.Fatalf("worker A committed offset %d, past the first record (%d) of a call whose end record it never read", h, first.Offset)
	}
	if got := implA.runs(); !slices.Equal(got, []string{"m0"}) {
		t.Fatalf("worker A's runs began with %v, want [m0]", got)
	}

	// The caller's end record comes once B owns the partition.
	b := e.start(t, kcB, implB)
	end := produce(t, e.kc, clientStreamRecord(e, id, nil))
	replies.await(t, id)
	// A record after the end: once it is answered, the end was read.
	produce(t, e.kc, unaryRecord(e, "after-1", "after"))
	after := produce(t, e.kc, endRecord(e, "after-1", "EchoUnary"))
	replies.await(t, "after-1")
	if got := implB.runs(); !slices.Equal(got, []string{"m0"}) {
		t.Fatalf("worker B ran the handler with first messages %v, want [m0]: a run on part of the call's request", got)
	}
	kcB.awaitPast(t, tp, end.Offset) // bounded: the held offset is released by the end record
	_ = b.Close()
	if h := kcB.highest(tp); h != after.Offset+1 {
		t.Fatalf("worker B committed up to %d, want %d (after its last record)", h, after.Offset+1)
	}
}

// TestHeldCallReleasedAtDeadline: a call answered before its request was
// complete, whose end record never comes (its caller died mid-stream),
// holds its partition's commits only until its deadline.
func TestHeldCallReleasedAtDeadline(t *testing.T) {
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	impl := &firstOnly{}
	kc := newCommitLog(e.kc)
	w := e.start(t, kc, impl)
	timeout := []string{"meta:" + wire.TimeoutMetadata, string(wire.AppendTimeout(nil, 2*time.Second))}
	const id = "abandoned-1"
	first := produce(t, e.kc, clientStreamRecord(e, id, ptr("m0"), timeout...))
	tp := kafkaclient.TopicPartition{Topic: first.Topic, Partition: first.Partition}
	last := produce(t, e.kc, clientStreamRecord(e, id, ptr("m1"), timeout...))
	replies.await(t, id)
	// No end record: once the call's deadline passed, the commit moves on
	// past its records (bounded wait, on the commits themselves).
	kc.awaitPast(t, tp, last.Offset)
	_ = w.Close()
}

// heldClientStream answers EchoClientStream with its first request message
// once it has read the whole request and release is closed; it notes the
// first message of every run.
type heldClientStream struct {
	firstOnly
	started chan struct{}
	release chan struct{}
}

func (h *heldClientStream) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	first := "<eof>"
	for i := 0; ; i++ {
		m, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if i == 0 {
			first = m.GetMessage()
		}
	}
	h.mu.Lock()
	h.firsts = append(h.firsts, first)
	h.mu.Unlock()
	h.started <- struct{}{}
	<-h.release
	return s.SendAndClose(&echov1.EchoResponse{Message: first})
}

// TestRepeatedAttemptHoldsCommitUntilItsEnd: a retry of a keyed client
// stream (same correlation id, another attempt id) arrives while the call
// runs, waits for its outcome and is answered before its own end record is
// read. Worker A must not commit past the attempt's first record then:
// were it committed, the next owner would start inside the attempt and run
// the handler on its bare end record, as an empty stream. Worker B, taking
// over, reads the attempt from its first record and runs it whole.
func TestRepeatedAttemptHoldsCommitUntilItsEnd(t *testing.T) {
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	implA := &heldClientStream{started: make(chan struct{}, 1), release: make(chan struct{})}
	implB := &heldClientStream{started: make(chan struct{}, 4), release: make(chan struct{})}
	close(implB.release)
	kcA := newCommitLog(e.kc)
	a := e.start(t, kcA, implA)

	const id = "retried-1"
	attempt := func(n string) []string { return keyedAttempt("k-1", n) }
	first := produce(t, e.kc, clientStreamRecord(e, id, ptr("m0"), attempt("a1")...))
	tp := kafkaclient.TopicPartition{Topic: first.Topic, Partition: first.Partition}
	produce(t, e.kc, clientStreamRecord(e, id, nil, attempt("a1")...))
	select {
	case <-implA.started:
	case <-time.After(30 * time.Second):
		t.Fatal("worker A did not run the call")
	}
	// The retry's first record, while the call runs: it waits for the
	// call's outcome. Once it is answered, the retry's end is still to come.
	retry := produce(t, e.kc, clientStreamRecord(e, id, ptr("m0"), attempt("a2")...))
	close(implA.release)
	replies.await(t, id) // the call's answer
	replies.await(t, id) // the retry's
	produce(t, e.kc, unaryRecord(e, "later-2", "later"))
	produce(t, e.kc, endRecord(e, "later-2", "EchoUnary"))
	replies.await(t, "later-2")
	_ = a.Close()
	if h := kcA.highest(tp); h > retry.Offset {
		t.Fatalf("worker A committed offset %d, past the first record (%d) of a retry whose end record it never read", h, retry.Offset)
	}

	e.start(t, e.kc, implB)
	produce(t, e.kc, clientStreamRecord(e, id, nil, attempt("a2")...))
	produce(t, e.kc, unaryRecord(e, "after-2", "after"))
	produce(t, e.kc, endRecord(e, "after-2", "EchoUnary"))
	replies.await(t, "after-2")
	if got := implB.runs(); slices.Contains(got, "<eof>") {
		t.Fatalf("worker B ran the handler on an empty stream (first messages %v): it started inside the retry", got)
	}
}

// TestEndFedToReleasedCallReleasesItsOffset: the dispatcher routes a
// call's end-of-stream record to the call in flight and feeds it after
// unlocking; a call that is released in between (its handler returned
// without reading the end) was left holding its first offset, since its
// request looked incomplete when it was released, and the end that
// completes it had been taken: the partition's commits stayed behind it
// until the call's deadline (up to WorkerMaxCallDuration, 10 minutes). The
// hook holds the dispatcher in that window until the call is over.
func TestEndFedToReleasedCallReleasesItsOffset(t *testing.T) {
	const id = "end-fed-late"
	routed := make(chan struct{})
	restore := runtime.SetFeedHook(func(got string, end bool, done <-chan struct{}) {
		if got == id && end {
			close(routed)
			<-done // the call is released before its end is fed
		}
	})
	t.Cleanup(restore) // registered first, so run last: after the worker stopped
	e := newOutcomeEnv(t, false)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	kc := newCommitLog(e.kc)
	w := e.start(t, kc, &waitForEnd{routed: routed})

	first := produce(t, e.kc, clientStreamRecord(e, id, ptr("m0")))
	tp := kafkaclient.TopicPartition{Topic: first.Topic, Partition: first.Partition}
	end := produce(t, e.kc, clientStreamRecord(e, id, nil))
	if got := replies.await(t, id); header(got[len(got)-1], "zilla:status") != "0" {
		t.Fatalf("call ended with status %q", header(got[len(got)-1], "zilla:status"))
	}
	produce(t, e.kc, unaryRecord(e, "after-end-fed", "after"))
	produce(t, e.kc, endRecord(e, "after-end-fed", "EchoUnary"))
	replies.await(t, "after-end-fed")
	kc.awaitPast(t, tp, end.Offset) // bounded: stuck at the call's first offset while its end was lost
	_ = w.Close()
}

// waitForEnd answers EchoClientStream with its first message once the
// dispatcher has routed the call's end-of-stream record (routed), without
// reading it.
type waitForEnd struct {
	echoserver.Server
	routed chan struct{}
}

func (h *waitForEnd) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	m, err := s.Recv()
	if err != nil {
		return err
	}
	select {
	case <-h.routed:
	case <-s.Context().Done():
		return s.Context().Err()
	}
	return s.SendAndClose(&echov1.EchoResponse{Message: m.GetMessage()})
}
