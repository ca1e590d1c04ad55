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
// once idle for runnerIdle or when done ends.
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

func (r *runners) loop(c *call) {
	idle := time.NewTimer(runnerIdle)
	defer idle.Stop()
	for {
		c.run()
		c = nil // not kept alive while idle
		idle.Reset(runnerIdle)
		select {
		case c = <-r.work:
		case <-idle.C:
			return
		case <-r.done:
			return
		}
	}
}
