// Package confluent implements kafkaclient.Client on confluent-kafka-go, the
// Go binding of librdkafka. It is the runtime's default Kafka client.
//
// One Client holds one librdkafka producer per acknowledgement level that is
// actually used (acks is a topic-level setting in librdkafka, not a per-record
// one), created on first use and shared by every caller; topic admin and
// metadata lookups reuse the acks=all producer's connections. Each Reader and
// GroupReader is a librdkafka consumer of its own.
//
// librdkafka never writes to stderr through this package: its log lines and
// its error events are forwarded to a log/slog logger (WithLogger).
package confluent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Config is librdkafka configuration, passed through unchanged: keys are
// librdkafka property names (https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md)
// such as "bootstrap.servers", "security.protocol", "sasl.mechanisms" or
// "client.id". Values may be strings, bools or numbers of any Go integer or
// float type. The confluent-kafka-go "go.*" properties are accepted too.
type Config map[string]any

// Option configures New.
type Option func(*options)

type options struct {
	logger       *slog.Logger
	producerCfg  Config
	consumerCfg  Config
	flushTimeout time.Duration
}

// WithLogger sets the logger that receives librdkafka's log lines and error
// events. Default slog.Default(). librdkafka's syslog levels map to slog
// levels as follows: 0-3 (emergency, alert, critical, error) → Error,
// 4 (warning) → Warn, 5 (notice) → Info, 6-7 (info, debug) → Debug:
// librdkafka's info lines (telemetry ids, connection details) are routine. Every
// record carries the attributes component=librdkafka, client (the librdkafka
// instance name, e.g. "rdkafka#producer-1"), and for log lines tag (the
// librdkafka facility, e.g. "FAIL") and syslog_level. Error events
// (kafka.Error) are logged as "librdkafka error: ..." with a code attribute:
// fatal errors and "all brokers down" at Error, broker transport failures at
// Debug (librdkafka logs each of them as an error line too), others at Warn.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithProducerConfig adds configuration applied to producers only, on top of
// the Config given to New. Use it for producer-only librdkafka properties so
// that consumers do not log "property is a producer property and will be
// ignored" warnings.
func WithProducerConfig(cfg Config) Option {
	return func(o *options) { o.producerCfg = cfg }
}

// WithConsumerConfig adds configuration applied to consumers (readers and
// group readers) only, on top of the Config given to New.
func WithConsumerConfig(cfg Config) Option {
	return func(o *options) { o.consumerCfg = cfg }
}

// WithCloseTimeout bounds how long Close waits for outstanding records to be
// delivered before it purges them (they then fail through their done
// callbacks). Default 5s.
func WithCloseTimeout(d time.Duration) Option {
	return func(o *options) { o.flushTimeout = d }
}

