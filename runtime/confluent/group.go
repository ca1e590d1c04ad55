package confluent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// GroupReader implements kafkaclient.GroupReader: a member of a consumer
// group, subscribed to the configured topics, committing only when told to.
//
// Rebalances are handled inside Poll: assigned partitions are added
// (incrementally with the cooperative protocol, the default; as a whole with
// the eager one) and then reported to OnAssigned; revoked partitions are
// first reported to OnRevoked (their offsets can still be committed), then
// removed, and records of theirs collected in the same Poll are dropped from
// the batch (the next owner reads them again from the committed offset).
//
// Poll and Close must be called from one goroutine; Commit from any.
type GroupReader struct {
	*consumerBase
	cfg kafkaclient.GroupConfig

	// Touched only from the Poll/Close goroutine (rebalance callbacks run
	// inside Poll and inside the consumer's close).
	assigned map[kafkaclient.TopicPartition]struct{}
	batch    []*kafkaclient.Record // being collected by Poll; empty outside it

	mu      sync.Mutex // guards closed
	closed  bool
	commits sync.WaitGroup

	// Pausing (see Pause). want is what Pause and Resume asked for; the
	// rest is touched only from the Poll/Close goroutine: the partitions
	// this reader paused in librdkafka, the records it holds back while
	// paused, and the partitions resumed since the last rebalance callback.
	want    atomic.Bool
	paused  map[kafkaclient.TopicPartition]struct{}
	held    map[kafkaclient.TopicPartition][]*kafkaclient.Record
	resumed map[kafkaclient.TopicPartition]struct{}

	once     sync.Once
	closeErr error
}

var (
	_ kafkaclient.GroupReader = (*GroupReader)(nil)
	_ kafkaclient.Pauser      = (*GroupReader)(nil)
)

// NewGroupReader joins cfg.GroupID (on the first Poll) subscribed to
// cfg.Topics. See New for the consumer defaults (auto.offset.reset=earliest,
// or latest with cfg.StartAtLatest; cooperative-sticky assignment, no
// automatic commits).
func (c *Client) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	if cfg.GroupID == "" {
		return nil, errors.New("confluent: GroupConfig.GroupID is required")
	}
	if len(cfg.Topics) == 0 {
		return nil, errors.New("confluent: GroupConfig.Topics is required")
	}
	kcfg := c.consumerConfig(cfg.GroupID, cfg.ReadCommitted)
	if cfg.StartAtLatest {
		kcfg["auto.offset.reset"] = "latest"
	}
	// Partitions added to a subscribed topic are noticed at the next
	// metadata refresh: librdkafka's 5 minutes left the calls produced to
	// a worker's new request partitions unserved that long.
	setDefault(kcfg, DefaultGroupMetadataRefreshMs, "topic.metadata.refresh.interval.ms")
	if err := cfg.Protocol.Check(); err != nil {
		return nil, fmt.Errorf("confluent: %w", err)
	}
	if cfg.Protocol != "" {
		kcfg["group.protocol"] = string(cfg.Protocol)
	}
	if proto, _ := kcfg["group.protocol"].(string); proto == "" || proto == "classic" {
		setDefault(kcfg, DefaultAssignmentStrategy, "partition.assignment.strategy")
		// A member that died holds its partitions until this passes:
		// librdkafka's 45 s is long for RPC; Kafka's minimum is 6 s.
		setDefault(kcfg, DefaultSessionTimeoutMs, "session.timeout.ms")
		setDefault(kcfg, DefaultHeartbeatIntervalMs, "heartbeat.interval.ms")
	} else {
		// The broker sets these under the consumer protocol; librdkafka
		// refuses a configuration that sets them.
		for _, k := range []string{"partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"} {
			delete(kcfg, k)
		}
	}
	base, err := c.newConsumer(kcfg)
	if err != nil {
		return nil, err
	}
	g := &GroupReader{
		consumerBase: base,
		cfg:          cfg,
		assigned:     make(map[kafkaclient.TopicPartition]struct{}),
		paused:       make(map[kafkaclient.TopicPartition]struct{}),
		held:         make(map[kafkaclient.TopicPartition][]*kafkaclient.Record),
		resumed:      make(map[kafkaclient.TopicPartition]struct{}),
	}
	g.gate = g
	if err := g.kc.SubscribeTopics(append([]string(nil), cfg.Topics...), g.rebalance); err != nil {
		_ = g.kc.Close()
		<-g.logsDone
		return nil, fmt.Errorf("confluent: subscribe %v: %w", cfg.Topics, err)
	}
	return g, nil
}

