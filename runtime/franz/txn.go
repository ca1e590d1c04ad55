package franz

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TxnProducer implements kafkaclient.TxnProducer on a kgo client with a
// transactional id (idempotent, acks=all), separate from the group reader
// whose offsets it commits. See kafkaclient.TxnProducer for which methods
// may run concurrently.
//
// kgo ties transactional offset commits to a group consumed by the same kgo
// client (GroupTransactSession); the seam keeps the group reader apart, so
// Commit sends the offsets itself: AddOffsetsToTxn, then TxnOffsetCommit
// with the group reader's member id and generation (so that a fenced member
// cannot commit), then kgo's EndTransaction. A commit that carries offsets
// but no record is done as a plain synchronous group commit instead: with
// nothing produced, kgo has no transaction to end, and there are no records
// the offsets must be atomic with.
//
// Close a TxnProducer before the Client that made it.
type TxnProducer struct {
	c        *Client
	kc       *kgo.Client
	id       string
	pending  tracker
	produced atomic.Bool // a record was produced in the open transaction
	closed   atomic.Bool // Close was called: every later call fails with kafkaclient.ErrClosed

	idMu sync.Mutex
	ids  map[string][16]byte // topic ids, for TxnOffsetCommit v6 and later
}

var _ kafkaclient.TxnProducer = (*TxnProducer)(nil)
var _ kafkaclient.TxnClient = (*Client)(nil)

// txnInitTimeout bounds the producer id initialisation done by
// NewTxnProducer, which waits for the coordinator and fences a previous
// producer with the same transactional id.
const txnInitTimeout = 60 * time.Second

