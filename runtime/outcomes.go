package runtime

// Stored outcomes that survive the process (WorkerOutcomeTopic).
//
// With an outcome topic, every outcome the worker remembers in memory
// (repeats.go: the replies of a finished call made with an idempotency key)
// is also written to a compacted Kafka topic, in the partition with the
// number of the request's partition, keyed by the correlation id, before
// the request's offset is committed (with WorkerExactlyOnce, in the same
// transaction as the replies and the offset). When the worker is assigned
// a request partition, it first reads that outcome partition to its end and
// puts what it finds, within the idempotency window, in its memory: a
// repeat that lands on it after a rebalance or a restart is answered from
// the stored outcome, exactly as a repeat on the worker that ran the call.
// An outcome that leaves the memory of the partition's owner (past the
// window, or the oldest over the byte bound) is deleted from the topic with
// a tombstone, so that the topic holds about what the owners hold.
//
// Record layout (the value; the key is the correlation id, the partition
// the request's partition number):
//
//	byte     format version, 1
//	byte     kind: 'R' an outcome, 'M' a load marker (see below)
//	uvarint  when the outcome was stored, Unix milliseconds
//	string   the request topic (after the topic mapper)
//	uvarint  the final gRPC status code
//	uvarint  number of reply records, then for each:
//	  nbytes   the value (null for the end-of-stream record)
//	  uvarint  number of headers, then for each:
//	    string   the header's name
//	    nbytes   the header's value
//
// where string is a uvarint length and the bytes, and nbytes is a uvarint
// of length+1 and the bytes, 0 standing for null. A tombstone (null value)
// deletes the outcome of its key. A load marker (key outcomeMarkerKey) is
// written by a worker loading the partition, which reads until it sees it:
// that is how it knows it has read what was written before, whatever
// control records of transactions follow the last outcome.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Format of the outcome records.
const (
	outcomeVersion    = 1
	outcomeKindReply  = 'R'
	outcomeKindMarker = 'M'
)

// outcomeMarkerKey is the key of the load markers: one per partition is
// kept by compaction.
var outcomeMarkerKey = []byte("kafkarpc:outcome-load-marker")

// outcomeLoadTimeout bounds the load of the outcomes of newly assigned
// partitions (a variable so that tests can shorten it).
var outcomeLoadTimeout = 30 * time.Second

// outcomeRecordMax is the largest outcome record written: the clients'
// record size limit less room for the key and the framing. A larger outcome
// is kept in memory only (logged).
const outcomeRecordMax = kafkaclient.MaxMessageBytes - 64<<10

// outcomeLog writes and loads the stored outcomes of a worker with
// WorkerOutcomeTopic.
type outcomeLog struct {
	w     *Worker
	topic string // after the topic mapper
	// parts holds the partition numbers the topic is known to have (looked
	// up at each load); an outcome of a request partition without its
	// outcome partition is kept in memory only. Guarded by Worker.mu.
	parts map[int32]bool
}

func newOutcomeLog(w *Worker, topic string) *outcomeLog {
	return &outcomeLog{w: w, topic: topic, parts: map[int32]bool{}}
}

// storedOutcome is an outcome record decoded.
type storedOutcome struct {
	at      time.Time
	topic   string // the request topic
	code    codes.Code
	records []kafkaclient.Record
}

// appendOutcome encodes an outcome record's value.
func appendOutcome(b []byte, o *storedOutcome) []byte {
	b = append(b, outcomeVersion, outcomeKindReply)
	b = binary.AppendUvarint(b, uint64(max(o.at.UnixMilli(), 0)))
	b = appendString(b, []byte(o.topic))
	b = binary.AppendUvarint(b, uint64(o.code))
	b = binary.AppendUvarint(b, uint64(len(o.records)))
	for _, r := range o.records {
		b = appendNullable(b, r.Value)
		b = binary.AppendUvarint(b, uint64(len(r.Headers)))
		for _, h := range r.Headers {
			b = appendString(b, []byte(h.Key))
			b = appendNullable(b, h.Value)
		}
	}
	return b
}

