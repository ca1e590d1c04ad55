package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// caller has to be told about, or nil. It may be called again for
	// records c sends later (a stream's end after its responses).
	flush(c *call) error
	// discard drops what send kept for c and reports whether none of c's
	// records went to Kafka, so that c may end as if it had sent nothing
	// (a call the worker gave up). A directWriter hands records over at
	// once: it reports false.
	discard(c *call) bool
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
	held    int                   // txnWriter: the size of outbox's responses (WorkerExactlyOnceStreamBytes)
	outcome *kafkaclient.Record   // txnWriter: the stored outcome flush produces after the outbox
	inTxn   bool                  // txnWriter: flush put records in the open transaction
	early   bool                  // txnWriter: records went out before the call's end (txnWriter.early)
	// void is set when the worker gave the call up at a rejoin
	// (txnWriter.rejoin): none of its records may go into a transaction
	// after that, since its request is read and served again.
	void atomic.Bool
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

func (directWriter) discard(*call) bool { return false }

// txnWriter keeps a call's records until it ends and produces them into
// the open transaction, which the committer commits with the offsets of
// the calls whose records it holds (WorkerExactlyOnce). A record Kafka
// refuses for good (too large, no such topic) is reported as a directWriter
// reports it (flush returns it; a stream's end says so, lostStatus, rather
// than OK over the gap); one that leaves the transaction unable to commit makes
// the commit fail, and the worker with it.
//
// A call enters the open transaction at its first flush and leaves it at
// settle (a bidi call's responses sent while its caller's stream is open,
// and a stream's past WorkerExactlyOnceStreamBytes, go into the transaction
// at once, without holding its commit: early); a commit closes the
// transaction to calls not yet in it, waits
// until those in it settled, and commits it with the safe offsets of every
// partition: so a call's records, all produced between its first flush and
// its settle, are in the transaction that commits its offset, and no record
// is produced while a commit runs (TxnProducer's Produce must not run with
// its Flush or Commit).
type txnWriter struct {
	w   *Worker
	txn kafkaclient.TxnProducer

	commitMu sync.Mutex // one commit at a time; guards moved
	// moved is set when a commit found the group moved to a new
	// generation (kafkaclient.ErrGroupMoved): nothing is committed until
	// the worker rejoined its group (rejoin).
	moved   bool
	mu      sync.Mutex // guards open, dirty, closing and rejoining
	open    int        // calls whose records are in the open transaction but not yet settled
	dirty   bool       // something was produced in the open transaction
	closing bool       // a commit is under way: calls not in the transaction wait for its end
	// rejoining is set while the worker rejoins its group (Worker.rejoin):
	// a call given up then whose caller already got some of its responses
	// (delivery.early) waits for its end to go into the next transaction.
	rejoining bool
	// givenUp holds, for each call settled in the open transaction whose
	// caller already got some of its responses (delivery.early), an
	// UNAVAILABLE end: should the transaction be aborted at a rejoin, the
	// request is served again, and that caller must not get those
	// responses twice (rejoin produces these ends first).
	givenUp []*kafkaclient.Record
	cond    *sync.Cond // signalled when open drops to 0, when a commit ends and when a rejoin ends; uses mu
}

func newTxnWriter(w *Worker, txn kafkaclient.TxnProducer) *txnWriter {
	t := &txnWriter{w: w, txn: txn}
	t.cond = sync.NewCond(&t.mu)
	return t
}

func (t *txnWriter) send(c *call, rec *kafkaclient.Record) {
	c.sent.outbox = append(c.sent.outbox, rec)
	if rec.Value == nil || rec.Topic != c.replyTo || c.wm == nil || !c.wm.spec.Kind.serverStreams() {
		return
	}
	// Out at once: a response some of whose call's went out already (it
	// is no longer exactly-once: holding the rest would only delay them);
	// one a bidi caller whose stream is still open may wait for before it
	// sends more (kept until the call's end, it would wait for its
	// deadline); those of a stream longer than the worker may hold
	// (WorkerExactlyOnceStreamBytes).
	if !c.sent.early && (c.wm.spec.Kind != KindBidiStream || c.in.complete()) {
		bound := t.w.cfg.eosStreamBytes
		if bound <= 0 {
			return
		}
		if c.sent.held += minBatchBytes(rec); c.sent.held <= bound {
			return
		}
	}
	t.early(c)
}

