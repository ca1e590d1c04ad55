package runtime

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Fetch (fanout) methods, in outline:
//
//   - One hub per fetched topic per gateway, started by the topic's first
//     caller and read until the gateway closes: one Kafka reader over every
//     partition the topic has when the hub starts, starting
//     GatewayFetchPreload records before the end of each partition. The hub
//     looks for partitions added to its topic every 10 seconds
//     (watchPartitions) and reads each new one from its earliest offset, so
//     that the records written there before it noticed are not lost.
//   - An event id that does not name a partition means "from its earliest
//     record" (WIRE.md): so an id taken before the topic grew resumes the
//     new partitions from their start, and a caller following the hub when
//     it notices new partitions gets their records from the first one, in
//     the window like any other. Its ids name them from then on. An id
//     naming a partition the hub does not read yet (another gateway noticed
//     it first) carries it on unchanged until the hub reads it, then resumes
//     it from there (fetchCall.syncPartsLocked).
//   - The hub keeps a window of the records it read last, bounded in bytes
//     (GatewayFetchWindow). A record is kept once, however many callers read
//     it; each caller has a cursor into the window and its own progress (the
//     next offset of every partition), which is its event id.
//   - A caller starting (from the earliest record) or resuming (after its
//     event id) at a position the window covers reads the window. One whose
//     position is older gets a catch-up reader of its own (at most
//     GatewayFetchCatchUpReaders at once), which reads Kafka from its position
//     until every partition of the caller is inside the window and not past
//     what the hub read; the caller then continues in the window from the
//     oldest record it has not received, skipping what it already has: no
//     gap, no repeat.
//   - Callers never slow the hub down: a caller that falls behind (see
//     GatewayFetchMaxLag) or whose next record left the window is ended with
//     UNAVAILABLE and the id to resume with. A caller holds no records of
//     its own beyond the batch it is sending, so memory is the window plus a
//     few KiB per caller.
//   - Each message sent is the record's value as it is, followed by the
//     event id as an unknown field (eventid.go, fanout_codec.go).
//
// fanout serves a gateway's fetch methods: one hub per fetched topic,
// started by the topic's first caller and read until the gateway closes,
// plus the bound on catch-up readers.
type fanout struct {
	g       *Gateway
	cfg     fanoutConfig
	catchUp chan struct{} // semaphore of catch-up readers

	mu   sync.Mutex
	hubs map[string]*hubSlot // by topic, as mapped

	stats fanoutCounters
}

// hubSlot is a hub being started or running; ready is closed once hub or
// err is set.
type hubSlot struct {
	ready chan struct{}
	hub   *fanoutHub
	err   error
}

type fanoutCounters struct {
	callers   atomic.Int64
	waiting   atomic.Int64
	delivered atomic.Uint64
	uncopied  atomic.Uint64
	catchUps  atomic.Uint64
	handOvers atomic.Uint64
	laggards  atomic.Uint64
	invalid   atomic.Uint64
}

// newFanout returns the fetch side of g, with its fetch settings.
func newFanout(g *Gateway) *fanout {
	cfg := g.cfg.fetch
	return &fanout{g: g, cfg: cfg, catchUp: make(chan struct{}, cfg.catchUpReaders), hubs: map[string]*hubSlot{}}
}

// FetchStats are counters of a gateway's fetch (fanout) methods.
type FetchStats struct {
	// Topics is the number of fetched topics with a shared reader.
	Topics int
	// Callers is the number of fetch calls in progress.
	Callers int64
	// Waiting is the number of those that delivered every record the
	// gateway has read of their topic and wait for more.
	Waiting int64
	// WindowRecords and WindowBytes are what the topics' windows hold now.
	WindowRecords int
	WindowBytes   int64
	// Delivered counts the messages sent to fetch callers.
	Delivered uint64
	// Uncopied counts the messages of Delivered sent without a copy (all of
	// them on a server with FetchServerCodec, none on others; see
	// fanout_codec.go).
	Uncopied uint64
	// CatchUps counts the callers that started behind a window and read
	// Kafka with a catch-up reader of their own.
	CatchUps uint64
	// HandOvers counts the catch-up readers that reached the window and
	// handed their caller over to the shared reader.
	HandOvers uint64
	// Laggards counts the callers ended with UNAVAILABLE because they fell
	// too far behind.
	Laggards uint64
	// Invalid counts the records skipped because their value is not a
	// well-formed protobuf message (each time a caller's stream passes one).
	Invalid uint64
}

