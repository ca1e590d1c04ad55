package runtime

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// fetchBatch is how many window records a caller takes per look at the
// hub, and fetchBatchBytes how many bytes of records at most (but always
// one): what a caller holds of the window's records while its send waits
// (it stopped reading), so that a stalled caller keeps at most that much
// alive after the window dropped it.
const (
	fetchBatch      = 32
	fetchBatchBytes = 64 << 10
)

// catchUpCheck bounds how long a catch-up reader waits for records before
// it looks again whether its caller reached the window.
const catchUpCheck = 200 * time.Millisecond

// earliest marks a partition a caller reads from its earliest retained
// record, until that is resolved to an offset.
const earliest = -1

// fetchCall is one caller of a fetch method.
type fetchCall struct {
	f       *fanout
	m       *MethodSpec
	hub     *fanoutHub
	ctx     context.Context
	stream  grpc.ServerStream
	carrier func(raw []byte) proto.Message
	direct  bool // the server marshals with fetchCodec: send value and id uncopied
	filter  recordFilter
	field   protowire.Number
	resume  string // metadata name quoted in errors

	// parts and index are the hub's partitions (and their positions) as the
	// caller last looked (syncPartsLocked): copies it reads without the
	// hub's lock. next has one offset per partition of parts.
	parts   []int32
	index   map[int32]int
	next    []int64      // per hub partition index: the next offset to deliver
	foreign wire.EventID // partitions of the caller's id the hub does not read (yet), sorted
	cursor  uint64       // next window record, once on the hub
	minLag  int64        // least lag seen on the hub, -1 before the first look
	// waited: the caller waited at the window's end for records (it had
	// delivered every one) since its last look.
	waited bool
	idbuf  []byte
	batch  []hubEntry
	// deleted names the records the caller resumes after that no longer
	// exist (position): FetchRecordsDeletedMetadata values.
	deleted []string
}

// fetchFailer is a fetch's stream that can fail the fetch on the caller's
// side (a ClientConn's, which decodes what the fetch sends): fetchFailure
// is then the fetch's status, once the fetch ended.
type fetchFailer interface{ fetchFailure() error }

