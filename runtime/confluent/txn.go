package confluent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TxnProducer implements kafkaclient.TxnProducer on a librdkafka
// transactional producer (transactional.id set, idempotence on, acks=all).
// See kafkaclient.TxnProducer for which methods may run concurrently.
//
// A record that fails (its done gets an error: Kafka refused it, say) is
// left out of the transaction and the others commit, as with franz-go:
// librdkafka makes such a transaction one that must be aborted, purges the
// records still queued and fails those produced after it (ERR__PURGE_QUEUE,
// ERR__STATE), so those are reported acknowledged and kept, and Commit
// aborts the transaction, produces its acknowledged and kept records into
// the next one and commits that. Flush, once a record failed, purges the
// records librdkafka would otherwise hold unsent until message.timeout.ms
// (see Flush): they are kept too.
type TxnProducer struct {
	c      *Client
	p      *producer
	closed atomic.Bool // Close was called: every later call fails with kafkaclient.ErrClosed

	mu       sync.Mutex
	gen      uint64        // the open transaction's number: reset counts them
	open     []*txnRecord  // the records of the open transaction
	failed   bool          // one of them failed in librdkafka
	failedCh chan struct{} // closed when failed is set
}

// txnRecord is a record of the open transaction and its delivery result.
type txnRecord struct {
	r   *kafkaclient.Record
	gen uint64 // the transaction's number (TxnProducer.gen)
	err error
	ok  bool // acknowledged
}

var _ kafkaclient.TxnProducer = (*TxnProducer)(nil)

// txnInitTimeout bounds InitTransactions, which waits for the coordinator
// and fences a previous producer with the same transactional.id.
const txnInitTimeout = 60 * time.Second

// NewTxnProducer creates a transactional producer with the client's producer
// configuration plus transactional.id = transactionalID, initialises it
// (fencing an earlier instance with the same id) and opens its first
// transaction.
func (c *Client) NewTxnProducer(transactionalID string) (kafkaclient.TxnProducer, error) {
	if transactionalID == "" {
		return nil, errors.New("confluent: a transactional producer needs a transactional.id")
	}
	cfg := c.producerConfig(kafkaclient.AcksAll)
	cfg["transactional.id"] = transactionalID
	cfg["enable.idempotence"] = true
	kp, err := kafka.NewProducer(&cfg)
	if err != nil {
		return nil, fmt.Errorf("confluent: new transactional producer: %w", err)
	}
	p := c.startProducer(kp, cfg, kafkaclient.AcksAll)
	ctx, cancel := context.WithTimeout(context.Background(), txnInitTimeout)
	defer cancel()
	if err := kp.InitTransactions(ctx); err != nil {
		p.close()
		return nil, fmt.Errorf("confluent: init transactions (transactional.id %s): %w", transactionalID, err)
	}
	if err := kp.BeginTransaction(); err != nil {
		p.close()
		return nil, fmt.Errorf("confluent: begin transaction: %w", err)
	}
	return &TxnProducer{c: c, p: p, failedCh: make(chan struct{})}, nil
}

// Produce enqueues r in the open transaction; done is called once with the
// delivery result, as for Client.Produce.
func (t *TxnProducer) Produce(r *kafkaclient.Record, done func(*kafkaclient.Record, error)) {
	if done == nil {
		done = func(*kafkaclient.Record, error) {}
	}
	if r == nil {
		go done(nil, errors.New("confluent: Produce of a nil record"))
		return
	}
	if t.closed.Load() {
		go done(r, kafkaclient.ErrClosed)
		return
	}
	t.mu.Lock()
	tr := &txnRecord{r: r, gen: t.gen}
	t.open = append(t.open, tr)
	t.mu.Unlock()
	t.c.produceOn(t.p, r, nil, func(r *kafkaclient.Record, err error) {
		// A record librdkafka fails because another failed first (the
		// transaction must be aborted: it purges the records still
		// queued, ERR__PURGE_QUEUE, and fails those produced after,
		// ERR__STATE) is kept for the transaction Commit commits, as
		// with franz-go it would be in the open one: acknowledged, as a
		// record of a transaction is, until its commit. Not once Close
		// purged it.
		err, queued := unwrapNotQueued(err)
		kept := err != nil && !t.closed.Load() && failedForAnother(err)
		t.mu.Lock()
		tr.ok, tr.err = err == nil || kept, err
		if err != nil && tr.gen == t.gen && (queued || kept) {
			// Not a record librdkafka refused at once (queue full, say),
			// which leaves the transaction as it was; nor one of a
			// transaction already ended, whose failure says nothing of
			// the open one.
			t.failLocked()
		}
		t.mu.Unlock()
		if kept {
			err = nil
		}
		done(r, err)
	})
}