// FetchStats returns the gateway's fetch counters. Safe for concurrent use.
func (g *Gateway) FetchStats() FetchStats {
	f := g.fanout
	s := FetchStats{
		Callers:   f.stats.callers.Load(),
		Waiting:   f.stats.waiting.Load(),
		Delivered: f.stats.delivered.Load(),
		Uncopied:  f.stats.uncopied.Load(),
		CatchUps:  f.stats.catchUps.Load(),
		HandOvers: f.stats.handOvers.Load(),
		Laggards:  f.stats.laggards.Load(),
		Invalid:   f.stats.invalid.Load(),
	}
	f.mu.Lock()
	var hubs []*fanoutHub
	for _, slot := range f.hubs {
		select {
		case <-slot.ready:
			if slot.hub != nil {
				hubs = append(hubs, slot.hub)
			}
		default:
		}
	}
	f.mu.Unlock()
	s.Topics = len(hubs)
	for _, h := range hubs {
		h.mu.RLock()
		s.WindowRecords += len(h.entries) - h.head
		s.WindowBytes += h.bytes
		h.mu.RUnlock()
	}
	return s
}

// hub returns the running hub of topic, starting it if needed. Concurrent
// first callers wait for one start; a failed start is not remembered, so the
// next caller tries again.
func (f *fanout) hub(ctx context.Context, topic string) (*fanoutHub, error) {
	f.mu.Lock()
	slot := f.hubs[topic]
	if slot == nil {
		if f.g.ctx.Err() != nil {
			f.mu.Unlock()
			return nil, status.Error(f.g.closedCode(), f.g.closingMessage())
		}
		slot = &hubSlot{ready: make(chan struct{})}
		f.hubs[topic] = slot
		f.mu.Unlock()
		slot.hub, slot.err = f.startHub(topic)
		if slot.err != nil {
			f.mu.Lock()
			delete(f.hubs, topic)
			f.mu.Unlock()
		}
		close(slot.ready)
	} else {
		f.mu.Unlock()
	}
	select {
	case <-slot.ready:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if slot.err != nil {
		return nil, slot.err
	}
	return slot.hub, nil
}

// fanoutHub reads one fetched topic for every caller of this gateway: one
// Kafka reader over all the topic's partitions (those it had when the hub
// started, and those added since as it notices them: watchPartitions) and a
// window of the most recent records, bounded in bytes.
type fanoutHub struct {
	f       *fanout
	topic   string
	reader  kafkaclient.Reader
	refresh time.Duration // partitionsRefresh when the hub started
	watched chan struct{} // closed when watchPartitions returned
	// unassigned are partitions added to parts whose Assign to the reader
	// failed, assigned again at the next look (watchPartitions' own).
	unassigned []kafkaclient.TopicPartitionOffset
	// missingLooks counts the consecutive looks that found the topic
	// missing (watchPartitions' own): at two the hub ends (addPartitions).
	missingLooks int
	// shortLooks counts the consecutive looks that found a partition ending
	// before where the hub read (checkEnds; watchPartitions' own).
	shortLooks int
	// id is the topic's id when the hub started (or first found it), zero
	// while unknown (checkID; set before watchPartitions starts, then its
	// own).
	id [16]byte

	mu sync.RWMutex
	// parts are the partitions read, sorted: only ever appended to (Kafka
	// numbers a topic's partitions from 0 and adds new ones after the
	// last), so that a copy of the slice taken under mu stays valid. index
	// maps a partition to its position in parts; it is replaced, never
	// changed, so that a copy taken under mu may be read without it. Every
	// per-partition slice below is indexed by that position.
	parts   []int32
	index   map[int32]int
	from    []int64    // per partition: the offset the hub started reading at
	entries []hubEntry // entries[head:] is the window, oldest first
	head    int
	nextSeq uint64        // sequence number of the next record read
	cum     int64         // bytes of every record read so far
	bytes   int64         // bytes in the window
	lo      []int64       // per partition: the window holds every record from lo
	hi      []int64       // per partition: up to hi, the next offset the hub reads
	whole   []bool        // per partition: the window starts at the earliest record retained when the hub started reading it
	wake    chan struct{} // closed (and replaced) when records arrive or the hub ends
	closed  bool
	// ended says why the hub ended before the gateway closed, and endCode
	// the code its callers are told it with (endHub).
	ended   string
	endCode codes.Code

	cancel      context.CancelFunc // ends run
	lastRecheck time.Time          // of checkRestart; run's own
}

// hubEntry is one record in the window. Skipped records (tombstones, values
// that are not protobuf) stay as entries without their bytes, so that every
// caller's progress moves past them.
type hubEntry struct {
	seq     uint64
	cum     int64 // cum of the hub after this record
	size    int64
	pi      int32 // partition index
	offset  int64
	skip    skipReason
	key     []byte
	value   []byte
	headers []kafkaclient.Header
}

type skipReason uint8

const (
	deliverable skipReason = iota
	skipTombstone
	skipInvalid
)

// entryOverhead approximates the bookkeeping bytes of one window entry.
const entryOverhead = 96

// startHub looks up topic's partitions, positions a reader at the preload
// point of each, and starts reading.
func (f *fanout) startHub(topic string) (*fanoutHub, error) {
	g := f.g
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.setupTimeout)
	defer cancel()
	parts, err := g.client.Partitions(ctx, topic)
	if unknownTopic(err) {
		return nil, status.Errorf(codes.NotFound, "fetch topic %q does not exist: %v", topic, err)
	}
	if err != nil {
		return nil, status.Errorf(lookupCode(err), "fetch topic %q: %v", topic, err)
	}
	if len(parts) == 0 {
		return nil, status.Errorf(codes.Unavailable, "fetch topic %q has no partitions", topic)
	}
	// The id before the offsets, so that every record read is of this
	// topic or of one created after it, which checkID then tells apart.
	id := f.topicID(ctx, topic)
	parts = slices.Clone(parts)
	slices.Sort(parts)
	first, err := g.client.Offsets(ctx, topic, parts, kafkaclient.Earliest)
	if err != nil {
		return nil, status.Errorf(lookupCode(err), "fetch topic %q: looking up earliest offsets: %v", topic, err)
	}
	end, err := g.client.Offsets(ctx, topic, parts, kafkaclient.Latest)
	if err != nil {
		return nil, status.Errorf(lookupCode(err), "fetch topic %q: looking up end offsets: %v", topic, err)
	}
	h := &fanoutHub{f: f, topic: topic, id: id, parts: parts, index: make(map[int32]int, len(parts)),
		from: make([]int64, len(parts)), lo: make([]int64, len(parts)), hi: make([]int64, len(parts)), whole: make([]bool, len(parts)),
		wake: make(chan struct{}), refresh: partitionsRefresh, watched: make(chan struct{})}
	preload := f.cfg.preloadOf(len(parts))
	assign := make([]kafkaclient.TopicPartitionOffset, len(parts))
	for i, p := range parts {
		h.index[p] = i
		start := first[p]
		if end[p]-start > preload {
			start = end[p] - preload
		}
		h.from[i], h.lo[i], h.hi[i], h.whole[i] = start, start, start, start == first[p]
		assign[i] = kafkaclient.TopicPartitionOffset{Topic: topic, Partition: p, Offset: start}
	}
	reader, err := g.client.NewReader(kafkaclient.ReaderConfig{ReadCommitted: g.cfg.readCommitted})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "fetch topic %q: %v", topic, err)
	}
	if err := reader.Assign(assign); err != nil {
		_ = reader.Close()
		return nil, status.Errorf(codes.Unavailable, "fetch topic %q: assigning partitions: %v", topic, err)
	}
	h.reader = reader
	if !f.track() {
		_ = reader.Close()
		return nil, status.Error(f.g.closedCode(), f.g.closingMessage())
	}
	var hctx context.Context
	hctx, h.cancel = context.WithCancel(g.ctx)
	go h.watchPartitions(hctx)
	go h.run(hctx)
	g.cfg.logger.Info("kafkarpc: fetch hub started", "topic", topic, "partitions", len(parts), "from", assign)
	return h, nil
}