// serveFetch runs one fetch call: it positions the caller from its resume
// id, catches up from Kafka if it is behind the window, then follows the
// hub until the caller goes, falls behind, or the gateway closes. md is the
// caller's metadata (resume id, key), read and never changed.
// It is longer than most: its steps (position, catch up, follow) share the
// call's state and error paths, and the hand-over between them reads in
// order in one place.
func (f *fanout) serveFetch(m *MethodSpec, md metadata.MD, in proto.Message, stream grpc.ServerStream, carrier func([]byte) proto.Message) (err error) {
	ctx := stream.Context()
	g := f.g
	method := attribute.String("rpc.method", m.FullMethod())
	start := time.Now()
	g.met.begin(ctx, method)
	defer func() {
		if f, ok := stream.(fetchFailer); ok {
			if ferr := f.fetchFailure(); ferr != nil {
				err = ferr // the caller's end, not the cancel it stopped the fetch with
			}
		}
		g.met.end(ctx, method, start, err)
	}()
	spec := m.Fetch
	if spec == nil {
		return status.Errorf(codes.Unimplemented, "%s: not a fetch method", m.FullMethod())
	}
	if err := f.cfg.keyClash(m); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if in != nil {
		if n := proto.Size(in); n > 0 {
			return status.Errorf(codes.InvalidArgument, "%s: a fetch takes an empty request (google.protobuf.Empty); this one has %d bytes", m.FullMethod(), n)
		}
	}
	names := resumeNames(spec.ResumeMetadata)
	id, err := resumeFromMetadata(md, names)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "%s: cannot resume: %v", m.FullMethod(), err)
	}
	var callerKeys []string // several: any of them, as a filter's metadata values
	if k := f.cfg.keyMetadata; k != "" {
		for _, v := range md.Get(k) {
			if v != "" {
				callerKeys = append(callerKeys, v)
			}
		}
	}
	filter, err := newRecordFilter(spec.Filters, md, callerKeys)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "%s: %v", m.FullMethod(), err)
	}
	field := spec.EventIDField
	if field == 0 {
		field = wire.DefaultEventIDField
	}
	topic := g.cfg.topic(spec.Topic)
	hub, err := f.hub(ctx, topic)
	if err != nil {
		return err
	}
	c := &fetchCall{f: f, m: m, hub: hub, ctx: ctx, stream: stream, carrier: carrier,
		filter: filter, field: protowire.Number(field), resume: names[0],
		minLag: -1, direct: zeroCopy(stream)}
	hub.mu.RLock()
	c.parts, c.index = hub.parts, hub.index
	hub.mu.RUnlock()
	// A partition the id does not name starts at its earliest record
	// (WIRE.md), also one added to the topic after the id was handed out:
	// the caller has seen none of its records.
	c.next = make([]int64, len(c.parts))
	for i, p := range c.parts {
		c.next[i] = earliest
		if off, ok := id.Offset(p); ok {
			c.next[i] = off
		}
	}
	for _, po := range id {
		if _, ok := c.index[po.Partition]; !ok {
			c.foreign = append(c.foreign, po)
		}
	}
	slices.SortFunc(c.foreign, func(a, b wire.PartitionOffset) int { return cmp.Compare(a.Partition, b.Partition) })
	if err := c.checkForeign(); err != nil {
		return err
	}
	f.stats.callers.Add(1)
	defer f.stats.callers.Add(-1)
	onHub, err := c.position()
	if err != nil {
		return err
	}
	// The headers tell the caller its stream is positioned, and what it
	// lost to retention.
	header := metadata.MD{}
	if len(c.deleted) > 0 {
		header.Set(FetchRecordsDeletedMetadata, c.deleted...)
	}
	if err := stream.SendHeader(header); err != nil {
		return err
	}
	if !onHub {
		if err := c.catchUp(); err != nil {
			return err
		}
	}
	return c.follow()
}

// checkForeign checks the partitions of the caller's resume id that the
// hub does not read: a partition added to the topic that the hub has not
// noticed yet is carried on in the caller's ids as it is, until the hub
// reads it (syncPartsLocked); one the topic does not have
// (an id of another topic, or a forged one) is refused with
// INVALID_ARGUMENT, as is an offset beyond its partition's end.
func (c *fetchCall) checkForeign() error {
	if len(c.foreign) == 0 {
		return nil
	}
	h := c.hub
	ctx, cancel := context.WithTimeout(c.ctx, c.f.g.cfg.setupTimeout)
	defer cancel()
	parts, err := c.f.g.client.Partitions(ctx, h.topic)
	if err != nil {
		return status.Errorf(lookupCode(err), "%s: looking up the partitions of %q: %v", c.m.FullMethod(), h.topic, err)
	}
	have := make(map[int32]bool, len(parts))
	for _, p := range parts {
		have[p] = true
	}
	ps := make([]int32, 0, len(c.foreign))
	for _, po := range c.foreign {
		if !have[po.Partition] {
			return status.Errorf(codes.InvalidArgument, "%s: cannot resume: event id names partition %d of %q, which has %d partitions: is it an id of another topic?",
				c.m.FullMethod(), po.Partition, h.topic, len(parts))
		}
		ps = append(ps, po.Partition)
	}
	end, err := c.f.g.client.Offsets(ctx, h.topic, ps, kafkaclient.Latest)
	if err != nil {
		return status.Errorf(lookupCode(err), "%s: looking up the end offsets of %q: %v", c.m.FullMethod(), h.topic, err)
	}
	for _, po := range c.foreign {
		if po.Offset > end[po.Partition] {
			return status.Errorf(codes.InvalidArgument, "%s: cannot resume: event id gives offset %d for partition %d of %q, whose end is %d",
				c.m.FullMethod(), po.Offset, po.Partition, h.topic, end[po.Partition])
		}
	}
	return nil
}

