package runtime

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Worker consumes request topics in a consumer group and serves each call
// with a registered implementation, producing the replies to the topic the
// request names. Calls run concurrently, each on its own goroutine, up to
// WorkerMaxConcurrentCalls. A request's offset is committed only once its
// replies, end-of-stream included, are acknowledged by Kafka, so a crash
// replays requests instead of losing them.
//
// Register services before Start. A Worker is safe for concurrent use.
type Worker struct {
	client kafkaclient.Client
	cfg    workerConfig

	regMu    sync.Mutex
	services map[string]*workerService
	proxy    *proxy
	topics   []string
	started  bool

	base       context.Context // ends the runners once the worker stopped
	baseCancel context.CancelFunc
	runners    *runners // the goroutines calls run on
	pollCtx    context.Context
	pollCancel context.CancelFunc
	// hurry ends once the calls in flight at shutdown are to be given up:
	// when the context of any Shutdown (Close's included) ends, or the
	// worker fails (fail).
	hurry    context.Context
	hurryNow context.CancelFunc
	loopDone chan struct{}
	// watchDone is closed once the watch of the request topics
	// (watchTopics) ended; the loop waits for it before loopDone.
	watchDone chan struct{}
	// rejoinReq asks the poll loop to give up every call and rejoin the
	// group (requestRejoin); losing is set while it does, so that the
	// revocation of the old group reader's partitions gives up their
	// calls as lost, committing nothing.
	rejoinReq chan struct{}
	losing    atomic.Bool
	groupCfg  kafkaclient.GroupConfig // what Start joined the group with
	sem       chan struct{}
	flow      readFlow // pauses the reading while too many calls wait for sem
	ready     chan struct{}
	readyOnce sync.Once

	// mu guards the dispatch tables: the calls in flight by correlation id,
	// what is known of repeated requests, the key queues and the partition
	// tracks. It is held for table updates only, never across a Kafka call
	// or a handler.
	mu      sync.Mutex
	calls   map[string]*call
	oneway  map[*call]struct{} // oneway calls in flight: no correlation id, but drained like the others
	repeats repeats
	keys    keyOrder
	parts   map[kafkaclient.TopicPartition]*partTrack
	// detached holds, by correlation id, the calls in flight that a newer
	// attempt superseded (Worker.supersede): no longer under their
	// correlation id, which the newer attempt's call holds, but drained
	// like the others, and waited for by every call with their id that
	// runs a handler (admit).
	detached map[string][]*call
	// stopped: the worker stopped (stopCalls); a call admitted now is
	// aborted at once.
	stopped bool
	// replyTopics interns the reply topic names requests carry.
	replyTopics map[string]string

	writer    replyWriter // directWriter, or txnWriter with WorkerExactlyOnce
	limits    topicLimits // the reply and outcome topics' limits, for the writers
	outcomes  *outcomeLog // the stored outcomes' topic (WorkerOutcomeTopic), or nil
	committer *committer
	stats     workerCounters
	// incarnation is sent as response metadata on the first replies of every
	// call (wire.ServedByMetadata), so that a gateway can tell when another worker
	// served a call again after this one failed midway.
	incarnation []kafkaclient.Header
	// attemptKey is the header name of a call's attempt id:
	// "<meta prefix>kafkarpc-attempt" (wire.AttemptMetadata).
	attemptKey string
	// maxDurationErr is the cause of a call context that reached the
	// worker's maximum call duration (it wraps errMaxCallDuration).
	maxDurationErr error
	tel            workerTelemetry

	errMu sync.Mutex
	err   error // why the worker stopped by itself
}

type workerService struct {
	spec    *ServiceSpec
	impl    any
	methods map[string]*workerMethod
}

type workerMethod struct {
	spec   *MethodSpec
	impl   any
	unary  *grpc.MethodDesc
	stream *grpc.StreamDesc
	// proxied: a method RegisterProxy forwards, whose kind the worker
	// does not know (spec.Kind says bidi, which carries all four kinds).
	proxied bool

	tel        *methodTelemetry // nil for proxied methods until their first call
	handleName string           // "handle /service/method"
	handleOpts []trace.SpanStartOption
}

