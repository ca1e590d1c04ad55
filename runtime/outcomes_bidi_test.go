package runtime_test

import (
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// bidiCounter counts the runs of EchoBidiStream.
type bidiCounter struct {
	echoserver.Server
	runs atomic.Int32
}

func (b *bidiCounter) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	b.runs.Add(1)
	return b.Server.EchoBidiStream(s)
}

// TestOutcomeBidiAfterWorkerDies: a keyed bidi call of several request
// messages, answered by worker A, is answered from its stored outcome by
// worker B after A dies, without running again: both the replay of A's
// uncommitted request and a repeat of the call.
func TestOutcomeBidiAfterWorkerDies(t *testing.T) {
	e := newOutcomeEnv(t, false)
	opt := runtime.WorkerOutcomeTopic(outcomeTopic)
	implA, implB := &bidiCounter{}, &bidiCounter{}
	kcA := &killable{Client: e.kc}
	a := e.start(t, kcA, implA, opt)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "bidi-7")
	call := func() []string {
		t.Helper()
		s, err := e.echo.EchoBidiStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"a", "b", "c"} {
			if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
		_ = s.CloseSend()
		var got []string
		for {
			r, err := s.Recv()
			if err == io.EOF {
				return got
			}
			if err != nil {
				t.Fatalf("after %v: %v", got, err)
			}
			got = append(got, r.GetMessage())
		}
	}
	first := call()
	if n := implA.runs.Load(); n != 1 || !slices.Equal(first, []string{"a", "b", "c"}) {
		t.Fatalf("worker A: %d runs, answer %v", n, first)
	}
	kcA.dead.Store(true)
	_ = a.Close()
	b := e.start(t, e.kc, implB, opt)
	again := call()
	if n := implB.runs.Load(); n != 0 {
		t.Fatalf("worker B ran the call %d times, want 0: it had the stored outcome", n)
	}
	if !slices.Equal(again, first) {
		t.Fatalf("the repeat got %v, want the stored %v", again, first)
	}
	_ = b
}

// TestOutcomeBidiEndAfterHandOver: worker A answers a keyed bidi call, then
// a repeat of it from its stored outcome as soon as the repeat's first
// request message arrives, and commits that record; the repeat's
// end-of-stream record is the first record worker B reads after the
// partition moves. B must not take that end record for the whole request of
// an empty client stream and run the call again: it holds the stored
// outcome (the soak's duplicated execution of a keyed EchoBidiStream).
func TestOutcomeBidiEndAfterHandOver(t *testing.T) {
	e := newOutcomeEnv(t, false)
	opt := runtime.WorkerOutcomeTopic(outcomeTopic)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	stored := watchReplies(t, e.kc, e.topic(outcomeTopic))
	implA, implB := &bidiCounter{}, &bidiCounter{}
	a := e.start(t, e.kc, implA, opt)

	const id, key = "handover-1", "bidi-handover"
	request := func(attempt string, msg *string) {
		t.Helper()
		h := hdrs{"zilla:service", echoService, "zilla:method", "EchoBidiStream", "zilla:reply-to", e.topic("echo-responses"),
			"zilla:correlation-id", id, "meta:idempotency-key", key, "meta:kafkarpc-attempt", attempt}
		var v []byte
		if msg != nil {
			v, _ = proto.Marshal(&echov1.EchoRequest{Message: *msg})
			if v == nil {
				v = []byte{}
			}
		}
		produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Value: v, Headers: h.headers()})
	}
	messages := func(recs []*kafkaclient.Record) []string {
		t.Helper()
		var got []string
		for _, r := range recs[:len(recs)-1] {
			var resp echov1.EchoResponse
			if err := proto.Unmarshal(r.Value, &resp); err != nil {
				t.Fatal(err)
			}
			got = append(got, resp.GetMessage())
		}
		if s := header(recs[len(recs)-1], "zilla:status"); s != "0" {
			t.Fatalf("the call ended with status %q, want 0 (OK)", s)
		}
		return got
	}
	msgA, msgB := "a", "b"

	// Attempt 1, run by A.
	request("attempt-1", &msgA)
	request("attempt-1", &msgB)
	request("attempt-1", nil)
	first := messages(replies.await(t, id))
	if n := implA.runs.Load(); n != 1 || !slices.Equal(first, []string{"a", "b"}) {
		t.Fatalf("worker A: %d runs, answer %v; want 1 run answering [a b]", n, first)
	}
	awaitKey(t, stored, id)

	// Attempt 2, a repeat: A answers it from its stored outcome on its
	// first record, before its end-of-stream record is written.
	request("attempt-2", &msgA)
	if got := messages(replies.await(t, id)); !slices.Equal(got, first) || implA.runs.Load() != 1 {
		t.Fatalf("worker A answered the repeat with %v after %d runs; want the stored %v, 1 run", got, implA.runs.Load(), first)
	}
	// A hands the partition over before the repeat's end-of-stream record
	// is written. (A once committed past the repeat's first record, so that
	// the next owner started at its end record; A now holds the commit at
	// that record until the end arrives, and B reads the repeat from its
	// start. Either way B must answer it from the stored outcome.)
	_ = a.Close()
	request("attempt-2", nil)

	b := e.start(t, e.kc, implB, opt)
	got := messages(replies.await(t, id))
	if n := implB.runs.Load(); n != 0 {
		t.Fatalf("worker B ran the call %d times on the end of a repeat A had answered, want 0: it had the stored outcome", n)
	}
	if !slices.Equal(got, first) {
		t.Fatalf("worker B answered the repeat's end with %v, want the stored %v", got, first)
	}
	if st := b.Stats(); st.OutcomesLoaded < 1 {
		t.Fatalf("worker B loaded %d stored outcomes, want at least 1", st.OutcomesLoaded)
	}
}