func toParts(tps []kafka.TopicPartition) []kafkaclient.TopicPartition {
	out := make([]kafkaclient.TopicPartition, 0, len(tps))
	for _, tp := range tps {
		var topic string
		if tp.Topic != nil {
			topic = *tp.Topic
		}
		out = append(out, kafkaclient.TopicPartition{Topic: topic, Partition: tp.Partition})
	}
	return out
}

// rebalance is librdkafka's rebalance callback; it runs inside Poll (and
// inside the consumer's Close).
func (g *GroupReader) rebalance(kc *kafka.Consumer, ev kafka.Event) error {
	cooperative := kc.GetRebalanceProtocol() == "COOPERATIVE"
	closing := g.closing.Load()
	switch e := ev.(type) {
	case kafka.AssignedPartitions:
		// Not paused here even while Pause holds: see Pause.
		var err error
		if cooperative {
			err = kc.IncrementalAssign(e.Partitions)
		} else {
			err = kc.Assign(e.Partitions)
		}
		g.resumeAgain()
		if err != nil {
			g.c.log.Error("confluent: group assign failed", "client", g.name, "group", g.cfg.GroupID, "err", err)
			return err
		}
		parts := toParts(e.Partitions)
		for _, tp := range parts {
			g.assigned[tp] = struct{}{}
		}
		if !closing && g.cfg.OnAssigned != nil {
			g.cfg.OnAssigned(parts)
		}
	case kafka.RevokedPartitions:
		parts := toParts(e.Partitions)
		lost := kc.AssignmentLost()
		// During Close, OnRevoked was already called for everything.
		if !closing && g.cfg.OnRevoked != nil && len(parts) > 0 {
			g.cfg.OnRevoked(parts, lost)
		}
		g.dropFromBatch(parts)
		g.release(parts)
		var err error
		if cooperative {
			err = kc.IncrementalUnassign(e.Partitions)
		} else {
			err = kc.Unassign()
		}
		for _, tp := range parts {
			delete(g.assigned, tp)
		}
		g.resumeAgain()
		if err != nil {
			g.c.log.Error("confluent: group unassign failed", "client", g.name, "group", g.cfg.GroupID, "err", err)
			return err
		}
	}
	return nil
}

// dropFromBatch removes from the batch being collected the records of
// partitions just revoked: the caller was told they are gone.
func (g *GroupReader) dropFromBatch(parts []kafkaclient.TopicPartition) {
	if len(g.batch) == 0 {
		return
	}
	gone := make(map[kafkaclient.TopicPartition]struct{}, len(parts))
	for _, p := range parts {
		gone[p] = struct{}{}
	}
	kept := g.batch[:0]
	for _, r := range g.batch {
		if _, drop := gone[kafkaclient.TopicPartition{Topic: r.Topic, Partition: r.Partition}]; !drop {
			kept = append(kept, r)
		}
	}
	clear(g.batch[len(kept):])
	g.batch = kept
}