// NewWorker returns a Worker reading and producing through client, which
// stays owned by the caller (close it after the Worker). Every option has
// its default when not given (see each Worker... and With... option).
func NewWorker(client kafkaclient.Client, opts ...WorkerOption) *Worker {
	cfg := defaultWorkerConfig()
	for _, o := range opts {
		o.applyWorker(&cfg)
	}
	w := &Worker{
		client:      client,
		cfg:         cfg,
		services:    map[string]*workerService{},
		loopDone:    make(chan struct{}),
		rejoinReq:   make(chan struct{}, 1),
		sem:         make(chan struct{}, cfg.maxConcurrent),
		ready:       make(chan struct{}),
		calls:       map[string]*call{},
		oneway:      map[*call]struct{}{},
		detached:    map[string][]*call{},
		repeats:     newRepeats(cfg.idemWindow, cfg.idemMaxBytes),
		keys:        keyOrder{queues: map[string][]*call{}},
		parts:       map[kafkaclient.TopicPartition]*partTrack{},
		replyTopics: map[string]string{},
		writer:      directWriter{client: client},
		limits:      topicLimits{client: client, logger: cfg.logger},
	}
	w.flow.max = int64(cfg.maxQueued)
	w.base, w.baseCancel = context.WithCancel(context.Background())
	w.runners = newRunners(w.base)
	w.pollCtx, w.pollCancel = context.WithCancel(context.Background())
	w.hurry, w.hurryNow = context.WithCancel(context.Background())
	w.incarnation = []kafkaclient.Header{{Key: cfg.names.MetaPrefix + wire.ServedByMetadata, Value: []byte(wire.NewUUID())}}
	w.attemptKey = cfg.names.MetaPrefix + wire.AttemptMetadata
	w.repeats.handOn = w.handOn
	w.maxDurationErr = fmt.Errorf("%w (%v, WorkerMaxCallDuration)", errMaxCallDuration, cfg.maxCallDuration)
	w.tel = newWorkerTelemetry(cfg.telemetryConfig, w.observeLag, &w.flow)
	if cfg.outcomeTopic != "" && cfg.idemWindow > 0 {
		w.outcomes = newOutcomeLog(w, cfg.topic(cfg.outcomeTopic))
		w.repeats.stored.evicted = w.outcomes.evicted
	}
	return w
}

// Err reports why the worker stopped by itself (a failed transaction with
// WorkerExactlyOnce), or nil. Safe for concurrent use.
func (w *Worker) Err() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

// fail stops the worker after an error it cannot recover from: calls in
// flight are given up, nothing more is committed, and the group moves the
// partitions to other members.
func (w *Worker) fail(err error) {
	w.errMu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.errMu.Unlock()
	w.cfg.logger.Error("kafkarpc: worker stopping", "group", w.cfg.groupID, "error", err)
	w.hurryNow()
	w.pollCancel()
}

// RegisterService serves impl, an implementation of desc's handler type, for
// the Kafka methods listed in spec. Methods of desc that spec does not list
// are not served (a request for one is answered UNIMPLEMENTED). Generated
// Register...KafkaWorker functions call it. It must be called before Start;
// registrations may run concurrently with each other. A nil impl, or one
// that does not implement desc's handler type, is an error.
func (w *Worker) RegisterService(spec *ServiceSpec, desc *grpc.ServiceDesc, impl any) error {
	if spec.Name != desc.ServiceName {
		return fmt.Errorf("kafkarpc: spec of %s registered with the descriptor of %s", spec.Name, desc.ServiceName)
	}
	if impl == nil {
		return fmt.Errorf("kafkarpc: %s registered with a nil implementation", spec.Name)
	}
	if desc.HandlerType != nil {
		if ht := reflect.TypeOf(desc.HandlerType).Elem(); !reflect.TypeOf(impl).Implements(ht) {
			return fmt.Errorf("kafkarpc: %s registered with %T, which does not implement %v", spec.Name, impl, ht)
		}
	}
	w.regMu.Lock()
	defer w.regMu.Unlock()
	if w.started {
		return fmt.Errorf("kafkarpc: %s registered after the worker started", spec.Name)
	}
	if _, dup := w.services[spec.Name]; dup {
		return fmt.Errorf("kafkarpc: %s registered twice", spec.Name)
	}
	s := &workerService{spec: spec, impl: impl, methods: map[string]*workerMethod{}}
	for _, m := range spec.Methods {
		if m.Fetch != nil {
			continue
		}
		wm := &workerMethod{spec: m, impl: impl}
		w.prepareTelemetry(wm)
		for i := range desc.Methods {
			if desc.Methods[i].MethodName == m.Method {
				wm.unary = &desc.Methods[i]
			}
		}
		for i := range desc.Streams {
			if desc.Streams[i].StreamName == m.Method {
				wm.stream = &desc.Streams[i]
			}
		}
		if wm.unary == nil && wm.stream == nil {
			return fmt.Errorf("kafkarpc: %s: the service descriptor has no such method", m.FullMethod())
		}
		s.methods[m.Method] = wm
		for _, r := range m.Routes {
			if t := w.cfg.topic(r.Topic); !slices.Contains(w.topics, t) {
				w.topics = append(w.topics, t)
			}
		}
	}
	w.services[spec.Name] = s
	if w.cfg.groupID == "" {
		w.cfg.groupID = "kafkarpc-" + spec.Name
	}
	return nil
}