// early produces c's outbox into the open transaction at once, without
// keeping the call in it, and asks for a commit: the records become
// visible then, whether or not c has ended. The
// records refused for good fail as flush fails them.
func (t *txnWriter) early(c *call) {
	kept, _ := t.keep(c, c.sent.outbox)
	c.sent.outbox, c.sent.held = nil, 0
	if len(kept) == 0 {
		return
	}
	if !t.enter(c, false) { // under c.out.mu, which a rejoin's c.abort takes: no waiting for its end
		clear(kept)
		return
	}
	c.sent.early = true
	for _, rec := range kept {
		c.sent.unacked.Add(1)
		t.produce(rec, c.acked)
	}
	t.leave()
	if cm := t.w.committer; cm != nil {
		cm.poke() // visible at the next commit, not at some other call's end
	}
}

func (t *txnWriter) sendOutcome(c *call, rec *kafkaclient.Record) {
	c.sent.outcome = rec
}

// discard drops c's records unless a flush already put some in the open
// transaction. (A call some of whose records went out early holds none:
// the rest go out as they come, txnWriter.send.)
func (t *txnWriter) discard(c *call) bool {
	if c.sent.inTxn || c.sent.early {
		return false
	}
	clear(c.sent.outbox)
	c.sent.outbox, c.sent.outcome, c.sent.held = nil, nil, 0
	return true
}

// flush sends the call's outbox into the open transaction (the call enters
// it at its first flush, and stays in it until settled, which the next
// commit waits for), waits until Kafka acknowledged every record of the
// call, and returns the first failure to deliver one. It may be called more
// than once for a call: a stream's responses before its end, then the end.
func (t *txnWriter) flush(c *call) error {
	if out := c.sent.outbox; len(out) > 0 {
		// A record Kafka would refuse for good (no such topic, too large
		// for it) is failed here, never produced: librdkafka fails the
		// open transaction with it, and the worker would stop, as would
		// every member that reads the request next (its offset is not
		// committed).
		// The call's records after a refused reply are dropped: its end
		// among them would tell the caller OK over the gap (the direct
		// writer's batch fails with the reply). The caller gets the
		// failure instead (lostStatus, written by the next flush).
		var missing error
		c.sent.outbox, missing = t.keep(c, out)
		cfg := &t.w.cfg
		if missing != nil && cfg.deadLetterTopic != "" && c.wm != nil && c.sent.noReplyTopic.CompareAndSwap(false, true) {
			// Nobody can read an answer to a topic that does not exist:
			// the request goes to the dead-letter topic, once, in the
			// transaction that commits its offset (as the directWriter
			// copies it before committing).
			n := len(c.sent.outbox)
			c.deadLetter(status.Newf(codes.NotFound, "%s: reply topic %q does not exist", c.method(), c.replyTo))
			var dl []*kafkaclient.Record
			dl, _ = t.keep(c, c.sent.outbox[n:])
			c.sent.outbox = append(c.sent.outbox[:n], dl...)
		}
	}
	if rec := c.sent.outcome; rec != nil {
		if err := t.w.limits.refused(rec); err != nil {
			c.sent.unacked.Add(1)
			c.outcomeAcked(rec, err) // kept in memory only, as a failed outcome is
			c.sent.outcome = nil
		}
	}
	if out := c.sent.outbox; len(out) > 0 || c.sent.outcome != nil {
		if c.sent.inTxn || t.enter(c, true) { // left at settle
			c.sent.inTxn = true
			if c.sent.early && c.sent.void.Load() {
				out = givenUpRecords(c, out)
			}
			for _, rec := range out {
				c.sent.unacked.Add(1)
				t.produce(rec, c.acked)
			}
			if rec := c.sent.outcome; rec != nil {
				// In the transaction of the replies and the offset: the
				// outcome is stored if and only if the call is answered.
				c.sent.unacked.Add(1)
				t.produce(rec, c.outcomeAcked)
			}
		} else {
			clear(out) // given up at a rejoin: its request is served again
		}
		c.sent.outbox, c.sent.held = nil, 0
		c.sent.outcome = nil
	}
	c.sent.unacked.Wait()
	return c.sent.failure()
}

