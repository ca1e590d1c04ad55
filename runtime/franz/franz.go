// Package franz implements kafkaclient.Client on franz-go
// (github.com/twmb/franz-go/pkg/kgo), a Kafka client written in pure Go.
// It is the alternative to package confluent (librdkafka through cgo): no C
// compiler, static binaries, cross-compilation, and lower latency for RPC;
// a program that imports runtime, runtime/franz and runtime/embedded builds
// with CGO_ENABLED=0.
//
// # Clients
//
// One Client holds one kgo client per acknowledgement level actually used
// (acks and idempotence are client-level settings in kgo, not per-record
// ones), created on first use and shared by every caller; topic admin and
// offset lookups reuse the acks=all client's connections through kadm. Each
// Reader and each GroupReader is a kgo client of its own, since a kgo client
// consumes one assignment (direct partitions or one group membership).
//
// # Rebalance callbacks
//
// kgo runs OnPartitionsAssigned, OnPartitionsRevoked and OnPartitionsLost on
// its own group-management goroutines. The seam promises that
// GroupConfig.OnAssigned and OnRevoked run inside Poll, so that they never
// run concurrently with the caller's handling of a batch. GroupReader hands
// every kgo callback over to the goroutine that calls Poll: the kgo callback
// queues the event, interrupts a Poll that is waiting for records, and blocks
// until Poll (or Close) has run the user's callback. The rebalance therefore
// cannot proceed, and revoked partitions cannot move to another member,
// until OnRevoked has returned, including any synchronous Commit it made.
// kgo's BlockRebalanceOnPoll was not used: with it the callbacks still run
// on kgo's goroutines, concurrently with a caller that is between Polls
// after an empty (cancelled) Poll, and Close would race them.
//
// # Latency defaults
//
// Measured on the embedded broker (kfake) on a 2-core machine shared with
// other work, one call in flight unless said otherwise, acks=all with
// idempotence, 64-byte values; BenchmarkTwoHopFloor is produce → read →
// produce → read with two Readers:
//
//   - No linger while fewer than 32 records are on their way, 200 µs from
//     32 on (WithLoadLinger; kgo default 10ms always). Two-hop p50
//     (BenchmarkDefaults, 1000 round trips each, before the load linger):
//     0 → 0.20 ms, 1ms → 2.8 ms, 10ms → 21.6 ms.
//     Without a linger, records still batch while a produce request is in
//     flight (up to 5 per broker with idempotence): with 256
//     calls in flight the two-hop loop carries about 86,000 calls/s at a
//     2.4 ms p50, against 38,600 calls/s at 5.8 ms for librdkafka at
//     linger.ms=0 in the same run (BenchmarkTwoHopLoad).
//   - FetchMaxWait 100ms (kgo default 5s). Data ends a broker's wait at
//     once, so records are not delayed either way (two-hop p50 0.20 ms vs
//     0.25 ms at 5s, within noise). The wait bounds something else: kgo adds
//     a partition assigned to a Reader to its fetches only when the fetch in
//     flight to that broker returns, which an idle broker holds for
//     FetchMaxWait. Assign to first record, p50 of 10
//     (BenchmarkAssignWhileIdle): 100 ms at 100ms, 500 ms at 500ms, 5.0 s at
//     5s. The cost is one empty fetch per idle reader and broker every
//     100ms. librdkafka's fetch.wait.max.ms is set to the same 100 by
//     package confluent.
//   - Compression none (kgo default snappy): tiny RPC records do not
//     compress, snappy only costs CPU (two-hop p50 0.24 ms vs 0.20 ms), and
//     none is librdkafka's default, which every consumer reads.
//   - Record batches bounded per topic by the topic's max.message.bytes,
//     up to 8 MiB (kgo default 1000012 for all topics, which refuses a
//     1 MiB record locally): a batch over the topic's limit is refused
//     whole, every small record in it "too large".
//   - Delivery timeout 2 minutes (kgo default: unbounded), as the Java
//     client's delivery.timeout.ms, so that a record for an unreachable
//     cluster fails through done instead of never (WithDeliveryTimeout).
//
// Reader.Poll and GroupReader.Poll block in pure Go (no cgo call holding an
// OS thread and its P), so a goroutine made runnable just before Poll, such
// as a handler, is not delayed by it; package confluent yields before its
// blocking librdkafka poll for that reason.
//
// # Logging
//
// kgo's log lines go to the log/slog logger of WithLogger (default
// slog.Default()), never to stderr; see WithLogger for the level mapping.
package franz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Defaults applied by New. Each can be overridden with a kgo.Opt given to
// WithOpts, WithProducerOpts or WithConsumerOpts, since those are applied
// after the defaults.
const (
	// DefaultLinger is the producers' ProducerLinger. kgo's own default
	// (10ms) costs about 21.6 ms per two-hop round trip; 0 about 0.2 ms.
	DefaultLinger time.Duration = 0
	// DefaultLoadLinger is WithLoadLinger's default: how long a producer
	// lingers while it has many records on their way.
	DefaultLoadLinger = 200 * time.Microsecond
	// DefaultProducerMetadataMinAge is the producers' MetadataMinAge: how
	// often, at most, a producer refreshes metadata when a partition's
	// leader or topic is in question. kgo's default (5 s) made a record
	// for a deleted topic fail only after about 15 s; at 250 ms it fails
	// after about one second, with an error wrapping
	// kafkaclient.ErrUnknownTopic.
	DefaultProducerMetadataMinAge = 250 * time.Millisecond
	// DefaultFetchMaxWait is the consumers' FetchMaxWait: how long the
	// broker may hold a fetch that has no data (kgo default 5s). Data
	// ends the wait at once, so it adds no latency to records; it bounds
	// how long a newly assigned partition waits behind an idle fetch.
	DefaultFetchMaxWait = 100 * time.Millisecond
	// DefaultMaxRecordBytes is the producers' largest ProducerBatchMaxBytes:
	// the largest record batch (and so record) kgo accepts locally, for a
	// topic whose max.message.bytes is at least this.
	DefaultMaxRecordBytes = 8 << 20
	// DefaultDeliveryTimeout is the delivery timeout of WithDeliveryTimeout.
	DefaultDeliveryTimeout = 2 * time.Minute
	// DefaultCloseTimeout bounds the flush done by Client.Close.
	DefaultCloseTimeout = 5 * time.Second
)

