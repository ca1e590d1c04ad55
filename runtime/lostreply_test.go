package runtime_test

import (
	"context"
	"errors"
	"strings"
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
	replies string // the reply topic
	victim  string
	data    bool // fail the victim's data records
	end     bool // fail the victim's OK end-of-stream record

	mu     sync.Mutex
	keys   map[string]bool // correlation ids of the victim's calls
	failed chan struct{}   // closed once a failure was reported to the worker
	once   sync.Once
}

func newLossy(victim string, data, end bool) func(string, kafkaclient.Client) kafkaclient.Client {
	return func(prefix string, kc kafkaclient.Client) kafkaclient.Client {
		return &lossy{Client: kc, replies: prefix + "echo-responses", victim: victim, data: data, end: end,
			keys: map[string]bool{}, failed: make(chan struct{})}
	}
}

func (l *lossy) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic == l.replies && l.drop(r) {
		go func() {
			done(r, errInjected)
			l.once.Do(func() { close(l.failed) })
		}()
		return
	}
	l.Client.Produce(r, acks, done)
}

func (l *lossy) drop(r *kafkaclient.Record) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
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

// A unary call whose replies Kafka does not take ends UNAVAILABLE at once,
// not at its deadline, and says why; the worker goes on serving.
func TestLostUnaryReplyReachesCaller(t *testing.T) {
	e := setupWrapped(t, newLossy("lost", true, true), func(w *runtime.Worker) error {
		return echov1.RegisterEchoServiceKafkaWorker(w, &counting{})
	})
	ctx := ctxFor(t, 60*time.Second)
	_, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "lost"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "did not take every reply") ||
		!strings.Contains(st.Message(), errInjected.Error()) {
		t.Fatalf("call with lost replies: %v, want UNAVAILABLE naming the delivery error", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the caller waited for its deadline")
	}
	if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "fine"}); err != nil || r.GetMessage() != "fine" {
		t.Fatalf("next call: %v, %v", r, err)
	}
	if n := e.worker.Stats().LostReplies; n != 1 {
		t.Fatalf("LostReplies = %d, want 1", n)
	}
}

// With an idempotency key, the retry of a call whose replies were lost gets
// the stored outcome: the handler does not run twice.
func TestLostReplyRetryWithKeyRunsOnce(t *testing.T) {
	impl := &counting{}
	l := newLossy("charge", true, true)
	var lk *lossy
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		c := l(p, kc)
		lk = c.(*lossy)
		return c
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "order-9")
	_, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "without running it again") {
		t.Fatalf("first attempt: %v, want UNAVAILABLE inviting a retry with the key", err)
	}
	lk.mu.Lock()
	lk.data, lk.end = false, false // Kafka is back
	lk.mu.Unlock()
	r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil || r.GetMessage() != "charge" || r.GetIndex() != 1 {
		t.Fatalf("retry: %v, %v; want the first run's response (index 1)", r, err)
	}
	if n := impl.count("charge"); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
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

// A stream one of whose responses Kafka did not take does not end OK with
// a gap: it ends UNAVAILABLE after what did arrive.
func TestLostStreamReplyIsNoSilentGap(t *testing.T) {
	impl := &gapped{}
	l := newLossy("gap", true, false)
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		c := l(p, kc)
		impl.failed = c.(*lossy).failed
		return c
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	got, err := serverStream(t, e, "gap")
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "did not take every reply") {
		t.Fatalf("stream ended with %v, want UNAVAILABLE", err)
	}
	if !equalInts(got, []int32{1, 2}) {
		t.Fatalf("received indexes %v, want [1 2]", got)
	}
}

// A stream whose OK end Kafka did not take ends UNAVAILABLE after all its
// responses instead of leaving the caller waiting for its deadline.
func TestLostStreamEndReachesCaller(t *testing.T) {
	e := setupWrapped(t, newLossy("end", false, true), func(w *runtime.Worker) error {
		return echov1.RegisterEchoServiceKafkaWorker(w, &counting{})
	})
	got, err := serverStream(t, e, "end")
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "did not take every reply") {
		t.Fatalf("stream ended with %v, want UNAVAILABLE", err)
	}
	if !equalInts(got, []int32{0, 1, 2}) {
		t.Fatalf("received indexes %v, want [0 1 2]", got)
	}
	if n := e.worker.Stats().LostReplies; n != 1 {
		t.Fatalf("LostReplies = %d, want 1", n)
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

// A repeat answered from the worker's memory whose replay Kafka does not
// take ends UNAVAILABLE too, and the worker goes on serving.
func TestLostReplayReachesCaller(t *testing.T) {
	var lk *lossy
	e := setupWrapped(t, func(p string, kc kafkaclient.Client) kafkaclient.Client {
		c := newLossy("", false, false)(p, kc)
		lk = c.(*lossy)
		return c
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, &counting{}) })
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "replayed-lost")
	if _, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}); err != nil {
		t.Fatal(err)
	}
	lk.mu.Lock()
	lk.victim, lk.data, lk.end = "m", true, true
	lk.mu.Unlock()
	_, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "m"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "did not take every reply") {
		t.Fatalf("repeat whose replay was lost: %v, want UNAVAILABLE", err)
	}
	if r, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "fine"}); err != nil || r.GetMessage() != "fine" {
		t.Fatalf("next call: %v, %v", r, err)
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
