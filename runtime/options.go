package runtime

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// GatewayOption configures a Gateway. Every GatewayOption is also a
// ConnOption: a ClientConn is the gateway's call path, and the option
// configures it as it does a gateway.
type GatewayOption interface {
	ConnOption
	applyGateway(*gatewayConfig)
}

// ConnOption configures a ClientConn: the common options (With...), the
// gateway options (Gateway..., which configure the connection's call path as
// they configure a gateway's) and the connection's own (Conn...).
type ConnOption interface{ applyConn(*connConfig) }

// WorkerOption configures a Worker.
type WorkerOption interface{ applyWorker(*workerConfig) }

// Option configures a Gateway, a Worker and a ClientConn alike.
type Option interface {
	GatewayOption
	WorkerOption
}

type bothOption struct {
	gw func(*gatewayConfig)
	wk func(*workerConfig)
}

func (o bothOption) applyGateway(c *gatewayConfig) { o.gw(c) }
func (o bothOption) applyWorker(c *workerConfig)   { o.wk(c) }
func (o bothOption) applyConn(c *connConfig)       { o.gw(&c.gw) }

type gatewayOptionFunc func(*gatewayConfig)

func (f gatewayOptionFunc) applyGateway(c *gatewayConfig) { f(c) }
func (f gatewayOptionFunc) applyConn(c *connConfig)       { f(&c.gw) }

type workerOptionFunc func(*workerConfig)

func (f workerOptionFunc) applyWorker(c *workerConfig) { f(c) }

// common holds the settings shared by the gateway and the worker.
type common struct {
	names  wire.Names
	logger *slog.Logger
	topic  func(string) string
	telemetryConfig
}

func defaultCommon() common {
	return common{names: wire.DefaultNames(), logger: slog.Default(), topic: func(t string) string { return t }}
}

// WithHeaderNames sets the wire header names; empty fields keep their
// defaults (wire.DefaultNames). Both halves of a deployment must agree.
func WithHeaderNames(n wire.Names) Option {
	n = n.WithDefaults()
	return bothOption{
		gw: func(c *gatewayConfig) { c.names = n },
		wk: func(c *workerConfig) { c.names = n },
	}
}

// WithLogger sets the logger. Default slog.Default().
func WithLogger(l *slog.Logger) Option {
	return bothOption{
		gw: func(c *gatewayConfig) { c.logger = l },
		wk: func(c *workerConfig) { c.logger = l },
	}
}

// WithTopicMapper resolves the topic names of the generated specs at run time,
// so that one binary serves several environments: map receives each request
// and reply topic named in the proto options and returns the topic to use,
// e.g. func(t string) string { return "staging." + t }. Default: unchanged.
// The gateway and the workers of a deployment must map alike.
func WithTopicMapper(m func(topic string) string) Option {
	return bothOption{
		gw: func(c *gatewayConfig) { c.topic = m },
		wk: func(c *workerConfig) { c.topic = m },
	}
}

type gatewayConfig struct {
	common
	side             string // names the metrics: "gateway", or "client" for a ClientConn
	denied           []string
	allowed          []string
	identity         func(context.Context) (string, bool)
	setupTimeout     time.Duration
	replyBufferBytes int
	cancelAfterEnd   bool
	shardIndex       int
	shardCount       int
	readCommitted    bool
	fetch            fanoutConfig
}

func defaultGatewayConfig() gatewayConfig {
	return gatewayConfig{
		common:           defaultCommon(),
		side:             "gateway",
		denied:           DefaultDeniedMetadata,
		setupTimeout:     30 * time.Second,
		replyBufferBytes: 64 << 20,
		cancelAfterEnd:   true,
		fetch:            defaultFanoutConfig(),
	}
}

// GatewayDeniedMetadata adds names (case-insensitive) to the request metadata
// names that are never written to Kafka; it may be given more than once.
// Default: DefaultDeniedMetadata (credentials), which stay denied whatever is
// added: listing the application's own secrets never lets a credential
// through. To write a credential to Kafka anyway, make the metadata an allow
// list that names it (GatewayAllowedMetadata). Transport metadata
// (pseudo-headers, content-type, te, user-agent, grpc-*) is never written,
// whatever the lists say.
func GatewayDeniedMetadata(names ...string) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.denied = slices.Concat(c.denied, names) })
}

// GatewayAllowedMetadata makes the request metadata written to Kafka an allow
// list: only the names given (still never transport metadata), plus those
// the worker needs from the gateway: wire.IdempotencyKeyMetadata and the fields of
// the trace propagator (WithPropagator; traceparent and tracestate by
// default). It replaces the deny list of GatewayDeniedMetadata. Default: no
// allow list.
func GatewayAllowedMetadata(names ...string) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.allowed = append([]string{}, names...) })
}

