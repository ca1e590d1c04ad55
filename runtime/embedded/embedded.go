// Package embedded runs an in-process, Kafka-protocol compatible broker for
// development and tests. It wraps kfake from the franz-go project: a single
// broker holding everything in memory, listening on 127.0.0.1 only, quick to
// start, speaking the complete client protocol (produce, fetch, metadata,
// admin, consumer groups, idempotent and transactional producers).
//
// It is a development convenience. The real target is Apache Kafka: nothing
// is persisted, nothing is replicated, and behaviour under faults or load is
// not Kafka's. Point production deployments at a real cluster.
//
// Defaults (each can be changed with an option):
//
//   - listen address: 127.0.0.1, an ephemeral port (WithPort for a fixed one);
//   - one broker (Addr is the whole bootstrap.servers string);
//   - automatic topic creation: off (the product creates its topics
//     explicitly; WithAutoTopicCreation turns it on);
//   - partitions of a topic created without a count (CreateTopics with -1
//     partitions, auto-created topics, seed topics with 0): 3
//     (WithDefaultPartitions);
//   - message.max.bytes: 8 MiB (DefaultMaxMessageBytes), so records of
//     several MiB are accepted; kfake's own default is Kafka's 1048588 bytes,
//     which refuses a 1 MiB value once the batch framing is added
//     (WithMaxMessageBytes);
//   - log.segment.bytes: 1 MiB, so that no partition's in-memory log is
//     grown in one buffer of up to 128 MiB by copying, as with kfake's 100
//     MiB default (WithBrokerConfig);
//   - logs: none (WithLogger routes them to log/slog).
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// DefaultMaxMessageBytes is the broker's default message.max.bytes: the
// largest record batch a produce request may carry.
const DefaultMaxMessageBytes = 8 << 20

// segmentBytes is the broker's log.segment.bytes: the broker keeps each
// partition's log in memory in segments this large (kfake's default, 100
// MiB, grows each active segment's buffer by doubling, copying and zeroing up
// to 128 MiB at a time). WithBrokerConfig may set another.
const segmentBytes = 1 << 20

// DefaultPartitions is the default partition count of topics created without
// an explicit count.
const DefaultPartitions = 3

// Option configures Start.
type Option func(*config)

type config struct {
	port            int
	partitions      int
	autoCreate      bool
	maxMessageBytes int
	logger          *slog.Logger
	seeds           []seed
	brokerConfigs   map[string]string
}

type seed struct {
	partitions int32
	topics     []string
}

// WithPort listens on the given fixed port of 127.0.0.1 instead of an
// ephemeral one. Start fails if the port is taken.
func WithPort(port int) Option { return func(c *config) { c.port = port } }

// WithDefaultPartitions sets the partition count of topics created without an
// explicit one (default DefaultPartitions).
func WithDefaultPartitions(n int) Option { return func(c *config) { c.partitions = n } }

// WithAutoTopicCreation lets metadata requests create missing topics, as a
// broker with auto.create.topics.enable=true does. Off by default.
func WithAutoTopicCreation() Option { return func(c *config) { c.autoCreate = true } }

// WithSeedTopics creates topics at start, each with the given partition count
// (0 or less: the default partition count). May be given several times.
func WithSeedTopics(partitions int32, topics ...string) Option {
	return func(c *config) {
		c.seeds = append(c.seeds, seed{partitions, append([]string(nil), topics...)})
	}
}

// WithMaxMessageBytes sets the broker's message.max.bytes (default
// DefaultMaxMessageBytes). Topics created with their own max.message.bytes
// use that instead.
func WithMaxMessageBytes(n int) Option { return func(c *config) { c.maxMessageBytes = n } }

// WithBrokerConfig sets further broker-level configuration entries that kfake
// understands (for example "log.retention.ms"). Applied after the options
// above, so it can override message.max.bytes and log.segment.bytes too.
func WithBrokerConfig(key, value string) Option {
	return func(c *config) {
		if c.brokerConfigs == nil {
			c.brokerConfigs = map[string]string{}
		}
		c.brokerConfigs[key] = value
	}
}

// WithLogger routes the broker's logs to l. kfake's error and warning lines
// map to slog's Error and Warn; its per-request info lines and debug lines
// both map to Debug, since they describe every request. Without this option
// the broker logs nothing.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// Broker is a running embedded broker. Its methods are safe for concurrent
// use.
type Broker struct {
	cluster *kfake.Cluster
	addr    string

	once sync.Once
}

// Start starts a broker and returns once it accepts connections.
func Start(opts ...Option) (*Broker, error) {
	cfg := config{partitions: DefaultPartitions, maxMessageBytes: DefaultMaxMessageBytes}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.partitions <= 0 {
		return nil, fmt.Errorf("embedded: default partitions must be positive, got %d", cfg.partitions)
	}
	bcfg := map[string]string{"message.max.bytes": strconv.Itoa(cfg.maxMessageBytes), "log.segment.bytes": strconv.Itoa(segmentBytes)}
	for k, v := range cfg.brokerConfigs {
		bcfg[k] = v
	}
	kopts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(cfg.partitions),
		kfake.BrokerConfigs(bcfg),
	}
	if cfg.port != 0 {
		kopts = append(kopts, kfake.Ports(cfg.port))
	}
	if cfg.autoCreate {
		kopts = append(kopts, kfake.AllowAutoTopicCreation())
	}
	for _, s := range cfg.seeds {
		kopts = append(kopts, kfake.SeedTopics(s.partitions, s.topics...))
	}
	if cfg.logger != nil {
		kopts = append(kopts, kfake.WithLogger(slogAdapter{cfg.logger}))
	}
	c, err := kfake.NewCluster(kopts...)
	if err != nil {
		return nil, fmt.Errorf("embedded: start broker: %w", err)
	}
	addrs := c.ListenAddrs()
	if len(addrs) != 1 {
		c.Close()
		return nil, fmt.Errorf("embedded: expected one listener, got %v", addrs)
	}
	return &Broker{cluster: c, addr: addrs[0]}, nil
}

// Addr returns the broker's host:port, usable as bootstrap.servers.
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker and drops its data. Clients still connected see
// their connections fail. Calling Close again does nothing.
func (b *Broker) Close() error {
	b.once.Do(b.cluster.Close)
	return nil
}

// slogAdapter implements kfake.Logger on a slog.Logger.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Logf(level kfake.LogLevel, msg string, args ...any) {
	var sl slog.Level
	switch level {
	case kfake.LogLevelError:
		sl = slog.LevelError
	case kfake.LogLevelWarn:
		sl = slog.LevelWarn
	case kfake.LogLevelNone:
		return
	default:
		sl = slog.LevelDebug
	}
	ctx := context.Background()
	if !a.l.Enabled(ctx, sl) {
		return
	}
	a.l.Log(ctx, sl, fmt.Sprintf(msg, args...), "component", "kfake")
}