// NewTxnProducer creates a kgo client with the producer defaults of New,
// acks=all and kgo.TransactionalID(transactionalID), initialises its
// producer id (fencing an earlier instance with the same id: its open
// transaction is aborted) and opens its first transaction. It waits up to a
// minute for a broker that is not reachable yet or a coordinator that is
// not ready, as the confluent client does.
func (c *Client) NewTxnProducer(transactionalID string) (kafkaclient.TxnProducer, error) {
	if transactionalID == "" {
		return nil, errors.New("franz: a transactional producer needs a transactional id")
	}
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if closed {
		return nil, kafkaclient.ErrClosed
	}
	opts := append(c.producerOpts(kafkaclient.AcksAll, true), kgo.TransactionalID(transactionalID))
	kc, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("franz: new transactional producer: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), txnInitTimeout)
	defer cancel()
	if err := initProducerID(ctx, kc); err != nil {
		kc.Close()
		return nil, fmt.Errorf("franz: init transactions (transactional id %s): %w", transactionalID, err)
	}
	if err := kc.BeginTransaction(); err != nil {
		kc.Close()
		return nil, fmt.Errorf("franz: begin transaction: %w", err)
	}
	return &TxnProducer{c: c, kc: kc, id: transactionalID}, nil
}

// initProducerID initialises kc's producer id, asking again, with a
// backoff, after a failure that may pass (a broker not reachable yet, a
// coordinator not ready) until ctx ends; kgo gives up at the first refused
// dial, while librdkafka keeps trying. An error Kafka says asking again
// cannot cure (TRANSACTIONAL_ID_AUTHORIZATION_FAILED...) is returned at
// once.
func initProducerID(ctx context.Context, kc *kgo.Client) error {
	backoff := 100 * time.Millisecond
	for {
		_, _, err := kc.ProducerID(ctx)
		if err == nil {
			return nil
		}
		var ke *kerr.Error
		if errors.As(err, &ke) && !ke.Retriable {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

// Produce enqueues r in the open transaction; done is called once with the
// delivery result, as for Client.Produce with AcksAll.
func (t *TxnProducer) Produce(r *kafkaclient.Record, done func(*kafkaclient.Record, error)) {
	if done == nil {
		done = func(*kafkaclient.Record, error) {}
	}
	if r == nil {
		go done(nil, errors.New("franz: Produce of a nil record"))
		return
	}
	if t.closed.Load() {
		go done(r, kafkaclient.ErrClosed)
		return
	}
	t.produced.Store(true)
	t.c.produceOn(t.kc, &t.pending, r, kafkaclient.AcksAll, done)
}

// Flush waits until every record produced so far was acknowledged (in the
// open transaction) and its done callback returned, or ctx ends.
func (t *TxnProducer) Flush(ctx context.Context) error {
	if t.closed.Load() {
		return kafkaclient.ErrClosed
	}
	if err := t.kc.Flush(ctx); err != nil {
		return err
	}
	return t.pending.wait(ctx)
}

// Commit adds offsets as gr's group offsets to the open transaction,
// commits it, and opens the next one. gr must be a group reader of the same
// Client. Records still buffered are flushed first.
func (t *TxnProducer) Commit(ctx context.Context, gr kafkaclient.GroupReader, offsets []kafkaclient.TopicPartitionOffset) error {
	if t.closed.Load() {
		return kafkaclient.ErrClosed
	}
	if err := t.Flush(ctx); err != nil {
		return fmt.Errorf("franz: commit transaction: flush: %w", err)
	}
	if len(offsets) > 0 {
		g, ok := gr.(*GroupReader)
		if !ok {
			return fmt.Errorf("franz: Commit needs a group reader of this client, got %T", gr)
		}
		if !t.produced.Load() {
			if err := g.Commit(ctx, offsets); err != nil {
				return groupMovedErr(fmt.Errorf("franz: commit offsets of an empty transaction: %w", err))
			}
		} else if err := t.sendOffsets(ctx, g, offsets); err != nil {
			return groupMovedErr(err)
		}
	}
	if err := t.kc.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return fmt.Errorf("franz: commit transaction: %w", err)
	}
	return t.begin()
}

// groupMovedErr returns err, wrapping kafkaclient.ErrGroupMoved too when
// the group coordinator refused the commit because the group moved to a
// new generation (or the member is no longer in it) since the member's
// metadata the commit carried.
func groupMovedErr(err error) error {
	for _, moved := range []error{kerr.IllegalGeneration, kerr.UnknownMemberID, kerr.RebalanceInProgress,
		kerr.FencedMemberEpoch, kerr.StaleMemberEpoch} {
		if errors.Is(err, moved) {
			return fmt.Errorf("%w (%w)", err, kafkaclient.ErrGroupMoved)
		}
	}
	return err
}

func (t *TxnProducer) begin() error {
	t.produced.Store(false)
	if err := t.kc.BeginTransaction(); err != nil {
		return fmt.Errorf("franz: begin transaction: %w", err)
	}
	return nil
}

// sendOffsets adds the group to the transaction and commits offsets in it
// for g's current member and generation.
// It is one function: the request, its per-partition errors and the
// retriable ones, in the order the protocol needs them.
func (t *TxnProducer) sendOffsets(ctx context.Context, g *GroupReader, offsets []kafkaclient.TopicPartitionOffset) error {
	id, epoch, err := t.kc.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("franz: send offsets to transaction: producer id: %w", err)
	}
	add := kmsg.NewPtrAddOffsetsToTxnRequest()
	add.TransactionalID = t.id
	add.ProducerID = id
	add.ProducerEpoch = epoch
	add.Group = g.cfg.GroupID
	addResp, err := add.RequestWith(ctx, t.kc)
	if err == nil {
		err = kerr.ErrorForCode(addResp.ErrorCode)
	}
	if err != nil {
		return fmt.Errorf("franz: add offsets of group %s to transaction: %w", g.cfg.GroupID, err)
	}

	topics := make([]string, 0, len(offsets))
	for _, o := range offsets {
		topics = append(topics, o.Topic)
	}
	ids, err := t.topicIDs(ctx, topics)
	if err != nil {
		return err
	}
	memberID, generation := g.kc.GroupMetadata()
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	req.TransactionalID = t.id
	req.Group = g.cfg.GroupID
	req.ProducerID = id
	req.ProducerEpoch = epoch
	req.MemberID = memberID
	req.Generation = generation
	byTopic := map[string]int{}
	for _, o := range offsets {
		i, ok := byTopic[o.Topic]
		if !ok {
			rt := kmsg.NewTxnOffsetCommitRequestTopic()
			rt.Topic = o.Topic
			rt.TopicID = ids[o.Topic]
			req.Topics = append(req.Topics, rt)
			i = len(req.Topics) - 1
			byTopic[o.Topic] = i
		}
		rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		rp.Partition = o.Partition
		rp.Offset = o.Offset
		rp.LeaderEpoch = -1
		req.Topics[i].Partitions = append(req.Topics[i].Partitions, rp)
	}
	resp, err := req.RequestWith(ctx, t.kc)
	if err != nil {
		return fmt.Errorf("franz: commit offsets of group %s in transaction: %w", g.cfg.GroupID, err)
	}
	var errs []error
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
				errs = append(errs, fmt.Errorf("franz: commit %s[%d] of group %s in transaction: %w", rt.Topic, rp.Partition, g.cfg.GroupID, err))
			}
		}
	}
	return errors.Join(errs...)
}

