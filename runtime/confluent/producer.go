package confluent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// ErrQueueFull is reported through done when librdkafka's local produce
// queue is full (queue.buffering.max.messages / queue.buffering.max.kbytes):
// the cluster is not keeping up, or is unreachable. The record was not sent.
var ErrQueueFull = errors.New("confluent: local produce queue is full (queue.buffering.max.messages or queue.buffering.max.kbytes reached)")

// producer is one librdkafka producer (one acks level) with the goroutine
// that drains its delivery reports.
type producer struct {
	c    *Client
	acks kafkaclient.Acks
	p    *kafka.Producer
	name string

	fatal atomic.Bool
	// lingers: linger.ms > 0, so a flush must ask librdkafka to send what
	// it holds back (with linger.ms 0, the default, nothing is held back).
	lingers bool
	// users counts admin calls and flush helpers using p, so that Close
	// destroys p only after they are done.
	users sync.WaitGroup

	// outstanding (guarded by the client's pendMu) counts the records
	// produced on p whose done has not returned yet.
	outstanding counter

	adminOnce sync.Once
	admin     *kafka.AdminClient
	adminErr  error

	drained  chan struct{}
	logsDone chan struct{}
	once     sync.Once
}

// pending is what a record carries through librdkafka (as the message
// Opaque) until its delivery report.
type pending struct {
	p     *producer
	rec   *kafkaclient.Record
	done  func(*kafkaclient.Record, error)
	tb    *topicBatch // counts the record in flight (Produce's records)
	fired atomic.Bool
	msg   kafka.Message   // what Produce is given: in the same allocation
	hs    [8]kafka.Header // most records' headers, likewise
}

// newProducer makes a producer for acks whose batches are bounded by
// batchSize (0: the client's batch.size).
func (c *Client) newProducer(acks kafkaclient.Acks, batchSize int) (*producer, error) {
	cfg := c.producerConfig(acks)
	if batchSize > 0 {
		cfg["batch.size"] = batchSize
	}
	kp, err := kafka.NewProducer(&cfg)
	if err != nil {
		return nil, fmt.Errorf("confluent: new producer (acks=%s): %w", acks, err)
	}
	return c.startProducer(kp, cfg, acks), nil
}

// startProducer wraps kp (created from cfg) and starts draining its events.
func (c *Client) startProducer(kp *kafka.Producer, cfg kafka.ConfigMap, acks kafkaclient.Acks) *producer {
	p := &producer{c: c, acks: acks, p: kp, name: kp.String(), drained: make(chan struct{}), lingers: lingers(cfg)}
	p.logsDone = c.forwardLogs(cfg, kp.Logs())
	go p.drain()
	return p
}

// lingers reports whether cfg sets linger.ms (or its alias) above zero.
func lingers(cfg kafka.ConfigMap) bool {
	for _, k := range []string{"linger.ms", "queue.buffering.max.ms"} {
		if v, ok := cfg[k]; ok {
			ms, err := strconv.ParseFloat(fmt.Sprint(v), 64)
			return err != nil || ms > 0 // unparsable: librdkafka refused it already
		}
	}
	return true // librdkafka's own default, 5 ms
}

// drain handles the producer's events: delivery reports (one *kafka.Message
// per record, carrying its pending as Opaque) and errors. It ends when the
// producer is closed (confluent-kafka-go closes the channel).
func (p *producer) drain() {
	defer close(p.drained)
	for ev := range p.p.Events() {
		switch e := ev.(type) {
		case *kafka.Message:
			pd, _ := e.Opaque.(*pending)
			if pd == nil {
				continue
			}
			err := deliveryError(p.acks, e, pd.rec.Topic)
			if err == nil {
				pd.rec.Partition = e.TopicPartition.Partition
				pd.rec.Offset = int64(e.TopicPartition.Offset)
				if pd.rec.Offset < 0 {
					pd.rec.Offset = -1 // not known (acks=0)
				}
			}
			p.c.finish(pd, err)
		case kafka.Error:
			if e.IsFatal() {
				// The instance is unusable; the next Produce replaces it.
				// Marked before the error is logged, so whoever reads the
				// log finds the producer already retired.
				p.fatal.Store(true)
			}
			p.c.logError(p.name, e)
		}
	}
}