// position resolves the caller's start and reports whether the window
// serves it (else it needs a catch-up reader). Partitions to read from the
// earliest record start in the window when the window still holds the
// partition from there; otherwise at the earliest offset Kafka retains,
// which also raises a resume offset whose records retention has deleted
// (the caller is told in its headers: FetchRecordsDeletedMetadata).
// An offset beyond the end of its partition is refused.
func (c *fetchCall) position() (bool, error) {
	h := c.hub
	h.mu.RLock()
	c.syncPartsLocked()
	needEarliest, ahead := false, false
	for i := range c.next {
		switch {
		case c.next[i] == earliest && h.whole[i]:
			c.next[i] = h.lo[i]
		case c.next[i] == earliest || c.next[i] < h.lo[i]:
			needEarliest = true
		case c.next[i] > h.hi[i]:
			ahead = true
		}
	}
	if !needEarliest && !ahead {
		c.cursor = h.cursorLocked(c.next)
		h.mu.RUnlock()
		return true, nil
	}
	h.mu.RUnlock()
	ctx, cancel := context.WithTimeout(c.ctx, c.f.g.cfg.setupTimeout)
	defer cancel()
	client := c.f.g.client
	if ahead {
		end, err := client.Offsets(ctx, h.topic, c.parts, kafkaclient.Latest)
		if err != nil {
			return false, status.Errorf(lookupCode(err), "%s: looking up the end offsets of %q: %v", c.m.FullMethod(), h.topic, err)
		}
		for i, p := range c.parts {
			if c.next[i] > end[p] {
				return false, status.Errorf(codes.InvalidArgument, "%s: cannot resume: event id gives offset %d for partition %d of %q, whose end is %d",
					c.m.FullMethod(), c.next[i], p, h.topic, end[p])
			}
		}
	}
	if needEarliest {
		first, err := client.Offsets(ctx, h.topic, c.parts, kafkaclient.Earliest)
		if err != nil {
			return false, status.Errorf(lookupCode(err), "%s: looking up the earliest offsets of %q: %v", c.m.FullMethod(), h.topic, err)
		}
		for i, p := range c.parts {
			switch {
			case c.next[i] == earliest:
				c.next[i] = first[p]
			case c.next[i] < first[p]:
				c.f.g.cfg.logger.Info("kafkarpc: fetch resumes after records retention deleted",
					"method", c.m.FullMethod(), "topic", h.topic, "partition", p, "offset", c.next[i], "earliest", first[p])
				c.deleted = append(c.deleted, "partition "+strconv.Itoa(int(p))+" offsets "+
					strconv.FormatInt(c.next[i], 10)+" to "+strconv.FormatInt(first[p]-1, 10))
				c.next[i] = first[p]
			}
		}
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	c.syncPartsLocked()
	if h.coversLocked(c.next, false) {
		c.cursor = h.cursorLocked(c.next)
		return true, nil
	}
	return false, nil
}

// catchUpStall is how long a caller in its catch-up may be blocked sending
// one message (it stopped reading, and gRPC's flow control holds the send)
// before its catch-up reader is closed and its slot given to the callers
// waiting for one; it gets a reader again, from where it is, once the send
// returns.
const catchUpStall = 2 * time.Second

// catchUpReader is a catch-up reader and what its watcher needs to take it
// away: the watcher (catchUpWatch) closes it once the catch-up ends, the
// gateway closes, or the caller stalls (catchUpStall), never while a Poll or
// an Assign runs (both hold mu), so that neither a gateway's Close nor the
// other callers wait for a caller that stopped reading.
type catchUpReader struct {
	reader  kafkaclient.Reader
	mu      sync.Mutex // held around Poll and Assign; closed is set under it
	closed  bool
	sending atomic.Int64  // when the message being delivered began (unix ns), 0 when none
	done    chan struct{} // closed by the caller when its catch-up ends
}

// catchUpWatch closes r and frees its slot (see catchUpReader). It runs on
// a goroutine counted in the gateway's wait group.
func (f *fanout) catchUpWatch(r *catchUpReader) {
	defer f.g.wg.Done()
	t := time.NewTicker(catchUpCheck)
	defer t.Stop()
wait:
	for {
		select {
		case <-r.done:
			break wait
		case <-f.g.ctx.Done():
			break wait
		case <-t.C:
			if s := r.sending.Load(); s != 0 && time.Since(time.Unix(0, s)) >= catchUpStall {
				break wait
			}
		}
	}
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	// Closing a reader takes a while (librdkafka's can take 100 ms and
	// more): it happens beside the caller. Its slot is free once it is
	// closed.
	_ = r.reader.Close()
	<-f.catchUp
}

// catchUp reads Kafka with a reader of the caller's own, from its position,
// until the window covers the caller; it then sets the caller's cursor in
// the window and closes the reader. The hub's window holds every record from
// lo to hi of each partition, so a caller at or past lo and not past hi on
// every partition continues from the window with no gap and, skipping what
// it already has, no repeat. A caller whose reader was taken away while it
// stalled (catchUpStall) gets another from where it is.
func (c *fetchCall) catchUp() error {
	c.f.stats.catchUps.Add(1)
	for {
		again, err := c.catchUpWith()
		if !again {
			return err
		}
	}
}

// catchUpWith is catchUp with one reader; again reports that the reader
// was taken away from a caller that stalled, to go on with another.
// It is one function because the reader's life (open, read, hand over,
// close) and the no-gap invariant of the hand-over belong together.
func (c *fetchCall) catchUpWith() (again bool, err error) {
	f, g, h := c.f, c.f.g, c.hub
	if done, err := c.handOver(); done || err != nil {
		return false, err // caught up meanwhile (after a stall), or the gateway closed
	}
	select {
	case f.catchUp <- struct{}{}:
	case <-c.ctx.Done():
		return false, status.FromContextError(c.ctx.Err()).Err()
	case <-g.ctx.Done():
		return false, c.closed()
	}
	reader, err := g.client.NewReader(kafkaclient.ReaderConfig{ReadCommitted: g.cfg.readCommitted})
	if err != nil {
		<-f.catchUp
		return false, c.unavailable("opening a catch-up reader: " + err.Error())
	}
	if !f.track() {
		_ = reader.Close()
		<-f.catchUp
		return false, c.closed()
	}
	r := &catchUpReader{reader: reader, done: make(chan struct{})}
	go f.catchUpWatch(r)
	defer close(r.done)
	assigned := 0 // c.parts[:assigned] are assigned to the reader
	for {
		// The hub may have added partitions (handOver took them on):
		// the reader reads them too, from the caller's position.
		if n := len(c.parts); n > assigned {
			assign := make([]kafkaclient.TopicPartitionOffset, 0, n-assigned)
			for i := assigned; i < n; i++ {
				assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: h.topic, Partition: c.parts[i], Offset: c.next[i]})
			}
			r.mu.Lock()
			if !r.closed {
				err = reader.Assign(assign)
			}
			r.mu.Unlock()
			if err != nil {
				return false, c.unavailable("assigning the catch-up reader: " + err.Error())
			}
			assigned = n
			g.cfg.logger.Debug("kafkarpc: fetch catching up", "method", c.m.FullMethod(), "topic", h.topic, "from", assign)
		}
		if done, err := c.handOver(); done || err != nil {
			return false, err
		}
		if len(c.parts) > assigned {
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			if g.ctx.Err() != nil {
				return false, c.closed()
			}
			g.cfg.logger.Info("kafkarpc: fetch caller stalled in its catch-up; its reader is given to others until it reads again",
				"method", c.m.FullMethod(), "topic", h.topic)
			return true, nil
		}
		pctx, cancel := context.WithTimeout(c.ctx, catchUpCheck)
		recs, err := reader.Poll(pctx)
		cancel()
		r.mu.Unlock()
		if c.ctx.Err() != nil {
			return false, status.FromContextError(c.ctx.Err()).Err()
		}
		if notAuthorized(err) {
			return false, status.Errorf(codes.PermissionDenied, "%s: reading %s: %v", c.m.FullMethod(), h.topic, err)
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return false, c.unavailable("reading " + h.topic + ": " + err.Error())
		}
		for _, rec := range recs {
			pi, ok := c.index[rec.Partition]
			if !ok || pi >= assigned || rec.Topic != h.topic {
				continue
			}
			skip := deliverable
			switch {
			case rec.Value == nil:
				skip = skipTombstone
			case !wire.ValidWire(rec.Value):
				skip = skipInvalid
			}
			r.sending.Store(time.Now().UnixNano())
			err := c.deliver(pi, rec.Offset, rec.Key, rec.Value, rec.Headers, skip)
			r.sending.Store(0)
			if err != nil {
				return false, err
			}
		}
	}
}

