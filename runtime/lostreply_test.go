package runtime_test

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

var errInjected = errors.New("injected by the test: delivery timed out")

// lossy is a worker's Kafka client that fails, without writing them, the
// reply records of the calls whose response message is victim: those of
// kinds the test names (the first data record, the OK end-of-stream record). The
// worker's report of the loss (an end with UNAVAILABLE) always goes through.
type lossy struct {
	kafkaclient.Client
	replies  string // the reply topic
	victim   string
	data     bool // fail the victim's data records
	end      bool // fail the victim's OK end-of-stream record
	failOnce bool // fail each of the victim's records once only, as a partition that recovers

	mu     sync.Mutex
	keys   map[string]bool // correlation ids of the victim's calls
	seen   map[string]bool // with once: the records failed so far
	order  chan func()     // failure reports, delivered one after another
	failed chan struct{}   // closed once a failure was reported to the worker
	once   sync.Once
}

func newLossy(victim string, data, end bool) func(string, kafkaclient.Client) kafkaclient.Client {
	return func(prefix string, kc kafkaclient.Client) kafkaclient.Client {
		l := &lossy{Client: kc, replies: prefix + "echo-responses", victim: victim, data: data, end: end,
			keys: map[string]bool{}, seen: map[string]bool{}, failed: make(chan struct{}), order: make(chan func(), 1024)}
		go func() {
			for report := range l.order {
				report()
			}
		}()
		return l
	}
}

func (l *lossy) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic == l.replies && l.drop(r) {
		// In order, as a Kafka client reports a partition's records.
		l.order <- func() {
			done(r, errInjected)
			l.once.Do(func() { close(l.failed) })
		}
		return
	}
	l.Client.Produce(r, acks, done)
}

func (l *lossy) drop(r *kafkaclient.Record) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failOnce {
		k := string(r.Key) + "/" + strconv.FormatBool(r.Value == nil)
		if l.victim == "" || !l.isVictim(r) || l.seen[k] {
			return false
		}
		l.seen[k] = true
		return true
	}
	if r.Value != nil {
		var m echov1.EchoResponse
		if proto.Unmarshal(r.Value, &m) != nil || m.GetMessage() != l.victim || l.keys[string(r.Key)] {
			return false
		}
		l.keys[string(r.Key)] = true
		return l.data
	}
	code := ""
	for _, h := range r.Headers {
		if h.Key == "zilla:status" {
			code = string(h.Value)
		}
	}
	return l.end && l.keys[string(r.Key)] && (code == "" || code == "0")
}

// isVictim reports whether r is a reply of a call whose response is the
// victim (its data record, or its end once the data record was seen).
func (l *lossy) isVictim(r *kafkaclient.Record) bool {
	if r.Value != nil {
		var m echov1.EchoResponse
		if proto.Unmarshal(r.Value, &m) != nil || m.GetMessage() != l.victim {
			return false
		}
		l.keys[string(r.Key)] = true
		return true
	}
	return l.keys[string(r.Key)]
}

// Replies Kafka did not take the first time are produced again, in order,
// until the call's deadline: the caller gets its answer, and nothing is
// counted lost.
func TestFailedRepliesAreRetried(t *testing.T) {
	impl := &counting{}
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		c := newLossy("again", true, true)(p, kc)
		c.(*lossy).failOnce = true
		return c
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	r, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "again"})
	if err != nil || r.GetMessage() != "again" {
		t.Fatalf("call whose replies failed once: %v, %v; want its answer", r, err)
	}
	if n := impl.count("again"); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	if n := e.worker.Stats().LostReplies; n != 0 {
		t.Fatalf("LostReplies = %d, want 0", n)
	}
}

// With an idempotency key, the retry of a call whose end Kafka did not take
// by its deadline gets the stored outcome: the handler does not run twice.
func TestLostReplyRetryWithKeyRunsOnce(t *testing.T) {
	impl := &counting{}
	l := newLossy("charge", false, true)
	var lk *lossy
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		c := l(p, kc)
		lk = c.(*lossy)
		return c
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	first := metadata.AppendToOutgoingContext(ctxFor(t, 2*time.Second), "idempotency-key", "order-9")
	_, err := e.echo.EchoUnary(first, &echov1.EchoRequest{Message: "charge"})
	if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
		t.Fatalf("first attempt: %v, want DEADLINE_EXCEEDED (or the worker's UNAVAILABLE after it gave up)", err)
	}
	waitLost(t, e, 1)
	lk.mu.Lock()
	lk.data, lk.end = false, false // Kafka is back
	lk.mu.Unlock()
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "order-9")
	r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil || r.GetMessage() != "charge" || r.GetIndex() != 1 {
		t.Fatalf("retry: %v, %v; want the first run's response (index 1)", r, err)
	}
	if n := impl.count("charge"); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// waitLost waits (bounded) until the worker counted n calls whose replies
