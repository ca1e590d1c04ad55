package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

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

	base       context.Context // parent of every handler context; cancelled by an aborting shutdown
	baseCancel context.CancelFunc
	pollCtx    context.Context
	pollCancel context.CancelFunc
	drainCtx   atomic.Pointer[context.Context]
	loopDone   chan struct{}
	sem        chan struct{}
	ready      chan struct{}
	readyOnce  sync.Once

	mu       sync.Mutex // guards calls, trailing, dupes, keys, replies and parts
	calls    map[string]*wCall
	trailing *recentSet          // calls over whose remaining request records are skipped
	dupes    map[string]struct{} // duplicate attempts of calls in flight, skipped until their end
	keys     map[string][]*wCall // calls waiting for their turn, by record key
	replies  *replyStore         // replies of recent idempotent calls
	parts    map[kafkaclient.TopicPartition]*partTrack
	running  sync.WaitGroup // call goroutines

	committer *committer
	stats     workerCounters
	// incarnation is sent as response metadata on the first replies of every
	// call (wire.ServedByMetadata), so that a gateway can tell when another worker
	// served a call again after this one failed midway.
	incarnation []kafkaclient.Header
	trc         tracing
	met         callMetrics
	skipped     metric.Int64Counter
	deadLet     metric.Int64Counter
	dupCount    metric.Int64Counter
	lostCount   metric.Int64Counter

	// exactly-once (WorkerExactlyOnce)
	txn      kafkaclient.TxnProducer
	txnMu    sync.RWMutex // calls produce under RLock; a commit holds Lock
	txnOpen  int          // calls whose replies are in the open transaction but not yet marked done; guarded by mu
	txnDirty bool         // something was produced in the open transaction; guarded by mu
	txnIdle  *sync.Cond   // signalled when txnOpen drops to 0; uses mu
	errMu    sync.Mutex
	err      error
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

	tel        *methodTelemetry // nil for proxied methods until their first call
	handleName string           // "handle /service/method"
	handleOpts []trace.SpanStartOption
}

// prepareTelemetry precomputes wm's metric options, span name and span
// options.
func (w *Worker) prepareTelemetry(wm *workerMethod) {
	full := wm.spec.FullMethod()
	wm.tel = w.met.forMethod(full)
	wm.handleName = "handle " + full
	wm.handleOpts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), wm.tel.method)}
}

// NewWorker returns a Worker reading and producing through client, which
// stays owned by the caller (close it after the Worker).
func NewWorker(client kafkaclient.Client, opts ...WorkerOption) *Worker {
	cfg := defaultWorkerConfig()
	for _, o := range opts {
		o.applyWorker(&cfg)
	}
	w := &Worker{
		client:   client,
		cfg:      cfg,
		services: map[string]*workerService{},
		loopDone: make(chan struct{}),
		sem:      make(chan struct{}, cfg.maxConcurrent),
		ready:    make(chan struct{}),
		calls:    map[string]*wCall{},
		trailing: newRecentSet(1 << 16),
		dupes:    map[string]struct{}{},
		keys:     map[string][]*wCall{},
		replies:  newReplyStore(cfg.idemWindow, cfg.idemMaxBytes),
		parts:    map[kafkaclient.TopicPartition]*partTrack{},
	}
	w.base, w.baseCancel = context.WithCancel(context.Background())
	w.pollCtx, w.pollCancel = context.WithCancel(context.Background())
	w.txnIdle = sync.NewCond(&w.mu)
	w.incarnation = []kafkaclient.Header{{Key: cfg.names.MetaPrefix + wire.ServedByMetadata, Value: []byte(wire.NewUUID())}}
	w.trc = newTracing(cfg.telemetryConfig)
	meter := meterOf(cfg.telemetryConfig)
	w.met = newCallMetrics(meter, "worker")
	w.skipped, _ = meter.Int64Counter("kafkarpc.worker.records.skipped",
		metric.WithDescription("Request records not served as calls, by reason."))
	w.deadLet, _ = meter.Int64Counter("kafkarpc.worker.dead_lettered", metric.WithDescription("Calls sent to the dead-letter topic."))
	w.dupCount, _ = meter.Int64Counter("kafkarpc.worker.duplicates",
		metric.WithDescription("Requests answered from the stored replies of an earlier call."))
	w.lostCount, _ = meter.Int64Counter("kafkarpc.worker.replies.lost",
		metric.WithDescription("Calls some of whose replies Kafka did not take; their callers were told UNAVAILABLE."))
	_, _ = meter.Int64ObservableGauge("kafkarpc.worker.lag",
		metric.WithDescription("Records not yet read from the partitions this worker holds, by topic and partition."),
		metric.WithInt64Callback(w.observeLag))
	return w
}

