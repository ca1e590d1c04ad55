package franz

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// GroupReader implements kafkaclient.GroupReader: a kgo client that is a
// member of a consumer group, subscribed to the configured topics,
// committing only when told to.
//
// Rebalances are handled inside Poll. kgo calls its partition callbacks on
// its own goroutines; each of them is handed to the goroutine in Poll (a
// Poll waiting for records is interrupted) and kgo waits until it has run:
// OnAssigned runs before any record of the new partitions is fetched;
// OnRevoked runs after kgo stopped fetching the revoked partitions (no later
// Poll returns their records) and before the rebalance proceeds, so that a
// synchronous Commit made in it lands while this member still owns them.
// lost is true when kgo reports the partitions lost (the member was fenced
// or the group errored fatally: OnPartitionsLost). When the caller is not
// in Poll, a rebalance waits until the next Poll or Close (bounded by the
// group's rebalance timeout, kgo default 60s, after which the member is
// removed from the group), as with librdkafka.
//
// Poll and Close must be called from one goroutine; Commit from any.
type GroupReader struct {
	kc  *kgo.Client
	cfg kafkaclient.GroupConfig
	log *slog.Logger

	// Touched only from the Poll/Close goroutine.
	assigned map[kafkaclient.TopicPartition]struct{}
	denied   error     // a refusal that came beside the records Poll returned: the next Poll returns it
	toldAt   time.Time // when Poll last returned a refusal

	mu         sync.Mutex // guards events, pollCancel, closing and closed
	events     []*rebalanceEvent
	pollCancel context.CancelFunc
	closing    bool          // Close started: callbacks no longer queue
	closed     bool          // Commit refused
	revokedAll chan struct{} // closed once Close has called OnRevoked and commits ended
	commits    sync.WaitGroup

	once sync.Once
}

var (
	_ kafkaclient.GroupReader = (*GroupReader)(nil)
	_ kafkaclient.Pauser      = (*GroupReader)(nil)
)

// refusalBesideEvery is the least time between two refusals a
// GroupReader's Poll returns when they came beside records (Poll).
const refusalBesideEvery = time.Second

type eventKind int8

const (
	evAssigned eventKind = iota
	evRevoked
	evLost
)

// rebalanceEvent is one kgo partition callback waiting for the Poll
// goroutine.
type rebalanceEvent struct {
	kind  eventKind
	parts []kafkaclient.TopicPartition
	done  chan struct{}
}

// NewGroupReader returns a member of cfg.GroupID subscribed to cfg.Topics.
// Its kgo client starts joining the group at once; the first partition
// callbacks wait for the first Poll. See New for the consumer defaults
// (cooperative-sticky balancing, FetchMaxWait 100ms); auto-commit is always
// disabled, and a partition without a committed offset starts at its
// earliest offset, or at its end with cfg.StartAtLatest.
func (c *Client) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	if cfg.GroupID == "" {
		return nil, errors.New("franz: GroupConfig.GroupID is required")
	}
	if len(cfg.Topics) == 0 {
		return nil, errors.New("franz: GroupConfig.Topics is required")
	}
	role := "group-" + strconv.FormatUint(c.seq.Add(1), 10)
	g := &GroupReader{
		cfg:        cfg,
		log:        c.log.With("client", role, "group", cfg.GroupID),
		assigned:   make(map[kafkaclient.TopicPartition]struct{}),
		revokedAll: make(chan struct{}),
	}
	start := kgo.NewOffset().AtStart()
	if cfg.StartAtLatest {
		start = kgo.NewOffset().AtEnd()
	}
	if err := cfg.Protocol.Check(); err != nil {
		return nil, fmt.Errorf("franz: %w", err)
	}
	var protocol []kgo.Opt
	if cfg.Protocol == kafkaclient.GroupProtocolConsumer {
		// KIP-848: the broker assigns; kgo needs its (default)
		// cooperative-sticky or a range balancer for it.
		protocol = append(protocol, kgo.ServerSideBalancer())
	}
	kc, err := c.newConsumerClient(c.consumerOpts(role, cfg.ReadCommitted,
		// WithConsumerOpts may override these.
		[]kgo.Opt{kgo.SessionTimeout(DefaultSessionTimeout), kgo.HeartbeatInterval(DefaultHeartbeatInterval), kgo.MetadataMaxAge(DefaultGroupMetadataMaxAge)},
		append(protocol,
			kgo.ConsumerGroup(cfg.GroupID),
			kgo.ConsumeTopics(slices.Clone(cfg.Topics)...),
			kgo.DisableAutoCommit(),
			kgo.ConsumeStartOffset(start),
			kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { g.deliver(evAssigned, m) }),
			kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { g.deliver(evRevoked, m) }),
			kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { g.deliver(evLost, m) }),
		)...))
	if err != nil {
		return nil, err
	}
	g.kc = kc
	return g, nil
}