// givenUpRecords returns, in out's memory, what a call given up at a
// rejoin after some of its responses went out (early) may still write:
// none of its responses, since the ones before them may be in the
// transaction the rejoin aborted, and they would follow a gap; and for its
// end an UNAVAILABLE one, whatever the call ended with (the rejoin may have
// caught it after its handler returned OK, over those aborted responses).
func givenUpRecords(c *call, out []*kafkaclient.Record) []*kafkaclient.Record {
	kept := out[:0]
	for _, rec := range out {
		switch {
		case rec.Topic != c.replyTo:
			kept = append(kept, rec)
		case rec.Value == nil:
			kept = append(kept, c.givenUpEnd())
		}
	}
	clear(out[len(kept):])
	return kept
}

// keep returns the records of out Kafka would take (topicLimits.refused),
// in out's memory, and fails the others as Kafka's refusal would (c.acked),
// with the records of c's reply topic after a refused one: they would
// leave a gap. It also returns the refusal of a reply for a reply topic
// that does not exist, if any.
func (t *txnWriter) keep(c *call, out []*kafkaclient.Record) ([]*kafkaclient.Record, error) {
	kept := out[:0]
	var gap bool
	var missing error
	for _, rec := range out {
		if gap && rec.Topic == c.replyTo {
			continue
		}
		if err := t.w.limits.refused(rec); err != nil {
			if rec.Topic == c.replyTo && errors.Is(err, kafkaclient.ErrUnknownTopic) && missing == nil {
				missing = err
			}
			c.sent.unacked.Add(1)
			c.acked(rec, err)
			gap = gap || rec.Topic == c.replyTo
			continue
		}
		kept = append(kept, rec)
	}
	clear(out[len(kept):])
	return kept, missing
}

// produce produces rec into the open transaction. A record for a topic
// whose max.message.bytes is below the size up to which the client batches
// records (kafkaclient.BatchBounder: librdkafka's batch.size) waits until
// the topic's record before it was acknowledged: Kafka refuses a whole
// batch over the topic's limit, which fails the transaction, and the
// worker with it; one record at a time, no batch holds two.
func (t *txnWriter) produce(rec *kafkaclient.Record, done func(*kafkaclient.Record, error)) {
	one := t.w.limits.oneAtATime(rec.Topic)
	if one == nil {
		t.txn.Produce(rec, done)
		return
	}
	one <- struct{}{}
	t.txn.Produce(rec, func(r *kafkaclient.Record, err error) {
		<-one
		done(r, err)
	})
}

// topicLimits is what the worker knows of the topics it writes to: whether
// they exist and their max.message.bytes, looked up on first use and again
// after topicInfoTTL, so that a record Kafka would refuse for good is
// failed before it is produced (the txnWriter's records, a directWriter's
// single response: writeEnd). Safe for concurrent use.
type topicLimits struct {
	client  kafkaclient.Client
	logger  *slog.Logger
	topics  sync.Map     // a *topicEntry by topic name
	entries atomic.Int64 // about how many topics holds
}

// refused returns why Kafka would refuse rec for good, or nil: its topic
// does not exist (an error wrapping kafkaclient.ErrUnknownTopic), or rec
// is larger than the topic's max.message.bytes (when the client can look
// that up: kafkaclient.TopicLimiter). The first record to a topic waits for
// its lookup; what is known is looked up again after topicInfoTTL (a topic
// found missing after missingTTL), off the record's call, which goes by
// what was known. At most about maxTopicEntries topics are kept (the names
// come from requests). A lookup that cannot tell refuses nothing (the
// record is produced).
//
// The size compared is that of a record batch holding rec alone,
// uncompressed: with a producer compressing its batches (not the
// project's default), a record that compresses below the limit is
// refused all the same.
func (l *topicLimits) refused(rec *kafkaclient.Record) error {
	v, ok := l.topics.Load(rec.Topic)
	if !ok {
		if l.entries.Add(1) > maxTopicEntries {
			// The names come from requests: past the bound, what is
			// known is forgotten rather than kept without end.
			l.topics.Clear()
			l.entries.Store(1)
		}
		var loaded bool
		if v, loaded = l.topics.LoadOrStore(rec.Topic, new(topicEntry)); loaded {
			l.entries.Add(-1)
		}
	}
	e := v.(*topicEntry)
	info := e.info.Load()
	switch {
	case info == nil:
		e.lookup.Lock() // nothing known: wait for the lookup under way, if any
		if info = e.info.Load(); info == nil {
			info = l.lookupTopic(rec.Topic)
			e.info.Store(info)
		}
		e.lookup.Unlock()
	case info.stale() && e.lookup.TryLock():
		// Looked up again off the call: it, and the calls until the
		// answer, go by what is known.
		go l.refresh(e, rec.Topic)
	}
	if info.missing != nil {
		return info.missing
	}
	if n := minBatchBytes(rec); info.limit > 0 && n > info.limit {
		return fmt.Errorf("kafkarpc: a record of at least %d bytes is too large for topic %s (max.message.bytes %d)", n, rec.Topic, info.limit)
	}
	return nil
}

