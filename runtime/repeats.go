package runtime

import (
	"bytes"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// repeats owns everything the worker knows about requests that repeat a
// correlation id it has seen: the ids of finished calls whose remaining
// request records are still to come (trailing) and, of those served, the
// first offsets held until those records are read (held), the repeated
// attempts of calls in flight whose records are skipped until their end (dupes), those
// attempts waiting for their call's outcome (waiters), the attempts that a
// newer attempt superseded (superseded), and the replies of recent calls
// made with an idempotency key (stored).
//
// A retry with the same idempotency key shares the correlation id of its
// earlier attempts, so replies alone cannot tell the attempts apart: what
// separates them belongs here.
//
// Every method is called with Worker.mu held, except answerWaiters.
type repeats struct {
	trailing *recentSet
	held     heldTable
	attempts heldTable // first offsets of answered attempts still being skipped (dupes)
	// dupes holds, by correlation id, the attempt ids of the repeated
	// attempts being skipped (nil for one without an attempt id).
	dupes   map[string][][]byte
	waiters map[*call][]waiter
	// superseded holds, by correlation id, the attempt ids of the calls
	// that a newer attempt superseded (Worker.supersede): none of their
	// records is served again, nor supersedes the newer attempt in turn.
	// Bounded as trailing is; kept across rebalances, unlike trailing:
	// a superseded attempt's caller gave up on it for good.
	superseded *recentSet
	stored     *replyStore
	// handOn, when not nil, takes over the offsets of a superseded call's
	// held entry when that entry is released (Worker.handOn), and reports
	// whether it did.
	handOn func(id string, pt *partTrack, first int64, extra []int64) bool
}

func newRepeats(window time.Duration, maxBytes int) repeats {
	return repeats{
		trailing:   newRecentSet(1 << 16),
		superseded: newRecentSet(1 << 16),
		held:       heldTable{},
		attempts:   heldTable{},
		dupes:      map[string][][]byte{},
		waiters:    map[*call][]waiter{},
		stored:     newReplyStore(window, maxBytes),
	}
}

// waiter is a repeated request that arrived while its call was running.
type waiter struct {
	rec  *kafkaclient.Record
	env  wire.Envelope // rec's headers, decoded once by the dispatcher
	pt   *partTrack
	late bool // arrived once the call was ending: after its caller could have seen the outcome
	// ended: the attempt's end-of-stream record was read (rec itself, for
	// an empty client stream); more: a data record after rec was, or the
	// end was a cancel. Of a proxied method, whose kind the worker does
	// not know, a waiter is run again only when its request was rec alone
	// and complete (ended, not more): see rerunMethod.
	ended, more bool
}

// sameAttempt reports whether attempt ids a and b may name the same attempt:
// equal, or either unknown (a gateway that writes none, such as Zilla's).
func sameAttempt(a, b []byte) bool { return a == nil || b == nil || bytes.Equal(a, b) }

// skipDuplicate reports whether a record with correlation id id, of attempt
// attempt, belongs to a repeated attempt being skipped; its end-of-stream
// record (end) ends the skipping. A record of another attempt (a later
// retry, once the skipped one's end never came) is not skipped.
func (r *repeats) skipDuplicate(id []byte, attempt []byte, end bool) bool {
	if !r.skipping(string(id), attempt) {
		return false
	}
	if end {
		r.dropDupe(string(id), attempt)
		if h := r.attempts.find(string(id), attempt); h != nil {
			r.release(h)
		}
	}
	return true
}

// dropDupe ends the skipping of the records of attempt attempt with
// correlation id id.
func (r *repeats) dropDupe(id string, attempt []byte) {
	list := r.dupes[id]
	i := slices.IndexFunc(list, func(a []byte) bool { return sameAttempt(a, attempt) })
	if i < 0 {
		return
	}
	if list = slices.Delete(list, i, i+1); len(list) == 0 {
		delete(r.dupes, id)
	} else {
		r.dupes[id] = list
	}
}

// skipping reports whether the records of attempt attempt with correlation
// id id are being skipped.
func (r *repeats) skipping(id string, attempt []byte) bool {
	return slices.ContainsFunc(r.dupes[id], func(a []byte) bool { return sameAttempt(a, attempt) })
}

// skipTrailing reports whether a record with correlation id id, of attempt
// attempt, is one of the remaining request records of a call that is over;
// its end-of-stream record (end) is the last of them. A held first offset
// (hold) is released then. A record of another attempt is not: it is a
// retry (whose caller's earlier attempt may never have sent its end), to be
// answered from the stored outcome or served.
func (r *repeats) skipTrailing(id []byte, attempt []byte, end bool) bool {
	h := r.held.find(string(id), attempt) // not another attempt's call held
	trailing := r.trailing.has(string(id), attempt)
	if h == nil && !trailing {
		return false
	}
	if end {
		r.trailing.remove(string(id), attempt)
		if h != nil {
			r.release(h)
		}
	}
	return true
}

// wait makes the first record of a new attempt of c (a retry with the same
// idempotency key, or the same request read twice) wait for c's outcome;
// the attempt's offset is held until it is answered (answerWaiters) and the
// rest of its records are skipped (none follow an end-of-stream record: the
// whole request of an empty client stream).
func (r *repeats) wait(c *call, rec *kafkaclient.Record, env *wire.Envelope, pt *partTrack) {
	r.waiters[c] = append(r.waiters[c], waiter{rec: rec, env: *env, pt: pt, late: c.ending.Load(), ended: env.EndOfStream})
	pt.begin(rec.Offset)
	if !env.EndOfStream && !r.skipping(c.id, env.Attempt) {
		r.dupes[c.id] = append(r.dupes[c.id], env.Attempt)
	}
}

// noteSkipped notes, on the attempt's waiter for c, a record of that
// attempt skipped as a duplicate's: its end (end, a cancel counting as
// more) or another data record.
func (r *repeats) noteSkipped(c *call, env *wire.Envelope) {
	ws := r.waiters[c]
	for i := range ws {
		if d := &ws[i]; !d.ended && sameAttempt(d.env.Attempt, env.Attempt) {
			if !env.EndOfStream || env.Cancel() {
				d.more = true
			}
			d.ended = d.ended || env.EndOfStream
			return
		}
	}
}

// hasWaiters reports whether repeated attempts wait for c's outcome.
func (r *repeats) hasWaiters(c *call) bool { return len(r.waiters[c]) > 0 }

// takeWaiters returns the attempts waiting for c and forgets them.
func (r *repeats) takeWaiters(c *call) []waiter {
	if len(r.waiters) == 0 {
		return nil
	}
	ws := r.waiters[c]
	delete(r.waiters, c)
	return ws
}

// trail remembers id, of a call of attempt attempt that ended before its
// last request record, so that its remaining records are skipped.
func (r *repeats) trail(id string, attempt []byte) { r.trailing.add(id, attempt) }

// supersede remembers attempt (not nil) of id as superseded by a newer
// attempt while its request still streamed in: its remaining records are
// skipped as trailing ones (its end releasing its held offset, skipTrailing)
// and, after its end too, as superseded (wasSuperseded).
func (r *repeats) supersede(id string, attempt []byte) {
	r.trailing.add(id, attempt)
	r.superseded.add(id, attempt)
}

// wasSuperseded reports whether attempt of id was superseded here. A
// record without an attempt id (a gateway that writes none, such as
// Zilla's) never was.
func (r *repeats) wasSuperseded(id []byte, attempt []byte) bool {
	if attempt == nil || len(r.superseded.set) == 0 {
		return false
	}
	return r.superseded.has(string(id), attempt)
}

// lateEnd is skipTrailing's work at the end-of-stream record of c, a call
// released before that record, which was fed to c (Worker.endFed): c's
// trail is dropped and its held first offset, if held, released.
func (r *repeats) lateEnd(c *call) {
	r.trailing.remove(c.id, c.attemptID())
	for _, h := range r.held[c.id] {
		if h.tp == c.tp && h.first == c.first {
			r.release(h)
			return
		}
	}
}

// heldCall is a served call whose input was not complete when it ended:
// its first offset stays unfinished until its end-of-stream record is read,
// so that the partition's committed offset cannot pass the call while some
// of its request records are unread. Were it committed, the partition's
// next owner (after a crash or a rebalance) would start reading inside the
// call and run a handler on the rest of its request as a new call.
type heldCall struct {
	id    string
	tp    kafkaclient.TopicPartition
	pt    *partTrack
	first int64
	// attempt is the attempt id of the held call or attempt, nil without one.
	attempt []byte
	// extra are first offsets of earlier attempts that the held call kept
	// unfinished (call.extra): finished with first.
	extra []int64
	// superseded: the held call was superseded; its offsets go on to the
	// call of its correlation id in flight, if any, when released.
	superseded bool
	timer      *time.Timer // the bound (the call's deadline); nil without one
	table      heldTable   // where it is kept: held, or attempts
}

// heldTable holds first offsets by correlation id: one per attempt, since
// several attempts of one id (a call and the retries of its caller) may
// each have request records still to be read.
type heldTable map[string][]*heldCall

// find returns the held offset of id of an attempt that may be attempt
// (sameAttempt), or nil.
func (t heldTable) find(id string, attempt []byte) *heldCall {
	for _, h := range t[id] {
		if sameAttempt(h.attempt, attempt) {
			return h
		}
	}
	return nil
}

// has reports whether h is kept in t.
func (t heldTable) has(h *heldCall) bool { return slices.Contains(t[h.id], h) }

// remove takes h out of t.
func (t heldTable) remove(h *heldCall) {
	list := t[h.id]
	if i := slices.Index(list, h); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	if len(list) == 0 {
		delete(t, h.id)
	} else {
		t[h.id] = list
	}
}

// hold keeps c's first offset unfinished until its end-of-stream record is
// read (skipTrailing) or until the call's deadline (until; none when zero),
// whichever comes first: a caller that died mid-stream never sends its end,
// and must not stop the partition's commits for longer than its call could
// last. expire is run, without Worker.mu, once the deadline passes.
//
// The offsets of earlier attempts that c kept unfinished (call.extra) are
// held with its own; superseded says c was superseded (Worker.handOn).
func (r *repeats) hold(c *call, superseded bool, until time.Time, expire func(*heldCall)) {
	if old := r.held.find(c.id, c.attemptID()); old != nil { // not expected: its attempt is skipped while held
		r.release(old)
	}
	r.keep(&heldCall{id: c.id, tp: c.tp, pt: c.pt, first: c.first, attempt: c.attemptID(), extra: c.extra,
		superseded: superseded, table: r.held}, until, expire)
}

// holdAttempt is hold for an answered attempt whose records are still
// being skipped (skipDuplicate): its first offset, d's, stays unfinished
// until the attempt's end-of-stream record is read or until until, for the
// same reason as a call's. Several attempts of one id may be held at once.
func (r *repeats) holdAttempt(d *waiter, id string, until time.Time, expire func(*heldCall)) {
	if old := r.attempts.find(id, d.env.Attempt); old != nil { // not expected: one waiter per skipped attempt
		r.release(old)
	}
	r.keep(&heldCall{id: id, tp: tpOf(d.rec), pt: d.pt, first: d.rec.Offset, attempt: d.env.Attempt, table: r.attempts}, until, expire)
}

func (r *repeats) keep(h *heldCall, until time.Time, expire func(*heldCall)) {
	if !until.IsZero() {
		h.timer = time.AfterFunc(time.Until(until), func() { expire(h) })
	}
	h.table[h.id] = append(h.table[h.id], h)
}

// release finishes the held first offset h (and the earlier attempts'
// offsets it kept), unless h is of a superseded call whose offsets the
// call in flight with its correlation id takes over (handOn).
func (r *repeats) release(h *heldCall) {
	h.table.remove(h)
	if h.timer != nil {
		h.timer.Stop()
	}
	if h.superseded && r.handOn != nil && r.handOn(h.id, h.pt, h.first, h.extra) {
		return
	}
	h.pt.finishAll(h.first, h.extra)
}

// expireHeld finishes h's offset once its call's deadline passed, unless
// its end-of-stream record came first, and reports whether it did.
func (r *repeats) expireHeld(h *heldCall) bool {
	if !h.table.has(h) {
		return false
	}
	r.release(h)
	return true
}

// dropHeld forgets the held offsets of parts (all when nil), without
// finishing them: the partitions left this worker (a rebalance, or
// shutdown), so nothing more of them is committed here, and their next
// owner reads the held calls again from their first record. So does this
// worker when a partition comes back to it: the ids of the held calls and
// attempts are no longer skipped (trailing, dupes), so that what it reads
// again is served, and held, as a next owner's would be.
func (r *repeats) dropHeld(parts map[kafkaclient.TopicPartition]bool) {
	for i, table := range []heldTable{r.held, r.attempts} {
		for _, list := range table {
			for _, h := range slices.Clone(list) { // remove changes list
				if parts != nil && !parts[h.tp] {
					continue
				}
				table.remove(h)
				if h.timer != nil {
					h.timer.Stop()
				}
				if i == 0 {
					r.trailing.remove(h.id, h.attempt)
				} else {
					r.dropDupe(h.id, h.attempt)
				}
			}
		}
	}
}

// lookup returns the stored replies of id, if still within the window.
func (r *repeats) lookup(id []byte) *storedReply { return r.stored.get(id, time.Now()) }

// remember stores the replies of the call with correlation id id, served
// from request partition tp, stored at at; inTopic says they were handed to
// the outcome topic too.
func (r *repeats) remember(id string, tp kafkaclient.TopicPartition, records []kafkaclient.Record, at time.Time, inTopic bool) {
	r.stored.put(&storedReply{id: id, at: at, records: records, size: replySize(records), tp: tp, inTopic: inTopic}, time.Now())
}

// replySize is what a stored outcome counts for against the byte bound:
// its values and its headers (trailers, status details and response
// metadata can be as large as a value), and room for the record.
func replySize(records []kafkaclient.Record) int {
	size := 0
	for _, rec := range records {
		size += recordSize(rec.Value, rec.Headers)
	}
	return size
}

// recordSize is what one stored reply record counts in replySize.
func recordSize(value []byte, hs []kafkaclient.Header) int {
	size := len(value) + 64
	for _, h := range hs {
		size += len(h.Key) + len(h.Value)
	}
	return size
}

// remembered reports whether the outcome st is final enough to be replayed
// to a duplicate: transient failures and cancellations are not.
func remembered(st *status.Status) bool {
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Aborted, codes.ResourceExhausted:
		return false
	}
	return true
}

