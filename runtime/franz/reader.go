package franz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// maxBatch caps the records one Poll returns.
const maxBatch = 512

// recordsOf converts the records of a poll and logs its partition errors. It
// reports whether the poll ended because the kgo client was closed, and the
// topics whose partitions failed with UNKNOWN_TOPIC_ID: a topic kgo knows by
// an old id was deleted and created again, which kgo does not adopt until
// the topic is purged and added again (Reader.readAnew, GroupReader.Poll).
// A refusal to read a topic (TOPIC_AUTHORIZATION_FAILED) is not logged but
// returned as denied, which Poll returns to its caller when it has no
// record to return (kgo asks again at each fetch: a Reader's refusal
// beside records is returned by a later Poll without records; a
// GroupReader's, whose topics may be busy, by the next Poll).
// Key, Value and Headers are kgo's slices, not copied again (asHeaders); a
// null value stays nil and an empty value stays empty non-nil.
func recordsOf(fs kgo.Fetches, log *slog.Logger) (out []*kafkaclient.Record, closed bool, newID []string, denied error, failed bool) {
	n := fs.NumRecords()
	if n > 0 {
		out = make([]*kafkaclient.Record, 0, n)
		backing := make([]kafkaclient.Record, n)
		i := 0
		fs.EachRecord(func(kr *kgo.Record) {
			r := &backing[i]
			i++
			r.Topic = kr.Topic
			r.Partition = kr.Partition
			r.Offset = kr.Offset
			r.Key = kr.Key
			r.Value = kr.Value
			r.Timestamp = kr.Timestamp
			r.Headers = asHeaders(kr.Headers) // kgo's, as its key and value; capped: an append by the caller copies
			out = append(out, r)
		})
	}
	fs.EachError(func(topic string, partition int32, err error) {
		switch {
		case errors.Is(err, kgo.ErrClientClosed):
			closed = true
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			// the poll's own context: the caller looks at it
		case errors.Is(err, kerr.UnknownTopicID):
			if !slices.Contains(newID, topic) {
				newID = append(newID, topic)
			}
		case errors.Is(err, kerr.TopicAuthorizationFailed):
			if denied == nil {
				denied = fmt.Errorf("franz: fetch %s partition %d: %w (%w)", topic, partition, kafkaclient.ErrNotAuthorized, err)
			}
		default:
			// kgo retries what can be retried by itself; the partition
			// carries on (or is reported again).
			log.Warn("franz: fetch error", "topic", topic, "partition", partition, "error", err)
			failed = true
		}
	})
	return out, closed, newID, denied, failed
}

// fetchErrorBackoff is how long Poll waits, after a fetch that brought
// only logged partition errors, before it polls again: kgo fetches a
// failing partition again as soon as its error was polled, so a partition
// the broker keeps failing (UNKNOWN_SERVER_ERROR...) made Poll a hot loop,
// tens of thousands of fetches and warnings a second. librdkafka waits
// fetch.error.backoff.ms (the confluent client's 50 ms) likewise.
const fetchErrorBackoff = 50 * time.Millisecond

// backOff waits fetchErrorBackoff or until ctx ends.
func backOff(ctx context.Context) {
	t := time.NewTimer(fetchErrorBackoff)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Reader implements kafkaclient.Reader: a kgo client consuming explicitly
// assigned partitions (kgo's direct consumer), with no consumer group.
//
// Poll must be called from one goroutine at a time; Assign may be called from
// any goroutine, also while Poll waits; Close may be called from any
// goroutine: it makes a waiting Poll return kafkaclient.ErrClosed before it
// returns.
type Reader struct {
	kc  *kgo.Client
	log *slog.Logger

	mu       sync.Mutex                           // guards assigned and serialises Assign with Close
	assigned map[kafkaclient.TopicPartition]int64 // each partition's next offset to read (as Assign takes it)
	closed   atomic.Bool
	pollMu   sync.Mutex // held by Poll
	once     sync.Once
}

var _ kafkaclient.Reader = (*Reader)(nil)

// NewReader returns a Reader with nothing assigned yet. With
// cfg.ReadCommitted it reads only committed transactional records. See New
// for the consumer defaults (FetchMaxWait 100ms).
func (c *Client) NewReader(cfg kafkaclient.ReaderConfig) (kafkaclient.Reader, error) {
	role := "reader-" + strconv.FormatUint(c.seq.Add(1), 10)
	kc, err := c.newConsumerClient(c.consumerOpts(role, cfg.ReadCommitted, nil))
	if err != nil {
		return nil, err
	}
	return &Reader{kc: kc, log: c.log.With("client", role), assigned: make(map[kafkaclient.TopicPartition]int64)}, nil
}

// kgoOffset converts an offset of the seam: an absolute offset, or one of
// the logical offsets -2 (beginning) and -1 (end).
func kgoOffset(off int64) kgo.Offset {
	switch {
	case off >= 0:
		return kgo.NewOffset().At(off)
	case off == -2:
		return kgo.NewOffset().AtStart()
	default:
		return kgo.NewOffset().AtEnd()
	}
}

// Assign adds partitions, each read from its given offset: an absolute
// offset, as looked up with Client.Offsets (the logical offsets -2,
// beginning, and -1, end, are accepted, but a reader assigned at the logical
// end resolves it only after a ListOffsets round trip and misses records
// produced meanwhile). The partitions start being fetched once the client
// has their metadata (one metadata round trip for a new topic). A partition
// assigned again moves to its new offset: kgo stops fetching it, drops what
// it buffered of it, and starts again from the new offset. If parts names a
// partition twice, the last offset wins.
func (r *Reader) Assign(parts []kafkaclient.TopicPartitionOffset) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return kafkaclient.ErrClosed
	}
	add := make(map[string]map[int32]kgo.Offset)
	again := make(map[string][]int32)
	for _, p := range parts {
		if p.Partition < 0 {
			return fmt.Errorf("franz: assign %s partition %d: invalid partition", p.Topic, p.Partition)
		}
		tp := kafkaclient.TopicPartition{Topic: p.Topic, Partition: p.Partition}
		if add[p.Topic] == nil {
			add[p.Topic] = make(map[int32]kgo.Offset)
		}
		if _, dup := add[p.Topic][p.Partition]; !dup {
			if _, ok := r.assigned[tp]; ok {
				again[p.Topic] = append(again[p.Topic], p.Partition)
			}
		}
		add[p.Topic][p.Partition] = kgoOffset(p.Offset)
	}
	if len(add) == 0 {
		return nil
	}
	if len(again) > 0 {
		// kgo ignores a partition it already consumes: remove it first
		// (this drops its buffered records), then add it anew.
		r.kc.RemoveConsumePartitions(again)
	}
	r.kc.AddConsumePartitions(add)
	for _, p := range parts {
		r.assigned[kafkaclient.TopicPartition{Topic: p.Topic, Partition: p.Partition}] = p.Offset
	}
	return nil
}

