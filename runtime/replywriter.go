package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// replyWriter takes the records a call writes (replies, dead letters) to
// Kafka and commits the offsets of the calls it wrote for. The worker has
// one: directWriter, or txnWriter with WorkerExactlyOnce. A call never asks
// which.
type replyWriter interface {
	// send hands rec, a record of c, to Kafka or keeps it for flush.
	send(c *call, rec *kafkaclient.Record)
	// sendOutcome hands rec, the stored outcome of c (WorkerOutcomeTopic),
	// to Kafka or keeps it for flush; flush waits for it too, but its
	// failure is not c's (call.outcomeAcked).
	sendOutcome(c *call, rec *kafkaclient.Record)
	// flush hands over what send kept for c and waits until Kafka
	// acknowledged every record of c. It returns the first failure the
	// caller has to be told about, or nil.
	flush(c *call) error
	// settle is called once c is released (its offset marked done), after
	// flush.
	settle(c *call)
	// commit commits the safe offsets of the partitions in only (all when
	// nil), together with what the writer wrote for the calls below them.
	commit(cm *committer, only map[kafkaclient.TopicPartition]bool)
	// close releases what the writer holds, once no call is left.
	close()
}

// delivery is one call's records on their way to Kafka.
type delivery struct {
	unacked sync.WaitGroup
	failed  atomic.Pointer[error] // the first failure to deliver a reply
	outbox  []*kafkaclient.Record // txnWriter: what flush produces; the call's own
	outcome *kafkaclient.Record   // txnWriter: the stored outcome flush produces after the outbox
	inTxn   bool                  // txnWriter: flush put records in the open transaction
	// noReplyTopic is set once Kafka said the call's reply topic does not
	// exist (its request then goes to the dead-letter topic, once).
	noReplyTopic atomic.Bool
	retry        replyRetry // directWriter: records Kafka did not take, to try again
}