// answerWaiters serves the repeated requests that arrived while c ran, once
// c is over: with c's replies when they are its outcome to remember (or a
// replay of remembered ones); else, when rerun, by running the first late
// one again (a retry that reached the worker after its caller saw an
// outcome inviting it must not get that outcome back); else with ABORTED. A
// repeat that arrived while the handler still ran, without an attempt id,
// gets no re-run: its gateway, reading the same correlation id, already
// took the call's own end for it. Each answer carries its repeat's own
// attempt id. A waiter's offset, held since it arrived, is released once its own
// call holds it, or, while the rest of its attempt's request is still to be
// read, once that is read or its deadline passes (holdAttempt). A waiter
// whose partition was revoked or lost since it arrived is not answered:
// its offset was held, so the partition's next owner reads it again and
// answers it (answered here too, its caller could get an answer meant for
// an attempt given up, or two). Called without Worker.mu.
func (w *Worker) answerWaiters(c *call, ws []waiter, remember, rerun bool) {
	for i := range ws {
		d := &ws[i]
		w.mu.Lock()
		moved := w.parts[tpOf(d.rec)] != d.pt
		w.mu.Unlock()
		if moved {
			continue
		}
		var wm *workerMethod
		if rerun && !remember && c.replay == nil && !d.expired() {
			wm = w.rerunMethod(d)
		}
		switch {
		case remember || c.replay != nil:
			replay := c.replay
			if remember {
				replay = c.stored
			}
			w.countDuplicate()
			w.answerCall(d.rec, &d.env, d.pt, c.id, nil, replay, true)
		case wm != nil:
			// Its one request message is all its input; the rest of the
			// attempt's records are skipped as a duplicate's.
			w.startCall(d.rec, &d.env, d.pt, c.id, wm, true)
			rerun = false // one re-run at most
		default:
			w.answerCall(d.rec, &d.env, d.pt, c.id, w.waiterStatus(d), w.storedReplay(c), true)
		}
		w.mu.Lock()
		if w.repeats.skipping(c.id, d.env.Attempt) && c.streamsIn && !d.env.EndOfStream && w.parts[tpOf(d.rec)] == d.pt {
			// The rest of the attempt's request is still to be read: its
			// offset stays held until then, or its deadline.
			w.repeats.holdAttempt(d, c.id, d.until(w.cfg.maxCallDuration), w.expireHeld)
		} else {
			d.pt.finish(d.rec.Offset)
		}
		w.mu.Unlock()
		if wm != nil && w.joinRerun(c.id, ws[i+1:]) {
			return
		}
	}
}