// GatewayIdentity writes the caller's identity on every request record, in the
// wire.Names.Identity header ("zilla:identity", as Zilla writes it), placed
// after zilla:reply-to and before zilla:correlation-id. identify reads it from
// the call's context, typically what an authentication interceptor or the
// TLS peer put there; false writes no header. Workers hand it to handlers
// through IdentityFromContext. Default: no identity header.
func GatewayIdentity(identify func(ctx context.Context) (string, bool)) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.identity = identify })
}

// GatewaySetupTimeout bounds the Kafka look-ups of AddService (partitions and end
// offsets of each reply topic). Default 30 s.
func GatewaySetupTimeout(d time.Duration) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.setupTimeout = d })
}

// GatewayReplyBufferBytes bounds the reply bytes buffered for one call whose
// caller reads more slowly than the replies arrive (each record's value,
// key and headers, and the memory holding them); past it the call ends
// with RESOURCE_EXHAUSTED instead of growing memory or stalling other
// calls. Default 64 MiB.
func GatewayReplyBufferBytes(n int) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.replyBufferBytes = n })
}

// GatewayReplyShard makes this gateway instance one of count, numbered index
// (0 to count-1), that share the reply topics: it reads only the reply
// partitions p with p % count == index, and picks each call's correlation id
// (a fresh random UUID, redrawn as needed) so that the worker's reply, keyed
// by that id and partitioned by Kafka's murmur2, lands on one of them. Each
// instance then reads about 1/count of the replies instead of all of them,
// and the records stay exactly as WIRE.md says, so Zilla workers work too.
// A call whose id is fixed by the caller's idempotency-key may hash to a
// partition of another instance: the gateway then starts reading that
// partition too (from its end offset, looked up before the request is sent)
// and keeps reading it. A reply topic needs at least count partitions, and
// an index outside 0 to count-1 is refused when a method's reply topic is
// first prepared (AddService, or a ClientConn's first call).
// Default: one instance reading every reply partition.
func GatewayReplyShard(index, count int) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.shardIndex, c.shardCount = index, count })
}

// GatewayCancelRecord controls what the gateway writes when a caller cancels
// after its request stream already ended (always the case for unary and
// server-streaming calls): with true (the default) one more end-of-stream
// record carrying zilla:status=1, so that a worker built here cancels the
// handler; with false nothing, as Zilla does.
func GatewayCancelRecord(on bool) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.cancelAfterEnd = on })
}

// GatewayReadCommitted makes the gateway read replies with read_committed
// isolation, for workers that use WorkerExactlyOnce. Default: off
// (read_uncommitted, which shows replies as soon as they are written).
func GatewayReadCommitted() GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.readCommitted = true })
}

type workerConfig struct {
	common
	groupID           string
	maxConcurrent     int
	maxQueued         int // WorkerMaxQueuedCalls; 0: no bound
	unaryInterceptor  grpc.UnaryServerInterceptor
	streamInterceptor grpc.StreamServerInterceptor
	revokeTimeout     time.Duration
	maxCallDuration   time.Duration
	commitInterval    time.Duration
	readCommitted     bool
	groupProtocol     kafkaclient.GroupProtocol
	maxAttempts       int
	retryCodes        []codes.Code
	retryBackoff      time.Duration
	deadLetterTopic   string
	idemWindow        time.Duration
	idemMaxBytes      int
	transactionalID   string
	eosStreamBytes    int // WorkerExactlyOnceStreamBytes; 0: no bound
	outcomeTopic      string
	requestBufBytes   int // WorkerRequestBufferBytes; 0: no bound
}

func defaultWorkerConfig() workerConfig {
	return workerConfig{
		common:          defaultCommon(),
		maxConcurrent:   1024,
		maxQueued:       1024,
		revokeTimeout:   10 * time.Second,
		commitInterval:  50 * time.Millisecond,
		maxAttempts:     1,
		retryCodes:      []codes.Code{codes.Unavailable, codes.Aborted, codes.ResourceExhausted},
		retryBackoff:    100 * time.Millisecond,
		idemWindow:      10 * time.Minute,
		idemMaxBytes:    64 << 20,
		eosStreamBytes:  4 << 20,
		requestBufBytes: 64 << 20,
		maxCallDuration: DefaultMaxCallDuration,
	}
}