// failedForAnother reports whether err is librdkafka's failure of a
// transactional record for another record's failure: the transaction must
// be aborted, so it purged the record from its queue or refused it.
func failedForAnother(err error) bool {
	var ke kafka.Error
	if !errors.As(err, &ke) {
		return false
	}
	switch ke.Code() {
	case kafka.ErrState, kafka.ErrPurgeQueue, kafka.ErrPurgeInflight:
		return true
	}
	return false
}

// failLocked records that a record of the open transaction failed. t.mu
// must be held.
func (t *TxnProducer) failLocked() {
	if !t.failed {
		t.failed = true
		close(t.failedCh)
	}
}

// Flush waits until every record produced so far was acknowledged or
// failed (its done has returned), or ctx ends.
//
// librdkafka sends no record of a transaction that failed (it must be
// aborted) and purges its queues then; but a record whose produce call
// passed librdkafka's check of the transaction's state just before the
// failure enters its queue just after that purge, and stays there unsent
// until message.timeout.ms (seen about once in 50 runs of
// TxnRefusedRecordLeftOut: Flush waited 60 s for it, and the exactly-once
// worker's flush would fail). So once a record of the transaction failed
// in librdkafka, Flush purges librdkafka's queues of records not yet sent,
// and again every stuckPurgeInterval while it waits, should one more enter
// a queue after that: a record purged is reported ERR__PURGE_QUEUE, kept
// for the next transaction like the others. Flush purges only while it
// runs and the transaction it waits for is open (the part of a purge that
// librdkafka's broker threads do may end just after it returns), so no
// record of the next transaction is purged: Produce does not run
// concurrently with Flush, and a failure reported for a record of an
// earlier transaction is not taken for one of the open transaction.
func (t *TxnProducer) Flush(ctx context.Context) error {
	if t.closed.Load() {
		return kafkaclient.ErrClosed
	}
	zero := t.c.zeroed(&t.p.outstanding)
	if zero == nil {
		return nil
	}
	stop := make(chan struct{})
	defer close(stop)
	t.p.nudge(stop)
	t.mu.Lock()
	failed := t.failedCh
	t.mu.Unlock()
	select {
	case <-zero:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-failed:
	}
	tick := time.NewTicker(stuckPurgeInterval)
	defer tick.Stop()
	for {
		t.purgeQueued()
		select {
		case <-zero:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// purgeQueued purges librdkafka's queues of the records not yet sent, as
// librdkafka does itself when a transaction fails: they are reported
// ERR__PURGE_QUEUE.
func (t *TxnProducer) purgeQueued() {
	_ = t.p.p.Purge(kafka.PurgeQueue | kafka.PurgeNonBlocking | purgeAbortTxn)
}

// purgeAbortTxn is librdkafka's RD_KAFKA_PURGE_F_ABORT_TXN (rdkafka_int.h;
// rd_kafka_purge accepts it): the flag of its own purges of a transaction
// that must be aborted, which moves each partition's idempotence base
// message id past the records purged. Without it, those records' ids,
// never sent, would leave a gap in the partition's sequence numbers, and
// the broker would refuse the next transaction's first records
// (OUT_OF_ORDER_SEQUENCE_NUMBER). TestTxnPurgeLeavesNoSequenceGap checks
// it against the librdkafka this module builds with.
const purgeAbortTxn = 0x100

// stuckPurgeInterval is how often Flush purges again while it waits for
// the records of a failed transaction.
const stuckPurgeInterval = 100 * time.Millisecond

// Commit sends offsets to the transaction as gr's group offsets, commits the
// transaction and begins the next one.
func (t *TxnProducer) Commit(ctx context.Context, gr kafkaclient.GroupReader, offsets []kafkaclient.TopicPartitionOffset) error {
	if t.closed.Load() {
		return kafkaclient.ErrClosed
	}
	err := t.commit(ctx, gr, offsets)
	var ke kafka.Error
	if err != nil && errors.As(err, &ke) && ke.TxnRequiresAbort() && t.settled(ctx) {
		// A record failed, and librdkafka will not commit the others
		// without it: they go into the next transaction.
		err = t.commitAgain(ctx, gr, offsets, err)
	}
	if err != nil {
		return groupMovedErr(err)
	}
	t.reset()
	if err := t.p.p.BeginTransaction(); err != nil {
		return fmt.Errorf("confluent: begin transaction: %w", err)
	}
	return nil
}

// groupMovedErr returns err, wrapping kafkaclient.ErrGroupMoved too when
// the group coordinator refused the commit because the group moved to a
// new generation (or the member is no longer in it) since the consumer
// group metadata the commit carried.
func groupMovedErr(err error) error {
	var ke kafka.Error
	if !errors.As(err, &ke) {
		return err
	}
	switch ke.Code() {
	case kafka.ErrIllegalGeneration, kafka.ErrUnknownMemberID, kafka.ErrRebalanceInProgress,
		kafka.ErrFencedMemberEpoch, kafka.ErrStaleMemberEpoch:
		return fmt.Errorf("%w (%w)", err, kafkaclient.ErrGroupMoved)
	}
	return err
}

// commit adds offsets to the open transaction and commits it.
func (t *TxnProducer) commit(ctx context.Context, gr kafkaclient.GroupReader, offsets []kafkaclient.TopicPartitionOffset) error {
	if len(offsets) > 0 {
		g, ok := gr.(*GroupReader)
		if !ok {
			return fmt.Errorf("confluent: Commit needs a group reader of this client, got %T", gr)
		}
		meta, err := g.kc.GetConsumerGroupMetadata()
		if err != nil {
			return fmt.Errorf("confluent: consumer group metadata: %w", err)
		}
		tps := make([]kafka.TopicPartition, len(offsets))
		for i, o := range offsets {
			topic := o.Topic
			tps[i] = kafka.TopicPartition{Topic: &topic, Partition: o.Partition, Offset: kafka.Offset(o.Offset)}
		}
		if err := t.p.p.SendOffsetsToTransaction(ctx, tps, meta); err != nil {
			return fmt.Errorf("confluent: send offsets to transaction: %w", err)
		}
	}
	if err := t.p.p.CommitTransaction(ctx); err != nil {
		return fmt.Errorf("confluent: commit transaction: %w", err)
	}
	return nil
}

// settled waits for the delivery reports of the open transaction's
// records (a Commit without a Flush before it: librdkafka's commit flushes
// its records, but their reports may not have reached done yet), so that
// which were acknowledged is known, and reports whether one of them
// failed. A report that came later would say a record left out of the
// next transaction was acknowledged.
func (t *TxnProducer) settled(ctx context.Context) bool {
	if t.Flush(ctx) != nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// commitAgain aborts the open transaction, which failed (cause) because a
// record of it failed, produces its acknowledged records into a new one
// and commits that with offsets. It returns cause when a record fails
// again: the new transaction is left for the caller to abort.
func (t *TxnProducer) commitAgain(ctx context.Context, gr kafkaclient.GroupReader, offsets []kafkaclient.TopicPartitionOffset, cause error) error {
	t.mu.Lock()
	var again []*kafkaclient.Record
	for _, tr := range t.open {
		if tr.ok {
			again = append(again, tr.r)
		}
	}
	t.mu.Unlock()
	t.reset()
	// librdkafka may still fail the records of the new transaction for the
	// old one's failure (ERR__STATE or ERR__PURGE_QUEUE: its abort's
	// aftermath, seen about once in 30 runs of TxnRefusedRecordLeftOut):
	// those are not refusals of the records, which are then produced again
	// into a transaction begun anew, a bounded number of times.
	for attempt := 1; ; attempt++ {
		err := t.produceAgain(ctx, again)
		if err == nil {
			break
		}
		if attempt == commitAgainAttempts || !failedForAnother(err) || ctx.Err() != nil {
			return fmt.Errorf("%w (producing the acknowledged records again: %v)", cause, err)
		}
	}
	if err := t.commit(ctx, gr, offsets); err != nil {
		return fmt.Errorf("%w (committing the acknowledged records again: %v)", cause, err)
	}
	return nil
}

// commitAgainAttempts bounds commitAgain's tries of producing the
// acknowledged records again.
const commitAgainAttempts = 3

// produceAgain aborts the open transaction, begins the next and produces
// recs into it, waiting for their acknowledgements: the first failure, or
// nil.
func (t *TxnProducer) produceAgain(ctx context.Context, recs []*kafkaclient.Record) error {
	if err := t.p.p.AbortTransaction(ctx); err != nil {
		return fmt.Errorf("aborting it: %w", err)
	}
	if err := t.p.p.BeginTransaction(); err != nil {
		return fmt.Errorf("beginning the next: %w", err)
	}
	t.reset()
	t.mu.Lock()
	gen := t.gen
	t.mu.Unlock()
	var refused atomic.Pointer[error]
	for _, r := range recs {
		t.c.produceOn(t.p, r, nil, func(_ *kafkaclient.Record, err error) {
			err, queued := unwrapNotQueued(err)
			if err != nil {
				refused.CompareAndSwap(nil, &err)
				t.mu.Lock()
				if gen == t.gen && (queued || failedForAnother(err)) {
					t.failLocked() // for Flush's purge of the others
				}
				t.mu.Unlock()
			}
		})
	}
	if err := t.Flush(ctx); err != nil {
		return err
	}
	if p := refused.Load(); p != nil {
		return *p
	}
	return nil
}

// reset forgets the records of the open transaction.
func (t *TxnProducer) reset() {
	t.mu.Lock()
	clear(t.open)
	t.open = t.open[:0]
	t.gen++
	if t.failed {
		t.failed, t.failedCh = false, make(chan struct{})
	}
	t.mu.Unlock()
}

// Abort aborts the open transaction and begins the next one.
func (t *TxnProducer) Abort(ctx context.Context) error {
	if t.closed.Load() {
		return kafkaclient.ErrClosed
	}
	t.reset()
	if err := t.p.p.AbortTransaction(ctx); err != nil {
		return fmt.Errorf("confluent: abort transaction: %w", err)
	}
	if err := t.p.p.BeginTransaction(); err != nil {
		return fmt.Errorf("confluent: begin transaction: %w", err)
	}
	return nil
}

// Close aborts the open transaction (bounded by the client's close timeout)
// and releases the producer. Calls made after Close fail with
// kafkaclient.ErrClosed (Produce through done); Close again returns nil.
func (t *TxnProducer) Close() error {
	if !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.c.opts.flushTimeout)
	defer cancel()
	err := t.p.p.AbortTransaction(ctx)
	if err != nil {
		// The abort could not flush: purge what is left, so that its
		// delivery reports come before the producer is destroyed.
		_ = t.p.p.Purge(kafka.PurgeQueue | kafka.PurgeInFlight | kafka.PurgeNonBlocking)
		pctx, pcancel := context.WithTimeout(context.Background(), time.Second)
		_ = t.c.wait(pctx, &t.p.outstanding)
		pcancel()
	}
	t.p.users.Wait() // a flush helper still running (linger.ms > 0)
	t.p.close()
	// Destroying a producer drops the delivery reports still queued:
	// the records they were for fail here, so that every done is called.
	t.c.failLeft(t.p)
	if err != nil {
		return fmt.Errorf("confluent: abort transaction on close: %w", err)
	}
	return nil
}

// failLeft calls done, with kafkaclient.ErrClosed, for every record of p
// (closed) whose delivery report never came.
func (c *Client) failLeft(p *producer) {
	c.pendMu.Lock()
	var left []*pending
	for pd := range c.pending {
		if pd.p == p {
			left = append(left, pd)
		}
	}
	c.pendMu.Unlock()
	for _, pd := range left {
		c.finish(pd, kafkaclient.ErrClosed)
	}
}