// track registers a goroutine that owns a reader with the gateway, so that
// Close waits for it; false once the gateway is closing.
func (f *fanout) track() bool { return f.g.count() }

// run reads the topic until ctx ends (the gateway closes, or the hub ends
// itself: checkRestart), then closes the reader. A hub that ended itself
// leaves the gateway's hubs, so that the topic's next caller starts a new
// one.
func (h *fanoutHub) run(ctx context.Context) {
	defer h.f.g.wg.Done()
	defer func() {
		h.mu.RLock()
		ended := h.ended != ""
		h.mu.RUnlock()
		if ended { // first, so that a caller told so finds a new hub
			f := h.f
			f.mu.Lock()
			slot := f.hubs[h.topic]
			f.mu.Unlock()
			if slot != nil {
				// A hub can end before hub() stored it in its slot (Kafka
				// refused its first read): slot.hub is read once stored.
				<-slot.ready
				f.mu.Lock()
				if f.hubs[h.topic] == slot && slot.hub == h {
					delete(f.hubs, h.topic)
				}
				f.mu.Unlock()
			}
		}
		h.mu.Lock()
		h.closed = true
		close(h.wake)
		h.mu.Unlock()
		<-h.watched // its last Assign returned: ctx ended for it too
		_ = h.reader.Close()
	}()
	// A topic that keeps failing is logged at its first failure, then at
	// most once a refusalLogEvery, and once when it is read again.
	var failures refusalLog
	pollUntilDone(ctx, h.reader.Poll, func(err error) {
		if failures.refused(time.Now()) {
			h.f.g.cfg.logger.Warn("kafkarpc: reading fetch topic", "topic", h.topic, "error", err)
		}
		if notAuthorized(err) {
			// Its callers would wait for records forever: end them
			// PERMISSION_DENIED; the topic's next caller starts a new hub.
			h.endHub(codes.PermissionDenied, fmt.Sprintf("fetch topic %q: the gateway may not read it: %v", h.topic, err), "")
		}
	}, func(recs []*kafkaclient.Record) {
		if failures.read() {
			h.f.g.cfg.logger.Info("kafkarpc: reading fetch topic again", "topic", h.topic)
		}
		if back := h.append(recs); back != nil {
			h.checkRestart(ctx, back)
		}
	})
}