// refresh looks topic up again into e, whose lookup lock the caller holds.
func (l *topicLimits) refresh(e *topicEntry, topic string) {
	defer e.lookup.Unlock()
	e.info.Store(l.lookupTopic(topic))
}

// lookupTopic asks Kafka about topic for refused: whether it exists
// (missing, an error wrapping kafkaclient.ErrUnknownTopic, when it does not),
// its max.message.bytes, and whether the client batches past it. A lookup
// that cannot tell (Kafka unreachable) is an answer that knows no limit, so
// that calls do not each wait for a lookup of their own meanwhile.
func (l *topicLimits) lookupTopic(topic string) *topicInfo {
	ctx, cancel := context.WithTimeout(context.Background(), confirmTimeout)
	defer cancel()
	info := &topicInfo{at: time.Now()}
	_, err := l.client.Partitions(ctx, topic)
	switch {
	case errors.Is(err, kafkaclient.ErrUnknownTopic):
		info.missing = err
		return info
	case err != nil:
		return info
	}
	if tl, ok := l.client.(kafkaclient.TopicLimiter); ok {
		if n, err := tl.TopicMaxMessageBytes(ctx, topic); err == nil {
			info.limit = n
		}
	}
	if bb, ok := l.client.(kafkaclient.BatchBounder); ok && info.limit > 0 && info.limit < bb.MaxBatchBytes() {
		info.oneAtATime = true
	}
	return info
}

// oneAtATime returns the channel that lets one record at a time be on its
// way to topic, when the client may batch records past the topic's
// max.message.bytes (lookupTopic), else nil. The topic is one a record was
// checked for (refused) before. It warns, once per topic, that the
// client's batch size should be lowered.
func (l *topicLimits) oneAtATime(topic string) chan struct{} {
	v, ok := l.topics.Load(topic)
	if !ok {
		return nil
	}
	e := v.(*topicEntry)
	if info := e.info.Load(); info == nil || !info.oneAtATime {
		return nil
	}
	e.oneOnce.Do(func() {
		e.one = make(chan struct{}, 1)
		if l.logger != nil {
			l.logger.Warn("kafkarpc: the topic's max.message.bytes is below the size up to which the Kafka client batches records: "+
				"the exactly-once worker writes to it one record at a time; lower the client's batch size to at most the topic's limit "+
				"(batch.size in confluent.Config)", "topic", topic, "max.message.bytes", e.info.Load().limit,
				"batch_bytes", l.client.(kafkaclient.BatchBounder).MaxBatchBytes())
		}
	})
	return e.one
}

// topicEntry is what topicLimits keeps of a topic.
type topicEntry struct {
	info   atomic.Pointer[topicInfo] // nil: not known
	lookup sync.Mutex                // held by the call looking the topic up

	oneOnce sync.Once
	one     chan struct{} // oneAtATime's, made once
}

// topicInfo is what a lookup found of a topic.
type topicInfo struct {
	limit      int       // max.message.bytes; 0: not known
	at         time.Time // when it was looked up
	oneAtATime bool      // the client batches past limit (kafkaclient.BatchBounder)
	missing    error     // the topic does not exist: why (kafkaclient.ErrUnknownTopic)
}