// failure returns the first failure to deliver a reply of the call so far.
func (d *delivery) failure() error {
	if p := d.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// delivered is the delivery callback of the call's records (call.acked).
func (c *call) delivered(rec *kafkaclient.Record, err error) {
	if err != nil && c.retryLater(rec, err) {
		return // it keeps its place among the unacknowledged records
	}
	defer c.sent.unacked.Done()
	if err == nil {
		return
	}
	cfg := &c.w.cfg
	if cfg.deadLetterTopic != "" && rec.Topic == cfg.topic(cfg.deadLetterTopic) {
		// Not a reply: the caller has its answer. Logged, and the request
		// is committed as its reply says it was handled.
		cfg.logger.Error("kafkarpc: copying a request to the dead-letter topic", "correlation_id", c.id, "dead_letter_topic", rec.Topic,
			"error", err, "topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first)
		return
	}
	cfg.logger.Error("kafkarpc: producing reply", "correlation_id", c.id, "reply_topic", rec.Topic, "error", err,
		"topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first)
	c.sent.fail(err)
	if _, direct := c.w.writer.(directWriter); direct && cfg.deadLetterTopic != "" && c.wm != nil &&
		errors.Is(err, kafkaclient.ErrUnknownTopic) && c.sent.noReplyTopic.CompareAndSwap(false, true) {
		// Nobody can read an answer to a topic that does not exist: the
		// request goes to the dead-letter topic, once, before its offset
		// is committed (flush waits for these records too). Not on the
		// client's delivery goroutine, which must not wait to produce.
		c.sent.unacked.Add(1)
		go func() {
			defer c.sent.unacked.Done()
			c.deadLetter(status.Newf(codes.NotFound, "%s: reply topic %q does not exist", c.method(), rec.Topic))
		}()
	}
}

// fail records err unless an earlier failure was recorded.
func (d *delivery) fail(err error) { d.failed.CompareAndSwap(nil, &err) }

// directWriter produces every record at once (acks=all) and commits offsets
// through the consumer group.
type directWriter struct{ client kafkaclient.Client }

func (d directWriter) send(c *call, rec *kafkaclient.Record) {
	c.sent.unacked.Add(1)
	if c.queueBehind(rec) {
		return // earlier records wait for a retry: this one goes after them
	}
	d.client.Produce(rec, kafkaclient.AcksAll, c.acked)
}

func (d directWriter) sendOutcome(c *call, rec *kafkaclient.Record) {
	c.sent.unacked.Add(1)
	d.client.Produce(rec, kafkaclient.AcksAll, c.outcomeAcked)
}

func (directWriter) flush(c *call) error {
	c.sent.unacked.Wait()
	return c.sent.failure()
}

func (directWriter) settle(*call) {}

func (directWriter) commit(cm *committer, only map[kafkaclient.TopicPartition]bool) {
	cm.commitOffsets(only)
}

func (directWriter) close() {}

// txnWriter keeps a call's records until it ends and produces them into
// the open transaction, which the committer commits with the offsets of
// the calls whose records it holds (WorkerExactlyOnce). A record Kafka
// refuses fails the transaction, and the worker with it: no call reports it
// to its caller.
type txnWriter struct {
	w   *Worker
	txn kafkaclient.TxnProducer

	produceMu sync.RWMutex // calls produce under RLock; a commit holds Lock
	mu        sync.Mutex   // guards open and dirty
	open      int          // calls whose records are in the open transaction but not yet settled
	dirty     bool         // something was produced in the open transaction
	idle      *sync.Cond   // signalled when open drops to 0; uses mu
}

func newTxnWriter(w *Worker, txn kafkaclient.TxnProducer) *txnWriter {
	t := &txnWriter{w: w, txn: txn}
	t.idle = sync.NewCond(&t.mu)
	return t
}

func (t *txnWriter) send(c *call, rec *kafkaclient.Record) {
	c.sent.outbox = append(c.sent.outbox, rec)
}

func (t *txnWriter) sendOutcome(c *call, rec *kafkaclient.Record) {
	c.sent.outcome = rec
}

// flush sends the call's outbox into the open transaction; the call is
// settled once they are acknowledged, and the next commit covers both its
// records and its offset.
func (t *txnWriter) flush(c *call) error {
	if out := c.sent.outbox; len(out) > 0 || c.sent.outcome != nil {
		t.produceMu.RLock()
		t.mu.Lock()
		t.open++
		t.dirty = true
		t.mu.Unlock()
		for _, rec := range out {
			c.sent.unacked.Add(1)
			t.txn.Produce(rec, c.acked)
		}
		if rec := c.sent.outcome; rec != nil {
			// In the transaction of the replies and the offset: the
			// outcome is stored if and only if the call is answered.
			c.sent.unacked.Add(1)
			t.txn.Produce(rec, c.outcomeAcked)
		}
		t.produceMu.RUnlock()
		c.sent.outbox = nil
		c.sent.outcome = nil
		c.sent.inTxn = true
	}
	c.sent.unacked.Wait()
	return nil
}

func (t *txnWriter) settle(c *call) {
	if !c.sent.inTxn {
		return
	}
	t.mu.Lock()
	if t.open--; t.open == 0 {
		t.idle.Broadcast()
	}
	t.mu.Unlock()
}

// commit commits the open transaction with the safe offsets: no call
// produces meanwhile, and every call with records in the transaction is
// settled (its offset marked done) first, so the offsets cover exactly the
// calls whose replies the transaction holds.
func (t *txnWriter) commit(cm *committer, only map[kafkaclient.TopicPartition]bool) {
	w := t.w
	t.produceMu.Lock()
	defer t.produceMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := t.txn.Flush(ctx); err != nil {
		w.fail(fmt.Errorf("exactly-once: flushing the transaction: %w", err))
		return
	}
	t.mu.Lock()
	for t.open > 0 {
		t.idle.Wait()
	}
	dirty := t.dirty
	t.dirty = false
	t.mu.Unlock()
	w.mu.Lock()
	offs, tracks := w.safeOffsets(only)
	w.mu.Unlock()
	if len(offs) == 0 && !dirty {
		return
	}
	if err := t.txn.Commit(ctx, cm.gr, offs); err != nil {
		_ = t.txn.Abort(ctx)
		w.fail(fmt.Errorf("exactly-once: committing the transaction: %w", err))
		return
	}
	w.markCommitted(offs, tracks)
}

func (t *txnWriter) close() {
	if err := t.txn.Close(); err != nil {
		t.w.cfg.logger.Warn("kafkarpc: closing the transactional producer", "error", err)
	}
}

// recordSlots holds the first two records a call produces (a unary call's
// message and end-of-stream), so that they cost no allocation of their
// own. A slot is handed out once and never reused, so a record stays valid
// for as long as the Kafka client holds it. Not safe for concurrent use:
// its call takes slots under the lock that orders its records.
type recordSlots struct {
	recs [2]kafkaclient.Record
	n    int
}

// next returns a record to fill and produce: a slot while any is left, then
// a new one.
func (s *recordSlots) next() *kafkaclient.Record {
	if s.n < len(s.recs) {
		r := &s.recs[s.n]
		s.n++
		return r
	}
	return new(kafkaclient.Record)
}