// watchPartitions looks for partitions added to the hub's topic every
// partitionsRefresh (as it was when the hub started) until ctx ends
// (addPartitions).
func (h *fanoutHub) watchPartitions(ctx context.Context) {
	defer close(h.watched)
	watchPartitions(ctx, h.refresh, h.f.g.cfg.logger, "fetch", h.topic, h.addPartitions)
}

// addPartitions reads the partitions added to the hub's topic since it
// last looked, from their earliest offsets: records written there before
// the hub noticed them are not lost. The hub's state takes them first, then
// the reader, so that their first records find them; a caller learns of
// them at its next look at the hub (fetchCall.syncPartsLocked). Run by
// watchPartitions only, the one writer of parts and index.
func (h *fanoutHub) addPartitions(ctx context.Context) error {
	g := h.f.g
	if len(h.unassigned) > 0 {
		if err := h.reader.Assign(h.unassigned); err != nil {
			return fmt.Errorf("assigning partitions %v again: %w", h.unassigned, err)
		}
		h.unassigned = nil
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.setupTimeout)
	defer cancel()
	parts, err := g.client.Partitions(ctx, h.topic)
	if unknownTopic(err) {
		// The topic was deleted: its callers would wait for records
		// forever. Two looks in a row, so that one broker's stale answer
		// does not end them; one deleted and created again meanwhile is
		// checkRestart's.
		h.missingLooks++
		if h.missingLooks >= 2 {
			h.endHub(codes.NotFound, fmt.Sprintf("fetch topic %q was deleted: %v", h.topic, err), "kafkarpc: fetch hub ends: its topic was deleted")
		}
		return err
	}
	if err != nil {
		return err
	}
	h.missingLooks = 0
	if h.checkID(ctx) {
		return nil
	}
	if ended, err := h.checkEnds(ctx); ended || err != nil {
		return err
	}
	var added []int32
	for _, p := range parts {
		if _, ok := h.index[p]; !ok { // the writer's own: no lock needed
			added = append(added, p)
		}
	}
	if len(added) == 0 {
		return nil
	}
	slices.Sort(added)
	if last := h.parts[len(h.parts)-1]; added[0] < last {
		// Not Kafka: it numbers partitions from 0 with no gap.
		return fmt.Errorf("new partitions %v number below partition %d read already; not read", added, last)
	}
	first, err := g.client.Offsets(ctx, h.topic, added, kafkaclient.Earliest)
	if err != nil {
		return fmt.Errorf("looking up the earliest offsets of new partitions %v: %w", added, err)
	}
	assign := make([]kafkaclient.TopicPartitionOffset, len(added))
	index := maps.Clone(h.index)
	h.mu.Lock()
	for i, p := range added {
		index[p] = len(h.parts)
		h.parts = append(h.parts, p)
		h.from = append(h.from, first[p])
		h.lo = append(h.lo, first[p])
		h.hi = append(h.hi, first[p])
		h.whole = append(h.whole, true)
		assign[i] = kafkaclient.TopicPartitionOffset{Topic: h.topic, Partition: p, Offset: first[p]}
	}
	h.index = index
	h.mu.Unlock()
	g.cfg.logger.Info("kafkarpc: fetch hub reads partitions added to its topic", "topic", h.topic, "from", assign)
	if err := h.reader.Assign(assign); err != nil {
		h.unassigned = assign
		return fmt.Errorf("assigning new partitions %v: %w", added, err)
	}
	return nil
}