// syncPartsLocked takes on the partitions the hub added since the caller
// last looked (addPartitions), with the hub's lock held (shared). The caller
// has received none of their records: the hub reads a new partition from
// its earliest offset and adds it before its first record, and a caller
// takes it on before it takes any record from the window (follow) or sets
// its cursor (position, handOver). So the caller starts each at the offset
// the hub started reading it at, its earliest record then, as an id not
// naming it says (a record the window dropped since makes the caller a
// laggard, as any); or, when the caller's resume id names it (it was read
// elsewhere), at the id's offset, and it is no longer carried as foreign.
func (c *fetchCall) syncPartsLocked() {
	h := c.hub
	if len(h.parts) == len(c.parts) {
		return
	}
	for i := len(c.parts); i < len(h.parts); i++ {
		next := h.from[i]
		if j := slices.IndexFunc(c.foreign, func(po wire.PartitionOffset) bool { return po.Partition == h.parts[i] }); j >= 0 {
			next = c.foreign[j].Offset
			c.foreign = slices.Delete(c.foreign, j, j+1)
		}
		c.next = append(c.next, next)
	}
	c.parts, c.index = h.parts, h.index
}

// handOver sets the caller's cursor in the window and reports true when
// the window covers it (handOverLocked); an error once the hub closed.
func (c *fetchCall) handOver() (bool, error) {
	h := c.hub
	h.mu.RLock()
	if h.closed {
		err := c.hubClosedLocked()
		h.mu.RUnlock()
		return false, err
	}
	c.syncPartsLocked()
	cur, ok := c.handOverLocked()
	if ok {
		c.cursor = cur
	}
	h.mu.RUnlock()
	if ok {
		c.f.stats.handOvers.Add(1)
		c.f.g.cfg.logger.Debug("kafkarpc: fetch caught up", "method", c.m.FullMethod(), "topic", h.topic)
	}
	return ok, nil
}

