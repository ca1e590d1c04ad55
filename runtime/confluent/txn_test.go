package confluent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestTxnPurgeLeavesNoSequenceGap: records the transactional producer
// purges from librdkafka's queue (as Flush does once a transaction failed)
// leave no gap in the partition's idempotence sequence: after the abort,
// the next transaction's records are accepted and commit. Without
// purgeAbortTxn the broker refuses the next record's sequence
// (OUT_OF_ORDER_SEQUENCE_NUMBER), and librdkafka fails that transaction
// and purges the record (ERR__PURGE_QUEUE).
func TestTxnPurgeLeavesNoSequenceGap(t *testing.T) {
	e, txn, ctx := newTxnEnv(t, "seq", nil)
	produce := func(v string) chan error {
		ch := make(chan error, 1)
		txn.Produce(&kafkaclient.Record{Topic: "seq", Partition: 0, Value: []byte(v)}, func(_ *kafkaclient.Record, err error) { ch <- err })
		return ch
	}
	// One record sent first: the partition is in the transaction, with a
	// sequence begun.
	sent := produce("sent")
	if err := txn.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	var queued []chan error
	for i := range 3 {
		queued = append(queued, produce(fmt.Sprint("queued ", i)))
	}
	txn.purgeQueued()
	for _, ch := range queued {
		// Purged: kept, reported acknowledged, for the next transaction.
		if err := <-ch; err != nil {
			t.Fatalf("a purged record's delivery: %v, want it kept", err)
		}
	}
	if err := txn.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	flushAndCommit(t, ctx, txn, produceRaw(e, txn, "seq", "next"))
}

// TestTxnAbortedRecordsDoNotFailTheNext: the records an Abort purges from
// librdkafka's queue are reported failed after the next transaction began
// (ERR__PURGE_QUEUE); that must not make the next transaction one that
// failed, whose Flush would purge its records too.
func TestTxnAbortedRecordsDoNotFailTheNext(t *testing.T) {
	e, txn, ctx := newTxnEnv(t, "aborted", nil)
	var aborted []chan error
	for i := range 3 {
		ch := make(chan error, 1)
		txn.Produce(&kafkaclient.Record{Topic: "aborted", Partition: 0, Value: fmt.Append(nil, i)}, func(_ *kafkaclient.Record, err error) { ch <- err })
		aborted = append(aborted, ch)
	}
	if err := txn.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ch := range aborted {
		<-ch // reported after the next transaction began
	}
	flushAndCommit(t, ctx, txn, produceRaw(e, txn, "aborted", "next"))
}

// TestTxnRecordRefusedAtOnceLeavesTransaction: a record librdkafka refuses
// when it is produced (its queue is full), never queued, fails alone and
// leaves the transaction as it was: the others are sent and commit, none
// purged for it.
func TestTxnRecordRefusedAtOnceLeavesTransaction(t *testing.T) {
	e, txn, ctx := newTxnEnv(t, "full", Config{"queue.buffering.max.messages": 1})
	queued := produceRaw(e, txn, "full", "queued")
	refused := make(chan error, 1)
	txn.Produce(&kafkaclient.Record{Topic: "full", Partition: 0, Value: []byte("refused")}, func(_ *kafkaclient.Record, err error) { refused <- err })
	if err := <-refused; !errors.Is(err, ErrQueueFull) {
		t.Fatalf("the record produced into a full queue: %v, want an error wrapping ErrQueueFull", err)
	}
	flushAndCommit(t, ctx, txn, queued)
}

// newTxnEnv returns an embedded broker's client with producer linger.ms
// 10 s (records stay queued until a flush) plus prodCfg, a topic of one
// partition, and a transactional producer, closed at the test's end.
func newTxnEnv(t *testing.T, topic string, prodCfg Config) (*env, *TxnProducer, context.Context) {
	t.Helper()
	cfg := Config{"linger.ms": 10000}
	maps.Copy(cfg, prodCfg)
	e := newEnv(t, nil, WithProducerConfig(cfg))
	e.createTopic(t, topic, 1)
	tp, err := e.client.NewTxnProducer(topic + "-txn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Close() })
	return e, tp.(*TxnProducer), ctxT(t, 60*time.Second)
}

// produceRaw produces a record of value to partition 0 of topic with txn's
// producer, past TxnProducer's keeping of records failed for another: the
// channel gets the broker's answer itself (a purge fails it).
func produceRaw(e *env, txn *TxnProducer, topic, value string) chan error {
	ch := make(chan error, 1)
	e.client.produceOn(txn.p, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte(value)}, nil, func(_ *kafkaclient.Record, err error) { ch <- err })
	return ch
}

// flushAndCommit flushes txn, checks that the record whose answer ch gets
// was acknowledged, and commits.
func flushAndCommit(t *testing.T, ctx context.Context, txn *TxnProducer, ch chan error) {
	t.Helper()
	if err := txn.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-ch; err != nil {
		t.Fatalf("the record produced: %v", err)
	}
	if err := txn.Commit(ctx, nil, nil); err != nil {
		t.Fatalf("the commit: %v", err)
	}
}