// deliveryError is the outcome of a delivery report from a producer with
// acks: nil when Kafka has the record.
//
// With acks=all (and so librdkafka's idempotent producer) a report without
// an error but without an offset is not a success: librdkafka reports so a
// record the broker answered with DUPLICATE_SEQUENCE_NUMBER. A retry of a
// batch the broker had written gets that answer, but it also came back for
// records that were not in the log (Apache Kafka 4.4, producing at once to
// a topic just created; see waitLeaders). Such a record is reported with
// kafkaclient.ErrUnknownOutcome.
func deliveryError(acks kafkaclient.Acks, e *kafka.Message, topic string) error {
	if err := e.TopicPartition.Error; err != nil {
		return produceError(topic, err)
	}
	if acks == kafkaclient.AcksAll && e.TopicPartition.Offset < 0 {
		return fmt.Errorf("confluent: produce to %s [%d]: Kafka took the record for a duplicate of one it had and gave no offset: %w",
			topic, e.TopicPartition.Partition, kafkaclient.ErrUnknownOutcome)
	}
	return nil
}

// produceError is err, librdkafka's reason for failing a record to topic,
// as Produce reports it: one that says the topic or partition does not
// exist wraps kafkaclient.ErrUnknownTopic, whether it came in a delivery
// report or, once librdkafka knows the topic is missing, from its produce
// call itself; one that says the client may not write the topic wraps
// kafkaclient.ErrNotAuthorized; one that says the record or its batch is
// too large (the broker's MESSAGE_TOO_LARGE or RECORD_LIST_TOO_LARGE, or
// librdkafka's own limit) wraps kafkaclient.ErrRecordTooLarge; one the
// broker refused for another reason producing it again does not cure wraps
// kafkaclient.ErrRecordRefused.
func produceError(topic string, err error) error {
	var ke kafka.Error
	if errors.As(err, &ke) && (ke.Code() == kafka.ErrUnknownTopicOrPart || ke.Code() == kafka.ErrUnknownTopic || ke.Code() == kafka.ErrUnknownPartition) {
		return fmt.Errorf("confluent: produce to %s: %w (%w)", topic, kafkaclient.ErrUnknownTopic, err)
	}
	if errors.As(err, &ke) && ke.Code() == kafka.ErrTopicAuthorizationFailed {
		return fmt.Errorf("confluent: produce to %s: %w (%w)", topic, kafkaclient.ErrNotAuthorized, err)
	}
	if errors.As(err, &ke) && (ke.Code() == kafka.ErrMsgSizeTooLarge || ke.Code() == kafka.ErrRecordListTooLarge) {
		return fmt.Errorf("confluent: produce to %s: %w (%w)", topic, kafkaclient.ErrRecordTooLarge, err)
	}
	if errors.As(err, &ke) && refusals[ke.Code()] != "" {
		return fmt.Errorf("confluent: produce to %s: %w (%s: %w)", topic, kafkaclient.ErrRecordRefused, refusals[ke.Code()], err)
	}
	return fmt.Errorf("confluent: produce to %s: %w", topic, err)
}

// close closes the librdkafka producer and waits for its goroutines. The
// caller must make sure nothing else uses p.
func (p *producer) close() {
	p.once.Do(func() {
		if p.admin != nil {
			p.admin.Close() // derived: releases nothing but the wrapper
		}
		p.p.Close()
		<-p.drained
		<-p.logsDone
	})
}

// adminClient returns an admin client sharing p's handle and connections.
func (p *producer) adminClient() (*kafka.AdminClient, error) {
	p.adminOnce.Do(func() {
		p.admin, p.adminErr = kafka.NewAdminClientFromProducer(p.p)
	})
	return p.admin, p.adminErr
}