// Topics returns the request topics the worker consumes, in registration
// order. Safe for concurrent use.
func (w *Worker) Topics() []string {
	w.regMu.Lock()
	defer w.regMu.Unlock()
	return append([]string(nil), w.topics...)
}

// GroupID returns the consumer group the worker joins: WorkerGroupID, or by
// default "kafkarpc-" + the first registered service. Safe for concurrent
// use.
func (w *Worker) GroupID() string {
	w.regMu.Lock()
	defer w.regMu.Unlock()
	return w.cfg.groupID
}

// Start joins the consumer group and starts serving in the background. It
// returns once the group member is created; Ready reports the first
// partition assignment.
func (w *Worker) Start() error {
	w.regMu.Lock()
	defer w.regMu.Unlock()
	if w.started {
		return errors.New("kafkarpc: worker started twice")
	}
	if len(w.topics) == 0 {
		if len(w.services) == 0 {
			return errors.New("kafkarpc: worker has no request topics: register a service first")
		}
		// Every service registered has only fetch methods, which a
		// gateway serves from their topics.
		names := slices.Sorted(maps.Keys(w.services))
		return fmt.Errorf("kafkarpc: worker has no request topics: the methods of %s are all fetch methods, which a gateway serves from their topics, not a worker; register a service with other methods", strings.Join(names, ", "))
	}
	if o := w.outcomes; o != nil && slices.Contains(w.topics, o.topic) {
		return fmt.Errorf("kafkarpc: WorkerOutcomeTopic %q is one of the worker's request topics; give the stored outcomes a topic of their own", o.topic)
	}
	if err := w.cfg.groupProtocol.Check(); err != nil {
		return fmt.Errorf("kafkarpc: WorkerGroupProtocol: %w", err)
	}
	if w.cfg.transactionalID != "" {
		tc, ok := w.client.(kafkaclient.TxnClient)
		if !ok {
			return fmt.Errorf("kafkarpc: exactly-once needs a client with transactions; %T has none", w.client)
		}
		txn, err := tc.NewTxnProducer(w.cfg.transactionalID)
		if err != nil {
			return fmt.Errorf("kafkarpc: exactly-once: %w", err)
		}
		w.writer = newTxnWriter(w, txn)
	}
	w.groupCfg = kafkaclient.GroupConfig{
		GroupID:       w.cfg.groupID,
		Topics:        w.topics,
		OnAssigned:    w.onAssigned,
		OnRevoked:     w.onRevoked,
		ReadCommitted: w.cfg.readCommitted,
		Protocol:      w.cfg.groupProtocol,
	}
	gr, err := w.client.NewGroupReader(w.groupCfg)
	if err != nil {
		// The transactional producer made above goes with the failed
		// Start: nothing else would close it, and a later Start makes its
		// own.
		w.writer.close()
		w.writer = directWriter{client: w.client}
		return fmt.Errorf("kafkarpc: joining group %q: %w", w.cfg.groupID, err)
	}
	w.started = true
	w.committer = newCommitter(w, gr)
	go w.committer.run()
	w.watchTopics() // topics.go: a missing request topic is logged at error level
	go w.loop(gr)
	return nil
}