// Low-latency defaults. Each is applied only where the user's configuration
// does not set the key (nor one of its librdkafka aliases).
const (
	// DefaultLingerMs is linger.ms for producers. librdkafka's own default
	// (5) costs about 11 ms per two-hop round trip; 1 costs about 2.5 ms;
	// 0 about 0.4 ms on the embedded broker.
	DefaultLingerMs = 0
	// DefaultPartitioner is Java-compatible: murmur2 of the key, as Kafka's
	// Java default partitioner, so that every client agrees on the
	// partition of a key; records without a key get a random partition.
	// librdkafka's own default (consistent_random, CRC32) disagrees with
	// the Java client and the rest of the ecosystem.
	DefaultPartitioner = "murmur2_random"
	// DefaultMessageMaxBytes is the producer's message.max.bytes: the
	// largest record librdkafka accepts locally. librdkafka's own default
	// (1000000) refuses a 1 MiB value before it reaches the broker. The
	// broker's message.max.bytes / the topic's max.message.bytes remain
	// the real limit.
	DefaultMessageMaxBytes = 8 << 20
	// DefaultTopicMetadataPropagationMaxMs is topic.metadata.propagation.max.ms
	// for producers: how long a record for a topic the cluster does not list
	// waits for the topic to appear before it fails as unknown. The topics
	// the product creates have their partition leaders before CreateTopics
	// returns, so no wait for propagation is needed; librdkafka's default
	// (30 s) made a call to a missing topic hang that long.
	DefaultTopicMetadataPropagationMaxMs = 1000
	// DefaultFetchWaitMaxMs is fetch.wait.max.ms for consumers: how long
	// the broker may hold an empty fetch (librdkafka default 500). A
	// broker answers as soon as data arrives, so this does not add
	// latency; a smaller value makes idle consumers notice new
	// assignments and leader moves sooner.
	DefaultFetchWaitMaxMs = 100
	// DefaultFetchErrorBackoffMs is fetch.error.backoff.ms for consumers
	// (librdkafka default 500).
	DefaultFetchErrorBackoffMs = 50
	// DefaultAssignmentStrategy is partition.assignment.strategy for group
	// readers (only with the classic group protocol): a rebalance moves
	// only the partitions that change owner, so the others keep serving.
	DefaultAssignmentStrategy = "cooperative-sticky"
	// DefaultGroupMetadataRefreshMs is topic.metadata.refresh.interval.ms
	// for group readers: how often they refresh their topics' metadata,
	// and so how soon partitions added to a topic they consume are
	// noticed, assigned and read (librdkafka's default: 5 minutes). One
	// metadata request per group reader every 10 s.
	DefaultGroupMetadataRefreshMs = 10000
	// DefaultCloseTimeout bounds the flush done by Close.
	DefaultCloseTimeout = 5 * time.Second

	eventsChannelSize = 8192
)

