package runtime

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// replyRouter reads one reply topic and hands each record to the call in
// flight with the record's correlation id.
type replyRouter struct {
	g      *Gateway
	topic  string
	reader kafkaclient.Reader
	// pending maps correlation ids to calls in flight.
	pending   callTable
	dropped   atomic.Uint64
	topicAttr metric.MeasurementOption // the topic, for the dropped-replies counter
	read      atomic.Uint64

	sharded bool // reads only some partitions (GatewayReplyShard)
	ownMu   sync.Mutex
	owned   map[int32]bool // partitions read
	// counts are the partition counts the reply topic had since the router
	// started, oldest first: a worker's producer hashes a reply's key over
	// the count it learnt last, any of these (watchPartitions).
	counts  []int32
	refresh time.Duration // partitionsRefresh when the router started
	// marks are, when sharded, the end offsets of every partition the topic
	// had, looked up just before a look at its partition count that found
	// no growth (nil before the first such look, and after a growth):
	// replies hashed over a larger count come after them.
	marks map[int32]int64

	// denied is Kafka's last refusal to let the router read its topic
	// (an error wrapping kafkaclient.ErrNotAuthorized), nil while it may:
	// calls through the router end PERMISSION_DENIED before anything is
	// produced while it is set (refusal). Set and cleared by run.
	denied atomic.Pointer[error]
}

// replyRecheck is how long a reply router refused its topic's records
// waits before it reads the topic again with a fresh reader, and
// replySettle how long that reader must read without a refusal for the
// router to take the topic as readable again (records read say so at
// once). A fresh reader because librdkafka reports a refusal once per
// reader, not at each refused fetch: the router's own reader, still
// refused, would say nothing more.
var replyRecheck, replySettle = 5 * time.Second, 5 * time.Second

// testHookReplyRead, when set, is called each time a reply router finds
// it may not read its topic (readable false) or may again (true).
var testHookReplyRead func(topic string, readable bool)

// partitionsRefresh is how often reply routers and fetch hubs look for
// partitions added to their topics (watchPartitions).
var partitionsRefresh = 10 * time.Second

// watchPartitions runs add, which reads the partitions added to topic (a
// "reply" or "fetch" topic, says role) since it last ran, every every until
// ctx ends, logging its failures.
func watchPartitions(ctx context.Context, every time.Duration, logger *slog.Logger, role, topic string, add func(context.Context) error) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := add(ctx); err != nil && ctx.Err() == nil {
			logger.Warn("kafkarpc: looking for partitions added to a "+role+" topic", "topic", topic, "error", err)
		}
	}
}

// replyTopicDenied is the error of a reply topic lookup (what: the step,
// "" for the topic's partitions) that Kafka refused as not authorized.
func replyTopicDenied(topic, what string, err error) error {
	return fmt.Errorf("reply topic %q: not authorized: the client's principal may not describe it (it needs DESCRIBE and READ on the topic): %s%w", topic, what, err)
}

// startReplyRouter assigns a reader to the partitions of topic this gateway
// reads (all, unless GatewayReplyShard), each at its current end offset looked up
// explicitly: assigning at the logical end would race with the first request
// and lose its reply.
func startReplyRouter(ctx context.Context, g *Gateway, topic string) (*replyRouter, error) {
	if n, i := g.cfg.shardCount, g.cfg.shardIndex; n > 1 && (i < 0 || i >= n) {
		// No partition p has p % n == i: no correlation id drawn would
		// land on a partition read, and calls would wait forever.
		return nil, fmt.Errorf("reply topic %q: GatewayReplyShard(%d, %d): the index must be 0 to %d", topic, i, n, n-1)
	}
	parts, err := g.client.Partitions(ctx, topic)
	if unknownTopic(err) {
		return nil, fmt.Errorf("reply topic %q does not exist (create it, or have the program create its spec's topics with runtime.EnsureTopics): %w", topic, err)
	}
	if notAuthorized(err) {
		return nil, replyTopicDenied(topic, "", err)
	}
	if err != nil {
		return nil, fmt.Errorf("reply topic %q: %w", topic, err)
	}
	r := &replyRouter{g: g, topic: topic, counts: []int32{int32(len(parts))}, owned: map[int32]bool{},
		refresh: partitionsRefresh}
	r.pending.init()
	r.topicAttr = metric.WithAttributeSet(attribute.NewSet(attribute.String("messaging.destination.name", topic)))
	read := parts
	if n := g.cfg.shardCount; n > 1 {
		if len(parts) < n {
			return nil, fmt.Errorf("reply topic %q has %d partitions, fewer than the %d gateway instances sharing it", topic, len(parts), n)
		}
		r.sharded = true
		read = nil
		for _, p := range parts {
			if int(p)%n == g.cfg.shardIndex {
				read = append(read, p)
			}
		}
	}
	reader, err := g.client.NewReader(kafkaclient.ReaderConfig{ReadCommitted: g.cfg.readCommitted})
	if err != nil {
		return nil, fmt.Errorf("reply topic %q: %w", topic, err)
	}
	r.reader = reader
	if err := r.assign(ctx, read, kafkaclient.Latest); err != nil {
		_ = reader.Close()
		return nil, err
	}
	return r, nil
}

