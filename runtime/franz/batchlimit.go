package franz

import (
	"context"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

const (
	// FallbackMaxBatchBytes is the largest record batch a producer builds
	// for a topic whose max.message.bytes it could not look up (the
	// principal may not describe the topic's configuration, or Kafka did
	// not answer): kgo's own default, which fits the broker's default
	// limit (1048588). A record larger than this is then refused locally,
	// as too large.
	FallbackMaxBatchBytes = 1000012
	// batchLimitLookupTimeout bounds a lookup of a topic's
	// max.message.bytes, done in a producer's metadata update (which it
	// holds) when the topic's limit is not known or older than
	// batchLimitTTL.
	batchLimitLookupTimeout = 5 * time.Second
	// batchLimitTTL is how long a looked up limit (or the fallback, when
	// the lookup failed) serves other producers and partitions learnt
	// later (a topic created again may have another).
	batchLimitTTL = time.Minute
)

// kgoBatchExtraBytes is what kgo counts in a record batch's size beyond
// what Kafka compares with max.message.bytes: the 4-byte length of the
// produce request's records field. Without it, kgo refused locally a record
// a few bytes below the topic's limit, which the worker (topicLimits) let
// through as one Kafka takes.
const kgoBatchExtraBytes = 4

// batchLimits gives each producer's record batches for a topic the topic's
// own max.message.bytes as their upper bound (kgo.ProducerBatchMaxBytesFn),
// capped at DefaultMaxRecordBytes. Kafka refuses a whole batch larger than
// the topic's limit, so with one bound for all topics (8 MiB, for the
// topics that take large records) a burst of small records to a topic with
// the broker's default limit (1 MiB) was refused, every record of it
// "too large". kgo asks for every partition of the topics a producer
// writes to at each of the producer's metadata updates, from the update,
// and keeps the answer only for a partition new to it (a partition's bound
// never changes afterwards); the answer, or the fallback when the lookup
// failed, is remembered for batchLimitTTL. The lookup goes through a kgo
// client of its own, so that it never waits for the producer it serves.
// Safe for concurrent use.
type batchLimits struct {
	c *Client

	mu     sync.Mutex // guards known, admin and closed; held during a lookup, so one lookup at a time
	known  map[string]batchLimit
	admin  *kgo.Client // created on first lookup
	closed bool
}

type batchLimit struct {
	bytes int32
	at    time.Time
}

// forTopic returns the batch bound of topic (kgo.ProducerBatchMaxBytesFn).
func (b *batchLimits) forTopic(topic string) int32 {
	if topic == "" {
		return DefaultMaxRecordBytes // kgo's check of the option at client creation
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.known[topic]; ok && time.Since(l.at) < batchLimitTTL {
		return l.bytes
	}
	var bytes int32
	if n, err := b.lookup(topic); err != nil {
		// Remembered as the answer: kgo asks for every partition of the
		// topic at each metadata update, and a refusal (no DescribeConfigs
		// ACL) or a timeout would be asked, and logged, again for each.
		b.c.log.Warn("franz: could not look up the topic's max.message.bytes: its record batches are bounded at the fallback; "+
			"allow DescribeConfigs on the topic, or set kgo.ProducerBatchMaxBytes with WithProducerOpts",
			"topic", topic, "fallback_bytes", FallbackMaxBatchBytes, "error", err)
		bytes = FallbackMaxBatchBytes
	} else {
		bytes = int32(min(n+kgoBatchExtraBytes, DefaultMaxRecordBytes))
	}
	if b.known == nil {
		b.known = map[string]batchLimit{}
	}
	b.known[topic] = batchLimit{bytes: bytes, at: time.Now()}
	return bytes
}

// lookup asks Kafka for topic's max.message.bytes. Called with b.mu held.
func (b *batchLimits) lookup(topic string) (int, error) {
	if b.closed {
		return 0, kafkaclient.ErrClosed
	}
	if b.admin == nil {
		kc, err := kgo.NewClient(b.c.opts.clientOpts(b.c.log.With("client", "batch-limits"))...)
		if err != nil {
			return 0, err
		}
		b.admin = kc
	}
	ctx, cancel := context.WithTimeout(context.Background(), batchLimitLookupTimeout)
	defer cancel()
	adm := kadm.NewClient(b.admin)
	adm.SetTimeoutMillis(int32(batchLimitLookupTimeout.Milliseconds()))
	return topicMaxMessageBytes(ctx, adm, topic)
}

// close releases the lookup client; later lookups fail (the fallback).
func (b *batchLimits) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.admin != nil {
		b.admin.Close()
		b.admin = nil
	}
}