// useProducer returns the live producer for acks whose batches are bounded
// by batchSize (0: the client's batch.size; see topicBatch), creating it on
// first use (or after a fatal error), registered as a user: the caller must
// call p.users.Done() when done with it.
func (c *Client) useProducer(acks kafkaclient.Acks, batchSize int) (*producer, error) {
	idx, err := acksIndex(acks)
	if err != nil {
		return nil, err
	}
	key := sizedKey{acks: idx, batchSize: batchSize}
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return nil, kafkaclient.ErrClosed
	}
	if p := c.producerAt(key); p != nil && !p.fatal.Load() {
		p.users.Add(1)
		c.mu.RUnlock()
		return p, nil
	}
	c.mu.RUnlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, kafkaclient.ErrClosed
	}
	p := c.producerAt(key)
	if p == nil || p.fatal.Load() {
		np, err := c.newProducer(acks, batchSize)
		if err != nil {
			return nil, err
		}
		if p != nil {
			c.retired = append(c.retired, p) // closed by Close
		}
		if batchSize == 0 {
			c.producers[idx] = np
		} else {
			if c.sized == nil {
				c.sized = make(map[sizedKey]*producer)
			}
			c.sized[key] = np
		}
		p = np
	}
	p.users.Add(1)
	return p, nil
}

// sizedKey names a producer: its acks level (acksIndex) and the bound of
// its batches (0: the client's batch.size).
type sizedKey struct {
	acks      int
	batchSize int
}

// producerAt returns the producer named key, or nil. The caller holds c.mu.
func (c *Client) producerAt(key sizedKey) *producer {
	if key.batchSize == 0 {
		return c.producers[key.acks]
	}
	return c.sized[key]
}

// allProducers returns every producer made, live or retired. The caller
// holds c.mu.
func (c *Client) allProducers() []*producer {
	var prods []*producer
	for _, p := range c.producers {
		if p != nil {
			prods = append(prods, p)
		}
	}
	for _, p := range c.sized {
		prods = append(prods, p)
	}
	return append(prods, c.retired...)
}

func acksIndex(a kafkaclient.Acks) (int, error) {
	switch a {
	case kafkaclient.AcksAll, kafkaclient.AcksLeader, kafkaclient.AcksNone:
		return int(a), nil
	}
	return 0, fmt.Errorf("confluent: unknown acks level %d", a)
}

// Produce enqueues r on the producer of the given acks level and returns at
// once; done is called exactly once, from the producer's delivery goroutine
// (or, for a record refused before it was queued, from a goroutine of its
// own, which Flush waits for too), with r (Partition and Offset filled in; Offset -1 with AcksNone) or
// the error that failed it. r, its Key, Value and Headers belong to the
// client until done is called.
//
// The first records to a topic wait (in order, outside librdkafka's
// queue, counted against queue.buffering.max.messages) until the client
// looked up the topic's max.message.bytes, for at most 5 s; records to a
// topic whose limit is below batch.size go through a producer whose
// batch.size fits the limit (see topicBatch). The lookup is made once per
// topic; a lookup that found no limit (topic missing, no DescribeConfigs,
// Kafka unreachable) is made again a second or a minute later, and the
// records then wait for it as for the first.
//
// A zero r.Timestamp is set to time.Now(). A nil r.Value is produced as a
// tombstone (null value); an empty non-nil Value as an empty value.
// r.Partition kafkaclient.AnyPartition lets the murmur2_random partitioner
// pick the partition from the key. Header order is kept.
//
// Produce never blocks on the network: when librdkafka's local queue is full
// it reports ErrQueueFull through done. Safe for concurrent use; records with
// the same key and acks level keep their order.
func (c *Client) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if done == nil {
		done = func(*kafkaclient.Record, error) {}
	}
	if r == nil {
		c.failLocal(nil, errors.New("confluent: Produce of a nil record"), done)
		return
	}
	if r.Timestamp.IsZero() {
		r.Timestamp = time.Now() // now, not when a lookup of its topic lets it go
	}
	batchSize, tb, now := c.batchFor(r, acks, done)
	if !now {
		return // queued until the topic's lookup answers
	}
	c.produceSized(r, acks, batchSize, tb, done)
}

