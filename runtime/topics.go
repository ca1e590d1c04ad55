package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/topicname"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TopicRole says what a service uses a topic for. A topic can have several
// roles (a request topic of one method and a route's request topic of
// another): the roles are bits, or-ed together.
type TopicRole uint8

const (
	// TopicRequest is a method's request topic (its default route).
	TopicRequest TopicRole = 1 << iota
	// TopicRouteRequest is the request topic of a route chosen by request
	// metadata.
	TopicRouteRequest
	// TopicReply carries the replies of a method or a route.
	TopicReply
	// TopicFetch is the topic a fetch method streams to its callers.
	TopicFetch
	// TopicDeadLetter receives the request records of poison calls
	// (WorkerDeadLetterTopic); a spec never lists one, add it yourself.
	TopicDeadLetter
	// TopicOutcome keeps a worker's stored outcomes (WorkerOutcomeTopic);
	// EnsureTopics creates it with cleanup.policy=compact and as many
	// partitions as the largest request topic given with it. A spec never
	// lists one: Worker.ExtraTopics does.
	TopicOutcome
)

var roleNames = []string{"request", "route request", "reply", "fetch", "dead letter", "outcome"}

// outcomeTopicConfig is the configuration EnsureTopics adds for a topic
// with the TopicOutcome role: compacted, so that a correlation id's latest
// record (an outcome, or the tombstone that deleted it) is what is kept,
// and rolled hourly, so that compaction (which never touches the active
// segment) removes deleted outcomes within hours, not once a 1 GiB segment
// fills.
var outcomeTopicConfig = map[string]string{"cleanup.policy": "compact", "segment.ms": "3600000"}

// ExtraTopics lists the topics the worker's options name, which no service
// spec lists: the dead-letter topic (WorkerDeadLetterTopic) and the outcome
// topic (WorkerOutcomeTopic), after the topic mapper; give them to
// EnsureTopics with the specs' topics. Safe for concurrent use.
func (w *Worker) ExtraTopics() []Topic {
	var ts []Topic
	if t := w.cfg.deadLetterTopic; t != "" {
		ts = append(ts, Topic{Name: w.cfg.topic(t), Role: TopicDeadLetter})
	}
	if t := w.cfg.outcomeTopic; t != "" {
		ts = append(ts, Topic{Name: w.cfg.topic(t), Role: TopicOutcome})
	}
	return ts
}

