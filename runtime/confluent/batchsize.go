package confluent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Kafka refuses a whole record batch larger than the topic's
// max.message.bytes, and librdkafka batches the records of a partition up
// to batch.size (DefaultBatchSize, 1000000 bytes) whatever the topic's
// limit: a burst of small records to a topic whose limit is below
// batch.size failed, every record "Message size too large", though each
// fitted. The client looks up the limit of each topic it produces to, and
// produces to a topic whose limit is below batch.size through a producer of
// its own whose batch.size is at most that limit (the largest power of two
// not above it, so that a few producers serve every limit).

// batchLookupTimeout bounds the lookup of a topic's max.message.bytes.
const batchLookupTimeout = 5 * time.Second

// Retry intervals of a lookup that found no limit.
const batchMissingTTL = time.Second // the topic does not exist (yet)

// batchFailedTTL is the retry interval of a lookup that failed (no
// DescribeConfigs, Kafka unreachable). A variable for tests.
var batchFailedTTL = time.Minute

// maxBatchTopics bounds how many topics the client keeps the batch bound
// of: record topics can come from requests (reply topics).
const maxBatchTopics = 4096

// topicBatch is what the client knows of the batches of one topic.
type topicBatch struct {
	bound atomic.Pointer[batchBound] // nil until the first lookup answered

	// inflight counts the records produced on a producer (or about to be)
	// by the bound known, whose done has not returned yet: a lookup that
	// changes the topic's producer waits for them, so that the records
	// of a key keep their order.
	inflight atomic.Int64
	drained  atomic.Pointer[chan struct{}] // closed when inflight drops to 0

	mu        sync.Mutex
	queue     []queuedRecord // produced while a lookup runs, in order
	looking   bool           // a lookup runs
	forgotten bool           // dropped from the client's batches (forgetBatches)
	warned    atomic.Bool    // a failed lookup was logged at Warn (later ones at Debug)
}

// staleTime marks a bound that is being looked up again: records then
// wait for the lookup.
var staleTime = time.Unix(0, 1)

// release marks one of tb's records done.
func (tb *topicBatch) release() {
	if tb.inflight.Add(-1) == 0 {
		if ch := tb.drained.Swap(nil); ch != nil {
			close(*ch)
		}
	}
}

// waitInflight waits until none of tb's records is in flight, or closing
// is done.
func (tb *topicBatch) waitInflight(closing <-chan struct{}) {
	for tb.inflight.Load() != 0 {
		ch := make(chan struct{})
		tb.drained.Store(&ch)
		if tb.inflight.Load() == 0 {
			return
		}
		select {
		case <-ch:
		case <-closing:
			return
		}
	}
}

// batchBound is the answer of a lookup.
type batchBound struct {
	size int       // the producers' batch bound; 0: the client's batch.size
	next time.Time // when to look up again; zero: never (the limit is known)
}

// queuedRecord is a record waiting for its topic's first lookup.
type queuedRecord struct {
	r    *kafkaclient.Record
	acks kafkaclient.Acks
	done func(*kafkaclient.Record, error)
}

// batchFor returns the batch bound of r's topic and true, or false when r
// was queued until a lookup of the topic's limit answers (then produced by
// the lookup, in order), or failed (ErrQueueFull: more records wait for
// lookups than librdkafka's queue.buffering.max.messages). A known bound
// costs a map load. A bound to be looked up again (the topic was missing,
// or the lookup failed) is stale: the records wait for the new lookup as
// for the first, since the topic, created meanwhile, may need a producer of
// its own.
func (c *Client) batchFor(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) (int, *topicBatch, bool) {
	v, ok := c.batches.Load(r.Topic)
	if ok {
		tb := v.(*topicBatch)
		// Counted before the bound is read, so that a lookup that
		// marks the bound stale and then waits for tb's records sees
		// this one unless it saw the mark.
		tb.inflight.Add(1)
		if b := tb.bound.Load(); b.fresh() {
			return b.size, tb, true
		}
		tb.release()
	} else {
		if c.batchCount.Add(1) > maxBatchTopics {
			c.forgetBatches()
		}
		if v, ok = c.batches.LoadOrStore(r.Topic, new(topicBatch)); ok {
			c.batchCount.Add(-1)
		}
	}
	tb := v.(*topicBatch)
	tb.mu.Lock()
	if tb.forgotten {
		tb.mu.Unlock()
		return c.batchFor(r, acks, done) // dropped meanwhile: the topic's new entry
	}
	defer tb.mu.Unlock()
	b := tb.bound.Load()
	if b.fresh() {
		tb.inflight.Add(1)
		return b.size, tb, true // answered meanwhile
	}
	if !tb.looking {
		if !c.startLookup() {
			tb.inflight.Add(1)
			if b != nil {
				return b.size, tb, true // closing: no lookup starts
			}
			return 0, tb, true
		}
		tb.looking = true
		if b != nil {
			// The records that read the bound before this mark are
			// counted in inflight; the later ones wait for the lookup.
			tb.bound.Store(&batchBound{size: b.size, next: staleTime})
		}
		go c.lookupBatch(r.Topic, tb, b)
	}
	c.pendMu.Lock()
	if int64(c.queued.n) >= c.maxQueued() {
		c.pendMu.Unlock()
		c.failLocal(r, fmt.Errorf("%w: %d records wait for their topic's max.message.bytes", ErrQueueFull, c.maxQueued()), done)
		return 0, nil, false
	}
	// Counted as outstanding too, so that Flush and Close wait for it.
	c.queued.add()
	c.outstanding.add()
	c.pendMu.Unlock()
	tb.queue = append(tb.queue, queuedRecord{r: r, acks: acks, done: done})
	return 0, nil, false
}