func toParts(m map[string][]int32) []kafkaclient.TopicPartition {
	var out []kafkaclient.TopicPartition
	for t, ps := range m {
		for _, p := range ps {
			out = append(out, kafkaclient.TopicPartition{Topic: t, Partition: p})
		}
	}
	sortParts(out)
	return out
}

func sortParts(ps []kafkaclient.TopicPartition) {
	slices.SortFunc(ps, func(a, b kafkaclient.TopicPartition) int {
		return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition))
	})
}

// deliver runs on a kgo goroutine: it queues the callback for the Poll
// goroutine, interrupts a waiting Poll, and returns once the callback ran.
// Once Close has started, nothing is queued: Close reports the revocation
// of everything itself, and a kgo callback waits only until that is done,
// so that the partitions do not move before Close's OnRevoked returned.
func (g *GroupReader) deliver(kind eventKind, m map[string][]int32) {
	parts := toParts(m)
	if len(parts) == 0 && kind != evAssigned {
		return // kgo calls its callbacks also when nothing changes
	}
	ev := &rebalanceEvent{kind: kind, parts: parts, done: make(chan struct{})}
	g.mu.Lock()
	if g.closing {
		g.mu.Unlock()
		<-g.revokedAll
		return
	}
	g.events = append(g.events, ev)
	if g.pollCancel != nil {
		g.pollCancel()
	}
	g.mu.Unlock()
	<-ev.done
}

// runEvents runs the queued callbacks, in order, on the calling (Poll or
// Close) goroutine.
func (g *GroupReader) runEvents() {
	for {
		g.mu.Lock()
		if len(g.events) == 0 {
			g.mu.Unlock()
			return
		}
		ev := g.events[0]
		g.events = g.events[1:]
		g.mu.Unlock()
		g.run(ev)
	}
}

func (g *GroupReader) run(ev *rebalanceEvent) {
	defer close(ev.done)
	switch ev.kind {
	case evAssigned:
		for _, tp := range ev.parts {
			g.assigned[tp] = struct{}{}
		}
		if g.cfg.OnAssigned != nil {
			g.cfg.OnAssigned(ev.parts)
		}
	default:
		if g.cfg.OnRevoked != nil {
			g.cfg.OnRevoked(ev.parts, ev.kind == evLost)
		}
		for _, tp := range ev.parts {
			delete(g.assigned, tp)
		}
	}
}