// WorkerRetries lets the worker run a failed handler again, up to maxAttempts
// times in all, when it fails with one of codes (default UNAVAILABLE,
// ABORTED, RESOURCE_EXHAUSTED) or panics, and has sent no reply yet. Attempts
// are spaced by an exponential back-off from 100 ms, bounded by the call's
// deadline. Each attempt reads the whole request stream again; the stream an
// attempt's handler got ends when that handler returns (RecvMsg and SendMsg
// then fail with CANCELLED, as gRPC's do, and so do its SetHeader,
// SendHeader and SetTrailer, and grpc.SetHeader, grpc.SendHeader and
// grpc.SetTrailer on its context), so a goroutine it left behind takes
// nothing from the next attempt and adds nothing to its answer. The
// attempts share the call's deadline and cancellation. With more than one
// attempt, a client stream's request messages are kept in memory until the
// call ends, for the next attempt (with one, as the handler reads them).
// Default: one attempt, no retry.
func WorkerRetries(maxAttempts int, codes ...codes.Code) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) {
		c.maxAttempts = max(maxAttempts, 1)
		if len(codes) > 0 {
			c.retryCodes = codes
		}
	})
}

// WorkerDeadLetterTopic sends poison requests to topic: a call whose request
// cannot be decoded (at once), or whose handler failed or panicked on every
// one of its WorkerRetries attempts, has its request records copied there with
// headers saying where they came from and why (see DeadLetterHeaders); the
// caller still gets the final status. A call the worker gave up in a
// rebalance or shutdown is no poison, whatever its handler returned once
// cancelled: it is not copied (the partition's next owner serves it again);
// nor is a call its caller cancelled. A call past its deadline is copied
// when it failed with a retry code (no attempt after the deadline runs).
// The topic goes through the topic mapper (WithTopicMapper) and must exist.
// A client stream's request messages are then kept in memory until the
// call ends, for the copy (without the option, as the handler reads them).
// Default: none.
func WorkerDeadLetterTopic(topic string) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.deadLetterTopic = topic })
}

// WorkerExactlyOnce makes the worker consume, reply and commit inside Kafka
// transactions (the client must implement kafkaclient.TxnClient, as
// confluent.Client does): a call's replies and the committed offset of its
// request become visible together, at the next commit (WorkerCommitInterval), or
// not at all. Gateways must then read replies with GatewayReadCommitted, so that
// they never see the replies of a transaction that was aborted (a worker that
// crashed): the request is served again and answered once. A call's replies
// are produced together when it ends, so a server stream arrives as one
// burst, and a call the worker gives up (rebalance, shutdown) writes
// nothing, whatever its handler sent: the next member serves it whole.
// Except a bidi stream's responses sent while its caller's stream is still
// open, which its caller may wait for, and a stream's past
// WorkerExactlyOnceStreamBytes: they go out at the next commit, and for
// them it is as without the option (at least once).
// What it does not cover: the handler's own side effects (a database
// write, a call to another service) happen again when a request is served
// again; make them idempotent (the idempotency-key metadata helps).
// transactionalID must be unique per worker instance and stable across its
// restarts, e.g. "orders-worker-" + the pod's ordinal. A commit that raced a
// rebalance (the group coordinator says the group moved to a new
// generation) is aborted, and the worker gives up every call it holds and
// rejoins its group: their requests are served again from the committed
// offsets, each answered once (WorkerStats.Rejoins counts these). Any
// other failed transaction stops the worker (Err reports why, Done is
// closed): fenced by a newer instance with the same transactional id, a
// transaction that timed out; its partitions move to the other members,
// which serve the uncommitted requests again. Default: off.
func WorkerExactlyOnce(transactionalID string) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.transactionalID = transactionalID; c.readCommitted = true })
}

// WorkerExactlyOnceStreamBytes bounds, with WorkerExactlyOnce, the bytes
// of a streaming call's responses the worker holds until the call's end
// (each counted as the record batch Kafka would store it in, headers
// included). Within the bound, a call's responses go into the transaction
// that commits its request's offset, at its end: its caller gets them as
// one burst, and a call given up in a rebalance or at shutdown writes
// nothing (its next owner serves it whole). Past the bound, the call's
// responses go out at each commit as the handler sends them, as a bidi
// call's responses sent while its caller's stream is open do: memory stays
// bounded and the caller reads the stream as it comes, but the call is no
// longer exactly-once: given up after that point, it ends UNAVAILABLE
// "retry it" after a prefix of what was sent, and a call whose worker died is served
// again, its caller getting those responses twice. Keep it below the
// gateways' GatewayReplyBufferBytes: a burst larger than that fails a
// caller that reads slower than it comes. The worker holds at most about
// WorkerMaxConcurrentCalls times n for its transactions (a call with an
// idempotency key also keeps its replies for its repeats, up to
// WorkerIdempotencyWindow's maxBytes). n ≤ 0: no bound (every response is held
// until its call's end). Default 4 MiB.
func WorkerExactlyOnceStreamBytes(n int) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.eosStreamBytes = max(n, 0) })
}