// New returns a Client for the cluster that cfg points at. No connection is
// made until the first produce, admin call or reader.
//
// Defaults, applied only where cfg (with WithProducerConfig or
// WithConsumerConfig) does not set the key:
//
// All handles:
//   - socket.nagle.disable = true: no Nagle delay on small requests.
//   - allow.auto.create.topics = false: looking up or producing to a missing
//     topic never creates it (the product creates its topics explicitly,
//     and Partitions must be able to report an unknown topic).
//
// Producers:
//   - linger.ms = 0 (DefaultLingerMs): send at once; batching still happens
//     naturally while a request is in flight.
//   - partitioner = murmur2_random (DefaultPartitioner): Java-compatible key
//     partitioning. Required by the wire format; override at your own risk.
//   - message.max.bytes = 8 MiB (DefaultMessageMaxBytes).
//   - topic.metadata.propagation.max.ms = 1000
//     (DefaultTopicMetadataPropagationMaxMs): a record for a topic the
//     cluster does not have fails after 1 s with an error wrapping
//     kafkaclient.ErrUnknownTopic, not after librdkafka's 30 s.
//   - enable.idempotence = true on the acks=all producer (no duplicates or
//     reordering on retries). The acks=1 and acks=0 producers always have
//     enable.idempotence = false, which librdkafka requires.
//   - acks is always set per producer from the Acks given to Produce; an
//     "acks" or "request.required.acks" in cfg is overridden.
//   - go.delivery.report.fields = "none": delivery reports do not copy key
//     and value back into Go (the caller's Record is returned instead).
//   - go.events.channel.size = 8192 (confluent-kafka-go default: 1000000).
//
// Readers and group readers:
//   - fetch.wait.max.ms = 100 (DefaultFetchWaitMaxMs).
//   - fetch.error.backoff.ms = 50 (DefaultFetchErrorBackoffMs).
//   - auto.offset.reset = earliest: a group with no committed offset starts
//     at the oldest retained record, so requests written before the first
//     worker joined are served rather than skipped; a Reader whose
//     assigned offset fell out of retention resumes at the oldest record.
//   - Always (not overridable): enable.auto.commit = false,
//     enable.auto.offset.store = false, enable.partition.eof = false,
//     isolation.level from ReadCommitted (read_committed when true; when
//     false, cfg's isolation.level or read_uncommitted).
//   - Readers get a generated throw-away group.id (confluent-kafka-go
//     requires one); they never subscribe, join, or commit.
//   - Group readers: group.id from GroupConfig; group.protocol from
//     GroupConfig.Protocol when set; under the classic protocol
//     partition.assignment.strategy = cooperative-sticky
//     (DefaultAssignmentStrategy), session.timeout.ms = 6000
//     (DefaultSessionTimeoutMs) and heartbeat.interval.ms = 1000
//     (DefaultHeartbeatIntervalMs) unless cfg sets them; under
//     group.protocol=consumer the broker sets all three, and they are
//     removed from the configuration. The eager strategies (range,
//     roundrobin) work too. topic.metadata.refresh.interval.ms = 10000
//     (DefaultGroupMetadataRefreshMs): partitions added to a topic are
//     read within about 10 s, not librdkafka's 5 minutes.
//
// Logging (always): go.logs.channel.enable = true, and the logs are
// forwarded to the logger of WithLogger (default slog.Default()), unless
// cfg provides its own go.logs.channel, which the caller must then drain.
//
// The returned *Client is safe for concurrent use.
func New(cfg Config, opts ...Option) (*Client, error) {
	o := options{logger: slog.Default(), flushTimeout: DefaultCloseTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	base, err := normalize(cfg)
	if err != nil {
		return nil, err
	}
	pover, err := normalize(o.producerCfg)
	if err != nil {
		return nil, err
	}
	cover, err := normalize(o.consumerCfg)
	if err != nil {
		return nil, err
	}
	c := &Client{
		opts:    o,
		log:     o.logger.With("component", "librdkafka"),
		base:    base,
		prodCfg: merge(base, pover),
		consCfg: merge(base, cover),
		pending: make(map[*pending]struct{}),
	}
	c.closeCtx, c.closeStarted = context.WithCancel(context.Background())
	if _, ok := c.prodCfg["bootstrap.servers"]; !ok {
		if _, ok := c.prodCfg["metadata.broker.list"]; !ok {
			return nil, errors.New("confluent: bootstrap.servers is not set")
		}
	}
	return c, nil
}

// Client implements kafkaclient.Client on librdkafka. Create it with New.
// All its methods are safe for concurrent use. Readers and group readers it
// creates are separate librdkafka consumers with their own concurrency rules
// (see Reader and GroupReader).
type Client struct {
	opts    options
	log     *slog.Logger
	base    kafka.ConfigMap
	prodCfg kafka.ConfigMap
	consCfg kafka.ConfigMap

	// mu guards closed, producers, sized and retired. Produce holds it
	// shared while it enqueues, so that Close cannot destroy a producer
	// under it.
	mu        sync.RWMutex
	closed    bool
	producers [3]*producer           // indexed by kafkaclient.Acks
	sized     map[sizedKey]*producer // the producers for topics with a small max.message.bytes (topicBatch)
	retired   []*producer            // producers replaced after a fatal error

	// batches is what the client knows of the topics it produced to: a
	// *topicBatch by name (batchFor).
	batches    sync.Map
	batchCount atomic.Int64   // about how many topics batches holds
	lookups    sync.WaitGroup // batch lookups under way, waited for by Close
	noLookups  bool           // guarded by mu: Close started, no lookup starts
	// closeCtx ends when Close starts: lookups under way end with it.
	closeCtx     context.Context
	closeStarted context.CancelFunc

	// pendMu guards pending, outstanding (and each producer's) and queued.
	pendMu      sync.Mutex
	pending     map[*pending]struct{}
	outstanding counter // the records of every producer
	queued      counter // the records waiting for their topic's lookup (batchFor)

	downMu     sync.Mutex
	downLogged map[string]time.Time // when "all brokers down" was last logged, per librdkafka client

	closeOnce sync.Once
	closeErr  error
}

var _ kafkaclient.Client = (*Client)(nil)

// normalize converts a Config into a kafka.ConfigMap, turning number types
// that confluent-kafka-go does not accept into strings.
func normalize(cfg Config) (kafka.ConfigMap, error) {
	m := make(kafka.ConfigMap, len(cfg))
	for k, v := range cfg {
		if strings.HasPrefix(k, "go.") {
			m[k] = v // typed properties of the Go binding, passed as is
			continue
		}
		switch x := v.(type) {
		case string, bool, int:
			m[k] = x
		case int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
			m[k] = fmt.Sprint(x)
		case float32:
			m[k] = fmt.Sprint(x)
		case float64:
			if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
				m[k] = fmt.Sprintf("%d", int64(x))
			} else {
				m[k] = fmt.Sprint(x)
			}
		case time.Duration:
			return nil, fmt.Errorf("confluent: config %q: give a number of milliseconds, not a time.Duration", k)
		case fmt.Stringer:
			m[k] = x.String()
		case nil:
			return nil, fmt.Errorf("confluent: config %q has a nil value", k)
		default:
			return nil, fmt.Errorf("confluent: config %q: unsupported value type %T", k, v)
		}
	}
	return m, nil
}