// stale reports whether info is to be looked up again: after topicInfoTTL,
// or missingTTL for a topic found missing (it may be created any time).
func (info *topicInfo) stale() bool {
	ttl := topicInfoTTL
	if info.missing != nil {
		ttl = missingTTL
	}
	return time.Since(info.at) >= ttl
}

// missingTTL is how long topicLimits takes a topic it found missing for
// missing: calls to it meanwhile do not each look it up. A variable for
// tests.
var missingTTL = time.Second

// maxTopicEntries bounds what topicLimits keeps: the names come from
// requests.
const maxTopicEntries = 4096

// topicInfoTTL is how long topicLimits trusts what it looked up.
const topicInfoTTL = time.Minute

// minBatchBytes is the size of an uncompressed record batch (v2) holding
// rec alone, as a broker compares it with max.message.bytes: the batch
// header (61 bytes) and the record, its key, value and headers with the
// varints framing them (a timestamp and offset delta of 0, one byte each).
// Without the varints, a record a few bytes over the limit passed, and
// Kafka refused it.
func minBatchBytes(rec *kafkaclient.Record) int {
	body := 1 + 1 + 1 + // attributes, timestamp delta, offset delta
		varBytes(rec.Key) + varintLen(len(rec.Headers))
	body += varBytes(rec.Value)
	for _, h := range rec.Headers {
		body += varintLen(len(h.Key)) + len(h.Key) + varBytes(h.Value)
	}
	return 61 + varintLen(body) + body
}

// varBytes is the size of b in a record: its length as a varint (-1 for
// nil) and its bytes.
func varBytes(b []byte) int {
	if b == nil {
		return varintLen(-1)
	}
	return varintLen(len(b)) + len(b)
}

// varintLen is the size of n as a zigzag varint.
func varintLen(n int) int {
	u := uint64(n<<1) ^ uint64(n>>63)
	size := 1
	for u >= 0x80 {
		u >>= 7
		size++
	}
	return size
}

func (t *txnWriter) settle(c *call) {
	if !c.sent.inTxn {
		return
	}
	if c.sent.early && c.id != "" {
		end := c.givenUpEnd()
		t.mu.Lock()
		t.givenUp = append(t.givenUp, end)
		t.mu.Unlock()
	}
	t.leave()
}

// enter waits until no commit is closing the open transaction, then counts
// c in as one more producer of records into it (which the next commit
// waits for until leave) and marks it as holding records. It reports false,
// counting nothing in, for a call given up at a rejoin (delivery.void),
// except one whose caller already got some of its responses (early): its
// caller reads its stream as it comes, and the request, served again,
// would give it those responses twice; so the call's records, its
// UNAVAILABLE end among them, wait for the rejoin to be over and go into
// the next transaction, as a call given up in a rebalance ends; when
// atEnd, that is (its flush, from finish: its early sends hold c.out.mu,
// which the rejoin takes to abort the call, and are refused instead).
func (t *txnWriter) enter(c *call, atEnd bool) bool {
	t.mu.Lock()
	for t.closing || (atEnd && t.rejoining && c.sent.early && c.sent.void.Load()) {
		t.cond.Wait()
	}
	if c.sent.void.Load() && (!c.sent.early || !atEnd) {
		t.mu.Unlock()
		return false
	}
	t.open++
	t.dirty = true
	t.mu.Unlock()
	return true
}

// leave counts out a producer counted in by enter, waking a commit waiting
// for the last one.
func (t *txnWriter) leave() {
	t.mu.Lock()
	if t.open--; t.open == 0 {
		t.cond.Broadcast()
	}
	t.mu.Unlock()
}