// Poll blocks until at least one record is available (returning it with what
// else is already buffered, up to 512 records), ctx ends (ctx.Err()) or the
// reader is closed (kafkaclient.ErrClosed). The first Poll joins the group.
// OnAssigned and OnRevoked run inside Poll. A consume error
// TOPIC_AUTHORIZATION_FAILED, with no record to return, is returned as an
// error wrapping kafkaclient.ErrNotAuthorized naming the topic (or the
// group's topics, when librdkafka does not say which); the member carries
// on, and a later Poll returns records once access is granted.
func (g *GroupReader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	err := g.poll(ctx, &g.batch)
	batch := g.batch
	g.batch = nil
	if err != nil {
		var u *unnamedDenied
		if errors.As(err, &u) {
			err = fmt.Errorf("confluent: consume %s: %w", strings.Join(g.cfg.Topics, ", "), u.error)
		}
		return nil, err
	}
	return batch, nil
}

// Pause stops fetching the partitions assigned, and those assigned later,
// until Resume. Safe for concurrent use.
//
// It takes effect on the Poll goroutine, partition by partition, at the
// first record a partition delivers while paused: that record, and any
// delivered with it, are held back from Poll until Resume, and the
// partition is paused in librdkafka then. A partition that delivers nothing
// costs nothing to leave running. The reason is librdkafka's own race: a
// pause or resume of a partition (an operation stamped with a version)
// made while librdkafka starts that partition's fetcher after an
// assignment, or pauses it for a rebalance, can be dropped as outdated, or
// can make the start outdated, so that the partition is never fetched
// (librdkafka issues 2190 and 5591; both were seen in this module's
// conformance suite). A partition that delivered a record has had its
// fetcher started, so pausing it then is safe; a pause still lost shows
// as another record, which is held too and pauses the partition again; a
// resume made while a rebalance starts is made again in its callback, for
// the partitions it keeps and for those it revokes.
func (g *GroupReader) Pause() { g.setPaused(true) }

// Resume undoes Pause: the partitions start fetching again, and the held
// records are returned before those fetched after them, by a Poll under way
// within about pausedSlice (10 ms) or by the next. Safe for concurrent use.
func (g *GroupReader) Resume() { g.setPaused(false) }

func (g *GroupReader) setPaused(on bool) {
	if !g.closing.Load() {
		g.want.Store(on)
	}
}

// pausedSlice bounds the wait inside Poll while the reader has partitions
// to resume: how soon Resume takes effect.
const pausedSlice = 10 * time.Millisecond

// admit holds r back while paused, pausing its partition in librdkafka at
// its first record (or again, if a record shows the pause was lost), and
// holds the records of a partition that has records held before them, so
// that they come out in order. Poll goroutine.
func (g *GroupReader) admit(r *kafkaclient.Record) bool {
	want := g.want.Load()
	if !want && len(g.held) == 0 {
		return true
	}
	tp := kafkaclient.TopicPartition{Topic: r.Topic, Partition: r.Partition}
	if _, ok := g.assigned[tp]; !ok {
		return true
	}
	if !want && len(g.held[tp]) == 0 {
		return true
	}
	g.held[tp] = append(g.held[tp], r)
	if want {
		g.paused[tp] = struct{}{}
		_ = g.pauseResume(true, []kafkaclient.TopicPartition{tp})
	}
	return false
}

// before resumes, once Resume was called, the partitions this reader
// paused, and moves the held records into the batch (up to maxBatch; the
// rest on the next Poll). Poll goroutine.
func (g *GroupReader) before(batch *[]*kafkaclient.Record) time.Duration {
	if len(g.paused) == 0 && len(g.held) == 0 {
		return pollSlice
	}
	if g.want.Load() {
		return pausedSlice
	}
	if len(g.paused) > 0 {
		parts := make([]kafkaclient.TopicPartition, 0, len(g.paused))
		for tp := range g.paused {
			parts = append(parts, tp)
			g.resumed[tp] = struct{}{}
		}
		if g.pauseResume(false, parts) == nil { // else tried again next time
			clear(g.paused)
		}
	}
	for tp, rs := range g.held {
		n := min(len(rs), maxBatch-len(*batch))
		*batch = append(*batch, rs[:n]...)
		if n < len(rs) {
			g.held[tp] = rs[n:]
			continue
		}
		delete(g.held, tp)
	}
	return pollSlice
}

