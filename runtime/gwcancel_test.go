package runtime_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// recordLog is a Kafka client that keeps a copy of every record produced
// to one topic through it.
type recordLog struct {
	kafkaclient.Client
	topic string
	mu    sync.Mutex
	recs  []kafkaclient.Record
}

func (l *recordLog) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if r.Topic == l.topic {
		l.mu.Lock()
		l.recs = append(l.recs, kafkaclient.Record{Value: r.Value, Headers: append([]kafkaclient.Header(nil), r.Headers...)})
		l.mu.Unlock()
	}
	l.Client.Produce(r, acks, done)
}

// ends returns the status header of each end-of-stream record logged, "" for
// one without.
func (l *recordLog) ends() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for i := range l.recs {
		if l.recs[i].Value == nil {
			out = append(out, header(&l.recs[i], "zilla:status"))
		}
	}
	return out
}

// TestGatewayStreamEndedByWorkerWritesNoCancel: WIRE.md, "One call, both
// directions": each direction is zero or more data records "then exactly
// one end-of-stream record"; "Cancellation and deadlines": the request EOS
// carries zilla:status=1 on a *client cancel*. A bidi call that the worker
// ends (here with an error) while the caller's request stream is still open
// is over, not cancelled: the gateway writes one plain request
// end-of-stream record, and no cancel after it. A caller that does cancel
// still gets its one end-of-stream record with zilla:status=1.
func TestGatewayStreamEndedByWorkerWritesNoCancel(t *testing.T) {
	e := setup(t, echoserver.Server{})
	log := &recordLog{Client: e.kc, topic: e.topic("echo-requests")}
	mapper := runtime.WithTopicMapper(func(s string) string { return e.prefix + s })
	gw := runtime.NewGateway(log, mapper, runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	echo := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	relayed := make(chan struct{}, 1)
	defer runtime.SetRelayedHook(func() { relayed <- struct{}{} })()
	awaitRelayed := func() {
		t.Helper()
		select {
		case <-relayed:
		case <-time.After(30 * time.Second):
			t.Fatal("the gateway's request relay did not end within 30 s")
		}
	}

	t.Run("worker ends the call", func(t *testing.T) {
		log.mu.Lock()
		log.recs = nil
		log.mu.Unlock()
		s, err := echo.EchoBidiStream(ctxFor(t, 30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&echov1.EchoRequest{Message: "stop", FailCode: int32(codes.FailedPrecondition)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("bidi call = %v, want the worker's FAILED_PRECONDITION", err)
		}
		awaitRelayed()
		if got := log.ends(); len(got) != 1 || got[0] != "" {
			t.Fatalf("request end-of-stream records with zilla:status %q, want one, without a status (no cancel)", got)
		}
	})

	t.Run("caller cancels", func(t *testing.T) {
		log.mu.Lock()
		log.recs = nil
		log.mu.Unlock()
		ctx, cancel := context.WithCancel(ctxFor(t, 30*time.Second))
		s, err := echo.EchoBidiStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&echov1.EchoRequest{Message: "first"}); err != nil {
			t.Fatal(err)
		}
		if r, err := s.Recv(); err != nil || r.GetMessage() != "first" {
			t.Fatalf("first reply = %v, %v", r, err)
		}
		cancel()
		awaitRelayed()
		if got := log.ends(); len(got) != 1 || got[0] != "1" {
			t.Fatalf("request end-of-stream records with zilla:status %q, want one cancel (1)", got)
		}
	})
}
