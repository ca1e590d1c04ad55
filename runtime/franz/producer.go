package franz

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// ErrQueueFull is reported through done when the producer client already
// buffers its maximum of records (kgo.MaxBufferedRecords, default 50000) or
// bytes (kgo.MaxBufferedBytes): the cluster is not keeping up, or is
// unreachable. The record was not sent. It wraps kgo.ErrMaxBuffered.
var ErrQueueFull = fmt.Errorf("franz: local produce buffer is full: %w", kgo.ErrMaxBuffered)

// useProducer returns the kgo client for acks, creating it on first use,
// with c.mu held shared: the caller must call c.mu.RUnlock() when done.
func (c *Client) useProducer(acks kafkaclient.Acks) (*kgo.Client, error) {
	if acks != kafkaclient.AcksAll && acks != kafkaclient.AcksLeader && acks != kafkaclient.AcksNone {
		return nil, fmt.Errorf("franz: unknown acks level %d", acks)
	}
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return nil, kafkaclient.ErrClosed
	}
	if p := c.producers[acks]; p != nil {
		return p, nil
	}
	c.mu.RUnlock()

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, kafkaclient.ErrClosed
	}
	if c.producers[acks] == nil {
		p, err := kgo.NewClient(c.producerOpts(acks, false)...)
		if err != nil {
			c.mu.Unlock()
			return nil, fmt.Errorf("franz: new producer (acks=%s): %w", acks, err)
		}
		c.producers[acks] = p
		// Unless a kgo.ProducerLinger of the caller's replaced the load
		// linger, the producer lingers only under load.
		d := c.lingerOf(false)
		c.loadLinger[acks] = d > 0 && p.OptValue(kgo.ProducerLinger) == d
	}
	p := c.producers[acks]
	c.mu.Unlock()
	// Between Unlock and RLock only Close can intervene; check again.
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return nil, kafkaclient.ErrClosed
	}
	return p, nil
}

// manualKey marks, as a value of kgo.Record.Context, a record whose
// Partition was chosen by the caller.
type manualKey struct{}

var manualBackground = context.WithValue(context.Background(), manualKey{}, true)

func isManual(r *kgo.Record) bool { return r.Context != nil && r.Context.Value(manualKey{}) != nil }

// deadlines hands out the contexts that bound a record's delivery: they end
// the delivery timeout after the record was produced. kgo's own
// RecordDeliveryTimeout counts from the record's Timestamp, which the
// caller may set to any time (a record stamped an hour ago would fail at
// once), so the timeout travels in the record's context instead; records
// produced within the same slice (1/100 of the timeout, at least 10ms, at
// most 1s) share one context and its timer.
type deadlines struct {
	timeout, slice time.Duration
	cur            atomic.Pointer[deadlineSlice]
	mu             sync.Mutex
}

type deadlineSlice struct {
	end          time.Time // records produced before end use this slice
	auto, manual context.Context
	cancel       context.CancelFunc // never needed: the deadline releases it
}

func newDeadlines(timeout time.Duration) *deadlines {
	return &deadlines{timeout: timeout, slice: min(max(timeout/100, 10*time.Millisecond), time.Second)}
}

// ctx returns the context of a record produced at now.
func (d *deadlines) ctx(now time.Time, manual bool) context.Context {
	if d.timeout <= 0 {
		if manual {
			return manualBackground
		}
		return context.Background()
	}
	s := d.cur.Load()
	if s == nil || !now.Before(s.end) {
		s = d.next(now)
	}
	if manual {
		return s.manual
	}
	return s.auto
}

func (d *deadlines) next(now time.Time) *deadlineSlice {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.cur.Load(); s != nil && now.Before(s.end) {
		return s
	}
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(d.timeout))
	s := &deadlineSlice{end: now.Add(d.slice), auto: ctx, manual: context.WithValue(ctx, manualKey{}, true), cancel: cancel}
	d.cur.Store(s)
	return s
}

// Produce hands r to the kgo client of the given acks level and returns at
// once; done is called exactly once, from kgo's promise goroutine (or, for a
// record refused before it reached kgo, from a goroutine of its own, which
// Flush waits for too), with r
// (Partition and Offset filled in; Offset -1 with AcksNone) or the error
// that failed it. r and its slices belong to the client until done is
// called: kgo encodes Key, Value and header values from them without
// copying.
//
// A zero r.Timestamp is set to time.Now() (kgo keeps milliseconds). A nil
// r.Value is produced as a tombstone (null value); an empty non-nil Value
// as an empty value; the same holds for keys and header values. r.Partition
// kafkaclient.AnyPartition picks the partition from the key with Kafka's
// Java murmur2 partitioner. Header order is kept.
//
// A record not delivered within the delivery timeout (WithDeliveryTimeout,
// default 2 minutes) fails, also when a request carrying it was already
// sent (the broker may then have stored it: the same as librdkafka's
// message.timeout.ms). Produce never blocks on the network: when the client
// already buffers its maximum of records it reports ErrQueueFull through
// done. Safe for
// concurrent use; records with the same key and acks level keep their order.
func (c *Client) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if done == nil {
		done = func(*kafkaclient.Record, error) {}
	}
	if r == nil {
		c.pending.failLocal(nil, errors.New("franz: Produce of a nil record"), done)
		return
	}
	p, err := c.useProducer(acks)
	if err != nil {
		c.pending.failLocal(r, err, done)
		return
	}
	defer c.mu.RUnlock()

	c.produceOn(p, &c.pending, r, acks, done)
}

