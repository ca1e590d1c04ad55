package runtime_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// cutOffBackend's handler waits for its context to end, then fails
// UNAVAILABLE (a code worth a retry), as a handler whose call to a backend
// was cut off by the cancel does.
type cutOffBackend struct {
	echov1.UnimplementedEchoServiceServer
	started  chan struct{}
	returned chan struct{}
}

func (b *cutOffBackend) EchoUnary(ctx context.Context, _ *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	defer close(b.returned)
	close(b.started)
	<-ctx.Done()
	return nil, status.Error(codes.Unavailable, "backend call cut off")
}

// TestDeadLetterNotForCallerCancelledCall: a call its caller cancelled is
// withdrawn, not poison. Its handler, cancelled, failed UNAVAILABLE once
// (no retry runs after the cancel); the worker copied the request to the
// dead-letter topic as if it had failed all its attempts, and whoever
// replays the dead letters would run a call its caller had withdrawn.
func TestDeadLetterNotForCallerCancelledCall(t *testing.T) {
	impl := &cutOffBackend{started: make(chan struct{}), returned: make(chan struct{})}
	e := setup(t, impl, runtime.WorkerDeadLetterTopic("dlq"))
	kafkatest.CreateTopics(t, e.kc, 1, e.topic("dlq"))
	dead := watchReplies(t, e.kc, e.topic("dlq"))
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	res := goUnary(ctx, e.echo, "withdrawn")
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	cancel()
	if r := <-res; status.Code(r.err) != codes.Canceled {
		t.Fatalf("the cancelled call ended %v, %v; want CANCELED", r.r, r.err)
	}
	select {
	case <-impl.returned:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler's context was not cancelled within 30 s of the caller's cancel")
	}
	// The call has ended at the worker, or ends now: Close waits for it,
	// and for a dead letter it writes to be acknowledged.
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.worker.Stats().DeadLettered; n != 0 {
		t.Errorf("the worker counts %d dead letters, want 0", n)
	}
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("dlq"), Value: []byte("marker")})
	select {
	case rec := <-dead.recs:
		if string(rec.Value) != "marker" {
			t.Fatalf("a dead letter (status %s, %q) for a call its caller cancelled",
				header(rec, wire.DeadLetterStatus), header(rec, wire.DeadLetterMessage))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the marker written to the dead-letter topic was not read within 30 s")
	}
}