// Poll blocks until at least one record is available (returning it with what
// else is already buffered, up to 512 records), ctx ends (ctx.Err()) or the
// reader is closed (kafkaclient.ErrClosed). OnAssigned and OnRevoked run
// inside Poll, before it waits for records. Partition-level fetch errors are
// logged and do not end Poll, but for TOPIC_AUTHORIZATION_FAILED: with no
// record to return, Poll returns an error wrapping
// kafkaclient.ErrNotAuthorized naming the topic, and one that came beside
// records (of the group's other topics) is returned by the next Poll,
// before it waits, unless Poll returned one less than refusalBesideEvery
// ago (the member stays in the group and kgo keeps asking; a later Poll
// returns records once access is granted).
func (g *GroupReader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	if err := g.denied; err != nil {
		g.denied, g.toldAt = nil, time.Now()
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		g.runEvents()
		pctx, cancel := context.WithCancel(ctx)
		g.mu.Lock()
		if g.closing {
			g.mu.Unlock()
			cancel()
			return nil, kafkaclient.ErrClosed
		}
		if len(g.events) > 0 {
			g.mu.Unlock()
			cancel()
			continue
		}
		g.pollCancel = cancel
		g.mu.Unlock()

		fs := g.kc.PollRecords(pctx, maxBatch)

		g.mu.Lock()
		g.pollCancel = nil
		g.mu.Unlock()
		cancel()
		recs, closed, newID, denied, failed := recordsOf(fs, g.log)
		if len(newID) > 0 && !closed {
			// A topic deleted and created again: kgo keeps its old id
			// until the topic is purged; subscribing to it again learns
			// the new one. The group rebalances meanwhile (a commit of the
			// deleted topic's offsets then fails, as it must).
			g.log.Warn("franz: a topic of the group has a new id (deleted and created again): subscribing to it anew", "topics", newID)
			g.kc.PurgeTopicsFromClient(newID...)
			g.kc.AddConsumeTopics(newID...)
		}
		if len(recs) > 0 {
			// Each fetch may carry records of the group's other topics:
			// the next Poll tells of a refusal beside them, at most once
			// per refusalBesideEvery (a caller's poll loop may pause
			// after an error; the records of the other topics do not wait
			// at each fetch).
			if denied != nil && time.Since(g.toldAt) >= refusalBesideEvery {
				g.denied = denied
			}
			return recs, nil
		}
		if closed {
			return nil, kafkaclient.ErrClosed
		}
		if denied != nil {
			g.toldAt = time.Now()
			return nil, denied // the member carries on: kgo asks again
		}
		if failed {
			backOff(ctx) // not a hot loop of fetches of a failing partition
		}
		// Interrupted by a callback (run at the top of the loop) or
		// by ctx (returned there).
	}
}

// Pause stops fetching the group's topics until Resume (kgo's
// PauseFetchTopics, which holds for partitions assigned later too, and
// drops what it fetched of them but did not return). Safe for concurrent
// use.
func (g *GroupReader) Pause() { g.kc.PauseFetchTopics(g.cfg.Topics...) }

// Resume undoes Pause. Safe for concurrent use.
func (g *GroupReader) Resume() { g.kc.ResumeFetchTopics(g.cfg.Topics...) }

// Commit synchronously commits offsets (each the next offset to read) for
// the group with kgo's CommitOffsetsSync: it waits for commits in flight,
// is not cancelled by rebalances, and returns when the coordinator answered
// (an error names each partition that failed) or when ctx ends. A
// partition the coordinator answered REQUEST_TIMED_OUT or a coordinator
// error for is committed again, with a backoff, until it is answered
// otherwise or ctx ends (as the confluent client does). An empty
// list commits nothing. Safe to call from any goroutine, including from
// OnRevoked; after Close it returns kafkaclient.ErrClosed.
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
	defer g.commits.Done()

	m := make(map[string]map[int32]kgo.EpochOffset)
	for _, o := range offsets {
		if m[o.Topic] == nil {
			m[o.Topic] = make(map[int32]kgo.EpochOffset)
		}
		m[o.Topic][o.Partition] = kgo.EpochOffset{Epoch: -1, Offset: o.Offset}
	}
	var errs []error
	backoff := 50 * time.Millisecond
	for len(m) > 0 {
		retry := make(map[string]map[int32]kgo.EpochOffset)
		var retryErrs []error
		g.kc.CommitOffsetsSync(ctx, m, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				errs = append(errs, fmt.Errorf("franz: commit (group %s): %w", g.cfg.GroupID, err))
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					err := kerr.ErrorForCode(p.ErrorCode)
					if err == nil {
						continue
					}
					off := m[t.Topic][p.Partition]
					err = fmt.Errorf("franz: commit %s[%d]@%d (group %s): %w", t.Topic, p.Partition, off.Offset, g.cfg.GroupID, err)
					if !commitRetriable(p.ErrorCode) {
						errs = append(errs, err)
						continue
					}
					if retry[t.Topic] == nil {
						retry[t.Topic] = make(map[int32]kgo.EpochOffset)
					}
					retry[t.Topic][p.Partition] = off
					retryErrs = append(retryErrs, err)
				}
			}
		})
		if len(retry) == 0 {
			break
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(append(errs, retryErrs...)...)
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
		m = retry
	}
	return errors.Join(errs...)
}

