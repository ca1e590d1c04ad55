package runtime_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// heldEnd is a Kafka client that holds back the delivery report of a
// request stream's end-of-stream record (a null record to topic), and
// tells when its reply reader asks for more records after handing out
// the reply stream's end-of-stream record: the reply router has then
// queued it for its call.
type heldEnd struct {
	kafkaclient.Client
	topic, replies string

	mu     sync.Mutex
	report func() // the held delivery report; reporting it fails the record
	held   chan struct{}
	queued chan struct{}
}

func (h *heldEnd) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic != h.topic || r.Value != nil {
		h.Client.Produce(r, acks, done)
		return
	}
	// Kafka gets the record (the worker reads the request's end), but
	// the gateway is told it failed, later.
	h.Client.Produce(r, acks, func(r *kafkaclient.Record, err error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.report == nil {
			// An error the gateway acts on at once (one that does not say
			// why is first looked up, on another goroutine, and then acted
			// on the same way).
			h.report = func() { done(r, errors.New("Broker: Message size too large")) }
			close(h.held)
			return
		}
		done(r, err)
	})
}

func (h *heldEnd) NewReader(cfg kafkaclient.ReaderConfig) (kafkaclient.Reader, error) {
	r, err := h.Client.NewReader(cfg)
	if err != nil {
		return nil, err
	}
	return &endWatch{Reader: r, h: h}, nil
}

type endWatch struct {
	kafkaclient.Reader
	h       *heldEnd
	handed  bool // the last batch held the reply stream's end
	noticed bool
}

func (w *endWatch) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	if w.handed && !w.noticed {
		w.noticed = true
		close(w.h.queued)
	}
	recs, err := w.Reader.Poll(ctx)
	for _, r := range recs {
		w.handed = w.handed || r.Topic == w.h.replies && r.Value == nil
	}
	return recs, err
}

// heldStream sends one response, then ends the stream once release is
// closed.
type heldStream struct {
	echoserver.Server
	release chan struct{}
}

func (s heldStream) EchoServerStream(in *echov1.EchoRequest, stream grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if err := stream.Send(&echov1.EchoResponse{Message: in.GetMessage()}); err != nil {
		return err
	}
	select {
	case <-s.release:
		return nil
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
}

// TestLateRequestEndFailureAfterAnswer: the delivery report of a request's
// end-of-stream record fails after the worker's
// answer, end-of-stream included, reached the caller's side but before
// the caller read it. The worker served the call, so the caller gets every
// response and OK, not UNAVAILABLE, which would have it retry a call that
// ran, or RESOURCE_EXHAUSTED.
func TestLateRequestEndFailureAfterAnswer(t *testing.T) {
	release := make(chan struct{})
	e := setup(t, heldStream{release: release})
	h := &heldEnd{Client: e.kc, topic: e.topic("echo-requests"), replies: e.topic("echo-responses"),
		held: make(chan struct{}), queued: make(chan struct{})}
	_, echo := connTo(t, h, e.prefix)
	ctx := ctxFor(t, 60*time.Second)
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m"})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(ch chan struct{}, what string) {
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		}
	}
	wait(h.held, "the request's end to be delivered")
	close(release) // the worker ends the stream; the first response is not read yet
	wait(h.queued, "the reply stream's end to be queued")
	h.mu.Lock()
	h.report()
	h.mu.Unlock()

	resp, err := s.Recv()
	if err != nil || resp.GetMessage() != "m" {
		t.Fatalf("first response = %v, %v; want m", resp, err)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v (%s), want io.EOF: the worker served the call", err, status.Code(err))
	}
}