// String returns the roles in words, e.g. "request, reply".
func (r TopicRole) String() string {
	var parts []string
	for i, n := range roleNames {
		if r&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if len(parts) == 0 {
		return "TopicRole(" + strconv.Itoa(int(r)) + ")"
	}
	return strings.Join(parts, ", ")
}

// Topic is one Kafka topic a service uses.
type Topic struct {
	// Name is the topic's name, after the topic mapper.
	Name string
	// Role holds every role the topic has for the methods listed.
	Role TopicRole
	// Methods are the full gRPC method names (e.g.
	// "/example.echo.v1.EchoService/EchoUnary") that use the topic, in spec
	// order; empty for a topic added by hand, such as a dead-letter topic.
	Methods []string
}

// Topics lists every topic the service's methods use: request topics (of
// the default route and of routes chosen by metadata), reply topics and
// fetch topics, each once, in the order the spec first names them. mapper
// resolves the names as runtime.WithTopicMapper does (give both the same
// function); nil leaves them unchanged. The spec is not modified; safe for
// concurrent use.
func (s *ServiceSpec) Topics(mapper func(topic string) string) []Topic {
	var l topicList
	for _, m := range s.Methods {
		l.addMethod(m, mapper)
	}
	return l.topics
}

// topicList collects topics by name, merging roles and methods.
type topicList struct {
	topics []Topic
	index  map[string]int
}

func (l *topicList) add(name string, role TopicRole, method string) {
	if name == "" {
		return
	}
	if l.index == nil {
		l.index = map[string]int{}
	}
	i, ok := l.index[name]
	if !ok {
		i = len(l.topics)
		l.index[name] = i
		l.topics = append(l.topics, Topic{Name: name})
	}
	t := &l.topics[i]
	t.Role |= role
	if method != "" && (len(t.Methods) == 0 || t.Methods[len(t.Methods)-1] != method) {
		for _, have := range t.Methods {
			if have == method {
				return
			}
		}
		t.Methods = append(t.Methods, method)
	}
}

func (l *topicList) addMethod(m *MethodSpec, mapper func(string) string) {
	mapName := func(t string) string {
		if mapper == nil || t == "" {
			return t
		}
		return mapper(t)
	}
	full := m.FullMethod()
	if m.Fetch != nil {
		l.add(mapName(m.Fetch.Topic), TopicFetch, full)
		return
	}
	for _, r := range m.Routes {
		role := TopicRequest
		if len(r.When) > 0 {
			role = TopicRouteRequest
		}
		l.add(mapName(r.Topic), role, full)
		if !r.Oneway {
			l.add(mapName(r.ReplyTopic), TopicReply, full)
		}
	}
}

// TopicAdmin is the part of a Kafka client EnsureTopics needs;
// kafkaclient.Client implements it.
type TopicAdmin interface {
	// CreateTopics creates the topics that do not exist yet.
	CreateTopics(ctx context.Context, topics []kafkaclient.TopicSpec) error
	// Partitions lists a topic's partitions; a missing topic is an error
	// wrapping kafkaclient.ErrUnknownTopic.
	Partitions(ctx context.Context, topic string) ([]int32, error)
}

// brokerCounter is implemented by admins that can count the cluster's
// brokers (kafkaclient.Client does); EnsureTopics then chooses the
// replication factor.
type brokerCounter interface {
	Brokers(ctx context.Context) (int, error)
}

// EnsureTopicsOptions configures EnsureTopics. The zero value creates the
// missing topics with the defaults below.
type EnsureTopicsOptions struct {
	// VerifyOnly checks that the topics exist and creates none: for
	// clusters where the application may not create topics.
	VerifyOnly bool
	// Partitions of each topic created. Default 3. An outcome topic
	// (TopicOutcome) gets more when a request topic given with it already
	// exists with more: as many as the largest.
	Partitions int32
	// ReplicationFactor of each topic created. Default 0: 3, with
	// min.insync.replicas 2, when the cluster has three brokers or more
	// (asked through the admin's Brokers method, which kafkaclient.Client
	// has; see kafkaclient.Replication), else the broker's default.
	ReplicationFactor int16
	// MaxMessageBytes is the max.message.bytes of each topic created.
	// Default kafkaclient.MaxMessageBytes (8 MiB), the record size both
	// Kafka clients are configured for.
	MaxMessageBytes int
	// Logger gets one Info line per topic created. Default slog.Default(),
	// as the gateway's and the worker's (WithLogger); a
	// slog.New(slog.DiscardHandler) keeps it quiet.
	Logger *slog.Logger
}

// DefaultTopicPartitions is the partition count EnsureTopics creates topics
// with when EnsureTopicsOptions.Partitions is 0.
const DefaultTopicPartitions = 3

// defaultEnsureTimeout bounds EnsureTopics when ctx has no deadline.
const defaultEnsureTimeout = 30 * time.Second

// MissingTopicsError is returned by EnsureTopics with VerifyOnly when
// topics do not exist. It wraps kafkaclient.ErrUnknownTopic.
type MissingTopicsError struct {
	// Topics that do not exist, in the order they were given.
	Topics []Topic
}

// Error names every missing topic, its roles and its methods.
func (e *MissingTopicsError) Error() string {
	var b strings.Builder
	if len(e.Topics) == 1 {
		b.WriteString("kafkarpc: a Kafka topic does not exist: ")
	} else {
		fmt.Fprintf(&b, "kafkarpc: %d Kafka topics do not exist: ", len(e.Topics))
	}
	for i, t := range e.Topics {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(describeTopic(t))
	}
	b.WriteString(" (create them, or let the program create them)")
	return b.String()
}

// Unwrap returns kafkaclient.ErrUnknownTopic.
func (e *MissingTopicsError) Unwrap() error { return kafkaclient.ErrUnknownTopic }

// describeTopic says "name (role topic of M1, M2)".
func describeTopic(t Topic) string {
	if len(t.Methods) == 0 {
		return fmt.Sprintf("%s (%s topic)", t.Name, t.Role)
	}
	ms := make([]string, len(t.Methods))
	for i, m := range t.Methods {
		ms[i] = m[strings.LastIndexByte(m, '/')+1:]
	}
	return fmt.Sprintf("%s (%s topic of %s)", t.Name, t.Role, strings.Join(ms, ", "))
}

// EnsureTopics makes sure topics exist: it looks each one up and creates
// those that are missing, with opts' partitions, replication factor and
// max.message.bytes (topics that exist are left as they are), an outcome
// topic (TopicOutcome) with at least as many partitions as the largest
// request topic given with it; on a cluster
// of three brokers or more, when opts leaves the replication factor to it
// and admin can count brokers, with replication factor 3 and
// min.insync.replicas 2. With
// opts.VerifyOnly it creates nothing and returns a *MissingTopicsError
// naming every missing topic. Either way it fails, before creating
// anything, for a name Kafka refuses (1 to 249 characters of
// [a-zA-Z0-9._-], not "." or ".."), naming every such topic, and for an
// outcome topic that exists with fewer partitions than a request topic
// given with it (existing, or about to be created), naming both counts,
// and for a request or reply topic that exists with a cleanup.policy that
// compacts it (when admin implements kafkaclient.TopicConfigReader, as
// both of the project's clients do, and may describe the topic's
// configuration). Topics named twice are looked up once. It is
// bounded by ctx, or by 30 s when ctx has no deadline, and safe to call
// concurrently (several processes creating the same topics is not an
// error). Typical use, before
// starting a gateway or a worker:
//
//	topics := echov1.EchoServiceKafkaSpec.Topics(nil)
//	err := runtime.EnsureTopics(ctx, client, topics, runtime.EnsureTopicsOptions{})
func EnsureTopics(ctx context.Context, admin TopicAdmin, topics []Topic, opts EnsureTopicsOptions) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultEnsureTimeout)
		defer cancel()
	}
	var l topicList
	for _, t := range topics {
		if len(t.Methods) == 0 {
			l.add(t.Name, t.Role, "")
		}
		for _, m := range t.Methods {
			l.add(t.Name, t.Role, m)
		}
	}
	// Names Kafka refuses, before asking it: a broker that does not
	// check (the embedded one) would create them, and a real one refuses
	// them with a message that names no role or method.
	var invalid []string
	for _, t := range l.topics {
		if problem := topicname.Problem(t.Name); problem != "" {
			invalid = append(invalid, fmt.Sprintf("%s: %s", describeTopic(t), problem))
		}
	}
	// An outcome topic that is also a topic of calls would be created
	// compacted (outcomeTopicConfig), and compaction keeps only a key's
	// last record, which loses all but the end of each call; the outcome
	// loader would take the calls' records for malformed outcomes.
	var shared []string
	for _, t := range l.topics {
		if t.Role&TopicOutcome != 0 && t.Role&^TopicOutcome != 0 {
			shared = append(shared, describeTopic(t))
		}
	}
	if len(shared) > 0 {
		return fmt.Errorf("kafkarpc: an outcome topic (WorkerOutcomeTopic) must be a topic of its own, not one of calls or dead letters: %s", strings.Join(shared, "; "))
	}
	if len(invalid) > 0 {
		return fmt.Errorf("kafkarpc: not a valid Kafka topic name (1 to %d characters of [a-zA-Z0-9._-]): %s", topicname.MaxLen, strings.Join(invalid, "; "))
	}
	partitions := opts.Partitions
	if partitions <= 0 {
		partitions = DefaultTopicPartitions
	}
	var missing []Topic
	// The most partitions of an existing request topic: an outcome topic
	// needs at least as many (an outcome goes to the partition with its
	// request's number).
	var requestParts int32
	have := map[string]int32{} // partitions of the topics that exist
	for _, t := range l.topics {
		ps, err := admin.Partitions(ctx, t.Name)
		switch {
		case err == nil:
			have[t.Name] = int32(len(ps))
			if t.Role&(TopicRequest|TopicRouteRequest) != 0 {
				requestParts = max(requestParts, int32(len(ps)))
			}
		case errors.Is(err, kafkaclient.ErrUnknownTopic):
			missing = append(missing, t)
			if t.Role&(TopicRequest|TopicRouteRequest) != 0 && !opts.VerifyOnly {
				requestParts = max(requestParts, partitions) // created below with as many
			}
		default:
			return fmt.Errorf("kafkarpc: looking up topic %s: %w", t.Name, err)
		}
	}
	// An outcome topic that exists with fewer partitions than a request
	// topic given with it cannot keep the outcomes of that topic's last
	// partitions (the worker logs it at run time, and those repeats run
	// again): said here, before anything runs.
	for _, t := range l.topics {
		if n, ok := have[t.Name]; ok && t.Role&TopicOutcome != 0 && n < requestParts {
			return fmt.Errorf("kafkarpc: outcome topic %s has %d partitions, fewer than the %d of the largest request topic given with it: "+
				"an outcome goes to the partition with its request's number (add partitions to it: kafka-topics.sh --alter --partitions %d)",
				t.Name, n, requestParts, requestParts)
		}
	}
	if err := checkNotCompacted(ctx, admin, l.topics, have); err != nil {
		return err
	}
	if len(missing) == 0 {
		return nil
	}
	if opts.VerifyOnly {
		return &MissingTopicsError{Topics: missing}
	}
	maxBytes := opts.MaxMessageBytes
	if maxBytes <= 0 {
		maxBytes = kafkaclient.MaxMessageBytes
	}
	specs := make([]kafkaclient.TopicSpec, len(missing))
	names := make([]string, len(missing))
	for i, t := range missing {
		names[i] = t.Name
		specs[i] = kafkaclient.TopicSpec{Name: t.Name, Partitions: partitions, ReplicationFactor: opts.ReplicationFactor,
			Config: map[string]string{"max.message.bytes": strconv.Itoa(maxBytes)}}
		if t.Role&TopicOutcome != 0 {
			specs[i].Partitions = max(partitions, requestParts)
			for k, v := range outcomeTopicConfig {
				specs[i].Config[k] = v
			}
		}
	}
	if bc, ok := admin.(brokerCounter); ok && opts.ReplicationFactor <= 0 {
		var err error
		if specs, err = kafkaclient.ReplicatedSpecs(ctx, bc, specs); err != nil {
			return fmt.Errorf("kafkarpc: counting the brokers to choose the replication factor of topics %s: %w", strings.Join(names, ", "), err)
		}
	}
	if err := admin.CreateTopics(ctx, specs); err != nil {
		return fmt.Errorf("kafkarpc: creating topics %s: %w", strings.Join(names, ", "), err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	for i, t := range missing {
		rf, isr := "broker default", specs[i].Config["min.insync.replicas"]
		if f := specs[i].ReplicationFactor; f > 0 {
			rf = strconv.Itoa(int(f))
		}
		if isr == "" {
			isr = "broker default"
		}
		logger.Info("kafkarpc: created topic", "topic", t.Name, "role", t.Role.String(),
			"partitions", specs[i].Partitions, "max.message.bytes", maxBytes,
			"replication.factor", rf, "min.insync.replicas", isr)
	}
	return nil
}

// Run-time checks of topic existence: the gateway looks a route's request
// topic up before producing (cached, see topicGuard), and the worker watches
// its request topics (watchRequestTopics).

// Freshness of the gateway's knowledge of a topic: a topic seen to exist is
// looked up again, in the background, by the first call more than
// topicPresentFresh after the last lookup (so that a deleted topic is
// noticed); one seen missing, or never looked up, is looked up by the call
// itself, by the first call more than topicMissingFresh after (so that a
// topic created meanwhile is used). Variables so that tests can shorten
// them.
var (
	topicPresentFresh = time.Second
	topicMissingFresh = 200 * time.Millisecond
)

// topicGuard remembers which topics exist, for the gateway. The zero value
// is ready; safe for concurrent use.
type topicGuard struct {
	states sync.Map // topic -> *topicState
}

type topicState struct {
	checked  atomic.Int64 // unix nanoseconds of the last lookup
	missing  atomic.Bool
	denied   atomic.Bool // the client may not describe it (kafkaclient.ErrNotAuthorized)
	checking atomic.Bool // one lookup by check at a time

	confirmMu   sync.Mutex
	confirming  *confirmRound // confirmMissing's lookup under way
	confirmNext *confirmRound // the one to start once it ended, for callers that came meanwhile
}

// check returns a NOT_FOUND status naming topic when the topic is known not
// to exist. A topic never looked up, or known missing and stale, is looked
// up first (bounded by timeout), so that a call to a missing topic fails at
// once and one to a topic created meanwhile goes through. A topic known to
// exist is never waited for: once stale it is looked up again in the
// background while the call goes on (a call to a topic deleted meanwhile
// fails on its produce, which marks the topic missing), so that no call
// pays a metadata round trip, which every call of a service called less
// than once a second did. A topic the client may not describe
// (kafkaclient.ErrNotAuthorized) is answered PERMISSION_DENIED naming it,
// and looked up again as a missing one is, so that access granted is
// noticed. A lookup that fails for another reason (a broker
// down) lets the call go on: producing reports such problems itself.
//
// background starts the background lookup: it runs f on a goroutine of its
// own with a context that ends when the lookup's owner closes, or reports
// false, running nothing, once that owner is closing.
func (tg *topicGuard) check(ctx context.Context, admin TopicAdmin, topic string, timeout time.Duration, m *MethodSpec, background func(f func(context.Context)) bool) error {
	v, ok := tg.states.Load(topic)
	if !ok {
		v, _ = tg.states.LoadOrStore(topic, &topicState{})
	}
	st := v.(*topicState)
	checked, missing, denied := st.checked.Load(), st.missing.Load(), st.denied.Load()
	fresh := topicPresentFresh
	if missing || denied {
		fresh = topicMissingFresh
	}
	switch {
	case checked != 0 && time.Duration(time.Now().UnixNano()-checked) < fresh:
	case !st.checking.CompareAndSwap(false, true):
		// Another call looks it up: go by what is known.
	case checked != 0 && !missing && !denied:
		if !background(func(bctx context.Context) {
			defer st.checking.Store(false)
			st.lookup(bctx, admin, topic, timeout)
		}) {
			st.checking.Store(false)
		}
	default:
		missing, denied = st.lookup(ctx, admin, topic, timeout)
		st.checking.Store(false)
	}
	if missing {
		return missingTopicStatus(topic, m.FullMethod()) // named on the error path only: it allocates
	}
	if denied {
		return deniedTopicStatus(topic, m.FullMethod())
	}
	return nil
}

// lookup asks Kafka whether topic exists and whether the client may
// describe it, bounded by timeout, records the answer and returns it; an
// error other than "unknown topic" or "not authorized" keeps what was
// known, to be looked up again once stale, and returns that. The caller holds st.checking, or runs a
// confirmRound.
func (st *topicState) lookup(ctx context.Context, admin TopicAdmin, topic string, timeout time.Duration) (missing, denied bool) {
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := admin.Partitions(lctx, topic)
	switch {
	case err == nil:
		st.missing.Store(false)
		st.denied.Store(false)
	case errors.Is(err, kafkaclient.ErrUnknownTopic):
		st.missing.Store(true)
		st.denied.Store(false)
		missing = true
	case notAuthorized(err):
		st.missing.Store(false)
		st.denied.Store(true)
		denied = true
	default:
		missing, denied = st.missing.Load(), st.denied.Load()
	}
	st.checked.Store(time.Now().UnixNano())
	return missing, denied
}

// markMissing records that producing to topic failed because it does not
// exist, so that the next calls fail at once.
func (tg *topicGuard) markMissing(topic string) {
	v, _ := tg.states.LoadOrStore(topic, &topicState{})
	st := v.(*topicState)
	st.missing.Store(true)
	st.denied.Store(false)
	st.checked.Store(time.Now().UnixNano())
}

// confirmTimeout bounds confirmMissing's lookup: a topic deleted is told in
// one metadata round trip, and a call whose produce failed because Kafka
// cannot be reached should hear UNAVAILABLE soon, not after a lookup that
// waits for the broker as long as the gateway's setup does.
const confirmTimeout = 2 * time.Second

// confirmMissing looks topic up after producing to it failed with an error
// that does not say why, and reports whether Kafka says it does not exist
// (remembered, as markMissing does), or that the client may not describe
// it (denied, remembered for check). Only a lookup that began after the
// failure can tell: one under way when a caller comes may have asked
// before the topic was deleted. Such callers wait for it to end and share
// the next one (or give up with ctx): the records of one call fail
// together, and each gets the same answer.
func (tg *topicGuard) confirmMissing(ctx context.Context, admin TopicAdmin, topic string, timeout time.Duration) (missing, denied bool) {
	v, _ := tg.states.LoadOrStore(topic, &topicState{})
	st := v.(*topicState)
	st.confirmMu.Lock()
	prev := st.confirming
	if prev == nil {
		r := &confirmRound{done: make(chan struct{})}
		st.confirming = r
		st.confirmMu.Unlock()
		return st.confirm(ctx, admin, topic, timeout, r)
	}
	r, leads := st.confirmNext, false
	if r == nil {
		r, leads = &confirmRound{done: make(chan struct{})}, true
		st.confirmNext = r
	}
	st.confirmMu.Unlock()
	if !leads {
		select {
		case <-r.done:
			return r.missing, r.denied
		case <-ctx.Done():
			return st.missing.Load(), st.denied.Load()
		}
	}
	select {
	case <-prev.done:
	case <-ctx.Done():
	}
	st.confirmMu.Lock()
	st.confirming, st.confirmNext = r, nil
	st.confirmMu.Unlock()
	return st.confirm(ctx, admin, topic, timeout, r)
}

// confirmRound is one lookup of confirmMissing; missing and denied are its
// answer, set before done is closed.
type confirmRound struct {
	done    chan struct{}
	missing bool
	denied  bool
}

// confirm runs r's lookup and ends r with its own answer (not what a
// lookup begun earlier by check may store meanwhile).
func (st *topicState) confirm(ctx context.Context, admin TopicAdmin, topic string, timeout time.Duration, r *confirmRound) (missing, denied bool) {
	r.missing, r.denied = st.lookup(ctx, admin, topic, timeout)
	st.confirmMu.Lock()
	if st.confirming == r {
		st.confirming = nil
	}
	st.confirmMu.Unlock()
	close(r.done)
	return r.missing, r.denied
}

// missingTopicStatus is the status of a call whose topic does not exist:
// NOT_FOUND, not UNAVAILABLE, because retrying does not help until someone
// creates the topic, and gRPC retry policies and resuming clients retry
// UNAVAILABLE.
func missingTopicStatus(topic, method string) error {
	return status.Errorf(codes.NotFound, "%s: Kafka topic %q does not exist", method, topic)
}

// deniedTopicStatus is the status of a call whose topic the client's
// principal may not describe: PERMISSION_DENIED naming the topic, not
// UNAVAILABLE, because retrying does not help until someone grants the
// access.
func deniedTopicStatus(topic, method string) error {
	return status.Errorf(codes.PermissionDenied, "%s: not authorized to access Kafka topic %q (%v)", method, topic, kafkaclient.ErrNotAuthorized)
}

// unknownTopic reports whether err says a topic does not exist.
func unknownTopic(err error) bool { return errors.Is(err, kafkaclient.ErrUnknownTopic) }

// notAuthorized reports whether err says the client's principal may not
// access a topic (kafkaclient.ErrNotAuthorized): asking again cannot help.
func notAuthorized(err error) bool { return errors.Is(err, kafkaclient.ErrNotAuthorized) }

// lookupCode is the status of a call whose topic lookup failed with err:
// PERMISSION_DENIED for a topic the client may not access (a retry cannot
// help), else UNAVAILABLE.
func lookupCode(err error) codes.Code {
	if notAuthorized(err) {
		return codes.PermissionDenied
	}
	return codes.Unavailable
}

// checkTopic is the gateway's check of a call's request topic; see
// topicGuard.check.
func (g *Gateway) checkTopic(ctx context.Context, m *MethodSpec, topic string) error {
	return g.topics.check(ctx, g.client, topic, g.cfg.setupTimeout, m, g.background)
}

// topicMissing is the status of a call whose request record failed because
// its topic does not exist (deleted after the gateway last looked it up):
// NOT_FOUND naming the topic; the next calls fail at once.
func (g *Gateway) topicMissing(m *MethodSpec, topic string, err error) error {
	g.topics.markMissing(topic)
	return status.Errorf(codes.NotFound, "%s: Kafka topic %q does not exist: %v", m.FullMethod(), topic, err)
}

// Intervals of the worker's watch of its request topics: while one is
// missing, it looks again after topicWatchRetry, doubling up to
// topicWatchMax; while all exist, every topicWatchMax.
var (
	topicWatchRetry = time.Second
	topicWatchMax   = 30 * time.Second
)

// watchRequestTopics looks the worker's request topics up until ctx ends:
// a missing one is logged at error level, naming it, every time it is
// looked up and still missing (after 1 s, then less and less often, at
// least every 30 s); once it exists again an Info line says so. The
// consumer group keeps retrying by itself meanwhile. The worker starts it
// in Start.
func watchRequestTopics(ctx context.Context, admin TopicAdmin, topics []string, group string, logger *slog.Logger) {
	missing := map[string]bool{}
	wait := topicWatchRetry
	for {
		anyMissing := false
		for _, t := range topics {
			lctx, cancel := context.WithTimeout(ctx, topicWatchMax)
			_, err := admin.Partitions(lctx, t)
			cancel()
			if ctx.Err() != nil {
				return
			}
			switch {
			case err == nil:
				if missing[t] {
					delete(missing, t)
					logger.Info("kafkarpc: request topic exists now", "topic", t, "group", group)
				}
			case unknownTopic(err):
				anyMissing = true
				missing[t] = true
				logger.Error("kafkarpc: request topic does not exist: no call sent to it is served until it is created; retrying",
					"topic", t, "group", group, "retry_in", wait.String())
			default:
				logger.Debug("kafkarpc: looking up request topic", "topic", t, "error", err)
			}
		}
		next := topicWatchMax
		if anyMissing {
			next = wait
			wait = min(2*wait, topicWatchMax)
		} else {
			wait = topicWatchRetry
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// watchTopics starts watchRequestTopics on the worker's request topics,
// until the worker stops polling; watchDone is closed once it returned.
// The caller holds w.regMu (Start does), before it starts the loop.
func (w *Worker) watchTopics() {
	w.watchDone = make(chan struct{})
	go func() {
		defer close(w.watchDone)
		watchRequestTopics(w.pollCtx, w.client, slices.Clone(w.topics), w.cfg.groupID, w.cfg.logger)
	}()
}

// checkNotCompacted refuses an existing request or reply topic (of those
// in have) whose cleanup.policy compacts it, when admin can look the
// policy up (kafkaclient.TopicConfigReader): every record of a call shares
// its key (the correlation id, or the key field's value, shared by other
// calls too), and compaction keeps only the last record of a key, a call's
// end-of-stream record (a tombstone, itself deleted later), so a worker or
// gateway reading behind the log cleaner would lose calls. A principal
// that may not describe the topic's configuration skips the check.
func checkNotCompacted(ctx context.Context, admin TopicAdmin, topics []Topic, have map[string]int32) error {
	cr, ok := admin.(kafkaclient.TopicConfigReader)
	if !ok {
		return nil
	}
	var compacted []string
	for _, t := range topics {
		if _, ok := have[t.Name]; !ok || t.Role&(TopicRequest|TopicRouteRequest|TopicReply) == 0 {
			continue
		}
		v, err := cr.TopicConfig(ctx, t.Name, "cleanup.policy")
		switch {
		case errors.Is(err, kafkaclient.ErrNotAuthorized):
			continue
		case err != nil:
			return fmt.Errorf("kafkarpc: looking up the cleanup.policy of topic %s: %w", t.Name, err)
		case strings.Contains(v, "compact"):
			compacted = append(compacted, fmt.Sprintf("%s: cleanup.policy=%s", describeTopic(t), v))
		}
	}
	if len(compacted) > 0 {
		return fmt.Errorf("kafkarpc: a request or reply topic must not be compacted: every record of a call shares its key, and compaction keeps only "+
			"a key's last record (the call's end), so calls read behind the log cleaner lose their messages; set cleanup.policy=delete "+
			"(kafka-configs.sh --alter --entity-type topics --entity-name NAME --add-config cleanup.policy=delete): %s", strings.Join(compacted, "; "))
	}
	return nil
}