// Option configures New.
type Option func(*options)

type options struct {
	seeds        []string
	logger       *slog.Logger
	common       []kgo.Opt
	producer     []kgo.Opt
	consumer     []kgo.Opt
	closeTimeout time.Duration
	delivery     time.Duration
	loadLinger   time.Duration
}

// WithSeedBrokers sets the brokers to bootstrap from, as host:port; each
// argument may also be a comma-separated list (a bootstrap.servers string).
// Required. May be given several times; the lists add up.
func WithSeedBrokers(brokers ...string) Option {
	return func(o *options) {
		for _, b := range brokers {
			for _, s := range strings.Split(b, ",") {
				if s = strings.TrimSpace(s); s != "" {
					o.seeds = append(o.seeds, s)
				}
			}
		}
	}
}

// WithLogger sets the logger that receives kgo's log lines. Default
// slog.Default(). kgo's levels map one to one: Error → Error, Warn → Warn,
// Info → Info (lifecycle events: group joins, assignments; kgo's
// "flushing" line goes to Debug, WithLoadLinger flushing often),
// Debug → Debug; kgo asks the logger's handler which levels are enabled, so
// lines below the handler's level cost nothing. Every record carries the
// attributes component=franz-go and client (which kgo client of this
// Client: "producer-acks-all", "producer-acks-1", "producer-acks-0",
// "reader-N", "group-N"), then kgo's own key-value pairs.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithLoadLinger sets how long a producer lingers (kgo.ProducerLinger)
// while it has many records on their way: from loadLingerRecords (32)
// records produced and not yet answered by Kafka, records wait up to d for
// others to join their produce request; below that, a producer does not
// linger (a Flush runs on it, which stops kgo's lingering). A loaded
// process sends fewer, fuller produce requests: on the embedded broker,
// the runtime's gateway at 16 calls in flight did 31% more calls/s at a 28%
// lower p50 and used 15% less CPU per call at 256, a ClientConn 21% more
// calls/s at 256; on Apache Kafka a ClientConn 20% more at 256. A call
// alone waits for the flush's goroutine to be scheduled: on Apache Kafka
// its p50 was 5.5% higher (ClientConn), 13% for the two-hop floor; within
// noise on the embedded broker (BENCHMARKS.md, "What bounds the ClientConn
// at 256 in flight"). Default DefaultLoadLinger (200 µs); 0 never lingers,
// as kgo.ProducerLinger(0), for the lowest latency at one call in flight. A kgo.ProducerLinger given to
// WithOpts or WithProducerOpts replaces it: the producers then linger as
// that says, loaded or not. Transactional producers never linger.
func WithLoadLinger(d time.Duration) Option {
	return func(o *options) { o.loadLinger = max(d, 0) }
}