// advance notes where Poll's records leave each partition.
func (r *Reader) advance(recs []*kafkaclient.Record) {
	r.mu.Lock()
	for i, rec := range recs {
		if i+1 == len(recs) || recs[i+1].Partition != rec.Partition || recs[i+1].Topic != rec.Topic {
			tp := kafkaclient.TopicPartition{Topic: rec.Topic, Partition: rec.Partition}
			if _, ok := r.assigned[tp]; ok {
				r.assigned[tp] = rec.Offset + 1
			}
		}
	}
	r.mu.Unlock()
}

// readAnew purges topics, which kgo knows by an id Kafka no longer has (they
// were deleted and created again), and assigns their partitions again from
// the new log's start: kgo then learns the new id. An offset of the old log
// names nothing in the new one, and every record of the new log is unread
// (kgo could not fetch it under the old id): resuming at the old position
// skipped the new log's first records whenever more had been written there
// by the time the reader noticed (a gateway's reply reader lost the replies
// of the first calls after a reply topic was created again).
func (r *Reader) readAnew(topics []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return
	}
	add := make(map[string]map[int32]kgo.Offset)
	for tp := range r.assigned {
		if slices.Contains(topics, tp.Topic) {
			if add[tp.Topic] == nil {
				add[tp.Topic] = make(map[int32]kgo.Offset)
			}
			add[tp.Topic][tp.Partition] = kgo.NewOffset().AtStart()
			r.assigned[tp] = -2 // the beginning
		}
	}
	r.log.Warn("franz: a topic read has a new id (deleted and created again): reading it anew from its start", "topics", topics)
	r.kc.PurgeTopicsFromClient(topics...)
	r.kc.AddConsumePartitions(add)
}

// Poll blocks until at least one record is available, then returns it with
// whatever else is already buffered (up to 512 records), without waiting
// for more. It returns ctx.Err() when ctx ends and kafkaclient.ErrClosed
// once Close has been called. Partition-level fetch errors are logged (kgo
// retries them, Poll after a pause of fetchErrorBackoff when they came
// without records) and do not end Poll, but for TOPIC_AUTHORIZATION_FAILED:
// with no record to return, Poll returns an error wrapping
// kafkaclient.ErrNotAuthorized naming the topic (kgo keeps asking; a later
// Poll returns records once access is granted). The records and slice belong to the
// caller.
func (r *Reader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	r.pollMu.Lock()
	defer r.pollMu.Unlock()
	for {
		if r.closed.Load() {
			return nil, kafkaclient.ErrClosed
		}
		recs, closed, newID, denied, failed := recordsOf(r.kc.PollRecords(ctx, maxBatch), r.log)
		if len(newID) > 0 && !closed {
			r.readAnew(newID)
		}
		if len(recs) > 0 {
			r.advance(recs)
			return recs, nil
		}
		if closed || r.closed.Load() {
			return nil, kafkaclient.ErrClosed
		}
		if denied != nil {
			return nil, denied
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if failed {
			backOff(ctx)
		}
	}
}

// Close releases the reader: it closes its kgo client (a Poll in progress
// returns ErrClosed) and waits for that Poll to return. Calling Close again
// does nothing and returns nil.
func (r *Reader) Close() error {
	r.once.Do(func() {
		r.mu.Lock()
		r.closed.Store(true)
		r.mu.Unlock()
		r.kc.Close()
		// Taking pollMu waits for a Poll in progress to return; nothing is
		// done under it.
		r.pollMu.Lock()
		//lint:ignore SA2001 taking the lock is the wait
		r.pollMu.Unlock()
	})
	return nil
}
