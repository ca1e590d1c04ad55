package runtime

import (
	"context"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// partTrack follows one assigned partition: which calls started at which
// offsets are unfinished, so that the committed offset never passes the
// first record of a call whose replies are not acknowledged yet.
type partTrack struct {
	next      int64         // offset after the last record read; -1 before any
	open      offsetHeap    // first offsets of calls not finished
	closed    map[int64]int // finished first offsets still in open
	committed int64
}

func newPartTrack() *partTrack {
	return &partTrack{next: -1, closed: map[int64]int{}, committed: -1}
}

func (p *partTrack) seen(off int64) {
	if off+1 > p.next {
		p.next = off + 1
	}
}

func (p *partTrack) begin(off int64)  { p.open.push(off) }
func (p *partTrack) finish(off int64) { p.closed[off]++ }

// finishAll finishes first and the offsets in extra (a call's own and
// those it kept unfinished for superseded calls: call.extra).
func (p *partTrack) finishAll(first int64, extra []int64) {
	p.finish(first)
	for _, off := range extra {
		p.finish(off)
	}
}

// point is the offset it is safe to commit: the first offset of the oldest
// unfinished call, or the next offset to read when none is unfinished.
func (p *partTrack) point() int64 {
	for len(p.open) > 0 && p.closed[p.open[0]] > 0 {
		off := p.open.pop()
		if p.closed[off]--; p.closed[off] == 0 {
			delete(p.closed, off)
		}
	}
	if len(p.open) > 0 {
		return p.open[0]
	}
	return p.next
}

// offsetHeap is a min-heap of offsets (no container/heap: its interface
// would box every offset).
type offsetHeap []int64

func (h *offsetHeap) push(off int64) {
	*h = append(*h, off)
	q := *h
	for i := len(q) - 1; i > 0; {
		parent := (i - 1) / 2
		if q[parent] <= q[i] {
			break
		}
		q[parent], q[i] = q[i], q[parent]
		i = parent
	}
}

// pop removes and returns the least offset; h must not be empty.
func (h *offsetHeap) pop() int64 {
	q := *h
	least, last := q[0], len(q)-1
	q[0] = q[last]
	q = q[:last]
	for i := 0; ; {
		small, l, r := i, 2*i+1, 2*i+2
		if l < len(q) && q[l] < q[small] {
			small = l
		}
		if r < len(q) && q[r] < q[small] {
			small = r
		}
		if small == i {
			break
		}
		q[i], q[small] = q[small], q[i]
		i = small
	}
	*h = q
	return least
}

// committer commits the worker's safe offsets after calls finish, at most
// once per commit interval.
type committer struct {
	w      *Worker
	gr     kafkaclient.GroupReader
	signal chan struct{}
	quit   chan struct{}
	done   chan struct{}
}

func newCommitter(w *Worker, gr kafkaclient.GroupReader) *committer {
	return &committer{w: w, gr: gr, signal: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// poke asks for a commit soon; never blocks.
func (c *committer) poke() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

func (c *committer) run() {
	defer close(c.done)
	for {
		select {
		case <-c.quit:
			return
		case <-c.signal:
		}
		c.commitNow(nil)
		t := time.NewTimer(c.w.cfg.commitInterval)
		select {
		case <-c.quit:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// stop ends the background loop and commits one last time.
func (c *committer) stop() {
	close(c.quit)
	<-c.done
	c.commitNow(nil)
}

// commitNow commits the safe offset of every partition in only (all when
// nil) that moved since the last commit, through the worker's replyWriter.
func (c *committer) commitNow(only map[kafkaclient.TopicPartition]bool) {
	c.w.writer.commit(c, only)
}

// commitOffsets commits the safe offsets through the consumer group (the
// directWriter's commit).
func (c *committer) commitOffsets(only map[kafkaclient.TopicPartition]bool) {
	w := c.w
	w.mu.Lock()
	offs, tracks := w.safeOffsets(only)
	w.mu.Unlock()
	if len(offs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.gr.Commit(ctx, offs); err != nil {
		w.cfg.logger.Warn("kafkarpc: committing offsets", "group", w.cfg.groupID, "error", err)
		return
	}
	w.markCommitted(offs, tracks)
}

// track returns the partTrack of rec's partition (handle marks rec read once
// it is safe to commit past it).
// Called with w.mu held.
func (w *Worker) track(rec *kafkaclient.Record) *partTrack {
	tp := tpOf(rec)
	pt := w.parts[tp]
	if pt == nil { // a record of a partition we were not told about
		pt = newPartTrack()
		w.parts[tp] = pt
	}
	return pt
}

// safeOffsets returns, for every partition in only (all when nil) whose safe
// offset moved since its last commit, that offset. Called with w.mu held.
func (w *Worker) safeOffsets(only map[kafkaclient.TopicPartition]bool) ([]kafkaclient.TopicPartitionOffset, []*partTrack) {
	var offs []kafkaclient.TopicPartitionOffset
	var tracks []*partTrack
	for tp, pt := range w.parts {
		if only != nil && !only[tp] {
			continue
		}
		if p := pt.point(); p > pt.committed && p >= 0 {
			offs = append(offs, kafkaclient.TopicPartitionOffset{Topic: tp.Topic, Partition: tp.Partition, Offset: p})
			tracks = append(tracks, pt)
		}
	}
	return offs, tracks
}

// markCommitted records that offs were committed.
func (w *Worker) markCommitted(offs []kafkaclient.TopicPartitionOffset, tracks []*partTrack) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, pt := range tracks {
		pt.committed = max(pt.committed, offs[i].Offset)
	}
}