// WithOpts passes kgo options through to every kgo client New's Client
// creates (producers, readers, group readers): TLS (kgo.DialTLSConfig),
// SASL (kgo.SASL), kgo.ClientID, timeouts, hooks, and anything else kgo
// offers. They are applied after this package's defaults, so they override
// them. The Client sets itself, after every option, what the seam depends
// on: acks and idempotence per acks level, the isolation level, and for
// group readers the group, topics, auto-commit (off), start offset and
// rebalance callbacks. Options that turn a client into something else must
// not be given: kgo.ConsumerGroup, kgo.ConsumeTopics, kgo.ConsumePartitions,
// kgo.ConsumeRegex, kgo.TransactionalID, kgo.ManualFlushing. Produce hooks
// must not keep a *kgo.Record past their call (see WithProducerOpts).
func WithOpts(opts ...kgo.Opt) Option {
	return func(o *options) { o.common = append(o.common, opts...) }
}

// WithProducerOpts passes kgo options to the producer clients only, after
// WithOpts (for example kgo.ProducerLinger, kgo.ProducerBatchCompression,
// kgo.MaxBufferedRecords, kgo.RecordDeliveryTimeout,
// kgo.RecordPartitioner at your own risk: the wire format needs Kafka's
// Java-compatible murmur2 key partitioning). A hook given with
// kgo.WithHooks must not keep a *kgo.Record past its call: the client
// reuses a record once its delivery was reported.
func WithProducerOpts(opts ...kgo.Opt) Option {
	return func(o *options) { o.producer = append(o.producer, opts...) }
}

// WithConsumerOpts passes kgo options to readers and group readers only,
// after WithOpts (for example kgo.FetchMaxWait, kgo.FetchMaxBytes,
// kgo.HeartbeatInterval, kgo.SessionTimeout, kgo.Balancers).
func WithConsumerOpts(opts ...kgo.Opt) Option {
	return func(o *options) { o.consumer = append(o.consumer, opts...) }
}

// WithDeliveryTimeout bounds how long a produced record may wait for its
// delivery before it fails through done (the Java client's
// delivery.timeout.ms, librdkafka's message.timeout.ms); 0 waits forever.
// Default DefaultDeliveryTimeout (2 minutes). The timeout also fails a
// record whose request was sent but not answered (kgo's
// AllowIdempotentProduceCancellation is set on the idempotent acks=all
// producer): the broker may have stored it, and a caller that produces it
// again may write it twice. It is measured from the call to Produce, not
// from the record's Timestamp (unlike kgo.RecordDeliveryTimeout, which
// fails at once a record stamped longer ago than the timeout).
func WithDeliveryTimeout(d time.Duration) Option {
	return func(o *options) { o.delivery = d }
}

// WithCloseTimeout bounds how long Client.Close waits for outstanding
// records to be delivered before it fails them (through their done
// callbacks, with kgo.ErrClientClosed). Default DefaultCloseTimeout (5s).
func WithCloseTimeout(d time.Duration) Option {
	return func(o *options) { o.closeTimeout = d }
}