// restartRecheck is how often, at most, a hub that reads records from
// before where it is asks the broker whether its topic's log restarted.
const restartRecheck = time.Second

// checkRestart handles a record of the topic at an offset the hub had
// already passed (back). Kafka never hands an assigned reader such a record
// unless the partition's log restarted: the topic was deleted and created
// again, or its records were deleted, and the reader reset to the new log.
// When the partition's end is now before where the hub read, the records
// the window holds and the event ids handed out name records that no longer
// exist, and the new records would be dropped as already read: the hub
// ends, its callers get UNAVAILABLE saying why, and the next caller starts
// a new hub on the new log.
func (h *fanoutHub) checkRestart(ctx context.Context, back *kafkaclient.Record) {
	if time.Since(h.lastRecheck) < restartRecheck {
		return
	}
	h.lastRecheck = time.Now()
	g := h.f.g
	qctx, cancel := context.WithTimeout(ctx, g.cfg.setupTimeout)
	defer cancel()
	end, err := g.client.Offsets(qctx, h.topic, []int32{back.Partition}, kafkaclient.Latest)
	if err != nil {
		g.cfg.logger.Warn("kafkarpc: fetch topic: looking up an end offset", "topic", h.topic, "partition", back.Partition, "error", err)
		return
	}
	h.mu.RLock()
	read := h.hi[h.index[back.Partition]]
	h.mu.RUnlock()
	if end[back.Partition] < read {
		h.restarted(back.Partition, end[back.Partition], read)
	}
}

