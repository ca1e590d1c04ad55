package runtime

import (
	"context"
	"time"
)

// runners runs the worker's calls on goroutines that outlive them. A call's
// goroutine grows its stack on the deep path that produces its replies;
// run on a fresh goroutine each time, every call grew it again from the
// minimum, copying it each time it doubled (about a tenth of the CPU of a
// loaded worker). A runner keeps its stack for the next call, and exits
// once idle for runnerIdle to twice that, or when done ends.
type runners struct {
	work chan *call
	done <-chan struct{}
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
		go r.loop(c)
	}
}

// loop runs c, then the calls run hands it. Its idle timer is not reset
// after each call (that was 0.7% of the CPU of a process serving 256 calls
// in flight through gateway and worker, bench rpc/franz/256): it fires every
// runnerIdle, and the runner exits when it fires at the end of a period in
// which the runner took no call.
func (r *runners) loop(c *call) {
	idle := time.NewTimer(runnerIdle)
	defer idle.Stop()
	busy := false // a call ran since the timer was last set
	for {
		if c != nil {
			c.run()
			c = nil // not kept alive while idle
			busy = true
		}
		select {
		case c = <-r.work:
		case <-idle.C:
			if !busy {
				return
			}
			busy = false
			idle.Reset(runnerIdle)
		case <-r.done:
			return
		}
	}
}
