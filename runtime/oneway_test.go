package runtime_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	keyedv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/keyed/v1"
)

// heldRecorder serves Record by waiting until released, then reports how
// the handler ended: nil when released, the context's cause when the
// worker cancelled it first.
type heldRecorder struct {
	keyedv1.UnimplementedLedgerServiceServer
	started chan struct{}
	release chan struct{}
	outcome chan error
}

func (h *heldRecorder) Record(ctx context.Context, _ *keyedv1.Entry) (*emptypb.Empty, error) {
	h.started <- struct{}{}
	select {
	case <-h.release:
		h.outcome <- nil
	case <-ctx.Done():
		h.outcome <- context.Cause(ctx)
	}
	return &emptypb.Empty{}, nil
}

// TestShutdownDrainsOneway: Shutdown lets a oneway call in flight finish,
// as it does calls with replies, instead of returning at once and
// cancelling it.
func TestShutdownDrainsOneway(t *testing.T) {
	h := &heldRecorder{started: make(chan struct{}, 1), release: make(chan struct{}), outcome: make(chan error, 1)}
	env := startLedger(t, h)
	ctx := ctxFor(t, 60*time.Second)
	client := keyedv1.NewLedgerServiceClient(env.ClientConn)
	if _, err := client.Record(ctx, &keyedv1.Entry{Account: &keyedv1.Account{Id: "a"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.started:
	case <-ctx.Done():
		t.Fatal("the worker did not start the oneway call")
	}
	shutdown := make(chan error, 1)
	go func() { shutdown <- env.Worker.Shutdown(ctx) }()
	// Without draining, Shutdown returns at once and cancels the handler:
	// give that a second to show. The call is released after it either
	// way, so a slow machine cannot fail the test, only miss the fault.
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned (%v) while a oneway call was running", err)
	case err := <-h.outcome:
		t.Fatalf("the oneway call ended before it was released: %v", err)
	case <-time.After(time.Second):
	}
	close(h.release)
	if err := <-h.outcome; err != nil {
		t.Fatalf("the oneway call was cancelled: %v", err)
	}
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
}