// observeLag reports, for every partition the worker holds, the records
// between its end and the worker's position.
func (w *Worker) observeLag(ctx context.Context, o metric.Int64Observer) error {
	w.mu.Lock()
	next := map[kafkaclient.TopicPartition]int64{}
	byTopic := map[string][]int32{}
	for tp, pt := range w.parts {
		next[tp] = pt.next
		byTopic[tp.Topic] = append(byTopic[tp.Topic], tp.Partition)
	}
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for topic, parts := range byTopic {
		ends, err := w.client.Offsets(ctx, topic, parts, kafkaclient.Latest)
		if err != nil {
			return err
		}
		for _, p := range parts {
			pos := next[kafkaclient.TopicPartition{Topic: topic, Partition: p}]
			if pos < 0 {
				continue // nothing read yet: the position is not known here
			}
			o.Observe(max(ends[p]-pos, 0), metric.WithAttributes(
				attribute.String("messaging.destination.name", topic), attribute.Int("messaging.destination.partition.id", int(p))))
		}
	}
	return nil
}

// countDuplicate counts a request answered from an earlier call's replies.
func (w *Worker) countDuplicate() {
	w.stats.duplicates.Add(1)
	w.dupCount.Add(context.Background(), 1)
}

func (w *Worker) countSkipped(reason string) {
	w.skipped.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", reason)))
}

// Err reports why the worker stopped by itself (a failed transaction with
// WorkerExactlyOnce), or nil.
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
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w.drainCtx.CompareAndSwap(nil, &ctx)
	w.pollCancel()
}

