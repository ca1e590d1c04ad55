package confluent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

const (
	// pollSlice is the longest single wait inside Poll: how soon a
	// cancelled ctx or a Close is noticed. A record that arrives wakes
	// the wait at once, so it adds no latency.
	pollSlice = 100 * time.Millisecond
	// maxBatch caps the records one Poll returns.
	maxBatch = 512
)

// consumerBase is what Reader and GroupReader share: a librdkafka consumer,
// its log forwarding and the batching poll loop.
type consumerBase struct {
	c        *Client
	kc       *kafka.Consumer
	name     string
	logsDone chan struct{}
	closing  atomic.Bool

	// slab is the unused rest of the records allocated together for
	// toRecord (touched only by the polling goroutine).
	slab []recordWithHeaders
	// denied is the first TOPIC_AUTHORIZATION_FAILED consume error since
	// the last poll returned (touched only by the polling goroutine), which
	// Poll returns when it has no record to return.
	denied error
	// gate, when set, runs before each wait of poll and sees each record
	// it takes (the group reader's pausing; nil for the plain reader).
	gate pollGate
}

// pollGate lets the group reader hold records back from the batch and act
// between the waits of poll, on the polling goroutine.
type pollGate interface {
	// before runs before each wait for records; it may add records (held
	// before) to the batch and returns the longest the wait may last.
	before(batch *[]*kafkaclient.Record) time.Duration
	// admit reports whether r joins the batch; false: the gate keeps it.
	admit(r *kafkaclient.Record) bool
}

func (c *Client) newConsumer(cfg kafka.ConfigMap) (*consumerBase, error) {
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if closed {
		return nil, kafkaclient.ErrClosed
	}
	kc, err := kafka.NewConsumer(&cfg)
	if err != nil {
		return nil, fmt.Errorf("confluent: new consumer: %w", err)
	}
	return &consumerBase{c: c, kc: kc, name: kc.String(), logsDone: c.forwardLogs(cfg, kc.Logs())}, nil
}

// poll returns a batch: it waits (in slices of at most pollSlice, checking
// ctx and closing in between) for the first record, then takes what is
// already queued without waiting, up to maxBatch records. The batch lives in
// *batch so that the group reader's rebalance callback, which runs inside
// kc.Poll, can drop the records of revoked partitions from it.
func (b *consumerBase) poll(ctx context.Context, batch *[]*kafkaclient.Record) error {
	for len(*batch) == 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		if b.closing.Load() {
			return kafkaclient.ErrClosed
		}
		wait := pollSlice
		if b.gate != nil {
			if wait = b.gate.before(batch); len(*batch) > 0 {
				break
			}
		}
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl); left < wait {
				wait = left
			}
		}
		ms := int(wait.Milliseconds())
		if ms < 1 {
			ms = 1
		}
		// A blocking cgo call keeps its P until the Go scheduler's monitor
		// takes it back, and goroutines this one just made runnable (a
		// handler, a waiting call) would wait that long: let them run first.
		goruntime.Gosched()
		b.handle(b.kc.Poll(ms), batch)
		if b.denied != nil && len(*batch) == 0 {
			err := b.denied
			b.denied = nil
			return err
		}
	}
	// Bounded by events too: records a gate holds do not fill the batch.
	for n := 0; n < maxBatch && len(*batch) < maxBatch; n++ {
		ev := b.kc.Poll(0)
		if ev == nil {
			break
		}
		b.handle(ev, batch)
	}
	b.denied = nil // told again at the next refused fetch
	return nil
}