// assign starts reading parts at their current end offsets (at), or at
// their earliest ones.
func (r *replyRouter) assign(ctx context.Context, parts []int32, at kafkaclient.OffsetSpec) error {
	return r.assignFrom(ctx, parts, at, nil)
}

// assignFrom is assign, but a partition of parts with an offset in from
// past the one at gives starts there.
func (r *replyRouter) assignFrom(ctx context.Context, parts []int32, at kafkaclient.OffsetSpec, from map[int32]int64) error {
	offsets, err := r.g.client.Offsets(ctx, r.topic, parts, at)
	if err != nil {
		if notAuthorized(err) {
			return replyTopicDenied(r.topic, "looking up offsets: ", err)
		}
		return fmt.Errorf("reply topic %q: looking up offsets: %w", r.topic, err)
	}
	for p, o := range from {
		if cur, ok := offsets[p]; ok && o > cur {
			offsets[p] = o
		}
	}
	assign := make([]kafkaclient.TopicPartitionOffset, 0, len(parts))
	for _, p := range parts {
		assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: r.topic, Partition: p, Offset: offsets[p]})
	}
	if err := r.reader.Assign(assign); err != nil {
		return fmt.Errorf("reply topic %q: assigning partitions: %w", r.topic, err)
	}
	for _, p := range parts {
		r.owned[p] = true
	}
	return nil
}

// correlationID returns a correlation id for a call on this reply topic:
// base + hash when the caller fixed base, else a fresh UUID + hash, redrawn
// until the reply lands on a partition this gateway reads, whichever
// partition count the worker's producer hashes it over.
func (r *replyRouter) correlationID(base, hash string) string {
	if base != "" || !r.sharded {
		if base == "" {
			base = wire.NewUUID()
		}
		return base + hash
	}
	for {
		id := wire.NewUUID() + hash
		r.ownMu.Lock()
		missing := r.unread(id)
		r.ownMu.Unlock()
		if len(missing) == 0 {
			return id
		}
	}
}

// unread returns the partitions not read yet that a reply keyed id may go
// to: one per partition count the topic had. Called with ownMu held.
func (r *replyRouter) unread(id string) []int32 {
	var ps []int32
	for _, n := range r.counts {
		if p := kafkaclient.KeyPartition([]byte(id), n); !r.owned[p] && !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	return ps
}

// ensureReading makes sure the reply partitions of id are read, starting
// them at their end offsets before the request goes out.
func (r *replyRouter) ensureReading(ctx context.Context, id string) error {
	if !r.sharded {
		return nil
	}
	r.ownMu.Lock()
	defer r.ownMu.Unlock()
	if ps := r.unread(id); len(ps) > 0 {
		return r.assign(ctx, ps, kafkaclient.Latest)
	}
	return nil
}

// watchPartitions looks for partitions added to the reply topic every
// partitionsRefresh (as it was when the router started) until ctx ends
// (addPartitions).
func (r *replyRouter) watchPartitions(ctx context.Context) {
	watchPartitions(ctx, r.refresh, r.g.cfg.logger, "reply", r.topic, r.addPartitions)
}

// addPartitions reads the partitions added to the reply topic since the
// router last looked (those of this gateway's share when sharded), from
// their earliest offsets: a worker whose producer knows them writes there
// the replies of the calls whose correlation id hashes to them, maybe
// before this router learnt of them.
func (r *replyRouter) addPartitions(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.g.cfg.setupTimeout)
	defer cancel()
	var marks map[int32]int64
	if r.sharded {
		// The end offsets of every partition, looked up before the count:
		// if that count is the last known, nothing was written for a
		// larger one before these offsets (see marks).
		r.ownMu.Lock()
		known := r.counts[len(r.counts)-1]
		r.ownMu.Unlock()
		all := make([]int32, known)
		for i := range all {
			all[i] = int32(i)
		}
		var err error
		if marks, err = r.g.client.Offsets(ctx, r.topic, all, kafkaclient.Latest); err != nil {
			return err
		}
	}
	parts, err := r.g.client.Partitions(ctx, r.topic)
	if err != nil {
		return err
	}
	r.ownMu.Lock()
	defer r.ownMu.Unlock()
	n := int32(len(parts))
	if n <= r.counts[len(r.counts)-1] {
		if r.sharded {
			r.marks = marks
		}
		return nil
	}
	var added []int32
	for _, p := range parts {
		if !r.owned[p] && (!r.sharded || int(p)%r.g.cfg.shardCount == r.g.cfg.shardIndex) {
			added = append(added, p)
		}
	}
	r.counts = append(r.counts, n)
	if r.sharded {
		// The calls in flight drew their ids for the counts known before:
		// a worker's producer that knew n already hashed their replies
		// over n, maybe to a partition of another instance's share. Read
		// those too: an added one from its start, one the topic had
		// from its end offset at the last look that saw no growth (marks),
		// before which no reply was hashed over n.
		for _, c := range r.pending.all() {
			for _, p := range r.unread(c.id) {
				if !slices.Contains(added, p) {
					added = append(added, p)
				}
			}
		}
	}
	if len(added) > 0 {
		if err := r.assignFrom(ctx, added, kafkaclient.Earliest, r.marks); err != nil {
			r.counts = r.counts[:len(r.counts)-1] // look again next time
			return err
		}
	}
	r.marks = nil
	return nil
}

