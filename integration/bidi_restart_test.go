//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// Bounds of the bidi restart test.
const (
	bidiCallTimeout = 120 * time.Second // deadline of the open stream
	// bidiStatusWithin bounds the wait for the stream's status after the
	// old worker is gone: a graceful worker gives calls it cannot finish
	// 10 s (echo-worker's drain bound) before it answers UNAVAILABLE; a
	// killed one is noticed by the group only after its session times out
	// (librdkafka's session.timeout.ms, 45 s by default).
	bidiStatusWithin = 90 * time.Second
)

// recvOutcome is what one Recv returned.
type recvOutcome struct {
	resp *echov1.EchoResponse
	err  error
	at   time.Time
}

// TestWorkerRestartDuringBidi restarts the worker while a bidi stream is
// open, after the stream got its first answer: the caller must get a clear
// status (a gRPC code other than OK and other than its own deadline) and not
// hang. Gracefully (SIGTERM, then a new worker) and as a crash (SIGKILL, then
// a new worker).
func TestWorkerRestartDuringBidi(t *testing.T) {
	needKafka(t)
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{
		{"SIGTERM", syscall.SIGTERM},
		{"SIGKILL", syscall.SIGKILL},
	} {
		t.Run(tc.name, func(t *testing.T) { testWorkerRestartDuringBidi(t, tc.sig) })
	}
}

func testWorkerRestartDuringBidi(t *testing.T, sig syscall.Signal) {
	group := unique("bidi-restart")
	addr := freeAddr(t)
	w1 := startWorker(t, group)
	startGateway(t, addr)
	c := dial(t, addr)
	warmUp(t, c)

	ctx, cancel := context.WithTimeout(context.Background(), bidiCallTimeout)
	defer cancel()
	s, err := c.EchoBidiStream(ctx)
	if err != nil {
		t.Fatalf("EchoBidiStream: %v", err)
	}
	if err := s.Send(&echov1.EchoRequest{Message: "one"}); err != nil {
		t.Fatalf("Send one: %v", err)
	}
	r, err := s.Recv()
	if err != nil || r.GetMessage() != "one" || r.GetIndex() != 0 {
		t.Fatalf("first answer: %v, %v; want %q index 0", r, err, "one")
	}

	// From now on every Recv is watched, so that whatever the caller sees
	// while the worker restarts is recorded with its time.
	outcomes := make(chan recvOutcome, 16)
	go func() {
		defer close(outcomes)
		for {
			r, err := s.Recv()
			outcomes <- recvOutcome{r, err, time.Now()}
			if err != nil {
				return
			}
		}
	}()

	restart := time.Now()
	w1.signal(t, sig)
	exited := w1.wait(t, exitTimeout)
	t.Logf("old worker exited %s after %s", exited.Round(time.Millisecond), sig)
	startWorker(t, group)
	t.Logf("new worker ready %s after %s", time.Since(restart).Round(time.Millisecond), sig)

	// The caller goes on with its stream and then closes it: either the
	// requests reach a worker, or Send reports that the call is over
	// (io.EOF) and the status comes from Recv.
	if err := s.Send(&echov1.EchoRequest{Message: "two"}); err != nil && !errors.Is(err, io.EOF) {
		t.Errorf("Send two after the restart: %v", err)
	}
	if err := s.CloseSend(); err != nil {
		t.Errorf("CloseSend after the restart: %v", err)
	}

	bound := time.NewTimer(bidiStatusWithin)
	defer bound.Stop()
	var got []*echov1.EchoResponse
	var seen []string
	for {
		select {
		case o, more := <-outcomes:
			if !more {
				t.Fatal("the receiver stopped without an error")
			}
			after := o.at.Sub(restart).Round(time.Millisecond)
			if o.err == nil {
				got = append(got, o.resp)
				seen = append(seen, fmt.Sprintf("%q index %d after %s", o.resp.GetMessage(), o.resp.GetIndex(), after))
				continue
			}
			t.Logf("answers after the restart: %v", seen)
			st := status.Convert(o.err)
			switch {
			case errors.Is(o.err, io.EOF):
				t.Logf("the stream ended OK %s after %s", after, sig)
				checkReplayedStream(t, got)
			case st.Code() == codes.DeadlineExceeded:
				t.Fatalf("the stream hung until the caller's deadline (%s): %s %q", bidiCallTimeout, st.Code(), st.Message())
			case st.Code() == codes.Unknown:
				t.Fatalf("the stream ended with %s %q %s after the restart; want a clear gRPC status", st.Code(), st.Message(), after)
			default:
				t.Logf("the caller got %s %q %s after %s", st.Code(), st.Message(), after, sig)
			}
			return
		case <-bound.C:
			cancel()
			t.Fatalf("no status within %s of %s (answers so far: %v): the caller hangs", bidiStatusWithin, sig, seen)
		}
	}
}

// checkReplayedStream checks the answers a stream that ended OK received
// after the restart: "two" must have been answered (the call was completed),
// and "one", answered before the restart, must not come again.
func checkReplayedStream(t *testing.T, got []*echov1.EchoResponse) {
	t.Helper()
	var two, dup bool
	for _, r := range got {
		switch {
		case r.GetMessage() == "two":
			two = true
		case r.GetMessage() == "one":
			dup = true
		}
	}
	if !two {
		t.Fatalf("the stream ended OK without answering the request sent after the restart: %v", got)
	}
	if dup {
		t.Fatalf("the caller received the answer to %q again after the worker restart (the new worker replayed the stream from its start): %v", "one", got)
	}
}