// WorkerRequestBufferBytes bounds the request bytes the worker buffers for
// one client or bidi stream call whose handler reads them more slowly than
// its caller sends them, or has not started yet (each message's value and
// headers, and room for its record): a caller's messages travel through
// Kafka, so nothing slows the caller down as gRPC's flow control would.
// Past the bound, the call ends with RESOURCE_EXHAUSTED instead of growing
// the worker's memory: its handler's context is cancelled with that cause,
// its stream's RecvMsg returns that error, the messages not read are let
// go and the rest of its request is skipped. It ends so whatever its
// handler then returns (even OK: its stream was cut short), and it is not
// retried, nor dead lettered, nor remembered for an idempotency key (a
// retry runs again). Only messages no attempt read yet count: those read
// are let go as the handler reads them, unless WorkerRetries or
// WorkerDeadLetterTopic keep them for a second reading (then without this
// bound). A message counts its value, its headers and 64 bytes: keep n
// well above the largest request message. Unread messages take at most about n
// for each call whose handler runs or waits for a slot
// (WorkerMaxConcurrentCalls, WorkerMaxQueuedCalls). n ≤ 0: no bound.
// Default 64 MiB.
func WorkerRequestBufferBytes(n int) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.requestBufBytes = max(n, 0) })
}

// WorkerIdempotencyWindow sets how long a worker remembers the replies of a
// call made with an idempotency-key: a request with the same correlation id
// (same key, same route) arriving within d of the first one's end does not
// run the handler again; it gets the stored replies. Calls that ended
// CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, ABORTED or RESOURCE_EXHAUSTED
// are not remembered, so their retries run again. maxBytes bounds the stored
// replies (values and headers: trailers and status details count); the
// oldest are forgotten first. A call whose replies alone pass maxBytes (a
// long stream) is not remembered, and none of its replies is kept for it
// once they pass it. Past the window, or once
// forgotten, or on another worker instance (the memory is per process,
// unless WorkerOutcomeTopic keeps it in Kafka too), a duplicate runs again. Defaults: 10 minutes, 64 MiB. d = 0 turns it off.
func WorkerIdempotencyWindow(d time.Duration, maxBytes int) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.idemWindow, c.idemMaxBytes = d, maxBytes })
}

// WorkerOutcomeTopic keeps the outcomes the worker remembers
// (WorkerIdempotencyWindow) in topic as well, a compacted Kafka topic
// partitioned like the request topics (create it with EnsureTopics and
// Worker.ExtraTopics: role TopicOutcome, cleanup.policy=compact, at least
// as many partitions as each request topic). A call's outcome goes to the
// partition with the number of its request's partition, keyed by its
// correlation id, and is acknowledged (with WorkerExactlyOnce: in the
// transaction of its replies and offset) before the request's offset is
// committed. A worker assigned request partitions first reads their
// outcome partitions, within 30 s, before it serves any request: a repeat
// of a keyed call that lands on another worker after a rebalance, a restart
// or a crash is then answered from the stored outcome within the window,
// without running the handler again, as a repeat on the same worker is. An
// outcome that leaves the memory of its partition's owner (past the window,
// or over the byte bound) is deleted from the topic with a tombstone. A
// missing topic, a failed or timed-out load, or a malformed record is
// logged and the worker serves on (those repeats run again). The record
// layout and the cost are in README.md (Reliability). The topic goes
// through the topic mapper (WithTopicMapper). No effect when the window is
// 0. Default: none (outcomes live in the worker's memory only).
func WorkerOutcomeTopic(topic string) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.outcomeTopic = topic })
}

// WorkerGroupID sets the consumer group the worker joins. Default
// "kafkarpc-<first registered service>", e.g.
// "kafkarpc-example.echo.v1.EchoService". To share the load with a Zilla
// kafka-grpc binding, use its format "zilla:<namespace>-<binding>".
func WorkerGroupID(id string) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.groupID = id })
}