// restarted ends the hub because partition p of its topic now ends at end,
// before offset read the hub had read (see checkRestart).
func (h *fanoutHub) restarted(p int32, end, read int64) {
	h.endHub(codes.Unavailable, fmt.Sprintf("fetch topic %q was deleted and created again, or its records deleted: partition %d now ends at offset %d, before offset %d this gateway had read; "+
		"event ids from before name records that no longer exist: start again without one", h.topic, p, end, read),
		"kafkarpc: fetch hub ends: its topic's log restarted", "partition", p, "end", end, "read", read)
}

// endHub ends the hub, unless it ended already, its callers told code and
// why (fetchCall.hubClosedLocked: UNAVAILABLE is a restarted log), logs msg
// (if not empty) with args, and cancels the hub.
func (h *fanoutHub) endHub(code codes.Code, why, msg string, args ...any) {
	h.mu.Lock()
	if h.ended == "" {
		h.ended, h.endCode = why, code
	}
	h.mu.Unlock()
	if msg != "" {
		h.f.g.cfg.logger.Warn(msg, append([]any{"topic", h.topic}, args...)...)
	}
	h.cancel()
}

// topicID returns topic's id, or the zero id when the client does not
// look ids up (kafkaclient.TopicIdentifier) or the lookup failed.
func (f *fanout) topicID(ctx context.Context, topic string) [16]byte {
	ti, ok := f.g.client.(kafkaclient.TopicIdentifier)
	if !ok {
		return [16]byte{}
	}
	id, err := ti.TopicID(ctx, topic)
	if err != nil {
		f.g.cfg.logger.Debug("kafkarpc: fetch hub: looking up its topic's id", "topic", topic, "error", err)
		return [16]byte{}
	}
	return id
}

// checkID ends the hub when its topic's id is no longer the one it
// started with: the topic was deleted and created again. Neither
// checkRestart nor checkEnds sees that when the new topic was written past
// where the hub had read before its reader noticed: the reader then goes on
// at the same offsets of the new log, and the callers would miss its first
// records and keep ids that name records that no longer exist. Run by
// watchPartitions at each look; reports whether the hub ended. A hub that
// does not know its topic's id takes the first it finds.
func (h *fanoutHub) checkID(ctx context.Context) bool {
	id := h.f.topicID(ctx, h.topic)
	switch {
	case id == [16]byte{} || id == h.id:
		return false
	case h.id == [16]byte{}:
		h.id = id
		return false
	}
	h.endHub(codes.Unavailable, fmt.Sprintf("fetch topic %q was deleted and created again (its topic id changed); "+
		"event ids from before name records that no longer exist: start again without one", h.topic),
		"kafkarpc: fetch hub ends: its topic was deleted and created again", "id", fmt.Sprintf("%x", id), "was", fmt.Sprintf("%x", h.id))
	return true
}

// checkEnds ends the hub when a partition of its topic now ends before
// where the hub read (the topic was deleted and created again): checkRestart
// sees that only once a record of the new log arrives, and until then the
// window served the old log's records to new callers. Run by
// watchPartitions at each look; it ends the hub at the second look in a
// row that finds it so, and reports whether the hub ended.
func (h *fanoutHub) checkEnds(ctx context.Context) (bool, error) {
	// Where the hub read before the lookup: the hub reads on meanwhile, and
	// an end looked up before it read a record is not a log that restarted.
	h.mu.RLock()
	read := slices.Clone(h.hi)
	h.mu.RUnlock()
	end, err := h.f.g.client.Offsets(ctx, h.topic, h.parts, kafkaclient.Latest) // parts: the watcher's own
	if err != nil {
		return false, fmt.Errorf("looking up end offsets: %w", err)
	}
	for i, p := range h.parts {
		if e, ok := end[p]; ok && e < read[i] {
			// Two looks in a row, as for a missing topic: a broker's
			// passing answer must not end every caller.
			if h.shortLooks++; h.shortLooks < 2 {
				return false, nil
			}
			h.restarted(p, e, read[i])
			return true, nil
		}
	}
	h.shortLooks = 0
	return false, nil
}