// New returns a Client for the cluster named by WithSeedBrokers. No
// connection is made until the first produce, admin call or reader.
//
// Defaults, each overridable through WithOpts, WithProducerOpts or
// WithConsumerOpts (see the package documentation for the figures):
//
// Producers (one kgo client per acks level used):
//   - ProducerLinger DefaultLoadLinger (200 µs), applied only while 32 or
//     more records are on their way (WithLoadLinger); DefaultLinger (0)
//     for transactional producers;
//   - MetadataMinAge 250 ms for producers (DefaultProducerMetadataMinAge);
//   - Java-compatible partitioning: a record with Partition set goes there;
//     otherwise a keyed record goes to murmur2(key) mod partitions (Kafka's
//     Java default partitioner), an unkeyed one to a random partition (not
//     sticky: as the confluent client's murmur2_random, and so that
//     producing goroutines do not queue on kgo's partitioning lock);
//   - ProducerBatchCompression none;
//   - ProducerBatchMaxBytesFn: a topic's record batches (and so its
//     records) are bounded by the topic's max.message.bytes, as it was
//     when the producer learnt the partition (looked up again at most once
//     a minute), at most 8 MiB
//     (DefaultMaxRecordBytes); FallbackMaxBatchBytes when it cannot be
//     looked up. Kafka refuses a whole batch over the topic's limit: one
//     bound of 8 MiB made a burst of small records to a topic with the
//     broker's default limit fail, every record "too large";
//   - delivery timeout 2 minutes (DefaultDeliveryTimeout, WithDeliveryTimeout);
//   - acks=all is idempotent (kgo's default); acks=1 and acks=0 have
//     kgo.DisableIdempotentWrite, which kgo requires for them. Acks is
//     always set from the Acks given to Produce.
//
// Readers and group readers:
//   - FetchMaxWait 100ms (DefaultFetchMaxWait);
//   - isolation level from ReaderConfig/GroupConfig.ReadCommitted (never
//     overridable);
//   - group readers: cooperative-sticky balancing (kgo's default, as the
//     confluent client's), auto-commit disabled (never overridable), start
//     offset of a partition without a committed offset: earliest, or latest
//     with GroupConfig.StartAtLatest (never overridable); kgo's reset policy
//     for an offset out of range (a committed offset below the log start
//     resumes at the log start); metadata refreshed every 10 s
//     (DefaultGroupMetadataMaxAge, kgo's 5 minutes otherwise), so that
//     partitions added to a topic are read within about 10 s.
//
// The returned *Client is safe for concurrent use.
func New(opts ...Option) (*Client, error) {
	o := options{logger: slog.Default(), closeTimeout: DefaultCloseTimeout, delivery: DefaultDeliveryTimeout, loadLinger: DefaultLoadLinger}
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.seeds) == 0 {
		return nil, errors.New("franz: no seed brokers: use WithSeedBrokers")
	}
	c := &Client{opts: o, log: o.logger.With("component", "franz-go"), deadlines: newDeadlines(o.delivery)}
	c.batchLimits.c = c
	if err := kgo.ValidateOpts(c.producerOpts(kafkaclient.AcksAll, false)...); err != nil {
		return nil, fmt.Errorf("franz: producer options: %w", err)
	}
	if err := kgo.ValidateOpts(c.consumerOpts("validate", false, nil)...); err != nil {
		return nil, fmt.Errorf("franz: consumer options: %w", err)
	}
	return c, nil
}

// Client implements kafkaclient.Client on franz-go. Create it with New. All
// its methods are safe for concurrent use. Readers and group readers it
// creates are separate kgo clients with their own concurrency rules (see
// Reader and GroupReader).
type Client struct {
	opts options
	log  *slog.Logger

	// mu guards closed and producers. Produce holds it shared while it
	// hands the record to kgo, so that Close cannot close a producer
	// under it.
	mu        sync.RWMutex
	closed    bool
	producers [3]*kgo.Client // indexed by kafkaclient.Acks

	pending tracker // records of Produce whose done has not returned yet
	// loadLinger[acks] is set when that producer lingers only under load
	// (WithLoadLinger), unlinger[acks] then keeps it from lingering
	// otherwise. Set with mu held exclusively, read with mu held.
	loadLinger [3]bool
	unlinger   [3]unlinger
	deadlines  *deadlines // delivery timeout contexts

	seq         atomic.Uint64 // numbers readers and group readers, for logs
	forgetting  sync.Map      // forgetKey: a topic being purged from a producer (forgetTopic)
	batchLimits batchLimits   // each topic's record batch bound, for every producer
	closeOnce   sync.Once
	closeErr    error
}