func merge(base, over kafka.ConfigMap) kafka.ConfigMap {
	m := make(kafka.ConfigMap, len(base)+len(over)+16)
	for k, v := range base {
		m[k] = v
	}
	for k, v := range over {
		m[k] = v
	}
	return m
}

// setDefault sets keys[0] to v unless any of keys (a property and its
// aliases) is already set.
func setDefault(m kafka.ConfigMap, v any, keys ...string) {
	for _, k := range keys {
		if _, ok := m[k]; ok {
			return
		}
	}
	m[keys[0]] = v
}

// commonDefaults applies the defaults shared by producers and consumers.
func (c *Client) commonDefaults(m kafka.ConfigMap) {
	setDefault(m, true, "socket.nagle.disable")
	setDefault(m, false, "allow.auto.create.topics")
	m["go.logs.channel.enable"] = true
}

func (c *Client) producerConfig(acks kafkaclient.Acks) kafka.ConfigMap {
	m := merge(c.prodCfg, nil)
	c.commonDefaults(m)
	setDefault(m, DefaultLingerMs, "linger.ms", "queue.buffering.max.ms")
	setDefault(m, DefaultPartitioner, "partitioner")
	setDefault(m, DefaultMessageMaxBytes, "message.max.bytes")
	setDefault(m, DefaultTopicMetadataPropagationMaxMs, "topic.metadata.propagation.max.ms")
	setDefault(m, "none", "go.delivery.report.fields")
	setDefault(m, eventsChannelSize, "go.events.channel.size")
	setDefault(m, 1, "go.produce.channel.size") // unused: we never use ProduceChannel
	delete(m, "request.required.acks")
	m["acks"] = acks.String()
	m["go.delivery.reports"] = true
	if acks == kafkaclient.AcksAll {
		setDefault(m, true, "enable.idempotence")
	} else {
		m["enable.idempotence"] = false
	}
	return m
}

func (c *Client) consumerConfig(groupID string, readCommitted bool) kafka.ConfigMap {
	m := merge(c.consCfg, nil)
	c.commonDefaults(m)
	setDefault(m, DefaultFetchWaitMaxMs, "fetch.wait.max.ms")
	setDefault(m, DefaultFetchErrorBackoffMs, "fetch.error.backoff.ms")
	setDefault(m, "earliest", "auto.offset.reset")
	m["group.id"] = groupID
	m["enable.auto.commit"] = false
	m["enable.auto.offset.store"] = false
	m["enable.partition.eof"] = false
	m["go.events.channel.enable"] = false
	m["go.application.rebalance.enable"] = false
	if readCommitted {
		m["isolation.level"] = "read_committed"
	} else {
		setDefault(m, "read_uncommitted", "isolation.level")
	}
	return m
}

// forwardLogs drains a handle's log channel into slog until the handle is
// closed (confluent-kafka-go closes its own log channel then). It returns a
// channel closed when the forwarding ends. If the user supplied their own
// go.logs.channel, nothing is forwarded.
func (c *Client) forwardLogs(cfg kafka.ConfigMap, logs chan kafka.LogEvent) chan struct{} {
	done := make(chan struct{})
	if _, own := cfg["go.logs.channel"]; own || logs == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		for ev := range logs {
			c.logLine(ev)
		}
	}()
	return done
}