// commit commits the open transaction with the safe offsets of every
// partition (only is the directWriter's: the transaction holds the records
// of calls of every partition, and each call's offset must be committed
// with them): calls not yet in the transaction wait, and every call in it
// is settled (its offset marked done) first, so the offsets cover exactly
// the calls whose replies the transaction holds.
func (t *txnWriter) commit(cm *committer, _ map[kafkaclient.TopicPartition]bool) {
	w := t.w
	t.commitMu.Lock()
	defer t.commitMu.Unlock()
	if w.Err() != nil || t.moved {
		// A transaction failed and was aborted (or could not be flushed),
		// and the worker stops, or rejoins its group: nothing more is
		// committed until then. The offsets of the calls whose replies
		// that transaction held are marked done, and a later commit, even
		// of an empty transaction, would take them past requests whose
		// answers nobody will ever read; left uncommitted, the
		// partitions' next owners serve them again.
		return
	}
	dirty := t.shut()
	defer t.reopen()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := t.txn.Flush(ctx); err != nil {
		w.fail(fmt.Errorf("exactly-once: flushing the transaction: %w", err))
		return
	}
	w.mu.Lock()
	offs, tracks := w.safeOffsets(nil)
	w.mu.Unlock()
	if len(offs) == 0 && !dirty {
		return
	}
	if err := t.txn.Commit(ctx, cm.gr, offs); err != nil {
		aerr := t.txn.Abort(ctx)
		if aerr == nil && errors.Is(err, kafkaclient.ErrGroupMoved) {
			// The commit raced a rebalance: the member's generation is
			// past, and which partitions it still holds is not known
			// here. Committing again with the new generation could commit
			// offsets of partitions another member now reads; so, as
			// Kafka Streams does on a task migration, the worker gives up
			// every call it holds and rejoins its group (rejoin), and the
			// requests whose replies were aborted are read and served
			// again from the committed offsets, by whichever member gets
			// their partitions.
			t.moved = true
			w.cfg.logger.Warn("kafkarpc: exactly-once: a transaction's commit raced a rebalance and was aborted; "+
				"the worker gives up its calls and rejoins its group, and their requests are served again", "group", w.cfg.groupID, "error", err)
			w.requestRejoin()
			return
		}
		w.fail(fmt.Errorf("exactly-once: committing the transaction: %w", err))
		return
	}
	t.mu.Lock()
	t.givenUp = nil // their calls' ends are committed
	t.mu.Unlock()
	w.markCommitted(offs, tracks)
}

// rejoin makes the open transaction hold nothing of the calls given up at
// a rejoin (every call the worker had, each marked void) and lets commits
// go on for the member's next generation, with gr, its new group reader.
// The worker's loop calls it once the old group reader is closed: the
// calls already in the open transaction are waited for (their flush and
// settle do not need the loop), the transaction is aborted, and a call
// given up produces nothing into a later one (enter).
func (t *txnWriter) rejoin(cm *committer, gr kafkaclient.GroupReader) error {
	t.commitMu.Lock()
	defer t.commitMu.Unlock()
	t.shut()
	defer t.reopen()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := t.txn.Abort(ctx); err != nil {
		return fmt.Errorf("exactly-once: aborting the transaction of the calls given up: %w", err)
	}
	// The calls whose ends were aborted after their callers got some of
	// their responses end UNAVAILABLE, in the next transaction, before any
	// request is read again.
	t.mu.Lock()
	ends := t.givenUp
	t.givenUp = nil
	t.dirty = t.dirty || len(ends) > 0
	t.mu.Unlock()
	for _, rec := range ends {
		t.produce(rec, func(r *kafkaclient.Record, err error) {
			if err != nil {
				t.w.cfg.logger.Warn("kafkarpc: the UNAVAILABLE end of a call given up at a rejoin was not written: its caller may get its early responses twice",
					"topic", r.Topic, "error", err)
			}
		})
	}
	cm.gr = gr
	t.moved = false
	return nil
}

// shut closes the open transaction to calls not yet in it (enter waits
// until reopen), waits until the calls in it settled, and reports whether
// it holds records, clearing that. Called with commitMu held.
func (t *txnWriter) shut() (dirty bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closing = true
	for t.open > 0 {
		t.cond.Wait()
	}
	dirty, t.dirty = t.dirty, false
	return dirty
}

// reopen lets calls into the transaction again after shut.
func (t *txnWriter) reopen() {
	t.mu.Lock()
	t.closing = false
	t.cond.Broadcast()
	t.mu.Unlock()
}

// setRejoining sets or clears rejoining (Worker.rejoin), waking the calls
// waiting for its end in enter.
func (t *txnWriter) setRejoining(on bool) {
	t.mu.Lock()
	t.rejoining = on
	t.cond.Broadcast()
	t.mu.Unlock()
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