// add registers c; false if a live call with the same id is already in
// flight. A call whose caller already gave up (a retry right after a
// deadline, before the first attempt unregistered) gives way.
func (r *replyRouter) add(c *gwCall) bool { return r.pending.add(c) }

func (r *replyRouter) remove(c *gwCall) { r.pending.remove(c) }

// add registers c unless a live call holds its id (see replyRouter.add).
func (t *callTable) add(c *gwCall) bool {
	sh := t.shard(maphash.String(t.seed, c.id))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if old := sh.calls[c.id]; old != nil && old.ctx.Err() == nil {
		return false
	}
	sh.calls[c.id] = c
	return true
}

// remove unregisters c, unless another call took its id since.
func (t *callTable) remove(c *gwCall) {
	sh := t.shard(maphash.String(t.seed, c.id))
	sh.mu.Lock()
	if sh.calls[c.id] == c {
		delete(sh.calls, c.id)
	}
	sh.mu.Unlock()
}

// callTable maps correlation ids to the calls in flight: sharded by a hash
// of the id, so that calls adding and removing themselves and the reader
// looking records up rarely wait for each other, and looked up by the
// record's id bytes without allocating. The zero value is not ready: see
// init.
type callTable struct {
	seed   maphash.Seed
	shards [callShards]callShard
}

const callShards = 32

type callShard struct {
	mu    sync.Mutex
	calls map[string]*gwCall
	_     [48]byte // 64 bytes, a cache line, each
}

func (t *callTable) init() {
	t.seed = maphash.MakeSeed()
	for i := range t.shards {
		t.shards[i].calls = map[string]*gwCall{}
	}
}

func (t *callTable) shard(h uint64) *callShard { return &t.shards[h%callShards] }

// all returns the calls in flight.
func (t *callTable) all() []*gwCall {
	var cs []*gwCall
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, c := range sh.calls {
			cs = append(cs, c)
		}
		sh.mu.Unlock()
	}
	return cs
}

// lookup returns the call in flight with correlation id id, or nil.
func (t *callTable) lookup(id []byte) *gwCall {
	sh := t.shard(maphash.Bytes(t.seed, id))
	sh.mu.Lock()
	c := sh.calls[string(id)]
	sh.mu.Unlock()
	return c
}