// produceSized enqueues r on the producer for acks whose batches are
// bounded by batchSize (0: the client's batch.size). r is counted in tb's
// inflight, released when its done returns.
func (c *Client) produceSized(r *kafkaclient.Record, acks kafkaclient.Acks, batchSize int, tb *topicBatch, done func(*kafkaclient.Record, error)) {
	p, err := c.useProducer(acks, batchSize)
	if err != nil {
		tb.release()
		c.failLocal(r, err, done)
		return
	}
	defer p.users.Done()
	c.produceOn(p, r, tb, done)
}

// produceOn enqueues r on p; see Produce. tb, if not nil, counts r in
// flight until its done returns.
func (c *Client) produceOn(p *producer, r *kafkaclient.Record, tb *topicBatch, done func(*kafkaclient.Record, error)) {
	if done == nil {
		done = func(*kafkaclient.Record, error) {}
	}
	if r.Timestamp.IsZero() {
		r.Timestamp = time.Now()
	}
	pd := &pending{p: p, rec: r, done: done, tb: tb}
	msg := &pd.msg
	*msg = kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &r.Topic, Partition: r.Partition},
		Key:            r.Key,
		Value:          r.Value,
		Timestamp:      r.Timestamp,
		Opaque:         pd,
	}
	if r.Partition < 0 {
		msg.TopicPartition.Partition = kafka.PartitionAny
	}
	if len(r.Headers) > 0 {
		hs := pd.hs[:0]
		if len(r.Headers) > len(pd.hs) {
			hs = make([]kafka.Header, 0, len(r.Headers))
		}
		for _, h := range r.Headers {
			hs = append(hs, kafka.Header{Key: h.Key, Value: h.Value})
		}
		msg.Headers = hs
	}

	c.track(pd)
	if err := p.p.Produce(msg, nil); err != nil {
		var kerr kafka.Error
		if errors.As(err, &kerr) && kerr.Code() == kafka.ErrQueueFull {
			err = fmt.Errorf("%w: %w", ErrQueueFull, kerr)
		} else {
			err = produceError(r.Topic, err)
		}
		go c.finish(pd, notQueued{err})
	}
}

// notQueued wraps the error of a record librdkafka refused at once, never
// queued: the transactional producer tells those apart from failures
// reported for records it queued (unwrapNotQueued).
type notQueued struct{ error }

func (e notQueued) Unwrap() error { return e.error }

// unwrapNotQueued returns err without notQueued's wrapping, and whether
// the record it is for was queued (err is not a notQueued).
func unwrapNotQueued(err error) (_ error, queued bool) {
	if nq, ok := err.(notQueued); ok {
		return nq.error, false
	}
	return err, true
}

// failLocal calls done with r and err on a goroutine of its own, counted
// as outstanding until done returns, so that Flush and Close wait for a
// record refused before it reached librdkafka as for any other.
func (c *Client) failLocal(r *kafkaclient.Record, err error, done func(*kafkaclient.Record, error)) {
	c.pendMu.Lock()
	c.outstanding.add()
	c.pendMu.Unlock()
	go func() {
		done(r, err)
		c.pendMu.Lock()
		c.outstanding.done()
		c.pendMu.Unlock()
	}()
}

// track registers pd as outstanding.
func (c *Client) track(pd *pending) {
	c.pendMu.Lock()
	c.pending[pd] = struct{}{}
	c.outstanding.add()
	pd.p.outstanding.add()
	c.pendMu.Unlock()
}

// finish calls pd's done once and then forgets pd.
func (c *Client) finish(pd *pending, err error) {
	if !pd.fired.CompareAndSwap(false, true) {
		return
	}
	pd.done(pd.rec, err)
	if pd.tb != nil {
		pd.tb.release()
	}
	c.pendMu.Lock()
	delete(c.pending, pd)
	c.outstanding.done()
	pd.p.outstanding.done()
	c.pendMu.Unlock()
}

// counter counts records whose done has not returned yet; zero, made by
// the first waiter (not by every record that finds the count at 0), is
// closed when the count drops to 0. Guarded by the client's pendMu.
type counter struct {
	n    int
	zero chan struct{}
}

func (k *counter) add() { k.n++ }

