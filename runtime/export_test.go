package runtime

import (
	"context"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// SetTopicFreshness sets how long the gateway trusts what it learnt of a
// topic's existence (see topicGuard), and returns a function that restores
// the defaults. Tests only; no test of this package runs in parallel.
func SetTopicFreshness(present, missing time.Duration) (restore func()) {
	p, m := topicPresentFresh, topicMissingFresh
	topicPresentFresh, topicMissingFresh = present, missing
	return func() { topicPresentFresh, topicMissingFresh = p, m }
}

// SetOutcomeLoadTimeout sets the bound of a worker's load of stored
// outcomes (outcomeLoadTimeout), and returns a function that restores it.
// Tests only; no test of this package runs in parallel.
func SetOutcomeLoadTimeout(d time.Duration) (restore func()) {
	old := outcomeLoadTimeout
	outcomeLoadTimeout = d
	return func() { outcomeLoadTimeout = old }
}

// SetFeedHook makes every worker's dispatcher call f between routing a
// request record to its call in flight and feeding it (end: the record is
// an end-of-stream record; done: closed once the call is over), and returns
// a function that removes it. Set it before the worker starts and remove it
// after the worker stopped. Tests only; no test of this package runs in
// parallel.
func SetFeedHook(f func(id string, end bool, done <-chan struct{})) (restore func()) {
	testHookFeed = f
	return func() { testHookFeed = nil }
}

// RevokeForTest runs the worker's handling of a (not lost) revocation of
// parts, as the group reader calls it in a cooperative rebalance that takes
// only those partitions away. Tests only.
func RevokeForTest(w *Worker, parts ...kafkaclient.TopicPartition) { w.onRevoked(parts, false) }

// SetPartitionsRefresh sets how often reply routers and fetch hubs look
// for partitions added to their topics, for those started afterwards, and
// returns a function that restores the default. Tests only; no test of this
// package runs in parallel.
func SetPartitionsRefresh(d time.Duration) (restore func()) {
	old := partitionsRefresh
	partitionsRefresh = d
	return func() { partitionsRefresh = old }
}

// SetRelayedHook makes every gateway call f when the goroutine relaying a
// caller's request stream (relayRequests) returns, and returns a function
// that removes it. Tests only; no test of this package runs in parallel.
func SetRelayedHook(f func()) (restore func()) {
	testHookRelayed = f
	return func() { testHookRelayed = nil }
}

// SetAwaitEarlierHook makes every worker call f when a call starts waiting
// for the superseded calls with its correlation id to be over (id, and the
// waiting call's attempt id), and returns a function that removes it. Set
// it before the worker starts and remove it after the worker stopped.
// Tests only; no test of this package runs in parallel.
func SetAwaitEarlierHook(f func(id string, attempt []byte)) (restore func()) {
	testHookAwaitEarlier = f
	return func() { testHookAwaitEarlier = nil }
}

// SetReplyRecheck sets how long a reply router refused its topic's records
// waits before reading it again with a fresh reader, and how long that
// reader must read without a refusal (replyRecheck, replySettle), and
// returns a function that restores the defaults. Tests only; no test of
// this package runs in parallel.
func SetReplyRecheck(recheck, settle time.Duration) (restore func()) {
	r, s := replyRecheck, replySettle
	replyRecheck, replySettle = recheck, settle
	return func() { replyRecheck, replySettle = r, s }
}

// SetReplyReadHook makes every reply router call f when it finds it may not
// read its topic (readable false) or may again (true), and returns a
// function that removes it. Tests only; no test of this package runs in
// parallel.
func SetReplyReadHook(f func(topic string, readable bool)) (restore func()) {
	testHookReplyRead = f
	return func() { testHookReplyRead = nil }
}

// SetMissingTopicTTL sets how long a worker takes a reply topic it found
// missing for missing (missingTTL), and returns a function that restores
// the default. Tests only; no test of this package runs in parallel.
func SetMissingTopicTTL(d time.Duration) (restore func()) {
	old := missingTTL
	missingTTL = d
	return func() { missingTTL = old }
}

// RefreshReplyPartitionsForTest makes each reply router of g look for
// partitions added to its topic now, as its periodic refresh does.
// Tests only.
func RefreshReplyPartitionsForTest(ctx context.Context, g *Gateway) error {
	g.mu.Lock()
	rs := make([]*replyRouter, 0, len(g.routers))
	for _, r := range g.routers {
		rs = append(rs, r)
	}
	g.mu.Unlock()
	for _, r := range rs {
		if err := r.addPartitions(ctx); err != nil {
			return err
		}
	}
	return nil
}

// PendingForTest returns the number of calls registered in the reply
// routers of g (calls in flight waiting for replies). Tests only.
func PendingForTest(g *Gateway) int {
	g.mu.Lock()
	rs := make([]*replyRouter, 0, len(g.routers))
	for _, r := range g.routers {
		rs = append(rs, r)
	}
	g.mu.Unlock()
	n := 0
	for _, r := range rs {
		n += len(r.pending.all())
	}
	return n
}

// ConnGatewayForTest returns the gateway a ClientConn calls through.
// Tests only.
func ConnGatewayForTest(cc *ClientConn) *Gateway { return cc.g }

// WorkerTablesForTest returns the sizes of the worker's per-call tables:
// calls in flight, oneway calls, detached calls, key queues, repeated
// attempts skipped, waiters, held first offsets and skipped attempts'
// offsets. Tests only.
func WorkerTablesForTest(w *Worker) map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return map[string]int{
		"calls":    len(w.calls),
		"oneway":   len(w.oneway),
		"detached": len(w.detached),
		"keys":     len(w.keys.queues),
		"dupes":    len(w.repeats.dupes),
		"waiters":  len(w.repeats.waiters),
		"held":     len(w.repeats.held),
		"attempts": len(w.repeats.attempts),
	}
}

// StoredRepliesForTest returns how many calls' replies the worker keeps
// for repeats of their idempotency keys, and their bytes. Tests only.
func StoredRepliesForTest(w *Worker) (n, bytes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.repeats.stored.byID), w.repeats.stored.bytes
}

// HeldRepliesForTest returns the bytes (replySize) of the replies the
// calls in flight keep for repeats of their idempotency keys, not yet
// stored. Tests only: while no call finishes (finish stores its last
// replies without the lock taken here).
func HeldRepliesForTest(w *Worker) int {
	n := 0
	for _, c := range w.callsOf(nil, false) {
		c.out.mu.Lock()
		n += replySize(c.stored)
		c.out.mu.Unlock()
	}
	return n
}

// HeldRequestsForTest returns the bytes of the request messages the calls
// in flight keep (read by their handlers or not). Tests only.
func HeldRequestsForTest(w *Worker) int {
	n := 0
	for _, c := range w.callsOf(nil, false) {
		c.in.mu.Lock()
		for _, rec := range c.in.all {
			if rec != nil {
				n += len(rec.Value)
			}
		}
		c.in.mu.Unlock()
	}
	return n
}

// SetDrainingHook makes every worker call f when, at shutdown (once it
// stopped polling) or at a revocation, it gave up the calls whose handlers
// had not started, before it waits for the others, and returns a function that removes it. Set it
// before the worker starts and remove it after the worker stopped. Tests
// only; no test of this package runs in parallel.
func SetDrainingHook(f func()) (restore func()) {
	testHookDraining = f
	return func() { testHookDraining = nil }
}

// WorkerRetryBackoffForTest sets the first back-off of the worker's retries
// (WorkerRetries; 100 ms otherwise). Tests only.
func WorkerRetryBackoffForTest(d time.Duration) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.retryBackoff = d })
}