// commitRetriable reports whether an OffsetCommit partition error is one
// that committing again may cure (the coordinator was busy, moving, or its
// write of the offsets timed out), as librdkafka and the Java client retry
// it within a synchronous commit. kgo already retries the coordinator
// errors of the request itself, not these per-partition answers.
func commitRetriable(code int16) bool {
	switch code {
	case kerr.RequestTimedOut.Code, kerr.CoordinatorLoadInProgress.Code, kerr.CoordinatorNotAvailable.Code, kerr.NotCoordinator.Code:
		return true
	}
	return false
}

// Close runs the rebalance callbacks still queued, calls OnRevoked for the
// partitions still assigned (lost false), waits for commits in progress,
// then leaves the group and closes the kgo client. Call it from the Poll
// goroutine, after the last Poll returned. Calling Close again does nothing
// and returns nil.
func (g *GroupReader) Close() error {
	g.once.Do(func() {
		g.mu.Lock()
		g.closing = true
		g.mu.Unlock()
		// Callbacks queued before closing started wait for us.
		g.runEvents()
		if len(g.assigned) > 0 {
			parts := make([]kafkaclient.TopicPartition, 0, len(g.assigned))
			for tp := range g.assigned {
				parts = append(parts, tp)
			}
			sortParts(parts)
			if g.cfg.OnRevoked != nil {
				g.cfg.OnRevoked(parts, false)
			}
			clear(g.assigned)
		}
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
		g.commits.Wait()
		close(g.revokedAll)
		// Leaves the group; kgo's final revoke finds closing set and
		// returns at once.
		g.kc.Close()
	})
	return nil
}

// DefaultSessionTimeout is the group session timeout of group readers under
// the classic protocol unless WithConsumerOpts sets kgo.SessionTimeout: how
// long the partitions of a member that died wait before another member takes
// them (kgo's default is 45 s; 6 s is the least an Apache Kafka broker
// accepts by default, group.min.session.timeout.ms). With
// DefaultHeartbeatInterval a member is declared dead only after about five
// heartbeats in a row failed to arrive: a process stalled for 5 s loses its
// partitions, one stalled for less does not. Under the consumer protocol
// (KIP-848) the broker's group.consumer.session.timeout.ms applies instead.
const DefaultSessionTimeout = 6 * time.Second

// DefaultGroupMetadataMaxAge is the kgo.MetadataMaxAge of group readers
// unless WithConsumerOpts sets it: how often a group reader refreshes the
// metadata of its topics, and so how soon partitions added to a topic it
// consumes are noticed, assigned and read (kgo's default is 5 minutes: the
// calls produced to a worker's new request partitions meanwhile waited
// that long). One metadata request per group reader every 10 s.
const DefaultGroupMetadataMaxAge = 10 * time.Second

// DefaultHeartbeatInterval is the heartbeat interval of group readers under
// the classic protocol unless WithConsumerOpts sets kgo.HeartbeatInterval
// (kgo's default: 3 s). A live member learns of a rebalance at its next
// heartbeat, so this also bounds how long the other members make a
// rebalance wait.
const DefaultHeartbeatInterval = time.Second