// produceOn hands r to p, counting it in tr until done has returned.
func (c *Client) produceOn(p *kgo.Client, tr *tracker, r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	now := time.Now()
	if r.Timestamp.IsZero() {
		r.Timestamp = now
	}
	ctx := c.deadlines.ctx(now, r.Partition >= 0)
	f := inflights.Get().(*inflight)
	f.r, f.acks, f.tr, f.done, f.c, f.kc = r, acks, tr, done, c, p
	f.kr = kgo.Record{
		Topic:     r.Topic,
		Key:       r.Key,
		Value:     r.Value,
		Timestamp: r.Timestamp,
		Partition: r.Partition,
		Headers:   asKgoHeaders(r.Headers),
		Context:   ctx,
	}
	tr.add()
	p.TryProduce(ctx, &f.kr, delivered)
	if tr == &c.pending && c.loadLinger[acks] {
		c.unlinger[acks].keep(p, tr.outstanding.Load())
	}
}

// asKgoHeaders returns hs as kgo's headers, sharing their memory: kgo only
// reads a produced record's headers, which belong to the client until the
// record's done is called (Produce), and kafkaclient.Header and
// kgo.RecordHeader have the same underlying type (checked at compile time
// below), so the same layout. Copying them into kgo's type
// was a loop of pointer writes per header, four records a unary call, and
// 320 bytes of every inflight. Capacity is length: an append (a hook's) copies.
func asKgoHeaders(hs []kafkaclient.Header) []kgo.RecordHeader {
	if len(hs) == 0 {
		return nil
	}
	return unsafe.Slice((*kgo.RecordHeader)(unsafe.Pointer(unsafe.SliceData(hs))), len(hs))
}

// asHeaders is asKgoHeaders the other way: a consumed record's headers,
// which kgo allocates for each record and never touches again once
// PollRecords returned it, become the kafkaclient.Record's.
func asHeaders(hs []kgo.RecordHeader) []kafkaclient.Header {
	if len(hs) == 0 {
		return nil
	}
	return unsafe.Slice((*kafkaclient.Header)(unsafe.Pointer(unsafe.SliceData(hs))), len(hs))
}

// This compiles only while kafkaclient.Header and kgo.RecordHeader convert
// into each other, that is, have the same underlying type.
var _ = kgo.RecordHeader(kafkaclient.Header{})

// inflight is one record handed to kgo, with what its promise needs, in
// one value; the kgo record's headers are the record's own (asKgoHeaders). kgo is given
// &f.kr, and delivered, a function without captures, finds f from it
// (inflightOf).
//
// Inflights are recycled through the inflights pool: delivered puts one
// back once kgo has called its promise, after which kgo no longer touches
// the *kgo.Record (franz-go v1.22: finishRecordPromise reads the record's
// size before the promise and only counters after it; a batch's records
// are taken out of the batch, under its lock, before their promises run,
// and a request being written skips a batch without records). The contexts
// kgo keeps beyond a promise (the produce context and the record's
// Context, which it may wait on for a new topic's metadata or for a whole
// produce request) are the shared, immutable delivery contexts of
// deadlines, never the inflight. The caller's done gets the
// kafkaclient.Record, never the inflight; a record whose promise never
// runs is simply not recycled. Hooks passed with WithProducerOpts
// (kgo.WithHooks) must not keep the *kgo.Record they are given after they
// return.
type inflight struct {
	kr   kgo.Record
	r    *kafkaclient.Record
	acks kafkaclient.Acks
	tr   *tracker
	done func(*kafkaclient.Record, error)
	c    *Client
	kc   *kgo.Client // the producer it went to
}

var inflights = sync.Pool{New: func() any { return new(inflight) }}

// inflightOf returns the inflight whose kr field kr is: every record
// produceOn gives kgo is one, and kgo hands the promise the same pointer.
func inflightOf(kr *kgo.Record) *inflight {
	return (*inflight)(unsafe.Add(unsafe.Pointer(kr), -int(unsafe.Offsetof(inflight{}.kr))))
}