// handOverLocked returns where the caller continues in the window, and
// whether it may: when the window covers every partition's position (see
// coversLocked, none beyond what the hub read) and the caller is in the
// newer half of the window, so that it does not fall out of it at once.
func (c *fetchCall) handOverLocked() (uint64, bool) {
	h := c.hub
	if !h.coversLocked(c.next, true) {
		return 0, false
	}
	cur := h.cursorLocked(c.next)
	return cur, h.lagLocked(cur) <= c.f.cfg.windowBytes/2
}

// follow delivers the window's records from the caller's cursor, waiting
// for more at its end, until the caller goes, falls behind (see
// GatewayFetchMaxLag), or the gateway closes.
func (c *fetchCall) follow() error {
	h := c.hub
	maxLag := c.f.cfg.lag()
	if c.batch == nil {
		c.batch = make([]hubEntry, fetchBatch)
	}
	for {
		h.mu.RLock()
		if h.closed {
			err := c.hubClosedLocked()
			h.mu.RUnlock()
			return err
		}
		if len(h.parts) != len(c.next) {
			c.syncPartsLocked() // before the batch: its records may be on new partitions
		}
		first := h.firstSeqLocked()
		if c.cursor < first {
			h.mu.RUnlock()
			return c.laggard("its next record left the gateway's window of " + formatBytes(c.f.cfg.windowBytes))
		}
		if c.cursor >= h.nextSeq {
			wake := h.wake
			c.waited = true
			h.mu.RUnlock()
			c.f.stats.waiting.Add(1)
			select {
			case <-wake:
				c.f.stats.waiting.Add(-1)
				continue
			case <-c.ctx.Done():
				c.f.stats.waiting.Add(-1)
				return status.FromContextError(c.ctx.Err()).Err()
			}
		}
		lag := h.lagLocked(c.cursor)
		// A caller that waited at the window's end lost no ground to what
		// arrived meanwhile, however much came at once (one record larger
		// than the bound, a burst, records its filters skip): its lag
		// counts from here.
		if c.minLag < 0 || lag < c.minLag || c.waited {
			c.minLag = lag
		}
		c.waited = false
		if lag-c.minLag > maxLag {
			h.mu.RUnlock()
			return c.laggard("it fell " + formatBytes(lag-c.minLag) + " further behind (more than " + formatBytes(maxLag) + ")")
		}
		i := h.head + int(c.cursor-first)
		n, bytes := 0, int64(0)
		for _, e := range h.entries[i:min(i+fetchBatch, len(h.entries))] {
			if n > 0 && bytes+e.size > fetchBatchBytes {
				break
			}
			c.batch[n] = e
			n++
			bytes += e.size
		}
		h.mu.RUnlock()
		for k := range n {
			e := &c.batch[k]
			c.cursor = e.seq + 1
			if err := c.deliver(int(e.pi), e.offset, e.key, e.value, e.headers, e.skip); err != nil {
				clear(c.batch[:n])
				return err
			}
		}
		clear(c.batch[:n])
	}
}