// Ready is closed once the worker joined its group and was first given its
// share of the partitions (possibly none, when the group has more members
// than partitions).
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Done is closed once a started worker stopped: after Shutdown or Close,
// or by itself after an error it cannot recover from (a failed transaction
// with WorkerExactlyOnce, such as one fenced by another instance of its
// transactional id; not a commit that raced a rebalance, after which the
// worker rejoins its group and goes on), which Err then returns. A
// service supervises a worker by waiting on it and exiting, or starting a
// new worker, when Err is not nil. Never closed for a worker that was not
// started. Safe for concurrent use.
func (w *Worker) Done() <-chan struct{} { return w.loopDone }

// Shutdown stops fetching requests, lets the calls in flight finish until ctx
// ends, commits, and leaves the group. Calls whose handlers have not started
// (waiting for a slot of WorkerMaxConcurrentCalls, or for their record
// key's turn) are given up at once, left uncommitted for the partition's
// next owner. Calls still running when ctx ends are
// cancelled: those that sent no reply yet are left uncommitted, so that
// another member serves them again; the others end with UNAVAILABLE. It may
// be called more than once, and concurrently; every call returns once the
// worker stopped, and the calls in flight are cancelled when the context of
// any of them ends (a Close during a graceful Shutdown stops at once). A
// handler that ignores its cancelled context gets a second (abortGrace)
// to return; then the worker stops without it: its call is left
// uncommitted for another member to serve again, and what the handler
// sends or returns later goes nowhere.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.regMu.Lock()
	started := w.started
	w.regMu.Unlock()
	if !started {
		w.baseCancel()
		w.tel.stopMetrics()
		return nil
	}
	stop := context.AfterFunc(ctx, w.hurryNow)
	defer stop()
	w.pollCancel()
	<-w.loopDone
	return nil
}

// Close stops the worker at once: calls in flight are cancelled as by a
// Shutdown whose context already ended.
func (w *Worker) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return w.Shutdown(ctx)
}

// loop polls requests until shutdown, then drains and leaves the group. A
// rejoin asked for (requestRejoin) ends the polling of one group reader
// and starts the next (rejoin).
func (w *Worker) loop(gr kafkaclient.GroupReader) {
	defer close(w.loopDone)
	// Refusals (not authorized) and other failed reads that keep coming
	// are each logged at the first, then at most once a refusalLogEvery,
	// and once when requests are read again.
	var refusals, failures refusalLog
	for gr != nil {
		ctx, cancel := context.WithCancel(w.pollCtx)
		stop := make(chan struct{})
		go func() {
			select {
			case <-w.rejoinReq:
				cancel()
			case <-stop:
			}
		}()
		w.flow.reader(gr)
		pollUntilDone(ctx, gr.Poll, func(err error) {
			if notAuthorized(err) {
				w.stats.readsRefused.Add(1)
				if refusals.refused(time.Now()) {
					w.cfg.logger.Error("kafkarpc: Kafka refuses to let the worker read a request topic: the calls on its partitions wait until it may "+
						"(grant the worker's principal READ on the topic; the worker keeps asking)", "group", w.cfg.groupID, "error", err)
				}
				return
			}
			if failures.refused(time.Now()) {
				w.cfg.logger.Warn("kafkarpc: reading requests", "group", w.cfg.groupID, "error", err)
			}
		}, func(recs []*kafkaclient.Record) {
			if refusals.read() {
				w.cfg.logger.Info("kafkarpc: reading requests again after Kafka refused it", "group", w.cfg.groupID)
			}
			if failures.read() {
				w.cfg.logger.Info("kafkarpc: reading requests again", "group", w.cfg.groupID)
			}
			for _, rec := range recs {
				if ctx.Err() != nil {
					return // a rejoin: read again from the committed offsets
				}
				w.handle(rec)
			}
			w.flow.check()
		})
		close(stop)
		cancel()
		w.flow.reader(nil) // no Pause or Resume of a reader being closed
		if w.pollCtx.Err() != nil {
			break
		}
		gr = w.rejoin(gr)
	}
	w.abandonQueued(nil)
	if testHookDraining != nil {
		testHookDraining()
	}
	for _, c := range w.drain(w.hurry, nil, abortGrace) {
		w.cfg.logger.Warn("kafkarpc: a handler still runs after the worker stopped and its context was cancelled: "+
			"its call is left uncommitted, and the partition's next owner serves it again", "group", w.cfg.groupID, "method", c.method(),
			"topic", c.tp.Topic, "partition", c.tp.Partition, "correlation_id", c.id)
	}
	w.committer.stop()
	w.mu.Lock()
	w.repeats.dropHeld(nil) // committed as held: not past them
	w.mu.Unlock()
	if gr != nil {
		if err := gr.Close(); err != nil {
			w.cfg.logger.Warn("kafkarpc: leaving group", "group", w.cfg.groupID, "error", err)
		}
	}
	w.writer.close()
	w.stopCalls()
	w.tel.stopMetrics()
	// The watch ends with pollCtx, cancelled by now (Shutdown or fail);
	// waiting for it means nothing of the worker's logs or uses the
	// Kafka client once Shutdown returned.
	<-w.watchDone
}