// slogLevel maps a syslog level (0 emergency .. 7 debug) to a slog level.
func slogLevel(syslog int) slog.Level {
	switch {
	case syslog <= 3:
		return slog.LevelError
	case syslog == 4:
		return slog.LevelWarn
	case syslog == 5:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}

func (c *Client) logLine(ev kafka.LogEvent) {
	lvl := slogLevel(ev.Level)
	ctx := context.Background()
	if !c.log.Enabled(ctx, lvl) {
		return
	}
	c.log.LogAttrs(ctx, lvl, ev.Message,
		slog.String("client", ev.Name),
		slog.String("tag", ev.Tag),
		slog.Int("syslog_level", ev.Level))
}

// logError reports an error event of librdkafka (kafka.Error). Fatal errors
// and "all brokers down" are logged at Error; broker transport failures at
// Debug, since librdkafka also logs each of them, with the same text, as an
// error-level log line (tag FAIL); the others at Warn.
func (c *Client) logError(client string, err kafka.Error) {
	lvl := slog.LevelWarn
	switch {
	case err.Code() == kafka.ErrAllBrokersDown:
		// librdkafka repeats it many times a second while the cluster is
		// unreachable: once per client and minute is enough.
		lvl = slog.LevelError
		now := time.Now()
		c.downMu.Lock()
		if last, ok := c.downLogged[client]; ok && now.Sub(last) < time.Minute {
			lvl = slog.LevelDebug
		} else {
			if c.downLogged == nil {
				c.downLogged = map[string]time.Time{}
			}
			c.downLogged[client] = now
		}
		c.downMu.Unlock()
	case err.IsFatal():
		lvl = slog.LevelError
	case err.Code() == kafka.ErrTransport:
		lvl = slog.LevelDebug
	}
	if !c.log.Enabled(context.Background(), lvl) {
		return
	}
	c.log.LogAttrs(context.Background(), lvl, "librdkafka error: "+err.Error(),
		slog.String("client", client),
		slog.String("code", err.Code().String()),
		slog.Bool("fatal", err.IsFatal()))
}

// timeoutMs converts the time left before ctx's deadline into milliseconds
// for librdkafka calls that take a timeout, defaulting to def.
func timeoutMs(ctx context.Context, def time.Duration) int {
	d := def
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	if d <= 0 {
		return 1
	}
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	if ms > math.MaxInt32 {
		ms = math.MaxInt32
	}
	return int(ms)
}

// Close flushes outstanding records for at most the close timeout (default
// 5s, WithCloseTimeout), purges what is still undelivered (those records fail
// through their done callbacks with librdkafka's purge errors), and closes
// every producer. Readers and group readers created from c must be closed
// before. Calling Close again returns the first call's result; any call made
// after Close fails with kafkaclient.ErrClosed.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Client) close() error {
	// The records waiting for their topic's first lookup are produced
	// (or fail) before the producers are flushed.
	c.mu.Lock()
	c.noLookups = true
	c.mu.Unlock()
	c.closeStarted() // a lookup, or one waiting for a topic's records, stops
	c.lookups.Wait()

	c.mu.Lock()
	c.closed = true
	prods := c.allProducers()
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), c.opts.flushTimeout)
	defer cancel()
	flushErr := c.flush(ctx, prods)
	for _, p := range prods {
		p.users.Wait() // admin calls and flush helpers still using p
	}
	if flushErr != nil {
		for _, p := range prods {
			_ = p.p.Purge(kafka.PurgeQueue | kafka.PurgeInFlight | kafka.PurgeNonBlocking)
		}
		// Purged records are reported by the drain goroutines.
		pctx, pcancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.wait(pctx, &c.outstanding)
		pcancel()
	}
	for _, p := range prods {
		p.close()
	}
	// Whatever librdkafka did not report (it cannot after it is destroyed)
	// fails now, so that every done is called exactly once.
	c.pendMu.Lock()
	left := make([]*pending, 0, len(c.pending))
	for pd := range c.pending {
		left = append(left, pd)
	}
	c.pendMu.Unlock()
	for _, pd := range left {
		c.finish(pd, kafkaclient.ErrClosed)
	}
	if flushErr != nil {
		return fmt.Errorf("confluent: close: records still undelivered after %v were purged", c.opts.flushTimeout)
	}
	return nil
}