// append adds records to the window, evicts the oldest beyond its size,
// and wakes the callers waiting for records. It returns the first record
// at an offset the hub had passed (see checkRestart), or nil.
func (h *fanoutHub) append(recs []*kafkaclient.Record) (back *kafkaclient.Record) {
	var invalid []*kafkaclient.Record
	h.mu.Lock()
	for _, r := range recs {
		pi, ok := h.index[r.Partition]
		if !ok || r.Topic != h.topic {
			continue
		}
		if r.Offset < h.hi[pi] {
			if back == nil {
				back = r
			}
			continue
		}
		h.hi[pi] = r.Offset + 1
		e := hubEntry{seq: h.nextSeq, pi: int32(pi), offset: r.Offset, size: entryOverhead}
		switch {
		case r.Value == nil:
			e.skip = skipTombstone
		case !wire.ValidWire(r.Value):
			e.skip = skipInvalid
			invalid = append(invalid, r)
		default:
			e.key, e.value, e.headers = r.Key, r.Value, r.Headers
			e.size += int64(len(r.Key) + len(r.Value))
			for _, hd := range r.Headers {
				e.size += int64(len(hd.Key) + len(hd.Value))
			}
		}
		h.nextSeq++
		h.cum += e.size
		h.bytes += e.size
		e.cum = h.cum
		h.entries = append(h.entries, e)
	}
	window := h.f.cfg.windowBytes
	for h.bytes > window && len(h.entries)-h.head > 1 {
		e := &h.entries[h.head]
		h.lo[e.pi] = e.offset + 1
		h.whole[e.pi] = false
		h.bytes -= e.size
		*e = hubEntry{}
		h.head++
	}
	if h.head > 1024 && h.head > len(h.entries)/2 {
		n := copy(h.entries, h.entries[h.head:])
		clear(h.entries[n:])
		h.entries = h.entries[:n]
		h.head = 0
	}
	close(h.wake)
	h.wake = make(chan struct{})
	h.mu.Unlock()
	for _, r := range invalid {
		h.f.g.cfg.logger.Warn("kafkarpc: fetch record is not a protobuf message; callers skip it",
			"topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "bytes", len(r.Value))
	}
	return back
}

// firstSeqLocked returns the sequence number of the oldest record in the
// window (nextSeq when it is empty).
func (h *fanoutHub) firstSeqLocked() uint64 {
	if h.head < len(h.entries) {
		return h.entries[h.head].seq
	}
	return h.nextSeq
}

// coversLocked reports whether the window can serve a caller positioned at
// next (per partition index): every partition's position is inside the
// window or at its end, and not beyond what the hub read when atMost is set.
func (h *fanoutHub) coversLocked(next []int64, atMost bool) bool {
	for i := range h.parts {
		if next[i] < h.lo[i] || (atMost && next[i] > h.hi[i]) {
			return false
		}
	}
	return true
}

// cursorLocked returns the sequence number from which a caller positioned
// at next (inside the window, see coversLocked) continues: that of the
// oldest record in the window it has not received. It scans back from the
// newest record and stops as soon as every partition with records to
// deliver showed a record older than the caller's position.
func (h *fanoutHub) cursorLocked(next []int64) uint64 {
	cursor := h.nextSeq
	pending := 0
	done := make([]bool, len(h.parts))
	for i := range h.parts {
		if next[i] >= h.hi[i] {
			done[i] = true
		} else {
			pending++
		}
	}
	for i := len(h.entries) - 1; i >= h.head && pending > 0; i-- {
		e := &h.entries[i]
		if done[e.pi] {
			continue
		}
		if e.offset >= next[e.pi] {
			cursor = e.seq
		} else {
			done[e.pi] = true
			pending--
		}
	}
	return cursor
}

// lagLocked returns how far a caller whose next record is seq is behind
// the newest record read, in window bytes.
func (h *fanoutHub) lagLocked(seq uint64) int64 {
	first := h.firstSeqLocked()
	if seq >= h.nextSeq || seq < first {
		if seq < first {
			return h.cum
		}
		return 0
	}
	e := &h.entries[h.head+int(seq-first)]
	return h.cum - (e.cum - e.size)
}