// requestRejoin asks the poll loop to rejoin the group (rejoin). Never
// blocks; safe for concurrent use.
func (w *Worker) requestRejoin() {
	select {
	case w.rejoinReq <- struct{}{}:
	default:
	}
}

// rejoin leaves the group as a member that lost its partitions and joins
// it again with a new group reader, which it returns (nil when the worker
// could not, and stops): every call in flight is given up, none of its
// records goes into a committed transaction, and the partitions' requests
// are read again from their committed offsets by whichever member gets
// them. The exactly-once worker does this when a commit found the group
// moved to a new generation (txnWriter.commit). Run on the poll loop.
func (w *Worker) rejoin(old kafkaclient.GroupReader) kafkaclient.GroupReader {
	w.stats.rejoins.Add(1)
	t := w.writer.(*txnWriter) // the only writer that asks for a rejoin
	t.setRejoining(true)
	rejoining := true
	defer func() {
		if rejoining {
			t.setRejoining(false)
		}
	}()
	// Void before their calls are cancelled (old.Close): a call that ends
	// now has its records left out, or, if its caller got some of its
	// responses already, kept for the transaction after the rejoin (enter),
	// not put into the one to be aborted.
	for _, c := range w.callsOf(nil, false) {
		c.sent.void.Store(true)
	}
	w.losing.Store(true)
	if err := old.Close(); err != nil { // revokes its partitions (onRevoked), as lost
		w.cfg.logger.Warn("kafkarpc: leaving group to rejoin it", "group", w.cfg.groupID, "error", err)
	}
	w.mu.Lock()
	left := slices.Collect(maps.Keys(w.parts)) // read but never assigned
	w.mu.Unlock()
	if len(left) > 0 {
		w.onRevoked(left, true)
	}
	w.losing.Store(false)
	// And the calls a waiter's re-run started meanwhile.
	for _, c := range w.callsOf(nil, false) {
		c.sent.void.Store(true)
	}
	gr, err := w.client.NewGroupReader(w.groupCfg)
	if err != nil {
		w.fail(fmt.Errorf("kafkarpc: joining group %q again: %w", w.cfg.groupID, err))
		return nil
	}
	if err := t.rejoin(w.committer, gr); err != nil {
		_ = gr.Close()
		w.fail(err)
		return nil
	}
	t.setRejoining(false)
	rejoining = false
	// The calls given up whose callers got some of their responses write
	// their ends now; before any request is read again, so that such a
	// caller gets its UNAVAILABLE before a response of the call served
	// again (a handler that ignores its context is waited for at most
	// abortGrace).
	done, cancel := context.WithCancel(context.Background())
	cancel()
	w.drain(done, nil, abortGrace)
	w.committer.poke()
	w.cfg.logger.Info("kafkarpc: rejoining group", "group", w.cfg.groupID)
	return gr
}