// release forgets the held records of partitions being revoked and resumes
// those of them this reader paused, or resumed since the previous rebalance
// callback (a resume librdkafka may have dropped), so that none leaves the
// assignment paused: librdkafka keeps a partition's pause across its
// reassignment, and a partition paused and reassigned would never be read.
// Called in the revoke callback, before the partitions are unassigned.
func (g *GroupReader) release(parts []kafkaclient.TopicPartition) {
	var resume []kafkaclient.TopicPartition
	for _, tp := range parts {
		delete(g.held, tp)
		_, paused := g.paused[tp]
		_, resumed := g.resumed[tp]
		if paused || resumed {
			delete(g.paused, tp)
			delete(g.resumed, tp)
			resume = append(resume, tp)
		}
	}
	if len(resume) > 0 {
		_ = g.pauseResume(false, resume)
	}
}

// resumeAgain resumes once more, at the end of a rebalance callback, the
// partitions resumed since the previous callback that are still assigned and
// not paused again: librdkafka pauses the assignment for a rebalance before
// its callback, and a resume made meanwhile can be dropped. A partition
// that is not paused by this reader is left as it is by the resume (it may
// still carry librdkafka's own rebalance pause, which librdkafka lifts);
// these partitions' fetchers run, so no start of theirs can be outdated.
func (g *GroupReader) resumeAgain() {
	if len(g.resumed) == 0 {
		return
	}
	var again []kafkaclient.TopicPartition
	for tp := range g.resumed {
		_, assigned := g.assigned[tp]
		_, paused := g.paused[tp]
		if assigned && !paused {
			again = append(again, tp)
		}
	}
	clear(g.resumed)
	if len(again) > 0 {
		_ = g.pauseResume(false, again)
	}
}

// pauseResume pauses or resumes parts in librdkafka (a call that waits for
// librdkafka's main thread), not once Close began: the consumer is going
// away, and its main thread may no longer answer.
func (g *GroupReader) pauseResume(pause bool, parts []kafkaclient.TopicPartition) error {
	if g.closing.Load() {
		return nil
	}
	tps := make([]kafka.TopicPartition, len(parts))
	for i, tp := range parts {
		tps[i] = kafka.TopicPartition{Topic: &tp.Topic, Partition: tp.Partition}
	}
	var err error
	if pause {
		err = g.kc.Pause(tps)
	} else {
		err = g.kc.Resume(tps)
	}
	if err != nil {
		g.c.log.Warn("confluent: pausing or resuming partitions", "client", g.name, "group", g.cfg.GroupID, "pause", pause, "err", err)
	}
	return err
}

// Commit synchronously commits offsets (each the next offset to read) for
// the group. It returns when the coordinator answered, or when ctx ends (the
// commit may then still complete). An empty list commits nothing. Safe to
// call from any goroutine, including from OnRevoked; after Close it returns
// kafkaclient.ErrClosed.
func (g *GroupReader) Commit(ctx context.Context, offsets []kafkaclient.TopicPartitionOffset) error {
	if len(offsets) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return kafkaclient.ErrClosed
	}
	g.commits.Add(1)
	g.mu.Unlock()

	tps := make([]kafka.TopicPartition, len(offsets))
	for i, o := range offsets {
		topic := o.Topic
		tps[i] = kafka.TopicPartition{Topic: &topic, Partition: o.Partition, Offset: kafka.Offset(o.Offset)}
	}
	if ctx.Done() == nil {
		defer g.commits.Done()
		return g.commit(tps)
	}
	res := make(chan error, 1)
	go func() {
		defer g.commits.Done()
		res <- g.commit(tps)
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *GroupReader) commit(tps []kafka.TopicPartition) error {
	done, err := g.kc.CommitOffsets(tps)
	if err != nil {
		return fmt.Errorf("confluent: commit (group %s): %w", g.cfg.GroupID, err)
	}
	var errs []error
	for _, tp := range done {
		if tp.Error != nil {
			errs = append(errs, fmt.Errorf("confluent: commit %s (group %s): %w", tp.String(), g.cfg.GroupID, tp.Error))
		}
	}
	return errors.Join(errs...)
}