var _ kafkaclient.Client = (*Client)(nil)

// clientOpts returns the options shared by every kgo client: seeds, the
// logger (tagged with role), and the user's common options.
func (o *options) clientOpts(log *slog.Logger, extra ...kgo.Opt) []kgo.Opt {
	out := []kgo.Opt{kgo.SeedBrokers(o.seeds...)}
	if log != nil {
		out = append(out, kgo.WithLogger(newLogger(log)))
	}
	out = append(out, extra...)
	return append(out, o.common...)
}

// producerOpts returns the options of the producer client for acks; txn
// leaves out what kgo refuses with a transactional id.
func (c *Client) producerOpts(acks kafkaclient.Acks, txn bool) []kgo.Opt {
	role := "producer-acks-" + acks.String()
	opts := c.opts.clientOpts(c.log.With("client", role),
		kgo.ProducerLinger(c.lingerOf(txn)),
		kgo.RecordPartitioner(javaPartitioner{}),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.ProducerBatchMaxBytesFn(c.batchLimits.forTopic),
		// A record for a topic that was deleted fails after about a second
		// instead of 15 s: each UNKNOWN_TOPIC_OR_PARTITION answer asks for
		// metadata, at most this often (kgo's default 5 s).
		kgo.MetadataMinAge(DefaultProducerMetadataMinAge),
	)
	opts = append(opts, c.opts.producer...)
	switch acks {
	case kafkaclient.AcksLeader:
		opts = append(opts, kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	case kafkaclient.AcksNone:
		opts = append(opts, kgo.RequiredAcks(kgo.NoAck()), kgo.DisableIdempotentWrite())
	default:
		opts = append(opts, kgo.RequiredAcks(kgo.AllISRAcks()))
		if !txn && c.opts.delivery > 0 {
			opts = append(opts, kgo.AllowIdempotentProduceCancellation())
		}
	}
	return opts
}

func (c *Client) consumerOpts(role string, readCommitted bool, defaults []kgo.Opt, extra ...kgo.Opt) []kgo.Opt {
	opts := c.opts.clientOpts(c.log.With("client", role), append([]kgo.Opt{kgo.FetchMaxWait(DefaultFetchMaxWait)}, defaults...)...)
	opts = append(opts, c.opts.consumer...)
	if readCommitted {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	} else {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
	}
	return append(opts, extra...)
}

// newConsumerClient creates the kgo client of a reader or group reader,
// unless c is closed.
func (c *Client) newConsumerClient(opts []kgo.Opt) (*kgo.Client, error) {
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if closed {
		return nil, kafkaclient.ErrClosed
	}
	kc, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("franz: new consumer: %w", err)
	}
	return kc, nil
}

// Close flushes outstanding records for at most the close timeout (default
// 5s, WithCloseTimeout), then closes every producer client: records still
// undelivered fail through their done callbacks with kgo.ErrClientClosed.
// Readers and group readers created from c must be closed before. Calling
// Close again returns the first call's result; any call made after Close
// fails with kafkaclient.ErrClosed.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Client) close() error {
	c.mu.Lock()
	c.closed = true
	prods := c.liveProducers()
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), c.opts.closeTimeout)
	flushErr := c.flush(ctx, prods)
	cancel()
	for _, p := range prods {
		p.Close() // fails what is still buffered, calling its promises
	}
	c.batchLimits.close()
	// kgo calls every promise before its Close returns; this only guards
	// against a done callback that is still running.
	wctx, wcancel := context.WithTimeout(context.Background(), time.Second)
	_ = c.pending.wait(wctx)
	wcancel()
	if flushErr != nil {
		return fmt.Errorf("franz: close: records still undelivered after %v were failed", c.opts.closeTimeout)
	}
	return nil
}

// liveProducers returns the producers created so far. c.mu must be held.
func (c *Client) liveProducers() []*kgo.Client {
	var out []*kgo.Client
	for _, p := range c.producers {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// lingerOf returns the ProducerLinger of a producer: the load linger, or
// for a transactional one DefaultLinger.
func (c *Client) lingerOf(txn bool) time.Duration {
	if txn || c.opts.loadLinger <= 0 {
		return DefaultLinger
	}
	return c.opts.loadLinger
}