// release clears f, so that the pool keeps no record, key, value or
// callback alive, and puts it back in the pool.
func (f *inflight) release() {
	f.kr, f.r, f.tr, f.done = kgo.Record{}, nil, nil, nil
	inflights.Put(f)
}

// delivered is the promise of every record produced: it reports the
// outcome to the record's done callback. It recycles the inflight before
// calling done: nothing reads it afterwards.
func delivered(kr *kgo.Record, err error) {
	f := inflightOf(kr)
	r, acks, tr, done, c, kc := f.r, f.acks, f.tr, f.done, f.c, f.kc
	partition, offset := kr.Partition, kr.Offset
	f.release()
	if err != nil {
		if errors.Is(err, kerr.UnknownTopicID) {
			c.forgetTopic(kc, r.Topic)
		}
		if errors.Is(err, kgo.ErrMaxBuffered) {
			err = ErrQueueFull
		} else if errors.Is(err, kerr.UnknownTopicOrPartition) {
			err = fmt.Errorf("franz: produce to %s partition %d: %w (%w)", r.Topic, partition, kafkaclient.ErrUnknownTopic, err)
		} else if errors.Is(err, kerr.TopicAuthorizationFailed) {
			err = fmt.Errorf("franz: produce to %s partition %d: %w (%w)", r.Topic, partition, kafkaclient.ErrNotAuthorized, err)
		} else if errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
			err = fmt.Errorf("franz: produce to %s partition %d: %w (%w)", r.Topic, partition, kafkaclient.ErrRecordTooLarge, err)
		} else if refused(err) {
			err = fmt.Errorf("franz: produce to %s partition %d: %w (%w)", r.Topic, partition, kafkaclient.ErrRecordRefused, err)
		} else {
			err = fmt.Errorf("franz: produce to %s partition %d: %w", r.Topic, partition, err)
		}
	} else {
		r.Partition = partition
		r.Offset = offset
		if acks == kafkaclient.AcksNone || r.Offset < 0 {
			r.Offset = -1 // not known
		}
	}
	done(r, err)
	tr.finish()
}

// tracker counts records whose done callback has not returned yet, and lets
// Flush and Close wait for the count to drop to zero.
type tracker struct {
	outstanding atomic.Int64
	waiters     atomic.Int32
	mu          sync.Mutex
	zero        chan struct{} // closed when outstanding drops to 0 while waited for
}

func (t *tracker) add() { t.outstanding.Add(1) }

// failLocal calls done with r and err on a goroutine of its own, counted
// in t until done returns, so that Flush waits for a record refused before
// it reached kgo as for any other.
func (t *tracker) failLocal(r *kafkaclient.Record, err error, done func(*kafkaclient.Record, error)) {
	t.add()
	go func() {
		done(r, err)
		t.finish()
	}()
}

// finish counts a done callback that returned.
func (t *tracker) finish() {
	if t.outstanding.Add(-1) == 0 && t.waiters.Load() > 0 {
		t.mu.Lock()
		if t.zero != nil {
			close(t.zero)
			t.zero = nil
		}
		t.mu.Unlock()
	}
}

// wait waits until no done callback is outstanding, or ctx ends.
func (t *tracker) wait(ctx context.Context) error {
	t.waiters.Add(1)
	defer t.waiters.Add(-1)
	for {
		t.mu.Lock()
		if t.outstanding.Load() == 0 {
			t.mu.Unlock()
			return nil
		}
		if t.zero == nil {
			t.zero = make(chan struct{})
		}
		zero := t.zero
		t.mu.Unlock()
		select {
		case <-zero:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Flush waits until every outstanding record has been delivered or has
// failed, and its done callback has returned, or until ctx ends (returning
// ctx.Err()). Records produced while Flush waits are waited for too, so
// under continuous production Flush may wait until ctx ends. Flush makes kgo
// send buffered records at once, whatever the linger. Safe for concurrent
// use; after Close it returns kafkaclient.ErrClosed.
func (c *Client) Flush(ctx context.Context) error {
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return kafkaclient.ErrClosed
	}
	prods := c.liveProducers()
	c.mu.RUnlock()
	// Without the lock, so that Close need not wait for a long Flush;
	// kgo's Flush on a client that Close closes meanwhile returns once
	// Close failed what was buffered.
	return c.flush(ctx, prods)
}

// flush runs kgo's Flush on every producer (which unlingers and waits for
// the buffered records' promises), then waits for the outstanding count.
func (c *Client) flush(ctx context.Context, prods []*kgo.Client) error {
	if c.pending.outstanding.Load() == 0 {
		return nil
	}
	var wg sync.WaitGroup
	for _, p := range prods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = p.Flush(ctx)
		}()
	}
	wg.Wait()
	return c.pending.wait(ctx)
}