func (k *counter) done() {
	if k.n--; k.n == 0 && k.zero != nil {
		close(k.zero)
		k.zero = nil
	}
}

// wait waits until k's count drops to zero (records counted while it
// waits included), or ctx ends.
func (c *Client) wait(ctx context.Context, k *counter) error {
	zero := c.zeroed(k)
	if zero == nil {
		return nil
	}
	select {
	case <-zero:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// zeroed returns a channel closed when k's count drops to zero (records
// counted meanwhile included), or nil when it is zero now.
func (c *Client) zeroed(k *counter) <-chan struct{} {
	c.pendMu.Lock()
	defer c.pendMu.Unlock()
	if k.n == 0 {
		return nil
	}
	if k.zero == nil {
		k.zero = make(chan struct{})
	}
	return k.zero
}

// Flush waits until every outstanding record has been delivered or has
// failed, and its done callback has returned, or until ctx ends (returning
// ctx.Err()). Records produced while Flush waits are waited for too, so under
// continuous production Flush may wait until ctx ends. Flush asks librdkafka
// to send queued records at once, whatever linger.ms is. Safe for concurrent
// use.
func (c *Client) Flush(ctx context.Context) error {
	// The records waiting for their topic's lookup first reach
	// librdkafka (on producers perhaps made for them), so that flush
	// nudges them too.
	if err := c.wait(ctx, &c.queued); err != nil {
		return err
	}
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return kafkaclient.ErrClosed
	}
	prods := c.allProducers()
	for _, p := range prods {
		p.users.Add(1)
	}
	c.mu.RUnlock()
	defer func() {
		for _, p := range prods {
			p.users.Done()
		}
	}()
	return c.flush(ctx, prods)
}

// flush waits for the outstanding count to reach zero. When a producer
// lingers (linger.ms > 0) it also triggers librdkafka's flush on it, so
// that what linger holds back is sent at once.
//
// librdkafka's flush is only triggered, not waited for: Producer.Flush
// returns only after an event poll of up to its timeout that finds no
// event once the last report was taken by the drain goroutine, so waiting
// for it added up to 100 ms to every flush. Its helper goroutines end
// within 100 ms of the count reaching zero, and Close waits for them.
func (c *Client) flush(ctx context.Context, prods []*producer) error {
	c.pendMu.Lock()
	idle := c.outstanding.n == 0
	c.pendMu.Unlock()
	if idle {
		return nil
	}
	stop := make(chan struct{})
	for _, p := range prods {
		p.nudge(stop)
	}
	err := c.wait(ctx, &c.outstanding)
	close(stop)
	return err
}

// nudge keeps asking librdkafka to send p's queued records without
// lingering until stop is closed, if p lingers at all; see flush.
func (p *producer) nudge(stop <-chan struct{}) {
	if !p.lingers {
		return
	}
	p.users.Add(1)
	go func() {
		defer p.users.Done()
		// Short slices, so that the helper ends soon after stop.
		for p.p.Flush(100) > 0 {
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
}

// refusals are the broker's answers to a produce that producing the record
// again cannot change, the ones kafkaclient.ErrRecordRefused stands for, by
// Kafka's name for them (librdkafka's text does not say it).
// kafka.Error.IsRetriable cannot tell them: it is false for every delivery
// report's error. The list is the same as the franz client's; librdkafka's
// local errors (negative codes, such as _MSG_TIMED_OUT or _TRANSPORT) are
// not on it. Read only.
var refusals = map[kafka.ErrorCode]string{
	kafka.ErrInvalidRecord:               "INVALID_RECORD",
	kafka.ErrInvalidTimestamp:            "INVALID_TIMESTAMP",
	kafka.ErrPolicyViolation:             "POLICY_VIOLATION",
	kafka.ErrUnsupportedForMessageFormat: "UNSUPPORTED_FOR_MESSAGE_FORMAT",
	kafka.ErrUnsupportedCompressionType:  "UNSUPPORTED_COMPRESSION_TYPE",
	kafka.ErrTopicException:              "INVALID_TOPIC_EXCEPTION",
	kafka.ErrInvalidRequiredAcks:         "INVALID_REQUIRED_ACKS",
}