// until is the bound of the waiter's attempt: its deadline, else max after
// now (WorkerMaxCallDuration), else none (zero).
func (d *waiter) until(max time.Duration) time.Time {
	if dl, ok := d.env.Deadline(d.rec.Timestamp); ok {
		return dl
	}
	if max > 0 {
		return time.Now().Add(max)
	}
	return time.Time{}
}

func tpOf(rec *kafkaclient.Record) kafkaclient.TopicPartition {
	return kafkaclient.TopicPartition{Topic: rec.Topic, Partition: rec.Partition}
}

// expired reports whether the waiter's own deadline passed while it waited.
func (d *waiter) expired() bool {
	dl, ok := d.env.Deadline(d.rec.Timestamp)
	return ok && !time.Now().Before(dl)
}

// storedReplay returns the stored outcome of a re-run of c that is already
// over, or nil.
func (w *Worker) storedReplay(c *call) []kafkaclient.Record {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s := w.repeats.lookup(c.idb); s != nil {
		w.countDuplicate()
		return s.records
	}
	return nil
}

// waiterStatus is the answer of a waiter that neither gets its call's outcome nor
// runs again: DEADLINE_EXCEEDED when its own deadline passed while it
// waited (its caller is gone), else ABORTED, to be retried.
func (w *Worker) waiterStatus(d *waiter) *status.Status {
	if d.expired() {
		return status.New(codes.DeadlineExceeded, "deadline passed while the request waited for the call it repeats")
	}
	return status.New(codes.Aborted, "the call this request repeats ended without a stored outcome; retry it")
}