// topicIDs returns the ids of topics, asking the cluster for those not
// known yet (recent TxnOffsetCommit versions name topics by id).
func (t *TxnProducer) topicIDs(ctx context.Context, topics []string) (map[string][16]byte, error) {
	t.idMu.Lock()
	defer t.idMu.Unlock()
	if t.ids == nil {
		t.ids = make(map[string][16]byte)
	}
	req := kmsg.NewPtrMetadataRequest()
	for _, topic := range topics {
		if _, ok := t.ids[topic]; !ok {
			rt := kmsg.NewMetadataRequestTopic()
			rt.Topic = kmsg.StringPtr(topic)
			req.Topics = append(req.Topics, rt)
		}
	}
	if len(req.Topics) > 0 {
		resp, err := req.RequestWith(ctx, t.kc)
		if err != nil {
			return nil, fmt.Errorf("franz: metadata of %v: %w", topics, err)
		}
		for _, rt := range resp.Topics {
			if rt.Topic != nil && kerr.ErrorForCode(rt.ErrorCode) == nil {
				t.ids[*rt.Topic] = rt.TopicID
			}
		}
	}
	out := make(map[string][16]byte, len(topics))
	for _, topic := range topics {
		out[topic] = t.ids[topic]
	}
	return out, nil
}

// Abort fails the records still buffered, aborts the open transaction and
// opens the next one.
func (t *TxnProducer) Abort(ctx context.Context) error {
	if t.closed.Load() {
		return kafkaclient.ErrClosed
	}
	if err := t.kc.AbortBufferedRecords(ctx); err != nil {
		return fmt.Errorf("franz: abort transaction: %w", err)
	}
	if err := t.kc.EndTransaction(ctx, kgo.TryAbort); err != nil {
		return fmt.Errorf("franz: abort transaction: %w", err)
	}
	return t.begin()
}

// Close aborts the open transaction (bounded by the client's close timeout)
// and closes the kgo client. Calls made after Close fail with
// kafkaclient.ErrClosed (Produce through done); Close again returns nil.
func (t *TxnProducer) Close() error {
	if !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.c.opts.closeTimeout)
	defer cancel()
	err := t.kc.AbortBufferedRecords(ctx)
	if err == nil {
		err = t.kc.EndTransaction(ctx, kgo.TryAbort)
	}
	t.kc.Close()
	wctx, wcancel := context.WithTimeout(context.Background(), time.Second)
	_ = t.pending.wait(wctx)
	wcancel()
	if err != nil {
		return fmt.Errorf("franz: abort transaction on close: %w", err)
	}
	return nil
}
