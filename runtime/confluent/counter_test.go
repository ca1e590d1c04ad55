package confluent

import (
	"context"
	"testing"
	"time"
)

// TestCounterWait checks the outstanding count that Flush and Close wait
// on: a wait ends when the count drops to zero, records counted while it
// waits included, and nothing is made for a wait while nobody waits.
func TestCounterWait(t *testing.T) {
	c := &Client{}
	k := &c.outstanding
	ctx := context.Background()

	if err := c.wait(ctx, k); err != nil {
		t.Fatalf("wait at zero = %v", err)
	}
	k.add()
	k.done()
	if k.zero != nil {
		t.Fatal("a busy period nobody waited for made a channel")
	}

	c.pendMu.Lock()
	k.add()
	c.pendMu.Unlock()
	waited := make(chan error, 1)
	go func() { waited <- c.wait(ctx, k) }()
	for { // until the waiter is waiting
		c.pendMu.Lock()
		ready := k.zero != nil
		c.pendMu.Unlock()
		if ready {
			break
		}
		time.Sleep(time.Millisecond)
	}
	c.pendMu.Lock()
	k.add() // counted while it waits
	k.done()
	c.pendMu.Unlock()
	select {
	case err := <-waited:
		t.Fatalf("wait returned (%v) with one record outstanding", err)
	case <-time.After(20 * time.Millisecond):
	}
	c.pendMu.Lock()
	k.done()
	c.pendMu.Unlock()
	if err := <-waited; err != nil {
		t.Fatalf("wait = %v", err)
	}

	c.pendMu.Lock()
	k.add()
	c.pendMu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := c.wait(cctx, k); err != context.DeadlineExceeded {
		t.Fatalf("wait with a record outstanding = %v, want the context's end", err)
	}
}