// outcomeSize is a bound of the encoded size of o's records.
func outcomeSize(records []kafkaclient.Record) int {
	n := 64
	for _, r := range records {
		n += len(r.Value) + 2*binary.MaxVarintLen64
		for _, h := range r.Headers {
			n += len(h.Key) + len(h.Value) + 2*binary.MaxVarintLen64
		}
	}
	return n
}

func appendString(b, s []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendNullable(b, s []byte) []byte {
	if s == nil {
		return append(b, 0)
	}
	return append(binary.AppendUvarint(b, uint64(len(s))+1), s...)
}

// errOutcomeMarker is returned by decodeOutcome for a load marker.
var errOutcomeMarker = errors.New("a load marker")

// decodeOutcome decodes an outcome record's value. The slices of the
// result share v.
func decodeOutcome(v []byte) (*storedOutcome, error) {
	d := outcomeDecoder{b: v}
	if len(v) < 2 {
		return nil, fmt.Errorf("%d bytes, shorter than the 2-byte header", len(v))
	}
	if v[0] != outcomeVersion {
		return nil, fmt.Errorf("format version %d, want %d", v[0], outcomeVersion)
	}
	switch v[1] {
	case outcomeKindReply:
	case outcomeKindMarker:
		return nil, errOutcomeMarker
	default:
		return nil, fmt.Errorf("record kind %q, want %q", v[1], outcomeKindReply)
	}
	d.b = v[2:]
	o := &storedOutcome{}
	o.at = time.UnixMilli(int64(d.uvarint("stored-at time")))
	o.topic = string(d.bytes("request topic"))
	o.code = codes.Code(d.uvarint("status code"))
	n := d.count("reply record count", 1)
	if d.err == nil {
		o.records = make([]kafkaclient.Record, 0, n)
	}
	for i := 0; i < n && d.err == nil; i++ {
		r := kafkaclient.Record{Value: d.nullable("reply value")}
		if nh := d.count("header count", 2); nh > 0 && d.err == nil {
			r.Headers = make([]kafkaclient.Header, 0, nh)
			for j := 0; j < nh && d.err == nil; j++ {
				k := string(d.bytes("header name"))
				r.Headers = append(r.Headers, kafkaclient.Header{Key: k, Value: d.nullable("header value")})
			}
		}
		o.records = append(o.records, r)
	}
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d bytes after the last reply record", len(d.b))
	}
	if d.err == nil && len(o.records) == 0 {
		d.err = errors.New("no reply record")
	}
	if d.err == nil {
		// A call's replies end with one end-of-stream record (null value)
		// and have no other: replayed without it, a caller would wait for
		// an end that never comes; with one earlier, it would take that
		// for the call's end.
		if last := len(o.records) - 1; o.records[last].Value != nil {
			d.err = fmt.Errorf("the last of %d reply records is no end-of-stream record (null value)", len(o.records))
		} else if i := slices.IndexFunc(o.records[:last], func(r kafkaclient.Record) bool { return r.Value == nil }); i >= 0 {
			d.err = fmt.Errorf("reply record %d of %d is an end-of-stream record (null value) before the last", i+1, len(o.records))
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	return o, nil
}

// outcomeDecoder reads the fields of an outcome record; the first error
// sticks.
type outcomeDecoder struct {
	b   []byte
	err error
}

func (d *outcomeDecoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%s: bad varint", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a count of items each at least min bytes long.
func (d *outcomeDecoder) count(what string, min int) int {
	v := d.uvarint(what)
	if d.err == nil && v > uint64(len(d.b)/min) {
		d.err = fmt.Errorf("%s %d exceeds the %d bytes left", what, v, len(d.b))
		return 0
	}
	return int(v)
}

func (d *outcomeDecoder) take(what string, n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%s: length %d exceeds the %d bytes left", what, n, len(d.b))
		return nil
	}
	s := d.b[:n:n]
	d.b = d.b[n:]
	return s
}

func (d *outcomeDecoder) bytes(what string) []byte { return d.take(what, d.uvarint(what)) }

func (d *outcomeDecoder) nullable(what string) []byte {
	n := d.uvarint(what)
	if n == 0 || d.err != nil {
		return nil
	}
	return d.take(what, n-1)
}

// write hands the outcome of c, a call whose replies are to be remembered,
// to the worker's replyWriter, to be acknowledged (or in the transaction)
// before c's offset is committed. An outcome too large for one record, or
// of a partition the outcome topic lacks, is kept in memory only.
func (o *outcomeLog) write(c *call, st *status.Status, at time.Time) {
	w := c.w
	w.mu.Lock()
	known := o.parts[c.tp.Partition]
	w.mu.Unlock()
	if !known {
		return // logged at the load
	}
	if size := outcomeSize(c.stored); size > outcomeRecordMax {
		w.cfg.logger.Warn("kafkarpc: outcome too large for the outcome topic; kept in memory only",
			"correlation_id", c.id, "bytes", size, "outcome_topic", o.topic)
		return
	}
	v := appendOutcome(make([]byte, 0, outcomeSize(c.stored)), &storedOutcome{at: at, topic: c.tp.Topic, code: st.Code(), records: c.stored})
	// Before the record goes: its delivery callback (outcomeAcked) may run
	// at once, on another goroutine, and must find it set to undo it.
	c.outcomeSent = true
	w.writer.sendOutcome(c, &kafkaclient.Record{Topic: o.topic, Partition: c.tp.Partition, Key: c.idb, Value: v})
}

// outcomeAcked is the delivery callback of an outcome record: a failure is
// logged and counted, never the caller's failure (its replies went out).
func (c *call) outcomeAcked(rec *kafkaclient.Record, err error) {
	defer c.sent.unacked.Done()
	if err != nil {
		c.outcomeSent = false // in memory only (read once flush is over)
		c.w.stats.outcomesUnwritten.Add(1)
		c.w.cfg.logger.Error("kafkarpc: writing a stored outcome; a repeat served by another worker runs again",
			"correlation_id", c.id, "outcome_topic", rec.Topic, "error", err,
			"topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first)
	}
}

// evicted deletes from the topic an outcome that left the memory of the
// worker (past the window, or over the byte bound), when the worker owns
// its partition: the partition's owner keeps the topic as its memory is.
// Called with Worker.mu held; Produce does not block.
func (o *outcomeLog) evicted(r *storedReply) {
	if r.tp.Topic == "" || o.w.parts[r.tp] == nil || !o.parts[r.tp.Partition] {
		return
	}
	o.tombstone(r.tp.Partition, []byte(r.id))
}

func (o *outcomeLog) tombstone(p int32, id []byte) {
	o.w.client.Produce(&kafkaclient.Record{Topic: o.topic, Partition: p, Key: id}, kafkaclient.AcksAll, o.tombstoned)
}

func (o *outcomeLog) tombstoned(rec *kafkaclient.Record, err error) {
	if err != nil {
		o.w.cfg.logger.Warn("kafkarpc: deleting an expired stored outcome", "outcome_topic", rec.Topic,
			"partition", rec.Partition, "correlation_id", string(rec.Key), "error", err)
	}
}

// load reads the outcomes of the request partitions parts, newly assigned,
// into the worker's memory, before any of their requests is served. It is
// bounded by outcomeLoadTimeout; a missing topic, a failure or a timeout is
// logged at error level (the partitions are served without the outcomes not
// read: a repeat runs again), and a malformed record is logged and skipped.
func (o *outcomeLog) load(parts []kafkaclient.TopicPartition) {
	w := o.w
	want := map[int32][]string{} // outcome partition -> its request topics
	for _, tp := range parts {
		want[tp.Partition] = append(want[tp.Partition], tp.Topic)
	}
	if len(want) == 0 {
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(w.pollCtx, outcomeLoadTimeout) // a shutdown ends it
	defer cancel()
	ids, err := o.read(ctx, want)
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		// Said the same whatever the client calls its timeout.
		err = fmt.Errorf("not done within the load's bound of %v: %w", outcomeLoadTimeout, err)
	}
	now := time.Now()
	loaded, expired := 0, 0
	w.mu.Lock()
	for p, byID := range ids {
		for id, so := range byID {
			if now.Sub(so.at) > w.cfg.idemWindow || replySize(so.records) > w.cfg.idemMaxBytes {
				if w.parts[kafkaclient.TopicPartition{Topic: so.topic, Partition: p}] != nil && o.parts[p] {
					o.tombstone(p, []byte(id))
				}
				expired++ // past the window, or more than the memory may hold
				continue
			}
			if w.repeats.stored.load(&storedReply{id: id, at: so.at, records: so.records,
				size: replySize(so.records), tp: kafkaclient.TopicPartition{Topic: so.topic, Partition: p}, inTopic: true}) {
				loaded++
			}
		}
	}
	w.repeats.stored.sortLoaded(now)
	w.mu.Unlock()
	w.stats.outcomesLoaded.Add(uint64(loaded))
	args := []any{"outcome_topic", o.topic, "partitions", fmt.Sprint(slices.Sorted(maps.Keys(want))), "loaded", loaded,
		"expired", expired, "took", time.Since(start).Round(time.Millisecond).String()}
	switch {
	case err == nil:
		w.cfg.logger.Info("kafkarpc: loaded stored outcomes", args...)
	case w.pollCtx.Err() != nil:
		w.cfg.logger.Info("kafkarpc: loading stored outcomes stopped by the worker's shutdown", append(args, "error", err)...)
	default:
		w.cfg.logger.Error("kafkarpc: loading stored outcomes: repeats of keyed calls served before the rebalance run again",
			append(args, "error", err)...)
	}
}

// read reads the outcome partitions of want to their end and returns the
// live outcomes of want's request topics by partition and correlation id
// (what it read before an error, with the error).
func (o *outcomeLog) read(ctx context.Context, want map[int32][]string) (map[int32]map[string]*storedOutcome, error) {
	w := o.w
	out := map[int32]map[string]*storedOutcome{}
	have, err := w.client.Partitions(ctx, o.topic)
	if err != nil {
		if errors.Is(err, kafkaclient.ErrUnknownTopic) {
			return out, fmt.Errorf("the outcome topic %q does not exist (create it with EnsureTopics and the worker's ExtraTopics, role %s): %w",
				o.topic, TopicOutcome, err)
		}
		return out, fmt.Errorf("looking up the outcome topic %q: %w", o.topic, err)
	}
	w.mu.Lock()
	clear(o.parts)
	for _, p := range have {
		o.parts[p] = true
	}
	w.mu.Unlock()
	var ps []int32
	var missing []int32
	for p := range want {
		if slices.Contains(have, p) {
			ps = append(ps, p)
			out[p] = map[string]*storedOutcome{}
		} else {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		w.cfg.logger.Error("kafkarpc: the outcome topic has fewer partitions than the request topic: outcomes of these partitions are kept in memory only",
			"outcome_topic", o.topic, "outcome_partitions", len(have), "request_partitions", fmt.Sprint(missing))
	}
	if len(ps) == 0 {
		return out, nil
	}
	// A marker written now: once it is read, so is everything before it.
	marks, err := o.mark(ctx, ps)
	if err != nil {
		return out, err
	}
	first, err := w.client.Offsets(ctx, o.topic, ps, kafkaclient.Earliest)
	if err != nil {
		return out, fmt.Errorf("looking up the outcome topic's offsets: %w", err)
	}
	r, err := w.client.NewReader(kafkaclient.ReaderConfig{ReadCommitted: w.cfg.readCommitted})
	if err != nil {
		return out, fmt.Errorf("reading the outcome topic: %w", err)
	}
	defer func() { _ = r.Close() }()
	assign := make([]kafkaclient.TopicPartitionOffset, 0, len(ps))
	for _, p := range ps {
		assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: o.topic, Partition: p, Offset: first[p]})
	}
	if err := r.Assign(assign); err != nil {
		return out, fmt.Errorf("reading the outcome topic: %w", err)
	}
	left := len(ps)
	done := map[int32]bool{}
	for left > 0 {
		recs, err := r.Poll(ctx)
		if err != nil {
			return out, fmt.Errorf("reading the outcome topic (%d of %d partitions read to their end): %w", len(ps)-left, len(ps), err)
		}
		for _, rec := range recs {
			if done[rec.Partition] || out[rec.Partition] == nil {
				continue
			}
			if rec.Offset >= marks[rec.Partition] {
				done[rec.Partition] = true
				left--
			}
			o.apply(rec, want[rec.Partition], out[rec.Partition])
		}
	}
	return out, nil
}

// apply takes one outcome record into byID: an outcome of one of topics,
// or a tombstone deleting one. A malformed record is logged and skipped.
func (o *outcomeLog) apply(rec *kafkaclient.Record, topics []string, byID map[string]*storedOutcome) {
	if string(rec.Key) == string(outcomeMarkerKey) {
		return
	}
	if rec.Value == nil {
		delete(byID, string(rec.Key))
		return
	}
	so, err := decodeOutcome(rec.Value)
	switch {
	case err == nil && len(rec.Key) == 0:
		err = errors.New("no key (correlation id)")
	case errors.Is(err, errOutcomeMarker):
		err = errors.New("a load marker under another key")
	case err == nil:
		err = o.checkIDs(rec.Key, so.records)
	}
	if err != nil {
		o.w.stats.outcomesMalformed.Add(1)
		o.w.cfg.logger.Warn("kafkarpc: skipping a malformed stored outcome", "error", err,
			"outcome_topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "key", string(rec.Key))
		return
	}
	if !slices.Contains(topics, so.topic) {
		return // an outcome of another request topic with the same partition number
	}
	byID[string(rec.Key)] = so // the latest, as compaction keeps it

}

// checkIDs reports an outcome whose reply records do not each carry the
// correlation id id, the record's key: replayed, a gateway routes a reply
// by that header, so the retry's caller would never see them.
func (o *outcomeLog) checkIDs(id []byte, records []kafkaclient.Record) error {
	name := o.w.cfg.names.CorrelationID
	for i, r := range records {
		j := slices.IndexFunc(r.Headers, func(h kafkaclient.Header) bool { return h.Key == name })
		switch {
		case j < 0:
			return fmt.Errorf("reply record %d of %d has no %s header", i+1, len(records), name)
		case string(r.Headers[j].Value) != string(id):
			return fmt.Errorf("reply record %d of %d carries %s %q, not the record's key", i+1, len(records), name, r.Headers[j].Value)
		}
	}
	return nil
}

// mark writes a load marker to each of ps and returns their offsets.
func (o *outcomeLog) mark(ctx context.Context, ps []int32) (map[int32]int64, error) {
	type ack struct {
		p   int32
		off int64
		err error
	}
	acks := make(chan ack, len(ps))
	for _, p := range ps {
		o.w.client.Produce(&kafkaclient.Record{Topic: o.topic, Partition: p, Key: outcomeMarkerKey, Value: []byte{outcomeVersion, outcomeKindMarker}},
			kafkaclient.AcksAll, func(r *kafkaclient.Record, err error) {
				a := ack{p: p, err: err}
				if err == nil {
					a.off = r.Offset
				}
				acks <- a
			})
	}
	marks := make(map[int32]int64, len(ps))
	for range ps {
		select {
		case a := <-acks:
			if a.err != nil {
				return nil, fmt.Errorf("writing a load marker to partition %d: %w", a.p, a.err)
			}
			marks[a.p] = a.off
		case <-ctx.Done():
			return nil, fmt.Errorf("writing load markers: %w", ctx.Err())
		}
	}
	return marks, nil
}