// joinRerun makes the waiters that follow a re-run wait for its outcome, as
// they waited for the call it repeats, instead of answering them ABORTED:
// every attempt of a key then gets the outcome of one execution. It reports
// false, leaving them to answerWaiters, when the re-run is not in flight (it
// was refused, or is already over). Their offsets stay held; the records of
// their attempts that follow are skipped as before.
func (w *Worker) joinRerun(id string, rest []waiter) bool {
	if len(rest) == 0 {
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	rc := w.calls[id]
	if rc == nil || rc.wm == nil {
		return false
	}
	for i := range rest {
		d := rest[i]
		d.late = true // the call it repeated is over: its caller could have seen that outcome
		w.repeats.waiters[rc] = append(w.repeats.waiters[rc], d)
	}
	return true
}

// rerunMethod returns the method to run a waiter's request again with, or
// nil when it is not to run again: it carries no idempotency key, or an
// empty one (a repeated record, not a retry), or is not one message (a client stream's
// other records were skipped; of a proxied method, one not known to be a
// single complete message), or arrived before the call was ending and
// carries no attempt id: its gateway, which cannot tell attempts apart,
// already took the call's own end for it.
func (w *Worker) rerunMethod(d *waiter) *workerMethod {
	if (!d.late && d.env.Attempt == nil) || len(d.env.IdempotencyKey) == 0 {
		return nil
	}
	wm := w.lookup(d.env.Service, d.env.Method)
	switch {
	case wm == nil:
		return nil
	case wm.proxied:
		// Its kind is not known: run again only a request that is one
		// message (or none) and complete, which any kind takes as its
		// whole input.
		if !d.ended || d.more {
			return nil
		}
	case wm.spec.Kind.clientStreams():
		return nil
	}
	return wm
}

// storedReply is what a worker remembers of a finished call made with an
// idempotency key: its reply records, to answer a duplicate without running
// the handler again.
type storedReply struct {
	id      string
	at      time.Time
	records []kafkaclient.Record // values and headers; topic and key are the duplicate's
	size    int
	tp      kafkaclient.TopicPartition // the request partition of the call
	// inTopic: written to (or read from) the outcome topic, so that a
	// partition's next owner has it (WorkerOutcomeTopic).
	inTopic bool
}

// replyStore holds the replies of recent calls, bounded by age and bytes.
type replyStore struct {
	window   time.Duration
	maxBytes int
	byID     map[string]*storedReply
	order    []*storedReply // oldest first
	bytes    int
	// evicted, when not nil, is told of every reply forgotten (the outcome
	// topic's tombstones, WorkerOutcomeTopic).
	evicted func(*storedReply)
}

func newReplyStore(window time.Duration, maxBytes int) *replyStore {
	return &replyStore{window: window, maxBytes: maxBytes, byID: map[string]*storedReply{}}
}

func (s *replyStore) put(r *storedReply, now time.Time) {
	if s.window <= 0 || r.size > s.maxBytes {
		return
	}
	if old := s.byID[r.id]; old != nil {
		return // the first outcome stays
	}
	s.byID[r.id] = r
	s.order = append(s.order, r)
	s.bytes += r.size
	s.expire(now)
}

// get returns the stored replies of id, if still within the window.
func (s *replyStore) get(id []byte, now time.Time) *storedReply {
	s.expire(now)
	return s.byID[string(id)]
}

// expire forgets what is past the window or over the byte bound.
func (s *replyStore) expire(now time.Time) {
	n := 0
	for n < len(s.order) && (now.Sub(s.order[n].at) > s.window || s.bytes > s.maxBytes) {
		r := s.order[n]
		s.order[n] = nil
		delete(s.byID, r.id)
		s.bytes -= r.size
		n++
		if s.evicted != nil {
			s.evicted(r)
		}
	}
	s.order = s.order[n:]
}

// load adds r, an outcome read from the outcome topic, unless one is stored
// under its id already or it cannot be stored; it reports whether it added
// it. The caller calls sortLoaded after the last.
func (s *replyStore) load(r *storedReply) bool {
	if s.window <= 0 || r.size > s.maxBytes || s.byID[r.id] != nil {
		return false
	}
	s.byID[r.id] = r
	s.order = append(s.order, r)
	s.bytes += r.size
	return true
}

// forget drops, without telling evicted, the replies of the request
// partitions parts that are in the outcome topic (WorkerOutcomeTopic): the
// partitions moved to another member, which loaded those outcomes and
// answers their repeats, and this worker loads them again if they come
// back. Kept, they would take the room of the outcomes of the partitions it
// still serves, whose oldest it would then forget, and delete from the
// topic, early. Replies kept in memory only stay.
func (s *replyStore) forget(parts map[kafkaclient.TopicPartition]bool) {
	kept := s.order[:0]
	for _, r := range s.order {
		if r.inTopic && parts[r.tp] {
			delete(s.byID, r.id)
			s.bytes -= r.size
			continue
		}
		kept = append(kept, r)
	}
	clear(s.order[len(kept):])
	s.order = kept
}

// sortLoaded puts the order back to oldest first after loads, and forgets
// what is over the bounds.
func (s *replyStore) sortLoaded(now time.Time) {
	slices.SortStableFunc(s.order, func(a, b *storedReply) int { return a.at.Compare(b.at) })
	s.expire(now)
}

// recentSet is a bounded set of correlation ids, each with the attempt ids
// it holds, that forgets the oldest id first. An id removed and added again
// is as new: the slot of its earlier entry, still in order, forgets nothing
// when its turn comes (seq tells the entries apart).
type recentSet struct {
	max   int
	seq   uint64
	set   map[string]recentEntry
	order []recentSlot
}

type recentEntry struct {
	attempts [][]byte
	seq      uint64 // which add made it
}

type recentSlot struct {
	k   string
	seq uint64
}

func newRecentSet(max int) *recentSet {
	return &recentSet{max: max, set: map[string]recentEntry{}}
}

func (s *recentSet) add(k string, attempt []byte) {
	if e, ok := s.set[k]; ok {
		if !slices.ContainsFunc(e.attempts, func(a []byte) bool { return bytes.Equal(a, attempt) && (a == nil) == (attempt == nil) }) {
			e.attempts = append(e.attempts, attempt)
			s.set[k] = e
		}
		return
	}
	if len(s.order) >= s.max {
		if old := s.order[0]; s.set[old.k].seq == old.seq {
			delete(s.set, old.k)
		}
		s.order = s.order[1:]
	}
	s.seq++
	s.set[k] = recentEntry{attempts: [][]byte{attempt}, seq: s.seq}
	s.order = append(s.order, recentSlot{k, s.seq})
}

// has reports whether k is in the set with an attempt that may be attempt.
func (s *recentSet) has(k string, attempt []byte) bool {
	return slices.ContainsFunc(s.set[k].attempts, func(a []byte) bool { return sameAttempt(a, attempt) })
}

// remove takes attempt's entry of k out (k's when none is left).
func (s *recentSet) remove(k string, attempt []byte) {
	e, ok := s.set[k]
	if !ok {
		return
	}
	if i := slices.IndexFunc(e.attempts, func(a []byte) bool { return sameAttempt(a, attempt) }); i >= 0 {
		e.attempts = slices.Delete(e.attempts, i, i+1)
	}
	if len(e.attempts) == 0 {
		delete(s.set, k) // its order slot expires in time
	} else {
		s.set[k] = e
	}
}