// fresh reports whether b is known and need not be looked up again yet.
func (b *batchBound) fresh() bool {
	return b != nil && (b.next.IsZero() || time.Now().Before(b.next))
}

// maxQueued returns how many records may wait for lookups: librdkafka's
// queue.buffering.max.messages (the producers' own bound).
func (c *Client) maxQueued() int64 {
	return int64(c.prodInt("queue.buffering.max.messages", defaultQueueBufferingMaxMessages))
}

// defaultQueueBufferingMaxMessages is librdkafka's default of
// queue.buffering.max.messages.
const defaultQueueBufferingMaxMessages = 100000

// startLookup registers a lookup with Close, unless Close has begun.
func (c *Client) startLookup() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.noLookups || c.closed {
		return false
	}
	c.lookups.Add(1)
	return true
}

// lookupBatch looks topic's bound up for tb (first, or again once the
// bound went stale), then produces the records queued meanwhile, in their
// order, before later records can go by the bound.
//
// old is the bound known before (nil: none). When the new bound names
// another producer, the records produced by the old one are waited for
// first: two producers do not keep the order of the records of a key.
func (c *Client) lookupBatch(topic string, tb *topicBatch, old *batchBound) {
	defer c.lookups.Done()
	b := c.lookupBound(topic, tb)
	if old != nil && old.size != b.size {
		tb.waitInflight(c.closeCtx.Done())
	}
	tb.mu.Lock()
	q := tb.queue
	tb.queue = nil
	for _, x := range q {
		tb.inflight.Add(1)
		c.produceSized(x.r, x.acks, b.size, tb, x.done)
	}
	tb.bound.Store(b)
	tb.looking = false
	tb.mu.Unlock()
	c.pendMu.Lock()
	for range q {
		c.outstanding.done() // each is counted again as produced
		c.queued.done()
	}
	c.pendMu.Unlock()
}

// lookupBound asks Kafka for topic's max.message.bytes and returns the
// batch bound of its producers: 0 (the client's batch.size) when the limit
// is not below batch.size, or not known.
func (c *Client) lookupBound(topic string, tb *topicBatch) *batchBound {
	// Close does not wait for the lookup (a broker that does not answer
	// would hold it for the whole timeout before Close's own): its
	// records go by the client's batch.size.
	ctx, cancel := context.WithTimeout(c.closeCtx, batchLookupTimeout)
	defer cancel()
	limit, err := c.TopicMaxMessageBytes(ctx, topic)
	switch {
	case errors.Is(err, kafkaclient.ErrUnknownTopic):
		return &batchBound{next: time.Now().Add(batchMissingTTL)}
	case err != nil && c.closeCtx.Err() != nil:
		return &batchBound{next: time.Now().Add(batchFailedTTL)}
	case err != nil:
		// Once per topic at Warn: a principal without DescribeConfigs
		// fails every lookup, one a minute.
		lvl := slog.LevelWarn
		if tb.warned.Swap(true) {
			lvl = slog.LevelDebug
		}
		c.log.Log(context.Background(), lvl, "confluent: could not look up the topic's max.message.bytes; its records are batched up to batch.size, "+
			"and a batch over the topic's limit fails whole", "topic", topic, "batch.size", c.MaxBatchBytes(), "error", err)
		return &batchBound{next: time.Now().Add(batchFailedTTL)}
	}
	size := boundFor(limit, c.MaxBatchBytes())
	if size > 0 {
		c.log.Info("confluent: the topic's max.message.bytes is below batch.size: its records are batched up to a smaller size",
			"topic", topic, "max.message.bytes", limit, "batch.size", c.MaxBatchBytes(), "topic_batch_size", size)
	}
	return &batchBound{size: size}
}

// boundFor returns the batch bound for a topic whose max.message.bytes is
// limit, with producers batching up to batchSize: 0 when batchSize fits
// the limit, else the largest power of two not above limit.
func boundFor(limit, batchSize int) int {
	if limit <= 0 || batchSize <= limit {
		return 0
	}
	return 1 << (bits.Len(uint(limit)) - 1)
}

// forgetBatches forgets the topics whose bound is known and none of whose
// records is in flight, past maxBatchTopics; topics still looked up keep
// their queued records.
func (c *Client) forgetBatches() {
	n := int64(0)
	c.batches.Range(func(k, v any) bool {
		tb := v.(*topicBatch)
		if b := tb.bound.Load(); b != nil && tb.mu.TryLock() {
			if !tb.looking {
				// Marked stale first: a record that read the bound
				// before is counted in inflight; a later one finds
				// tb forgotten and goes to the topic's new entry.
				tb.bound.Store(&batchBound{size: b.size, next: staleTime})
				if tb.inflight.Load() == 0 {
					tb.forgotten = true
					c.batches.Delete(k)
					tb.mu.Unlock()
					return true
				}
				tb.bound.Store(b)
			}
			tb.mu.Unlock()
		}
		n++
		return true
	})
	c.batchCount.Store(n + 1)
}