func (b *consumerBase) handle(ev kafka.Event, batch *[]*kafkaclient.Record) {
	switch e := ev.(type) {
	case *kafka.Message:
		if e.TopicPartition.Error != nil {
			// A partition-level consume error (e.g. offset out of range
			// before a reset); librdkafka recovers by itself.
			var kerr kafka.Error
			if ke, ok := e.TopicPartition.Error.(kafka.Error); ok {
				kerr = ke
			} else {
				kerr = kafka.NewError(kafka.ErrFail, e.TopicPartition.Error.Error(), false)
			}
			b.c.logError(b.name+" "+e.TopicPartition.String(), kerr)
			if kerr.Code() == kafka.ErrTopicAuthorizationFailed && b.denied == nil {
				topic := ""
				if e.TopicPartition.Topic != nil {
					topic = *e.TopicPartition.Topic
				}
				b.denied = fmt.Errorf("confluent: consume %s partition %d: %w (%w)", topic, e.TopicPartition.Partition, kafkaclient.ErrNotAuthorized, kerr)
			}
			return
		}
		if r := b.toRecord(e); b.gate == nil || b.gate.admit(r) {
			*batch = append(*batch, r)
		}
	case kafka.Error:
		b.c.logError(b.name, e)
		if e.Code() == kafka.ErrTopicAuthorizationFailed && b.denied == nil {
			// librdkafka names no topic here (a refused Fetch): the
			// Reader's Poll names those it reads.
			b.denied = &unnamedDenied{fmt.Errorf("%w (%w)", kafkaclient.ErrNotAuthorized, e)}
		}
	}
	// Other events (stats, offset commit results, partition EOF) are not
	// enabled or not needed.
}

// toRecord converts a consumed message. Key, Value and header values are the
// slices confluent-kafka-go already copied out of librdkafka; they are not
// copied again. A null value stays nil; an empty value stays empty non-nil.
//
// The record comes from a slab of slabSize allocated together: each record
// is handed out once, but one kept keeps its slab from being collected.
func (b *consumerBase) toRecord(m *kafka.Message) *kafkaclient.Record {
	if len(b.slab) == 0 {
		b.slab = make([]recordWithHeaders, slabSize)
	}
	rh := &b.slab[0]
	b.slab = b.slab[1:]
	r := &rh.r
	*r = kafkaclient.Record{
		Partition: m.TopicPartition.Partition,
		Offset:    int64(m.TopicPartition.Offset),
		Key:       m.Key,
		Value:     m.Value,
		Timestamp: m.Timestamp,
	}
	if m.TopicPartition.Topic != nil {
		r.Topic = *m.TopicPartition.Topic
	}
	if n := len(m.Headers); n > 0 {
		var hs []kafkaclient.Header
		if n <= len(rh.hs) {
			hs = rh.hs[:n:n] // capped: an append by the caller copies
		} else {
			hs = make([]kafkaclient.Header, n)
		}
		for i, h := range m.Headers {
			hs[i] = kafkaclient.Header{Key: h.Key, Value: h.Value}
		}
		r.Headers = hs
	}
	return r
}

// slabSize is how many consumed records are allocated at once: one
// allocation of about 3.5 KiB instead of eight.
const slabSize = 8