// Close calls OnRevoked for the partitions still assigned (lost reports
// whether the assignment was already lost), waits for commits in progress,
// then leaves the group and releases the consumer. Call it from the Poll
// goroutine, after the last Poll returned. Calling Close again returns the
// first result.
func (g *GroupReader) Close() error {
	g.once.Do(func() {
		g.closing.Store(true)
		if g.cfg.OnRevoked != nil && len(g.assigned) > 0 {
			parts := make([]kafkaclient.TopicPartition, 0, len(g.assigned))
			for tp := range g.assigned {
				parts = append(parts, tp)
			}
			slices.SortFunc(parts, func(a, b kafkaclient.TopicPartition) int {
				return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition))
			})
			g.cfg.OnRevoked(parts, g.kc.AssignmentLost())
		}
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
		g.commits.Wait()
		g.unsubscribe()
		// Leaves the group; a revoke still to come back through rebalance
		// only unassigns now.
		if err := g.kc.Close(); err != nil {
			g.closeErr = fmt.Errorf("confluent: close group reader: %w", err)
		}
		<-g.logsDone
	})
	return g.closeErr
}

// unsubscribeBound bounds how long Close serves the revoke of its
// unsubscribe before closing the consumer regardless.
const unsubscribeBound = 10 * time.Second

// unsubscribe gives the assignment up before the consumer is closed,
// serving the revoke that brings through rebalance here, in Poll: an
// assign or unassign call made from the rebalance callback while the
// consumer's Close terminates the group can be dropped by librdkafka
// unanswered, and the call, and with it Close, then never returns
// (librdkafka issue 4884; seen with the eager protocol when a rebalance
// was under way at Close). Unsubscribing is no termination, so the
// unassign is served. Records polled meanwhile are dropped: they were
// never handed out, and offsets are committed only by the caller.
func (g *GroupReader) unsubscribe() {
	if err := g.kc.Unsubscribe(); err != nil {
		g.c.log.Warn("confluent: unsubscribe before close failed", "client", g.name, "group", g.cfg.GroupID, "err", err)
		return
	}
	for deadline := time.Now().Add(unsubscribeBound); time.Now().Before(deadline); {
		parts, err := g.kc.Assignment()
		if err != nil || len(parts) == 0 {
			return
		}
		g.kc.Poll(50)
	}
	g.c.log.Warn("confluent: the assignment was not given up within the bound before close", "client", g.name, "group", g.cfg.GroupID, "bound", unsubscribeBound)
}

// DefaultSessionTimeoutMs is the group session timeout of group readers
// under the classic protocol (session.timeout.ms) unless configured: how
// long the partitions of a member that died wait before another member takes
// them. librdkafka's default is 45 s; 6 s is the least an Apache Kafka
// broker accepts by default (group.min.session.timeout.ms). With
// DefaultHeartbeatIntervalMs a member is declared dead only after about
// five heartbeats in a row failed to arrive: a process stalled for 5 s
// (CPU starvation, a swap storm) loses its partitions, one stalled for less
// does not.
const DefaultSessionTimeoutMs = 6000

// DefaultHeartbeatIntervalMs is heartbeat.interval.ms of group readers under
// the classic protocol unless configured (librdkafka's default: 3000). A
// live member learns of a rebalance at its next heartbeat, so this also
// bounds how long the other members make a rebalance wait.
const DefaultHeartbeatIntervalMs = 1000