// run dispatches records until ctx ends.
func (r *replyRouter) run(ctx context.Context) {
	names := &r.g.cfg.names
	// Reads that keep failing are logged at the first failure, then at
	// most once a refusalLogEvery, and once when replies are read again.
	var failures refusalLog
	pollUntilDone(ctx, r.poll, func(err error) {
		if notAuthorized(err) {
			r.refused(err)
			return
		}
		if failures.refused(time.Now()) {
			r.g.cfg.logger.Warn("kafkarpc: reading replies", "topic", r.topic, "error", err)
		}
	}, func(recs []*kafkaclient.Record) {
		if r.denied.Load() != nil {
			r.readable()
		}
		if failures.read() {
			r.g.cfg.logger.Info("kafkarpc: reading replies again", "topic", r.topic)
		}
		r.read.Add(uint64(len(recs)))
		for _, rec := range recs {
			env := wire.Decode(names, rec.Headers, rec.Value)
			if c := r.pending.lookup(env.CorrelationID); c != nil && c.answers(&env) {
				c.deliver(rec, &env)
			} else {
				r.dropped.Add(1)
				r.g.dropped.Add(context.Background(), 1, r.topicAttr)
			}
		}
	})
}

func (r *replyRouter) close() error { return r.reader.Close() }

// refusal returns the error a call through the router ends with while
// Kafka refuses to let the router read its topic, or nil. One atomic load:
// every call asks, once it is registered (Gateway.beginCall).
func (r *replyRouter) refusal() error {
	if p := r.denied.Load(); p != nil {
		return r.deniedError(*p)
	}
	return nil
}

// deniedError is what a call through the router is told when reading its
// topic was refused with err.
func (r *replyRouter) deniedError(err error) error {
	return fmt.Errorf("reply topic %q: not authorized: the client's principal may not read it "+
		"(it needs READ on the topic; calls whose replies cannot be read are not sent): %w", r.topic, err)
}

// refused records that Kafka refused to let the router read its topic
// (err): it says so at error level once until the topic is readable again,
// and ends the calls waiting for replies PERMISSION_DENIED; calls to come
// end so before their request is produced (refusal).
func (r *replyRouter) refused(err error) {
	if r.denied.Swap(&err) == nil {
		r.g.cfg.logger.Error("kafkarpc: Kafka refuses to let this client read a reply topic: calls through it end PERMISSION_DENIED until it may "+
			"(grant its principal READ on the topic)", "topic", r.topic, "error", err)
		if testHookReplyRead != nil {
			testHookReplyRead(r.topic, false)
		}
	}
	denied := r.deniedError(err)
	for _, c := range r.pending.all() {
		c.fail(status.Errorf(codes.PermissionDenied, "%s: %v", c.m.FullMethod(), denied))
	}
}

// readable records that the router read its topic again after a refusal.
func (r *replyRouter) readable() {
	if r.denied.Swap(nil) != nil {
		r.g.cfg.logger.Info("kafkarpc: reading a reply topic again after Kafka refused it", "topic", r.topic)
		if testHookReplyRead != nil {
			testHookReplyRead(r.topic, true)
		}
	}
}

// poll reads the next records of the topic. After a refusal it waits
// replyRecheck, starts a fresh reader (see replyRecheck) and reads with it:
// records, or replySettle without a refusal, mean the topic is readable
// again (nil records and error then).
func (r *replyRouter) poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	if r.denied.Load() == nil {
		return r.reader.Poll(ctx)
	}
	t := time.NewTimer(replyRecheck)
	select {
	case <-ctx.Done():
		t.Stop()
		return nil, ctx.Err()
	case <-t.C:
	}
	if err := r.renew(ctx); err != nil {
		return nil, err
	}
	settle, cancel := context.WithTimeout(ctx, replySettle)
	recs, err := r.reader.Poll(settle)
	cancel()
	if err != nil && ctx.Err() == nil && settle.Err() != nil && !notAuthorized(err) {
		return nil, nil // read replySettle without a refusal
	}
	return recs, err
}

// renew replaces the router's reader with a fresh one reading the same
// partitions from their current end offsets: the calls that waited for
// replies before were ended by the refusal. Called by run only (the one
// reader of r.reader outside ownMu).
func (r *replyRouter) renew(ctx context.Context) error {
	reader, err := r.g.client.NewReader(kafkaclient.ReaderConfig{ReadCommitted: r.g.cfg.readCommitted})
	if err != nil {
		return fmt.Errorf("reply topic %q: %w", r.topic, err)
	}
	r.ownMu.Lock()
	defer r.ownMu.Unlock()
	parts := make([]int32, 0, len(r.owned))
	for p := range r.owned {
		parts = append(parts, p)
	}
	old := r.reader
	r.reader = reader
	if err := r.assign(ctx, parts, kafkaclient.Latest); err != nil {
		r.reader = old
		_ = reader.Close()
		return err
	}
	if err := old.Close(); err != nil {
		r.g.cfg.logger.Warn("kafkarpc: closing a reply topic's reader", "topic", r.topic, "error", err)
	}
	return nil
}