// WorkerGroupProtocol sets the consumer group protocol the worker's group
// member speaks: kafkaclient.GroupProtocolClassic or
// kafkaclient.GroupProtocolConsumer (KIP-848, Kafka 4.0 and later; on
// confluent-kafka-go and franz-go alike). Default "": the client's
// configuration, classic unless configured otherwise. Start fails on any
// other value. Every worker of a group should speak the same protocol
// (Kafka converts a classic group to a consumer one when the first
// consumer-protocol member joins an otherwise empty group, not otherwise).
//
// The trade-off, measured in BENCHMARKS.md (Failover): when a worker dies
// without leaving (SIGKILL, a lost machine), its partitions wait for the
// group's session timeout. Under classic the client sets it (6 s by
// default in both clients, with 1 s heartbeats), so calls on those
// partitions pause about 7 s. Under consumer the broker sets it
// (group.consumer.session.timeout.ms, 45 s by default, and not below
// group.consumer.min.session.timeout.ms, also 45 s), so they pause about
// 45 s on a broker with default settings. The consumer protocol in exchange
// rebalances without a group-wide barrier: a worker joining or leaving
// cleanly moves only the partitions that change owner, with no JoinGroup
// round, and the assignment is the broker's. Keep classic unless the
// brokers' group.consumer.* settings were lowered or planned scaling
// matters more than sudden failures.
func WorkerGroupProtocol(p kafkaclient.GroupProtocol) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.groupProtocol = p })
}

// WorkerMaxConcurrentCalls bounds the handlers running at once; further calls
// wait for a slot (until their deadline, when they end DEADLINE_EXCEEDED
// without running). At a shutdown or a revocation, the calls still waiting
// for a slot run no handler: they are left uncommitted for the partition's
// next owner. Default 1024.
func WorkerMaxConcurrentCalls(n int) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.maxConcurrent = max(n, 1) })
}

// WorkerMaxQueuedCalls bounds the calls read whose handlers have not
// started (waiting for a slot of WorkerMaxConcurrentCalls, their record
// key's turn, or an earlier attempt): at n, the worker stops fetching
// requests (its group reader pauses, and it stays in the group) until half
// of them took a slot or ended, so that a backlog stays in Kafka instead
// of in the worker's memory. The reading goes on regardless while a
// running handler waits for its next request message (a client or bidi
// stream), which may be behind the pause. A bound, not an exact one: the
// records of the batch read when it is reached (up to 512) are still
// served. n ≤ 0: no bound, every request is read as it comes. Default 1024.
// WorkerStats.ReadPauses counts the pauses. A kafkaclient.Client of your
// own whose group readers do not implement kafkaclient.Pauser is read
// without a bound.
func WorkerMaxQueuedCalls(n int) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.maxQueued = max(n, 0) })
}

// WorkerUnaryInterceptor runs i around every unary handler, as
// grpc.UnaryInterceptor does on a grpc.Server. Default none.
func WorkerUnaryInterceptor(i grpc.UnaryServerInterceptor) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.unaryInterceptor = i })
}

// WorkerStreamInterceptor runs i around every streaming handler, as
// grpc.StreamInterceptor does on a grpc.Server. Default none.
func WorkerStreamInterceptor(i grpc.StreamServerInterceptor) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.streamInterceptor = i })
}

// DefaultMaxCallDuration is how long a worker lets a call run by default
// (WorkerMaxCallDuration).
const DefaultMaxCallDuration = 10 * time.Minute

// WorkerMaxCallDuration bounds how long the worker lets one call run,
// counted from when it read the call's first request record: a call whose
// caller set no deadline, or a later one, ends DEADLINE_EXCEEDED then, with
// a message naming this bound, and its handler's context is done. A call
// holds its partition's committed offset while it runs (a crash would serve
// it again), so one that never ends must not be possible; a call with a
// client stream answered before its whole request was read holds it until
// its end-of-stream record is read, at most until its deadline, this bound
// unless the caller set an earlier one. d <= 0 removes the bound. Default DefaultMaxCallDuration (10 minutes).
func WorkerMaxCallDuration(d time.Duration) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.maxCallDuration = d })
}

// WorkerRevokeTimeout bounds how long a worker losing partitions in a rebalance
// waits for the calls of those partitions that have all their input and
// whose handlers started to finish (calls whose handlers have not started,
// waiting for a slot of WorkerMaxConcurrentCalls or for their record key's
// turn, are left uncommitted at once for the partition's next owner).
// Default 10 s. Calls still running then are cancelled and waited
// for at most one more second; a handler that ignores its context past
// that is left running, uncommitted, and the rebalance goes on (the
// partition's next owner serves the call again).
func WorkerRevokeTimeout(d time.Duration) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.revokeTimeout = d })
}

// WorkerCommitInterval sets the least time between two offset commits.
// Default 50 ms.
func WorkerCommitInterval(d time.Duration) WorkerOption {
	return workerOptionFunc(func(c *workerConfig) { c.commitInterval = d })
}