// RegisterService serves impl, an implementation of desc's handler type, for
// the Kafka methods listed in spec. Methods of desc that spec does not list
// are not served (a request for one is answered UNIMPLEMENTED). Generated
// Register...KafkaWorker functions call it. It must be called before Start.
func (w *Worker) RegisterService(spec *ServiceSpec, desc *grpc.ServiceDesc, impl any) error {
	if spec.Name != desc.ServiceName {
		return fmt.Errorf("kafkarpc: spec of %s registered with the descriptor of %s", spec.Name, desc.ServiceName)
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
			if t := w.cfg.topic(r.Topic); !containsString(w.topics, t) {
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

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// Topics returns the request topics the worker consumes, in registration
// order.
func (w *Worker) Topics() []string {
	w.regMu.Lock()
	defer w.regMu.Unlock()
	return append([]string(nil), w.topics...)
}

// GroupID returns the consumer group the worker joins.
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
		return errors.New("kafkarpc: worker has no request topics: register a service first")
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
		w.txn = txn
	}
	gr, err := w.client.NewGroupReader(kafkaclient.GroupConfig{
		GroupID:       w.cfg.groupID,
		Topics:        w.topics,
		OnAssigned:    w.onAssigned,
		OnRevoked:     w.onRevoked,
		ReadCommitted: w.cfg.readCommitted,
	})
	if err != nil {
		return fmt.Errorf("kafkarpc: joining group %q: %w", w.cfg.groupID, err)
	}
	w.started = true
	w.committer = newCommitter(w, gr)
	go w.committer.run()
	go w.loop(gr)
	w.watchTopics() // topics.go: a missing request topic is logged at error level
	return nil
}

// Ready is closed once the worker joined its group and was first given its
// share of the partitions (possibly none, when the group has more members
// than partitions).
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Shutdown stops fetching requests, lets the calls in flight finish until ctx
// ends, commits, and leaves the group. Calls still running when ctx ends are
// cancelled: those that sent no reply yet are left uncommitted, so that
// another member serves them again; the others end with UNAVAILABLE.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.regMu.Lock()
	started := w.started
	w.regMu.Unlock()
	if !started {
		w.baseCancel()
		return nil
	}
	w.drainCtx.CompareAndSwap(nil, &ctx)
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

// loop polls requests until shutdown, then drains and leaves the group.
func (w *Worker) loop(gr kafkaclient.GroupReader) {
	defer close(w.loopDone)
	pollUntilDone(w.pollCtx, gr.Poll, func(err error) {
		w.cfg.logger.Warn("kafkarpc: reading requests", "group", w.cfg.groupID, "error", err)
	}, func(recs []*kafkaclient.Record) {
		for _, rec := range recs {
			w.handle(rec)
		}
	})
	ctx := context.Background()
	if p := w.drainCtx.Load(); p != nil {
		ctx = *p
	}
	w.drain(ctx, nil)
	w.committer.stop()
	if err := gr.Close(); err != nil {
		w.cfg.logger.Warn("kafkarpc: leaving group", "group", w.cfg.groupID, "error", err)
	}
	if w.txn != nil {
		if err := w.txn.Close(); err != nil {
			w.cfg.logger.Warn("kafkarpc: closing the transactional producer", "error", err)
		}
	}
	w.baseCancel()
}

// drain waits for the calls of parts (all when nil) to finish until ctx ends,
// then aborts what is left.
func (w *Worker) drain(ctx context.Context, parts map[kafkaclient.TopicPartition]bool) {
	for {
		w.mu.Lock()
		var wait []*wCall
		for _, c := range w.calls {
			if parts == nil || parts[c.tp] {
				wait = append(wait, c)
			}
		}
		w.mu.Unlock()
		if len(wait) == 0 {
			return
		}
		for _, c := range wait {
			select {
			case <-c.done:
			case <-ctx.Done():
				for _, c := range wait {
					c.abort()
				}
				for _, c := range wait {
					<-c.done
				}
				return
			}
		}
	}
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
	w.readyOnce.Do(func() { close(w.ready) })
}

// onRevoked finishes or abandons the calls of the revoked partitions and
// commits what is done, before the partitions move to another member.
func (w *Worker) onRevoked(parts []kafkaclient.TopicPartition, lost bool) {
	set := make(map[kafkaclient.TopicPartition]bool, len(parts))
	for _, tp := range parts {
		set[tp] = true
	}
	if lost {
		w.mu.Lock()
		var abort []*wCall
		for _, c := range w.calls {
			if set[c.tp] {
				abort = append(abort, c)
			}
		}
		w.mu.Unlock()
		for _, c := range abort {
			c.abort()
		}
	} else {
		// Calls with all their input may finish; calls still waiting for input
		// would wait forever, since that input now goes to another member.
		w.mu.Lock()
		var abort []*wCall
		for _, c := range w.calls {
			if set[c.tp] && !c.inputComplete() {
				abort = append(abort, c)
			}
		}
		w.mu.Unlock()
		for _, c := range abort {
			c.abort()
		}
		ctx, cancel := context.WithTimeout(context.Background(), w.cfg.revokeTimeout)
		w.drain(ctx, set)
		cancel()
		w.committer.commitNow(set)
	}
	w.mu.Lock()
	for tp := range set {
		delete(w.parts, tp)
	}
	w.mu.Unlock()
	w.cfg.logger.Info("kafkarpc: partitions revoked", "group", w.cfg.groupID, "partitions", fmt.Sprint(parts), "lost", lost)
}

// handle routes one request record: to its call in flight, or as the start of
// a new call, or answers or skips it when it cannot be served.
func (w *Worker) handle(rec *kafkaclient.Record) {
	names := &w.cfg.names
	tp := kafkaclient.TopicPartition{Topic: rec.Topic, Partition: rec.Partition}
	id, hasID := headerValue(rec.Headers, names.CorrelationID)

	w.mu.Lock()
	pt := w.parts[tp]
	if pt == nil { // a record of a partition we were not told about
		pt = newPartTrack()
		w.parts[tp] = pt
	}
	pt.seen(rec.Offset)
	var stored *storedReply
	if hasID {
		if _, dup := w.dupes[string(id)]; dup {
			if rec.Value == nil {
				delete(w.dupes, string(id))
			}
			w.mu.Unlock()
			return
		}
		if c := w.calls[string(id)]; c != nil {
			if rec.Value != nil && c.inputComplete() {
				// A new attempt of a call still running here (a retry with
				// the same idempotency key): once the call is over, the
				// attempt is answered (answerWaiter); its offset is held
				// until then. The rest of the attempt's records are skipped.
				replyTo, _ := headerValue(rec.Headers, names.ReplyTo)
				c.waiters = append(c.waiters, waiter{rec: rec, pt: pt, replyTo: string(replyTo), late: c.ending.Load()})
				pt.begin(rec.Offset)
				w.dupes[string(id)] = struct{}{}
				w.mu.Unlock()
				return
			}
			w.mu.Unlock()
			c.feed(rec)
			return
		}
		if w.trailing.has(string(id)) {
			if rec.Value == nil {
				w.trailing.remove(string(id))
			}
			w.mu.Unlock()
			return
		}
		if rec.Value != nil {
			stored = w.replies.get(string(id), time.Now())
		}
	}
	w.mu.Unlock()

	service, hasService := headerValue(rec.Headers, names.Service)
	method, hasMethod := headerValue(rec.Headers, names.Method)
	if !hasID {
		// A oneway unary request is a whole call in one record. The records
		// of a oneway client stream carry nothing to group them by: they are
		// for other consumers of the topic, not for a worker.
		if wm := w.lookup(string(service), string(method)); wm != nil && wm.spec.Kind == KindUnary && w.onewayRoute(wm.spec, rec.Topic) {
			w.startCall(rec, pt, "", "", wm, false)
			return
		}
		w.stats.skippedNoID.Add(1)
		w.countSkipped("no_correlation_id")
		w.cfg.logger.Warn("kafkarpc: skipping request without correlation id", "header", names.CorrelationID,
			"topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
		return
	}
	if rec.Value == nil {
		// An end-of-stream record of a call not in flight here: the whole
		// request of an empty client stream, or else the end (or a late
		// cancel) of a call that is over.
		if v, ok := headerValue(rec.Headers, names.Status); ok && string(v) == "1" {
			return
		}
		if wm := w.lookup(string(service), string(method)); wm == nil || !wm.spec.Kind.clientStreams() {
			return
		}
	}
	replyTo, hasReplyTo := headerValue(rec.Headers, names.ReplyTo)
	if !hasReplyTo || len(replyTo) == 0 {
		w.stats.malformed.Add(1)
		w.countSkipped("malformed")
		w.cfg.logger.Warn("kafkarpc: skipping request without reply topic", "header", names.ReplyTo,
			"correlation_id", string(id), "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
		return
	}
	var fail *status.Status
	var wm *workerMethod
	switch {
	case !hasService || len(service) == 0:
		fail = status.Newf(codes.Internal, "request at %s has no %s header", recordPlace(rec), names.Service)
	case !hasMethod || len(method) == 0:
		fail = status.Newf(codes.Internal, "request at %s has no %s header", recordPlace(rec), names.Method)
	default:
		if wm = w.lookup(string(service), string(method)); wm == nil {
			fail = status.Newf(codes.Unimplemented, "unknown method /%s/%s (request at %s)", service, method, recordPlace(rec))
		}
	}
	if fail != nil {
		w.stats.malformed.Add(1)
		w.countSkipped("malformed")
		w.rejectCall(rec, pt, string(id), string(replyTo), fail, false)
		return
	}
	if stored != nil {
		w.countDuplicate()
		w.answerCall(rec, pt, string(id), string(replyTo), nil, stored.records, false)
		return
	}
	w.startCall(rec, pt, string(id), string(replyTo), wm, false)
}

func (w *Worker) onewayRoute(m *MethodSpec, topic string) bool {
	for _, r := range m.Routes {
		if r.Oneway && w.cfg.topic(r.Topic) == topic {
			return true
		}
	}
	return false
}

func (w *Worker) lookup(service, method string) *workerMethod {
	w.regMu.Lock()
	defer w.regMu.Unlock()
	if s := w.services[service]; s != nil {
		return s.methods[method]
	}
	if w.proxy != nil && service != "" && method != "" {
		return w.proxy.method(service, method)
	}
	return nil
}

// WorkerStats are counters of records a worker could not serve as calls.
type WorkerStats struct {
	// SkippedNoCorrelationID counts request records without a correlation id
	// (that are not oneway requests); they cannot be answered.
	SkippedNoCorrelationID uint64
	// Malformed counts requests answered with an error without running a
	// handler (missing service or method, unknown method, bad metadata) or
	// skipped for want of a reply topic.
	Malformed uint64
	// Calls counts calls started (handlers run, not counting retries).
	Calls uint64
	// Duplicates counts requests answered from the replies of an earlier
	// call with the same correlation id instead of running a handler.
	Duplicates uint64
	// DeadLettered counts calls whose requests went to the dead-letter
	// topic.
	DeadLettered uint64
	// Panics counts handlers that panicked.
	Panics uint64
	// ProxyRetries counts the attempts a proxying worker repeated because
	// the target was UNAVAILABLE before it took the call.
	ProxyRetries uint64
	// LostReplies counts calls some of whose replies Kafka did not take
	// (after the client's own retries); each such caller was sent an
	// UNAVAILABLE end-of-stream record saying so.
	LostReplies uint64
}

type workerCounters struct {
	skippedNoID, malformed, calls, panics, proxyRetries, duplicates, deadLettered, lostReplies atomic.Uint64
}

// Stats returns the worker's counters. Safe for concurrent use.
func (w *Worker) Stats() WorkerStats {
	return WorkerStats{
		SkippedNoCorrelationID: w.stats.skippedNoID.Load(),
		Malformed:              w.stats.malformed.Load(),
		Calls:                  w.stats.calls.Load(),
		Duplicates:             w.stats.duplicates.Load(),
		DeadLettered:           w.stats.deadLettered.Load(),
		Panics:                 w.stats.panics.Load(),
		ProxyRetries:           w.stats.proxyRetries.Load(),
		LostReplies:            w.stats.lostReplies.Load(),
	}
}

// requestMetadata reads a request's gRPC metadata and deadline from its
// headers.
func requestMetadata(rec *kafkaclient.Record, names *wire.Names) (metadata.MD, time.Time, error) {
	md, err := wire.DecodeMetadata(rec.Headers, names.MetaPrefix, nil)
	if err != nil {
		return nil, time.Time{}, err
	}
	var deadline time.Time
	if v := md.Get(wire.TimeoutMetadata); len(v) > 0 {
		d, err := wire.DecodeTimeout(v[0])
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("header %q: %w", names.MetaPrefix+wire.TimeoutMetadata, err)
		}
		start := rec.Timestamp
		if start.IsZero() {
			start = time.Now()
		}
		deadline = start.Add(d)
		md.Delete(wire.TimeoutMetadata)
	}
	return md, deadline, nil
}

// waitTurn queues c behind the unfinished calls with the same record key, so
// that calls sharing a key run in the order of their records. Called with
// w.mu held. Calls keyed by their own correlation id share no key.
func (w *Worker) waitTurn(c *wCall, key string) {
	if key == "" || key == c.id {
		return
	}
	c.key = key
	q, busy := w.keys[key]
	if !busy {
		c.hasTurn = true
	} else {
		c.turn = make(chan struct{})
	}
	w.keys[key] = append(q, c)
}

// passTurn removes a finished c from its key's queue and lets the next call
// with that key run. Called with w.mu held.
func (w *Worker) passTurn(c *wCall) {
	q := w.keys[c.key]
	i := slices.Index(q, c)
	if i < 0 {
		return
	}
	q = slices.Delete(q, i, i+1)
	if len(q) == 0 {
		delete(w.keys, c.key)
		return
	}
	w.keys[c.key] = q
	if i == 0 && !q[0].hasTurn {
		q[0].hasTurn = true
		close(q[0].turn)
	}
}

// recentSet is a bounded set of strings that forgets the oldest first.
type recentSet struct {
	max   int
	set   map[string]struct{}
	order []string
}

func newRecentSet(max int) *recentSet {
	return &recentSet{max: max, set: map[string]struct{}{}}
}

func (s *recentSet) add(k string) {
	if _, ok := s.set[k]; ok {
		return
	}
	if len(s.order) >= s.max {
		delete(s.set, s.order[0])
		s.order = s.order[1:]
	}
	s.set[k] = struct{}{}
	s.order = append(s.order, k)
}

func (s *recentSet) has(k string) bool { _, ok := s.set[k]; return ok }

func (s *recentSet) remove(k string) { delete(s.set, k) } // its order slot expires in time

// fullMethodName is "/service/method".
func fullMethodName(service, method string) string {
	var b strings.Builder
	b.Grow(len(service) + len(method) + 2)
	b.WriteByte('/')
	b.WriteString(service)
	b.WriteByte('/')
	b.WriteString(method)
	return b.String()
}

// wire.ServedByMetadata is the response metadata, carried as meta:<name> on the
// reply records of every call, that names the worker process instance that
// served it (a random id per Worker). When a worker dies midway through a
// streaming call, the partition's next owner serves the call again from its
// first request, and its replies carry another id: the gateway then ends the
// call with UNAVAILABLE instead of handing the caller answers it already had.
// Gateways remove it from the caller's response headers.
const ServedByMetadata = "kafkarpc-served-by"
