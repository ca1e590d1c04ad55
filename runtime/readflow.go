package runtime

import (
	"sync"
	"sync/atomic"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// readFlow pauses the worker's reading of requests while too many calls
// wait for a handler (WorkerMaxQueuedCalls): a backlog is then left in
// Kafka rather than read into memory. It never pauses while a running
// handler waits for a request message, since that message may be behind
// the pause (a client stream whose handler holds a slot), and reads again
// as soon as one does, or once the calls waiting fell to half the bound.
// Safe for concurrent use.
type readFlow struct {
	max    int64        // WorkerMaxQueuedCalls; 0: no bound
	queued atomic.Int64 // calls read whose handlers have not started (call.unqueue)
	inputs atomic.Int64 // running handlers waiting for a request message
	on     atomic.Bool  // max > 0 and the group reader can pause
	paused atomic.Bool
	pauses atomic.Uint64 // WorkerStats.ReadPauses

	mu sync.Mutex         // orders Pause and Resume; guards p
	p  kafkaclient.Pauser // the group reader's, or nil
}

// reader sets the group reader whose reading flow pauses (nil when it
// cannot pause); a new one reads.
func (f *readFlow) reader(gr kafkaclient.GroupReader) {
	f.mu.Lock()
	f.p, _ = gr.(kafkaclient.Pauser)
	f.paused.Store(false)
	f.on.Store(f.max > 0 && f.p != nil)
	f.mu.Unlock()
}

// check pauses or resumes the reading as the calls waiting and the
// handlers waiting for input say. Cheap when nothing changes.
func (f *readFlow) check() {
	if !f.on.Load() {
		return
	}
	if f.paused.Load() == f.shouldPause() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	want := f.shouldPause()
	if !f.on.Load() || f.paused.Load() == want {
		return
	}
	f.paused.Store(want)
	if want {
		f.pauses.Add(1)
		f.p.Pause()
	} else {
		f.p.Resume()
	}
}

// shouldPause reports whether the reading should be paused now: above the
// bound to pause, and at or below half of it to resume (so that a flow
// near the bound does not pause at every call).
func (f *readFlow) shouldPause() bool {
	if f.inputs.Load() > 0 {
		return false
	}
	q := f.queued.Load()
	if f.paused.Load() {
		return q > f.max/2
	}
	return q >= f.max
}

// awaitInput notes that a running handler waits for a request message,
// until inputCame: reading resumes meanwhile.
func (f *readFlow) awaitInput() {
	if f.max > 0 {
		f.inputs.Add(1)
		f.check()
	}
}

// inputCame ends what awaitInput began.
func (f *readFlow) inputCame() {
	if f.max > 0 {
		f.inputs.Add(-1)
	}
}

// enqueue notes a call read whose handler has not started (until dequeue).
func (f *readFlow) enqueue() { f.queued.Add(1) }

// dequeue ends what enqueue began.
func (f *readFlow) dequeue() {
	f.queued.Add(-1)
	f.check()
}