// stopCalls aborts what is still in flight once the worker stopped (a call
// that a repeat waiting for an aborted call started meanwhile), and makes
// admit abort any call entered later; then it ends the runners. Handler
// contexts do not derive from a context of the worker's, which would
// cancel them all at once: registering every call with one shared parent
// took that parent's lock twice per call on the poll goroutine and the
// calls' own.
func (w *Worker) stopCalls() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	for _, c := range w.callsOf(nil, false) {
		c.abort()
	}
	w.baseCancel()
}

// testHookDraining, when set (tests only, before the worker starts), runs
// when the worker, at shutdown (once it stopped polling) or at a
// revocation, gave up the calls whose handlers had not started, before it
// waits for the others.
var testHookDraining func()

// abandonQueued gives up the calls of parts (all when nil) whose handlers
// have not started yet (waiting for a handler slot, their record key's
// turn, or the calls they supersede): at a shutdown or a revocation they
// are left uncommitted for the partition's next owner at once, instead of
// being run (up to WorkerMaxConcurrentCalls at a time) before the worker
// lets the partitions go. A call whose handler started is left to finish.
func (w *Worker) abandonQueued(parts map[kafkaclient.TopicPartition]bool) {
	for _, c := range w.callsOf(parts, false) {
		if c.phase.CompareAndSwap(handlerQueued, handlerAbandoned) {
			c.abort()
		}
	}
}

// drain waits for the calls of parts (all when nil) to finish until ctx ends,
// then aborts what is left and waits for the aborted calls to be over: at
// most grace when grace > 0 (a handler may ignore its context), else as
// long as they take. It returns the calls still running.
func (w *Worker) drain(ctx context.Context, parts map[kafkaclient.TopicPartition]bool, grace time.Duration) []*call {
	for {
		wait := w.callsOf(parts, false)
		if len(wait) == 0 {
			return nil
		}
		for _, c := range wait {
			select {
			case <-c.done.wait():
			case <-ctx.Done():
				for _, c := range wait {
					c.abort()
				}
				var late <-chan time.Time
				if grace > 0 {
					t := time.NewTimer(grace)
					defer t.Stop()
					late = t.C
				}
				for i, c := range wait {
					select {
					case <-c.done.wait():
					case <-late:
						var left []*call
						for _, c := range wait[i:] {
							select {
							case <-c.done.wait():
							default:
								left = append(left, c)
							}
						}
						return left
					}
				}
				return nil
			}
		}
	}
}

// abortGrace is how long a revocation waits for the calls it aborted at
// WorkerRevokeTimeout to be over: long enough for their UNAVAILABLE ends
// to be acknowledged, so that they are committed; a handler that ignores
// its context past it is left running, and the rebalance goes on.
const abortGrace = time.Second

// callsOf returns the calls in flight of parts (all when nil); only those
// still waiting for input when waiting.
func (w *Worker) callsOf(parts map[kafkaclient.TopicPartition]bool, waiting bool) []*call {
	w.mu.Lock()
	defer w.mu.Unlock()
	var cs []*call
	for _, c := range w.calls {
		if (parts == nil || parts[c.tp]) && (!waiting || !c.in.complete()) {
			cs = append(cs, c)
		}
	}
	for c := range w.oneway { // one record, so never waiting for input
		if parts == nil || parts[c.tp] {
			cs = append(cs, c)
		}
	}
	for _, list := range w.detached { // cancelled already, so not waiting for input: left to end
		for _, c := range list {
			if (parts == nil || parts[c.tp]) && !waiting {
				cs = append(cs, c)
			}
		}
	}
	return cs
}

func (w *Worker) onAssigned(parts []kafkaclient.TopicPartition) {
	w.mu.Lock()
	for _, tp := range parts {
		w.parts[tp] = newPartTrack()
	}
	w.mu.Unlock()
	if len(parts) > 0 {
		w.cfg.logger.Info("kafkarpc: partitions assigned", "group", w.cfg.groupID, "partitions", fmt.Sprint(parts))
	}
	if w.outcomes != nil && len(parts) > 0 {
		// Inside the group reader's Poll: no record of parts is served
		// before their stored outcomes are in memory.
		w.outcomes.load(parts)
	}
	w.readyOnce.Do(func() { close(w.ready) })
}