// deliver moves the caller past one record and sends it when it is a
// message the caller's filters select. The message is the record's value
// as it is, followed by the event id field: it is never decoded.
func (c *fetchCall) deliver(pi int, offset int64, key, value []byte, hs []kafkaclient.Header, skip skipReason) error {
	if offset < c.next[pi] {
		return nil // already delivered: the window and a catch-up reader overlap
	}
	prev := c.next[pi]
	c.next[pi] = offset + 1
	switch skip {
	case skipTombstone:
		return nil
	case skipInvalid:
		c.f.stats.invalid.Add(1)
		return nil
	}
	if !c.filter.match(key, hs) {
		return nil
	}
	c.idbuf = c.appendID(c.idbuf[:0])
	var msg proto.Message
	if c.direct {
		// The transport may still hold the message after SendMsg: a fresh one.
		msg = newFetchMessage(value, c.field, c.idbuf, c.carrier)
	} else {
		raw := make([]byte, 0, len(value)+protowire.SizeTag(c.field)+protowire.SizeBytes(len(c.idbuf)))
		raw = append(raw, value...)
		msg = c.carrier(wire.AppendEventIDField(raw, c.field, c.idbuf))
	}
	if err := c.stream.SendMsg(msg); err != nil {
		if c.ctx.Err() != nil {
			return status.FromContextError(c.ctx.Err()).Err()
		}
		if errors.Is(err, errFetchClosed) {
			c.next[pi] = prev // not delivered: the resume hint names it
			return c.closed()
		}
		return err
	}
	c.f.stats.delivered.Add(1)
	if c.direct {
		c.f.stats.uncopied.Add(1)
	}
	return nil
}

// appendID appends the caller's event id: every partition of the hub (as
// the caller last looked) with its next offset, and the partitions of the
// resume id the hub does not read, unchanged, in partition order.
func (c *fetchCall) appendID(dst []byte) []byte {
	dst = wire.AppendEventIDStart(dst, len(c.next)+len(c.foreign))
	parts := c.parts
	i, j := 0, 0
	for i < len(parts) || j < len(c.foreign) {
		var p int32
		var off int64
		if j >= len(c.foreign) || (i < len(parts) && parts[i] < c.foreign[j].Partition) {
			p, off = parts[i], c.next[i]
			i++
		} else {
			p, off = c.foreign[j].Partition, c.foreign[j].Offset
			j++
		}
		dst = wire.AppendEventIDPartition(dst, p, off)
	}
	return dst
}

