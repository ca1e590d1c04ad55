package runtime

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// runners runs the worker's calls on goroutines that outlive them. A call's
// goroutine grows its stack on the deep path that produces its replies;
// run on a fresh goroutine each time, every call grew it again from the
// minimum, copying it each time it doubled (about a tenth of the CPU of a
// loaded worker). A runner keeps its stack for the next call, and exits
// once idle for runnerIdle to twice that, or when done ends.
type runners struct {
	work chan *call // a call to run, or nil from sweep: exit if idle
	done <-chan struct{}
	// parked counts the runners waiting for work (an estimate: a runner
	// counts itself just before and after it waits).
	parked  atomic.Int64
	sweeper sync.Once
}

// runnerIdle is how long an idle runner waits for another call.
const runnerIdle = 10 * time.Second

func newRunners(ctx context.Context) *runners {
	return &runners{work: make(chan *call), done: ctx.Done()}
}

// run runs c.run on an idle runner, or on a new one when none is idle. It
// never waits for a runner to become free.
func (r *runners) run(c *call) {
	select {
	case r.work <- c:
	default:
		r.sweeper.Do(func() { go r.sweep() })
		go r.loop(c)
	}
}

// loop runs c, then the calls run hands it, until done ends or sweep tells
// it to go after a period in which it took no call. A runner waits on the
// work channel and done only: with an idle timer's channel in the same
// select (as before), every wait of every runner put that timer on the
// timer heap and took it off again (Go's timers are on the heap only while
// a goroutine waits on their channel); that select was 2.4% of the CPU of a
// process serving 256 calls in flight through a ClientConn and the worker
// (bench conn/franz/256), 1.8% without the timer.
func (r *runners) loop(c *call) {
	busy := false // a call ran since sweep last came by
	for {
		if c != nil {
			c.run()
			c = nil // not kept alive while idle
			busy = true
		}
		r.parked.Add(1)
		select {
		case c = <-r.work:
			r.parked.Add(-1)
			if c == nil { // sweep
				if !busy {
					return
				}
				busy = false
			}
		case <-r.done:
			r.parked.Add(-1)
			return
		}
	}
}

// sweep comes by the waiting runners every runnerIdle, each about once: a
// runner that took no call since sweep last came by exits, so that an idle
// runner exits after runnerIdle to twice that.
func (r *runners) sweep() {
	t := time.NewTicker(runnerIdle)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-r.done:
			return
		}
		r.sweepOnce()
	}
}

// sweepOnce offers a nil to as many runners as wait for work, until one
// is not taken.
func (r *runners) sweepOnce() {
	for n := r.parked.Load(); n > 0; n-- {
		select {
		case r.work <- nil:
		default:
			return // none waits
		}
	}
}