// onRevoked finishes or abandons the calls of the revoked partitions and
// commits what is done, before the partitions move to another member.
func (w *Worker) onRevoked(parts []kafkaclient.TopicPartition, lost bool) {
	lost = lost || w.losing.Load()
	set := make(map[kafkaclient.TopicPartition]bool, len(parts))
	for _, tp := range parts {
		set[tp] = true
	}
	// Once lost, nothing may be committed: every call is given up. Else
	// calls with all their input may finish; calls still waiting for input
	// would wait forever, since that input now goes to another member.
	for _, c := range w.callsOf(set, !lost) {
		c.abort()
	}
	if !lost {
		w.abandonQueued(set)
		if testHookDraining != nil {
			testHookDraining()
		}
		// At a shutdown past its context (w.hurry), the calls were given
		// their grace already: no revoke timeout on top.
		ctx, cancel := context.WithTimeout(w.hurry, w.cfg.revokeTimeout)
		for _, c := range w.drain(ctx, set, abortGrace) {
			w.cfg.logger.Warn("kafkarpc: a handler still runs after its partition was revoked and its context cancelled: "+
				"the partition's next owner serves the call again", "group", w.cfg.groupID, "method", c.method(),
				"topic", c.tp.Topic, "partition", c.tp.Partition, "correlation_id", c.id)
		}
		cancel()
		w.committer.commitNow(set) // not past the calls left running: they hold their offsets
	}
	w.mu.Lock()
	for tp := range set {
		delete(w.parts, tp)
	}
	// The calls given up and still running (a lost partition's are not
	// waited for; a handler may take its time to see its context end) are
	// no longer this worker's calls in flight: their records, read again
	// by the partition's next owner, which may be this worker once its
	// member joins again, start those calls over, from their first record
	// on the new assignment, instead of being fed to the given-up calls
	// (marked read where no call held them, and never answered). They stay
	// drained at shutdown, and a call started again with the same
	// correlation id waits for them to be over, as for a superseded call
	// (admit): never two handlers of one call at once.
	for id, c := range w.calls {
		if set[c.tp] {
			delete(w.calls, id)
			w.detached[id] = append(w.detached[id], c)
		}
	}
	w.repeats.dropHeld(set) // their next owner reads those calls again
	if w.outcomes != nil {
		// Their next owner has their outcomes from the topic; so will
		// this worker if they come back.
		w.repeats.stored.forget(set)
	}
	w.mu.Unlock()
	w.cfg.logger.Info("kafkarpc: partitions revoked", "group", w.cfg.groupID, "partitions", fmt.Sprint(parts), "lost", lost)
}

// lookup returns the method a request names, or nil. The registry is
// read without regMu: it is not written once the worker started, and every
// reader runs on a goroutine started after that.
func (w *Worker) lookup(service, method []byte) *workerMethod {
	if s := w.services[string(service)]; s != nil {
		return s.methods[string(method)]
	}
	if w.proxy != nil && len(service) > 0 && len(method) > 0 {
		return w.proxy.method(string(service), string(method))
	}
	return nil
}

// ServedByMetadata is the response metadata, carried as meta:<name> on the
// reply records of every call, that names the worker process instance that
// served it (wire.ServedByMetadata, kept here for existing callers).
const ServedByMetadata = wire.ServedByMetadata

// refusalLog decides when a worker says that Kafka refuses to let it read
// a request topic: at the first refusal, then at most once per
// refusalLogEvery while refusals keep coming (franz reports one at every
// refused fetch; and a worker reading several topics may read records of
// one while another is refused), and when it reads records again after a
// refusal it said so for. Used by the polling goroutine alone.
type refusalLog struct {
	logged  time.Time // when a refusal was last logged
	pending bool      // a refusal was logged and no record read since
}

// refusalLogEvery is the least time between two logged refusals.
const refusalLogEvery = time.Minute

// refused reports whether a refusal seen at now is to be logged.
func (l *refusalLog) refused(now time.Time) bool {
	if !l.logged.IsZero() && now.Sub(l.logged) < refusalLogEvery {
		return false
	}
	l.logged, l.pending = now, true
	return true
}

// read reports whether records read now are to be logged as reading again.
func (l *refusalLog) read() bool {
	if !l.pending {
		return false
	}
	l.pending = false
	return true
}