// recordWithHeaders is a consumed record with room for most records'
// headers: no allocation of its own for them.
type recordWithHeaders struct {
	r  kafkaclient.Record
	hs [8]kafkaclient.Header
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Reader implements kafkaclient.Reader: a librdkafka consumer of explicitly
// assigned partitions. It has a generated throw-away group.id (the Go binding
// requires one) but never subscribes, joins a group or commits.
//
// Poll must be called from one goroutine at a time; Assign may be called from
// any goroutine, also while Poll waits; Close may be called from any
// goroutine: it makes a waiting Poll return kafkaclient.ErrClosed (within
// 100 ms) before it releases the consumer.
type Reader struct {
	*consumerBase
	mu       sync.Mutex // guards assigned and serialises Assign with Close
	assigned map[kafkaclient.TopicPartition]struct{}
	pollMu   sync.Mutex // held by Poll
	once     sync.Once
	closeErr error
}

var _ kafkaclient.Reader = (*Reader)(nil)

// NewReader returns a Reader with nothing assigned yet. With
// cfg.ReadCommitted it reads only committed transactional records
// (isolation.level=read_committed).
func (c *Client) NewReader(cfg kafkaclient.ReaderConfig) (kafkaclient.Reader, error) {
	base, err := c.newConsumer(c.consumerConfig("kafkaclient-reader-"+randomID(), cfg.ReadCommitted))
	if err != nil {
		return nil, err
	}
	return &Reader{consumerBase: base, assigned: make(map[kafkaclient.TopicPartition]struct{})}, nil
}

// Assign adds partitions, each read from its given offset: an absolute
// offset, as looked up with Client.Offsets. (librdkafka's logical offsets,
// -2 beginning and -1 end, are passed through, but a reader assigned at the
// logical end resolves it only after its first fetch and misses records
// produced meanwhile.) A partition assigned again
// moves to its new offset; records of the old position still buffered are
// discarded by librdkafka. If parts names a partition twice, the last
// offset wins.
func (r *Reader) Assign(parts []kafkaclient.TopicPartitionOffset) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing.Load() {
		return kafkaclient.ErrClosed
	}
	last := make(map[kafkaclient.TopicPartition]int64, len(parts))
	order := make([]kafkaclient.TopicPartition, 0, len(parts))
	for _, p := range parts {
		tp := kafkaclient.TopicPartition{Topic: p.Topic, Partition: p.Partition}
		if _, seen := last[tp]; !seen {
			order = append(order, tp)
		}
		last[tp] = p.Offset
	}
	var again, add []kafka.TopicPartition
	for _, tp := range order {
		topic := tp.Topic
		ktp := kafka.TopicPartition{Topic: &topic, Partition: tp.Partition, Offset: kafka.Offset(last[tp])}
		if _, ok := r.assigned[tp]; ok {
			again = append(again, ktp)
		}
		add = append(add, ktp)
	}
	if len(again) > 0 {
		if err := r.kc.IncrementalUnassign(again); err != nil {
			return fmt.Errorf("confluent: reassign: %w", err)
		}
		for _, tp := range order {
			delete(r.assigned, tp)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := r.kc.IncrementalAssign(add); err != nil {
		return fmt.Errorf("confluent: assign: %w", err)
	}
	for _, tp := range order {
		r.assigned[tp] = struct{}{}
	}
	return nil
}

// Poll blocks until at least one record is available, then returns it with
// whatever else is already buffered (up to 512 records), without waiting
// for more. It returns ctx.Err() when ctx ends and kafkaclient.ErrClosed
// once Close has been called. A consume error TOPIC_AUTHORIZATION_FAILED,
// with no record to return, is returned as an error wrapping
// kafkaclient.ErrNotAuthorized (librdkafka keeps asking; a later Poll
// returns records once access is granted). The records and slice belong
// to the caller.
func (r *Reader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	r.pollMu.Lock()
	defer r.pollMu.Unlock()
	var batch []*kafkaclient.Record
	if err := r.poll(ctx, &batch); err != nil {
		var u *unnamedDenied
		if errors.As(err, &u) {
			err = fmt.Errorf("confluent: consume %s: %w", strings.Join(r.topics(), ", "), u.error)
		}
		return nil, err
	}
	return batch, nil
}

// unnamedDenied is a TOPIC_AUTHORIZATION_FAILED consume error that does
// not say which topic was refused.
type unnamedDenied struct{ error }

func (u *unnamedDenied) Unwrap() error { return u.error }

// topics returns the topics assigned to r, sorted.
func (r *Reader) topics() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ts []string
	for tp := range r.assigned {
		if !slices.Contains(ts, tp.Topic) {
			ts = append(ts, tp.Topic)
		}
	}
	slices.Sort(ts)
	return ts
}

// Close releases the reader. A Poll in progress returns ErrClosed first.
// Calling Close again returns the first result.
func (r *Reader) Close() error {
	r.once.Do(func() {
		r.closing.Store(true)
		r.pollMu.Lock() // wait for a Poll in progress to notice
		defer r.pollMu.Unlock()
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := r.kc.Close(); err != nil {
			r.closeErr = fmt.Errorf("confluent: close reader: %w", err)
		}
		<-r.logsDone
	})
	return r.closeErr
}
