package runtime

import (
	"errors"
	"sync"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Back-off between a call's retries of the replies Kafka did not take.
const (
	replyRetryFirst = 50 * time.Millisecond
	replyRetryMax   = time.Second
)

// replyRetry holds a call's reply records that Kafka did not take, to be
// produced again in their order, until the call's deadline (its caller's,
// or the worker's maximum call duration). While records wait, the call's
// later records wait behind them, so that the caller gets them in order.
// Only the direct writer retries: a failed transaction stops the worker.
type replyRetry struct {
	mu      sync.Mutex
	until   time.Time // no retry once past it; zero: none
	queue   []failedReply
	running bool // a retry loop owns queue
}

// failedReply is a record waiting for its retry, and why it failed.
type failedReply struct {
	rec *kafkaclient.Record
	err error
}

// retryable reports whether a reply record that failed with err is worth
// another try: not one Kafka can never take (too large, no such topic, a
// topic the worker may not write, one the cluster refused for another
// reason Kafka says no retry cures).
func retryable(err error) bool {
	return !tooLarge(err) && !errors.Is(err, kafkaclient.ErrUnknownTopic) && !errors.Is(err, kafkaclient.ErrNotAuthorized) &&
		!errors.Is(err, kafkaclient.ErrRecordRefused)
}

// retryLater queues rec, a reply record of c that Kafka did not take, for
// another try, and reports whether it did; the record keeps its place
// among the call's unacknowledged records until it is taken or given up.
func (c *call) retryLater(rec *kafkaclient.Record, err error) bool {
	if _, direct := c.w.writer.(directWriter); !direct || rec.Topic != c.replyTo || !retryable(err) {
		return false
	}
	r := &c.sent.retry
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.until.IsZero() || !time.Now().Before(r.until) || c.ctx.Err() != nil {
		return false // past the deadline, or the call is over for its caller or the worker
	}
	c.w.cfg.logger.Warn("kafkarpc: producing reply failed; retrying", "correlation_id", c.id, "reply_topic", rec.Topic,
		"error", err, "until", r.until)
	r.queue = append(r.queue, failedReply{rec: rec, err: err})
	if !r.running {
		r.running = true
		go c.retryLoop()
	}
	return true
}

// queueBehind queues rec, a new record of c, behind the records waiting for
// their retry, and reports whether it did (none wait: produce it now). Its
// place among the unacknowledged records is already taken.
func (c *call) queueBehind(rec *kafkaclient.Record) bool {
	r := &c.sent.retry
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running {
		return false
	}
	r.queue = append(r.queue, failedReply{rec: rec})
	return true
}

// retryLoop produces the queued records again, in order, after a back-off,
// until none is left; once the call's deadline passed, or its context
// ended (the caller cancelled, or the worker gave the call up in a
// rebalance or shutdown, which waits for it), it gives the rest up: each is counted as a failure of the call,
// logged, and released, so that the call can end and its offset be
// committed.
func (c *call) retryLoop() {
	r := &c.sent.retry
	for wait := replyRetryFirst; ; wait = min(2*wait, replyRetryMax) {
		t := time.NewTimer(max(min(wait, time.Until(r.until)), 0))
		select {
		case <-t.C:
		case <-c.ctx.Done(): // cancelled, past its deadline, or given up by the worker (rebalance, shutdown)
			t.Stop()
		}
		r.mu.Lock()
		q := r.queue
		r.queue = nil
		if len(q) == 0 {
			r.running = false
			r.mu.Unlock()
			return
		}
		giveUp := !time.Now().Before(r.until) || c.ctx.Err() != nil
		r.mu.Unlock()
		for _, f := range q {
			if giveUp {
				c.giveUp(f)
				continue
			}
			c.w.client.Produce(f.rec, kafkaclient.AcksAll, c.acked)
		}
	}
}

// giveUp releases a record that Kafka did not take by the call's deadline.
func (c *call) giveUp(f failedReply) {
	err := f.err
	if err == nil {
		err = errors.New("an earlier reply of the call was given up")
	}
	c.w.cfg.logger.Error("kafkarpc: giving up a reply at the call's deadline", "correlation_id", c.id, "reply_topic", f.rec.Topic,
		"error", err, "topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first)
	c.sent.fail(err)
	c.sent.unacked.Done()
}