// javaPartitioner partitions as the wire format needs and as the confluent
// client's default (librdkafka's murmur2_random) does: a record whose
// caller chose a partition (marked by manualKey in its context) goes there;
// a keyed record to murmur2(key) mod partitions, as Kafka's Java producer;
// an unkeyed record to a random partition.
//
// Unkeyed records are not sticky (KIP-480) on purpose: a sticky
// partitioner must hear of every new batch (kgo.TopicPartitionerOnNewBatch),
// and kgo then holds the topic's partitioning lock while it buffers each
// record, which serialised every goroutine producing to a topic (the
// largest mutex delay of a loaded gateway and worker). The runtime keys
// every record it writes; only a publisher's unkeyed records take a random
// partition, as they do on the confluent client.
type javaPartitioner struct{}

func (javaPartitioner) ForTopic(string) kgo.TopicPartitioner { return javaTopicPartitioner{} }

type javaTopicPartitioner struct{}

// RequiresConsistency is true for a chosen partition and for a key: kgo
// then indexes all partitions, so that the index returned by Partition is
// the partition id.
func (javaTopicPartitioner) RequiresConsistency(r *kgo.Record) bool {
	return isManual(r) || r.Key != nil
}

func (javaTopicPartitioner) Partition(r *kgo.Record, n int) int {
	switch {
	case isManual(r):
		return int(r.Partition) // out of range: kgo fails the record
	case r.Key != nil:
		return int(kafkaclient.KeyPartition(r.Key, int32(n)))
	}
	return rand.IntN(n)
}

// forgetTopic makes producer kc forget topic, whose id Kafka no longer has
// (the topic was deleted and created again: kgo keeps failing its records
// with UNKNOWN_TOPIC_ID until the topic is purged), so that the next record
// to it learns the new id. The record that failed stays failed. Purging
// waits for kgo's metadata work, so it runs on a goroutine of its own, once
// at a time per topic; never from within a promise.
func (c *Client) forgetTopic(kc *kgo.Client, topic string) {
	key := forgetKey{kc, topic}
	if _, busy := c.forgetting.LoadOrStore(key, struct{}{}); busy {
		return
	}
	c.log.Warn("franz: producing to a topic that has a new id (deleted and created again): learning it anew", "topic", topic)
	go func() {
		defer c.forgetting.Delete(key)
		kc.PurgeTopicsFromClient(topic)
	}()
}

type forgetKey struct {
	kc    *kgo.Client
	topic string
}

// loadLingerRecords is the count of records produced and not yet answered
// (the client's outstanding records) from which a producer with a load
// linger lingers (WithLoadLinger).
const loadLingerRecords = 32

// unlinger keeps a producer configured with a linger from lingering while
// few records are on their way: kgo lingers on no record while a Flush of
// the client runs. Started by a record produced below loadLingerRecords,
// the flush runs until nothing is buffered, or until a record is produced
// at or above it: the producer then lingers, so that the records of many
// calls share produce requests. A record produced alone starts a flush
// and goes out at once.
type unlinger struct {
	on     atomic.Bool // a flush runs
	mu     sync.Mutex
	cancel context.CancelFunc // ends the flush that runs
}

// keep is called after each record produced on p, with the client's
// outstanding records.
func (u *unlinger) keep(p *kgo.Client, outstanding int64) {
	if outstanding >= loadLingerRecords {
		if u.on.Load() {
			u.mu.Lock()
			if u.cancel != nil {
				u.cancel()
			}
			u.mu.Unlock()
		}
		return
	}
	if !u.on.CompareAndSwap(false, true) {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	u.mu.Lock()
	u.cancel = cancel
	u.mu.Unlock()
	go u.flush(ctx, cancel, p)
}

// flush flushes p until nothing is buffered or ctx ends. A record produced
// after kgo's Flush found nothing buffered but before on was cleared found
// a flush running and started none: flush then goes on for it.
func (u *unlinger) flush(ctx context.Context, cancel context.CancelFunc, p *kgo.Client) {
	defer cancel()
	for {
		_ = p.Flush(ctx) // returns once nothing is buffered, when p is closed, or when ctx ends
		u.on.Store(false)
		if ctx.Err() != nil || p.BufferedProduceRecords() == 0 || !u.on.CompareAndSwap(false, true) {
			return
		}
	}
}

// refused reports whether err is a broker's answer to a produce that
// producing the record again cannot change, one kafkaclient.ErrRecordRefused
// stands for. The list is the same as the confluent client's; franz-go's
// own errors (timeouts, lost connections) are not on it.
func refused(err error) bool {
	for _, ke := range []*kerr.Error{kerr.InvalidRecord, kerr.InvalidTimestamp, kerr.PolicyViolation,
		kerr.UnsupportedForMessageFormat, kerr.UnsupportedCompressionType, kerr.InvalidTopicException, kerr.InvalidRequiredAcks} {
		if errors.Is(err, ke) {
			return true
		}
	}
	return false
}
