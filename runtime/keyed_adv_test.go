package runtime_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// advStream is a server-streaming handler whose behaviour depends on the
// run: it counts runs by message and, per message, either sends two
// responses and fails NOT_FOUND ("fail"), or sends one response and waits
// for its caller's cancellation on its first run, two responses and OK on
// later ones ("cancel").
type advStream struct {
	counting
}

func (a *advStream) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	n := a.run(req.GetMessage())
	switch {
	case strings.HasPrefix(req.GetMessage(), "fail"):
		for i := range 2 {
			if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: int32(i)}); err != nil {
				return err
			}
		}
		return status.Error(codes.NotFound, "gone after two")
	case strings.HasPrefix(req.GetMessage(), "cancel") && n == 1:
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 0}); err != nil {
			return err
		}
		<-s.Context().Done()
		return s.Context().Err()
	}
	for i := range 2 {
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: int32(i + 10*(n-1))}); err != nil {
			return err
		}
	}
	return nil
}

// advDrain reads s to its end and returns the indexes and the final status.
func advDrain(s grpc.ServerStreamingClient[echov1.EchoResponse]) ([]int32, error) {
	var got []int32
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, r.GetIndex())
	}
}

func advKeyed(t *testing.T, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", key)
}

// A server stream that sent two responses and failed is stored whole: a
// retry with its key gets the same two responses and the same status, and
// the handler does not run again.
func TestKeyedAdvServerStreamErrorReplayed(t *testing.T) {
	impl := &advStream{}
	e := setup(t, impl)
	for attempt := range 2 {
		s, err := e.conn(t).EchoServerStream(advKeyed(t, "adv-fail"), &echov1.EchoRequest{Message: "fail"})
		if err != nil {
			t.Fatal(err)
		}
		got, err := advDrain(s)
		if len(got) != 2 || status.Code(err) != codes.NotFound || status.Convert(err).Message() != "gone after two" {
			t.Fatalf("attempt %d: responses %v, status %v; want [0 1] and NOT_FOUND gone after two", attempt, got, err)
		}
	}
	if n := impl.count("fail"); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// A server stream its caller cancelled after the first response is not
// stored (CANCELLED invites a retry): a retry with its key runs the handler
// again and gets that run's whole stream, not the cancelled run's first
// response nor its CANCELLED.
func TestKeyedAdvServerStreamCancelledMidStreamRunsAgain(t *testing.T) {
	impl := &advStream{}
	e := setup(t, impl)
	ctx, cancel := context.WithCancel(advKeyed(t, "adv-cancel"))
	s, err := e.conn(t).EchoServerStream(ctx, &echov1.EchoRequest{Message: "cancel"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.GetIndex() != 0 {
		t.Fatalf("first response %v, %v", r, err)
	}
	cancel()
	if _, err := advDrain(s); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream ended %v, want CANCELLED", err)
	}
	s, err = e.conn(t).EchoServerStream(advKeyed(t, "adv-cancel"), &echov1.EchoRequest{Message: "cancel"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := advDrain(s)
	if err != nil || len(got) != 2 || got[0] != 10 || got[1] != 11 {
		t.Fatalf("retry got %v, %v; want the second run's [10 11] and OK", got, err)
	}
	if n := impl.count("cancel"); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

// Concurrent calls with one key, on separate connections, run the handler
// once and all get its one response.
func TestKeyedAdvConcurrentSameKey(t *testing.T) {
	impl := &advStream{}
	e := setup(t, impl)
	const n = 8
	var wg sync.WaitGroup
	resps := make([]*echov1.EchoResponse, n)
	errs := make([]error, n)
	for i := range n {
		c := e.conn(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resps[i], errs[i] = c.EchoUnary(advKeyed(t, "adv-concurrent"), &echov1.EchoRequest{Message: "concurrent"})
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || resps[i].GetIndex() != 1 {
			t.Errorf("call %d: %v, %v; want the one run's response (index 1)", i, resps[i], errs[i])
		}
	}
	if r := impl.count("concurrent"); r != 1 {
		t.Fatalf("handler ran %d times for one key, want 1", r)
	}
}

// Keys with odd characters, or long, work as any: the handler runs once and
// the retry gets the stored response. A key that is not printable ASCII is
// refused by the ClientConn with INTERNAL before anything is sent, as
// grpc-go's client refuses such metadata (TestSmallAdvConnInvalidMetadata).
func TestKeyedAdvOddKeys(t *testing.T) {
	impl := &advStream{}
	e := setup(t, impl)
	for i, key := range []string{
		"with space and -dashes- and 'quotes'",
		"a/b\\c:d;e=f,g",
		"%00%0A",
		"ключ-🔑",
		"tab\there\nnewline\x00nul",
		"\xff\xfe not UTF-8",
		strings.Repeat("k", 64<<10),
	} {
		m := "odd" + string(rune('a'+i))
		if strings.ContainsFunc(key, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
			_, err := e.conn(t).EchoUnary(advKeyed(t, key), &echov1.EchoRequest{Message: m})
			if status.Code(err) != codes.Internal || impl.count(m) != 0 {
				t.Fatalf("key %.40q: %v, handler ran %d times; want INTERNAL, as grpc-go refuses the metadata, and no run", key, err, impl.count(m))
			}
			continue
		}
		for attempt := range 2 {
			r, err := e.conn(t).EchoUnary(advKeyed(t, key), &echov1.EchoRequest{Message: m})
			if err != nil || r.GetIndex() != 1 {
				t.Fatalf("key %.40q attempt %d: %v, %v; want the one run's response", key, attempt, r, err)
			}
		}
		if r := impl.count(m); r != 1 {
			t.Fatalf("key %.40q: handler ran %d times, want 1", key, r)
		}
	}
}

// advRunning is a server-streaming handler that sends index 0, waits for
// release, then sends index 1; it counts its runs.
type advRunning struct {
	counting
	release chan struct{}
}

func (a *advRunning) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if n := a.run(req.GetMessage()); n > 1 {
		return status.Errorf(codes.Internal, "run %d", n)
	}
	if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 0}); err != nil {
		return err
	}
	<-a.release
	return s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: 1})
}

// A retry of a server stream whose first attempt is still running gets that
// attempt's whole stream once it is over (or its replay), never half of it,
// and the handler runs once.
func TestKeyedAdvServerStreamRepeatWhileRunning(t *testing.T) {
	impl := &advRunning{release: make(chan struct{})}
	e := setup(t, impl)
	var once sync.Once
	release := func() { once.Do(func() { close(impl.release) }) }
	t.Cleanup(release) // before the worker's Close, which waits for the handler
	first, err := e.conn(t).EchoServerStream(advKeyed(t, "adv-running"), &echov1.EchoRequest{Message: "running"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := first.Recv(); err != nil || r.GetIndex() != 0 {
		t.Fatalf("first attempt's first response %v, %v", r, err)
	}
	second, err := e.conn(t).EchoServerStream(advKeyed(t, "adv-running"), &echov1.EchoRequest{Message: "running"})
	if err != nil {
		t.Fatal(err)
	}
	release()
	if got, err := advDrain(first); err != nil || len(got) != 1 || got[0] != 1 {
		t.Fatalf("first attempt's rest %v, %v; want [1] and OK", got, err)
	}
	if got, err := advDrain(second); err != nil || len(got) != 2 || got[0] != 0 || got[1] != 1 {
		t.Fatalf("retry got %v, %v; want [0 1] and OK", got, err)
	}
	if n := impl.count("running"); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// One key used for two methods names two calls (the correlation id hashes
// the route): the second method runs and answers with its own replies, not
// the first method's stored ones.
func TestKeyedAdvSameKeyOtherMethod(t *testing.T) {
	impl := &advStream{}
	e := setup(t, impl)
	r, err := e.conn(t).EchoUnary(advKeyed(t, "adv-method"), &echov1.EchoRequest{Message: "u"})
	if err != nil || r.GetIndex() != 1 {
		t.Fatalf("unary: %v, %v", r, err)
	}
	s, err := e.conn(t).EchoServerStream(advKeyed(t, "adv-method"), &echov1.EchoRequest{Message: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := advDrain(s); err != nil || len(got) != 2 || got[0] != 0 || got[1] != 1 {
		t.Fatalf("server stream with the unary call's key got %v, %v; want its own [0 1]", got, err)
	}
}

// A client stream and a bidi stream repeated with their key get the stored
// outcome again.
func TestKeyedAdvClientAndBidiRepeat(t *testing.T) {
	e := setup(t, &advStream{})
	var want string
	for attempt := range 2 {
		cs, err := e.conn(t).EchoClientStream(advKeyed(t, "adv-cs"))
		if err != nil {
			t.Fatal(err)
		}
		// A repeat may be answered (from the stored outcome) at its first
		// request: Send then returns io.EOF, as gRPC's does once the call
		// ended, and CloseAndRecv the answer.
		for _, m := range []string{"a", "b"} {
			if err := cs.Send(&echov1.EchoRequest{Message: m}); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
		r, err := cs.CloseAndRecv()
		if err != nil {
			t.Fatalf("client stream attempt %d: %v", attempt, err)
		}
		if attempt == 0 {
			want = r.String()
		} else if r.String() != want {
			t.Fatalf("client stream retry got %v, want %s", r, want)
		}
	}
	if d := e.worker.Stats().Duplicates; d != 1 {
		t.Fatalf("client stream: Stats().Duplicates = %d, want 1", d)
	}
	for attempt := range 2 {
		bs, err := e.conn(t).EchoBidiStream(advKeyed(t, "adv-bidi"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"x", "y"} {
			if err := bs.Send(&echov1.EchoRequest{Message: m}); errors.Is(err, io.EOF) {
				break // answered from the stored outcome already
			} else if err != nil {
				t.Fatal(err)
			}
		}
		if err := bs.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			r, err := bs.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("bidi attempt %d: %v", attempt, err)
			}
			got = append(got, r.GetMessage())
		}
		if strings.Join(got, ",") != "x,y" {
			t.Fatalf("bidi attempt %d got %q, want x,y", attempt, got)
		}
	}
	if d := e.worker.Stats().Duplicates; d != 2 {
		t.Fatalf("after the bidi retry: Stats().Duplicates = %d, want 2", d)
	}
}

// A key too large for a request record fails the call at once with a status
// saying so, not at the caller's deadline.
func TestKeyedAdvHugeKeyFailsClearly(t *testing.T) {
	e := setup(t, &advStream{})
	_, err := e.conn(t).EchoUnary(advKeyed(t, strings.Repeat("k", 4<<20)), &echov1.EchoRequest{Message: "huge"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call with a 4 MiB idempotency key: %v; want RESOURCE_EXHAUSTED (the request record is too large)", err)
	}
}

// A second call with the key of a call still in flight on the same
// connection fails at once with ALREADY_EXISTS (README, Idempotency), and
// the first goes on: a ClientConn routes replies by correlation id, and
// one id can name one call of it at a time.
func TestKeyedAdvInFlightKeySameConn(t *testing.T) {
	e := setup(t, &advStream{})
	c := e.conn(t)
	ctx, cancel := context.WithCancel(advKeyed(t, "adv-inflight"))
	defer cancel()
	first, err := c.EchoServerStream(ctx, &echov1.EchoRequest{Message: "cancel-inflight"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := first.Recv(); err != nil || r.GetIndex() != 0 {
		t.Fatalf("first call's first response: %v, %v", r, err)
	}
	second, err := c.EchoServerStream(advKeyed(t, "adv-inflight"), &echov1.EchoRequest{Message: "cancel-inflight"})
	if err == nil {
		_, err = second.Recv()
	}
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("a second call with the key of one in flight on the same connection: %v; want ALREADY_EXISTS", err)
	}
	cancel()
	if _, err := first.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("the first call after its caller cancelled: %v; want CANCELLED", err)
	}
}

// A caller that cancels a keyed server stream and retries at once on the
// same connection gets the retry served: the cancelled attempt must not
// hold the correlation id on the connection ("already in flight").
func TestKeyedAdvCancelThenRetrySameConn(t *testing.T) {
	impl := &advStream{}
	e := setup(t, impl)
	c := e.conn(t)
	for i := range 20 {
		m := "cancel-" + string(rune('a'+i))
		ctx, cancel := context.WithCancel(advKeyed(t, "adv-sameconn-"+m))
		s, err := c.EchoServerStream(ctx, &echov1.EchoRequest{Message: m})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := s.Recv(); err != nil || r.GetIndex() != 0 {
			t.Fatalf("%s: first response %v, %v", m, r, err)
		}
		cancel()
		s, err = c.EchoServerStream(advKeyed(t, "adv-sameconn-"+m), &echov1.EchoRequest{Message: m})
		if err != nil {
			t.Fatalf("%s: retry: %v", m, err)
		}
		if got, err := advDrain(s); err != nil || len(got) != 2 || got[0] != 10 || got[1] != 11 {
			t.Fatalf("%s: retry right after the cancel got %v, %v; want the second run's [10 11] and OK", m, got, err)
		}
	}
}

// A call whose idempotency-key metadata is empty has no key: the gateway
// gives it a fresh correlation id, so no retry can ever find its outcome,
// and the worker must not store it. Stored, such outcomes (a client that
// always sends the header, empty when it has no key) fill the byte bound
// and push out the outcomes of real keys, whose retries then run again.
func TestKeyedAdvEmptyKeyOutcomesNotStored(t *testing.T) {
	impl := &advStream{}
	e := setup(t, impl, runtime.WorkerIdempotencyWindow(10*time.Minute, 4<<10))
	c := e.conn(t)
	if r, err := c.EchoUnary(advKeyed(t, "adv-real"), &echov1.EchoRequest{Message: "real"}); err != nil || r.GetIndex() != 1 {
		t.Fatalf("keyed call: %v, %v", r, err)
	}
	for i := range 100 {
		if _, err := c.EchoUnary(advKeyed(t, ""), &echov1.EchoRequest{Message: strings.Repeat("e", 64)}); err != nil {
			t.Fatalf("call %d with an empty key: %v", i, err)
		}
	}
	if r, err := c.EchoUnary(advKeyed(t, "adv-real"), &echov1.EchoRequest{Message: "real"}); err != nil || r.GetIndex() != 1 {
		t.Fatalf("retry of the keyed call: %v, %v; want the stored response (index 1)", r, err)
	}
	if n := impl.count("real"); n != 1 {
		t.Fatalf("handler ran %d times for key adv-real, want 1: calls with an empty key pushed its outcome out", n)
	}
}
