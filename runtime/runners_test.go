package runtime

import (
	"context"
	"sync"
	"testing"
	"time"
)

// waitParked waits until n runners of r wait for work.
func waitParked(t *testing.T, r *runners, n int64) {
	t.Helper()
	for r.parked.Load() != n {
		time.Sleep(time.Millisecond)
	}
}

// TestRunnersIdleExitOnSweep checks that a runner that took no call since
// the last sweep exits when the sweep comes by, and one told to by done.
func TestRunnersIdleExitOnSweep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRunners(ctx)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.loop(nil) // an idle runner: it ran nothing
		}()
	}
	waitParked(t, r, 3)
	// A runner counts itself parked just before it waits, so a sweep can
	// come by between the two and miss it (it then goes at the next
	// sweep): sweep until all three have exited.
	exited := make(chan struct{})
	go func() { wg.Wait(); close(exited) }()
	for sweeping := true; sweeping; {
		r.sweepOnce()
		select {
		case <-exited:
			sweeping = false
		case <-time.After(time.Millisecond):
		}
	}
	if n := r.parked.Load(); n != 0 {
		t.Fatalf("parked = %d after the idle runners exited, want 0", n)
	}
	r.sweepOnce() // no runner waits: returns at once

	wg.Add(1)
	go func() {
		defer wg.Done()
		r.loop(nil)
	}()
	waitParked(t, r, 1)
	cancel()
	wg.Wait() // done ends it
}