// resumeHint returns the text a caller resumes with: its current event id.
func (c *fetchCall) resumeHint() string {
	return "resume with metadata " + c.resume + "=" + base64URL(c.appendID(nil))
}

// unavailable ends the call with UNAVAILABLE, why, and how to resume.
func (c *fetchCall) unavailable(why string) error {
	return status.Errorf(codes.Unavailable, "%s: %s; %s", c.m.FullMethod(), why, c.resumeHint())
}

// errFetchClosed is what a ClientConn's fetch stream (fetchPipe) returns
// from SendMsg once the connection closes while the caller is not reading.
var errFetchClosed = errors.New("kafkarpc: the fetch's connection closed")

// closed is how a fetch ends once Close began: UNAVAILABLE for the
// gateway's shutdown, CANCELLED for the ClientConn's Close (closedCode).
func (c *fetchCall) closed() error {
	return status.Errorf(c.f.g.closedCode(), "%s: %s; %s", c.m.FullMethod(), c.f.g.closingMessage(), c.resumeHint())
}

// hubClosedLocked is how a caller ends once its hub closed: the gateway's
// shutdown (resume from the caller's id elsewhere), or the hub ending itself
// because its topic's log restarted (its ids are void: see checkRestart;
// the status carries an ErrorInfo with wire.FetchRestartedReason, so that a
// resuming client such as fetchclient starts again without an id).
// A hub that ended for another reason (endHub: its topic deleted,
// NOT_FOUND as a fetch of a missing topic starts; or unreadable,
// PERMISSION_DENIED) ends its callers with that code.
// Called with the hub's lock held.
func (c *fetchCall) hubClosedLocked() error {
	switch {
	case c.hub.ended == "":
		return c.closed()
	case c.hub.endCode != codes.Unavailable:
		return status.Errorf(c.hub.endCode, "%s: %s", c.m.FullMethod(), c.hub.ended)
	}
	st := status.Newf(codes.Unavailable, "%s: %s", c.m.FullMethod(), c.hub.ended)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: wire.FetchRestartedReason, Domain: wire.ErrorDomain}); err == nil {
		st = d
	}
	return st.Err()
}

// laggard ends a caller that fell too far behind.
func (c *fetchCall) laggard(why string) error {
	c.f.stats.laggards.Add(1)
	c.f.g.cfg.logger.Info("kafkarpc: fetch caller too slow, ended", "method", c.m.FullMethod(), "topic", c.hub.topic, "why", why)
	return c.unavailable("the caller reads more slowly than records arrive on " + c.hub.topic + ": " + why)
}

// carrierFor returns how a fetch of Resp wraps raw bytes (a record's value
// and the event id field) as a message that grpc's codec marshals back to
// exactly those bytes: an empty Resp whose unknown fields are the bytes, so
// that interceptors and stats handlers still see the method's response
// type. proto.Marshal copies unknown fields as they are. A Resp with
// required fields (proto2) would fail proto.Marshal's initialisation check
// while empty, so such types travel as an emptypb.Empty instead.
func carrierFor[Resp any, PResp interface {
	*Resp
	proto.Message
}]() func([]byte) proto.Message {
	if PResp(new(Resp)).ProtoReflect().Descriptor().RequiredNumbers().Len() > 0 {
		return func(raw []byte) proto.Message {
			m := new(emptypb.Empty)
			m.ProtoReflect().SetUnknown(raw)
			return m
		}
	}
	return func(raw []byte) proto.Message {
		m := PResp(new(Resp))
		m.ProtoReflect().SetUnknown(raw)
		return m
	}
}

func base64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// formatBytes writes n as bytes, KiB or MiB.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}