// it gave up: it does so at the call's deadline, about when the caller's
// own ends.
func waitLost(t *testing.T, e *env, n uint64) {
	t.Helper()
	bound := time.After(30 * time.Second)
	for e.worker.Stats().LostReplies < n {
		select {
		case <-bound:
			t.Fatalf("LostReplies = %d after 30 s, want %d", e.worker.Stats().LostReplies, n)
		case <-time.After(10 * time.Millisecond): // polling a counter
		}
	}
}

// gapped sends its first response, waits until Kafka failed it, then sends
// two more and returns OK.
type gapped struct {
	counting
	failed <-chan struct{}
}

func (g *gapped) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	for i := range int32(3) {
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
		if i == 0 {
			select {
			case <-g.failed:
			case <-s.Context().Done():
				return s.Context().Err()
			}
		}
	}
	return nil
}

// A stream one of whose responses Kafka took only on a second try still
// arrives whole and in order: the responses after it wait behind it.
func TestRetriedStreamReplyKeepsOrder(t *testing.T) {
	impl := &gapped{}
	l := newLossy("gap", true, false)
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		c := l(p, kc)
		c.(*lossy).failOnce = true
		impl.failed = c.(*lossy).failed
		return c
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	got, err := serverStream(t, e, "gap")
	if err != io.EOF {
		t.Fatalf("stream ended with %v, want OK", err)
	}
	if !equalInts(got, []int32{0, 1, 2}) {
		t.Fatalf("received indexes %v, want [0 1 2]", got)
	}
}

// A stream whose OK end Kafka never takes gets all its responses; the
// worker gives the end up at the call's deadline, counted and logged, and
// goes on serving: the caller's deadline ends the call, not OK.
func TestLostStreamEndGivenUpAtDeadline(t *testing.T) {
	e := setupWrapped(t, newLossy("end", false, true), func(w *runtime.Worker) error {
		return echov1.RegisterEchoServiceKafkaWorker(w, &counting{})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "end", Repeat: 3})
	if err != nil {
		t.Fatal(err)
	}
	var got []int32
	for {
		r, err := s.Recv()
		if err != nil {
			if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
				t.Fatalf("stream ended with %v, want DEADLINE_EXCEEDED (or the worker's UNAVAILABLE)", err)
			}
			break
		}
		got = append(got, r.GetIndex())
	}
	if !equalInts(got, []int32{0, 1, 2}) {
		t.Fatalf("received indexes %v, want [0 1 2]", got)
	}
	waitLost(t, e, 1)
	if r, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "fine"}); err != nil || r.GetMessage() != "fine" {
		t.Fatalf("next call: %v, %v", r, err)
	}
}

// serverStream calls EchoServerStream for three responses of msg and
// returns their indexes and how the stream ended; it fails the test if the
// caller had to wait for its deadline.
func serverStream(t *testing.T, e *env, msg string) ([]int32, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: msg, Repeat: 3})
	if err != nil {
		t.Fatal(err)
	}
	var got []int32
	for {
		r, err := s.Recv()
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal("the caller waited for its deadline")
			}
			return got, err
		}
		got = append(got, r.GetIndex())
	}
}

func equalInts(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A repeat answered from the worker's memory whose replay Kafka took only
// on a second try gets the stored answer.
func TestRetriedReplayReachesCaller(t *testing.T) {
	var lk *lossy
	impl := &counting{}
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		c := newLossy("", false, false)(p, kc)
		lk = c.(*lossy)
		return c
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "replayed-lost")
	if _, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}); err != nil {
		t.Fatal(err)
	}
	lk.mu.Lock()
	lk.victim, lk.failOnce = "m", true
	lk.mu.Unlock()
	r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"})
	if err != nil || r.GetMessage() != "m" || r.GetIndex() != 1 {
		t.Fatalf("repeat whose replay failed once: %v, %v; want the stored answer (index 1)", r, err)
	}
	if n := impl.count("m"); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// failTopic is a worker's Kafka client that fails every record to one topic.
type failTopic struct {
	kafkaclient.Client
	topic string
}

func (f *failTopic) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic == f.topic {
		go done(r, errInjected)
		return
	}
	f.Client.Produce(r, acks, done)
}

// A dead-letter copy Kafka does not take is not a lost reply: the caller
// gets the handler's status.
func TestFailedDeadLetterIsNoLostReply(t *testing.T) {
	impl := &counting{fail: codes.Unavailable}
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		return &failTopic{Client: kc, topic: p + "dlq"}
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) }, runtime.WorkerDeadLetterTopic("dlq"))
	_, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "poison"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "try later" {
		t.Fatalf("caller got %v, want the handler's UNAVAILABLE", err)
	}
	if s := e.worker.Stats(); s.DeadLettered != 1 || s.LostReplies != 0 {
		t.Fatalf("DeadLettered %d, LostReplies %d; want 1 and 0", s.DeadLettered, s.LostReplies)
	}
}
