package confluent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// defaultAdminTimeout bounds admin and metadata calls whose ctx has no
// deadline.
const defaultAdminTimeout = 30 * time.Second

// withAdmin runs fn with the acks=all producer (created if needed), whose
// connections the admin and metadata requests share.
func (c *Client) withAdmin(fn func(p *producer) error) error {
	p, err := c.useProducer(kafkaclient.AcksAll, 0)
	if err != nil {
		return err
	}
	defer p.users.Done()
	return fn(p)
}

// adminCtx gives ctx a deadline if it has none.
func adminCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultAdminTimeout)
}

// CreateTopics creates the topics that do not exist yet; a topic that
// already exists is not an error (its partition count and configuration are
// left as they are). Partitions <= 0 and ReplicationFactor <= 0 use the
// broker's defaults (-1, Kafka 2.4 and later); when the broker refuses a
// default replication factor, the topic is created again with 1. Config
// entries are passed through as topic configuration. Without a deadline in
// ctx the call is bounded by 30s. Safe for concurrent use.
// It is one function because the retry with replication factor 1 needs the
// first attempt's per-topic results.
func (c *Client) CreateTopics(ctx context.Context, topics []kafkaclient.TopicSpec) error {
	if len(topics) == 0 {
		return nil
	}
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	return c.withAdmin(func(p *producer) error {
		adm, err := p.adminClient()
		if err != nil {
			return fmt.Errorf("confluent: admin client: %w", err)
		}
		specs := make([]kafka.TopicSpecification, len(topics))
		for i, t := range topics {
			specs[i] = kafka.TopicSpecification{
				Topic:             t.Name,
				NumPartitions:     int(t.Partitions),
				ReplicationFactor: int(t.ReplicationFactor),
				Config:            t.Config,
			}
			if specs[i].NumPartitions <= 0 {
				specs[i].NumPartitions = -1
			}
			if specs[i].ReplicationFactor <= 0 {
				specs[i].ReplicationFactor = -1
			}
		}
		var errs []error
		for attempt := 0; attempt < 2 && len(specs) > 0; attempt++ {
			dl, _ := ctx.Deadline()
			res, err := adm.CreateTopics(ctx, specs, kafka.SetAdminOperationTimeout(time.Until(dl)))
			if err != nil {
				return fmt.Errorf("confluent: create topics: %w", err)
			}
			var retry []kafka.TopicSpecification
			for _, r := range res {
				switch r.Error.Code() {
				case kafka.ErrNoError, kafka.ErrTopicAlreadyExists:
					continue
				case kafka.ErrInvalidReplicationFactor, kafka.ErrUnsupportedFeature, kafka.ErrInvalidRequest:
					if i := slices.IndexFunc(specs, func(s kafka.TopicSpecification) bool { return s.Topic == r.Topic }); i >= 0 && specs[i].ReplicationFactor == -1 && attempt == 0 {
						s := specs[i]
						s.ReplicationFactor = 1
						retry = append(retry, s)
						continue
					}
				}
				errs = append(errs, fmt.Errorf("confluent: create topic %s: %w", r.Topic, r.Error))
			}
			specs = retry
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		// Apache Kafka answers CreateTopics once the controller has
		// accepted the topics, before the brokers lead their partitions:
		// a ListOffsets, produce or fetch at once fails with
		// NOT_LEADER_OR_FOLLOWER or UNKNOWN_TOPIC_OR_PARTITION. Wait until
		// the metadata shows a leader for every partition.
		for _, t := range topics {
			if err := waitLeaders(ctx, p, t.Name, 1); err != nil {
				return err
			}
		}
		return nil
	})
}

// waitLeaders polls the metadata of topic until it shows at least atLeast
// partitions (and at least one), each with a leader that answers
// ListOffsets, or ctx ends.
func waitLeaders(ctx context.Context, p *producer, topic string, atLeast int) error {
	backoff := 10 * time.Millisecond
	var last string
	for {
		md, err := p.p.GetMetadata(&topic, false, timeoutMs(ctx, defaultAdminTimeout))
		if err == nil {
			tm, ok := md.Topics[topic]
			switch {
			case !ok:
				last = "topic not in metadata"
			case tm.Error.Code() != kafka.ErrNoError:
				last = tm.Error.String()
			case len(tm.Partitions) < max(atLeast, 1):
				last = fmt.Sprintf("%d partitions, not %d yet", len(tm.Partitions), max(atLeast, 1))
			default:
				ready := true
				for _, pm := range tm.Partitions {
					if pm.Leader < 0 || pm.Error.Code() != kafka.ErrNoError {
						ready = false
						last = fmt.Sprintf("partition %d has no leader (%v)", pm.ID, pm.Error)
						break
					}
				}
				if ready {
					// Metadata can name a leader before that broker leads
					// the partition; a produce then fails with
					// NOT_LEADER_OR_FOLLOWER, and librdkafka's idempotent
					// producer recovering from that first failure has been
					// seen (Apache Kafka 4.4, a topic just created) to lose
					// records it reported as duplicates. ListOffsets is
					// answered by the leader only: once every partition
					// answers, the topic takes records.
					for _, pm := range tm.Partitions {
						if _, _, err := p.p.QueryWatermarkOffsets(topic, pm.ID, timeoutMs(ctx, defaultAdminTimeout)); err != nil {
							ready = false
							last = fmt.Sprintf("partition %d does not answer ListOffsets yet (%v)", pm.ID, err)
							break
						}
					}
				}
				if ready {
					return nil
				}
			}
		} else {
			last = err.Error()
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("confluent: topic %s created but not ready: %w (last: %s)", topic, ctx.Err(), last)
		case <-t.C:
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

// CreatePartitions raises the partition count of topic to total with the
// AdminClient's CreatePartitions: a topic that has total partitions or more
// already is left as it is, and that is not an error (nor is losing a race
// with another client raising it as far). A topic that does not exist is an
// error wrapping kafkaclient.ErrUnknownTopic. It returns once the metadata
// shows total partitions, each with a leader that answers ListOffsets.
// Without a deadline in ctx the call is bounded by 30s. Safe for concurrent
// use.
func (c *Client) CreatePartitions(ctx context.Context, topic string, total int32) error {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	have, err := c.Partitions(ctx, topic)
	if err != nil {
		return err
	}
	if int32(len(have)) >= total {
		return nil
	}
	return c.withAdmin(func(p *producer) error {
		adm, err := p.adminClient()
		if err != nil {
			return fmt.Errorf("confluent: admin client: %w", err)
		}
		dl, _ := ctx.Deadline()
		res, err := adm.CreatePartitions(ctx, []kafka.PartitionsSpecification{{Topic: topic, IncreaseTo: int(total)}},
			kafka.SetAdminOperationTimeout(time.Until(dl)))
		if err == nil {
			for _, r := range res {
				if r.Error.Code() != kafka.ErrNoError {
					err = r.Error
				}
			}
		}
		if err != nil {
			// Another client raised it meanwhile: fine when far enough.
			if have, perr := c.Partitions(ctx, topic); perr != nil || int32(len(have)) < total {
				return fmt.Errorf("confluent: create partitions of %s (to %d): %w", topic, total, err)
			}
		}
		return waitLeaders(ctx, p, topic, int(total))
	})
}

// Partitions lists the partition ids of topic, in increasing order, from
// the cluster's metadata. A topic the cluster does not have is an error
// wrapping kafkaclient.ErrUnknownTopic; one the client may not describe
// (TOPIC_AUTHORIZATION_FAILED), an error wrapping kafkaclient.ErrNotAuthorized.
// A topic whose metadata is not ready
// yet (just created, leader election) is asked again until ctx ends
// (default bound 30s). Safe for concurrent use.
func (c *Client) Partitions(ctx context.Context, topic string) ([]int32, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var out []int32
	err := c.withAdmin(func(p *producer) error {
		backoff := 10 * time.Millisecond
		for {
			md, err := p.p.GetMetadata(&topic, false, timeoutMs(ctx, defaultAdminTimeout))
			if err != nil {
				return fmt.Errorf("confluent: metadata of %s: %w", topic, err)
			}
			tm, ok := md.Topics[topic]
			code := tm.Error.Code()
			switch {
			case !ok || code == kafka.ErrUnknownTopicOrPart || code == kafka.ErrUnknownTopic:
				return fmt.Errorf("%w: %s", kafkaclient.ErrUnknownTopic, topic)
			case code == kafka.ErrTopicAuthorizationFailed:
				return fmt.Errorf("confluent: metadata of %s: %w (%w)", topic, kafkaclient.ErrNotAuthorized, tm.Error)
			case code == kafka.ErrNoError || len(tm.Partitions) > 0:
				out = make([]int32, len(tm.Partitions))
				for i, pm := range tm.Partitions {
					out[i] = pm.ID
				}
				slices.Sort(out)
				return nil
			case !tm.Error.IsRetriable() && code != kafka.ErrLeaderNotAvailable:
				return fmt.Errorf("confluent: metadata of %s: %w", topic, tm.Error)
			}
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("confluent: metadata of %s: %w (last error: %v)", topic, ctx.Err(), tm.Error)
			case <-t.C:
			}
			backoff = min(backoff*2, 500*time.Millisecond)
		}
	})
	return out, err
}

// Brokers returns how many brokers the cluster's metadata lists, from a
// metadata request for no topic. Without a deadline in ctx the call is
// bounded by 30s. Safe for concurrent use.
func (c *Client) Brokers(ctx context.Context) (int, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var n int
	err := c.withAdmin(func(p *producer) error {
		md, err := p.p.GetMetadata(nil, false, timeoutMs(ctx, defaultAdminTimeout))
		if err != nil {
			return fmt.Errorf("confluent: cluster metadata: %w", err)
		}
		n = len(md.Brokers)
		return nil
	})
	return n, err
}

// Offsets looks up the earliest (first retained) or latest (high watermark:
// the offset the next record gets) offset of each given partition, in one
// ListOffsets round trip per partition leader. Partition errors that a
// leader election causes (a topic just created, a leader moving) are asked
// again until ctx ends. An unknown topic or partition is an error wrapping
// kafkaclient.ErrUnknownTopic; a topic the client may not describe
// (TOPIC_AUTHORIZATION_FAILED), an error wrapping kafkaclient.ErrNotAuthorized.
// Without a deadline in ctx the call is bounded by 30s. Safe for concurrent use.
// It is one loop of requests, per-partition results and retries of leader
// elections, which librdkafka reports separately.
func (c *Client) Offsets(ctx context.Context, topic string, partitions []int32, which kafkaclient.OffsetSpec) (map[int32]int64, error) {
	out := make(map[int32]int64, len(partitions))
	if len(partitions) == 0 {
		return out, nil
	}
	spec := kafka.EarliestOffsetSpec
	if which == kafkaclient.Latest {
		spec = kafka.LatestOffsetSpec
	}
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	err := c.withAdmin(func(p *producer) error {
		adm, err := p.adminClient()
		if err != nil {
			return fmt.Errorf("confluent: admin client: %w", err)
		}
		pending := partitions
		backoff := 10 * time.Millisecond
		for {
			req := make(map[kafka.TopicPartition]kafka.OffsetSpec, len(pending))
			for _, part := range pending {
				t := topic
				req[kafka.TopicPartition{Topic: &t, Partition: part}] = spec
			}
			res, err := adm.ListOffsets(ctx, req)
			if err != nil {
				// librdkafka reports a missing topic as "no leaders found";
				// tell that case apart with the metadata.
				if md, merr := p.p.GetMetadata(&topic, false, timeoutMs(ctx, defaultAdminTimeout)); merr == nil {
					tm, ok := md.Topics[topic]
					if code := tm.Error.Code(); !ok || code == kafka.ErrUnknownTopicOrPart || code == kafka.ErrUnknownTopic {
						return fmt.Errorf("%w: %s", kafkaclient.ErrUnknownTopic, topic)
					} else if code == kafka.ErrTopicAuthorizationFailed {
						return fmt.Errorf("confluent: list offsets of %s: %w (%w; %w)", topic, kafkaclient.ErrNotAuthorized, tm.Error, err)
					}
					// Or a partition the topic does not have.
					for _, part := range pending {
						if !slices.ContainsFunc(tm.Partitions, func(pm kafka.PartitionMetadata) bool { return pm.ID == part }) {
							return fmt.Errorf("%w: %s partition %d", kafkaclient.ErrUnknownTopic, topic, part)
						}
					}
				}
				return fmt.Errorf("confluent: list offsets of %s: %w", topic, err)
			}
			var errs []error
			var retry []int32
			answered := 0
			for tp, info := range res.ResultInfos {
				answered++
				switch code := info.Error.Code(); code {
				case kafka.ErrNoError:
					out[tp.Partition] = int64(info.Offset)
				case kafka.ErrUnknownTopicOrPart, kafka.ErrUnknownTopic, kafka.ErrUnknownPartition:
					errs = append(errs, fmt.Errorf("%w: %s partition %d", kafkaclient.ErrUnknownTopic, topic, tp.Partition))
				case kafka.ErrTopicAuthorizationFailed:
					errs = append(errs, fmt.Errorf("confluent: list offsets of %s partition %d: %w (%w)", topic, tp.Partition, kafkaclient.ErrNotAuthorized, info.Error))
				case kafka.ErrNotLeaderForPartition, kafka.ErrLeaderNotAvailable, kafka.ErrUnknownLeaderEpoch,
					kafka.ErrFencedLeaderEpoch, kafka.ErrOffsetNotAvailable, kafka.ErrNotEnoughReplicas:
					// A topic just created or a leader moving: ask again.
					retry = append(retry, tp.Partition)
					errs = append(errs, fmt.Errorf("confluent: list offsets of %s partition %d: %w", topic, tp.Partition, info.Error))
				default:
					if info.Error.IsRetriable() {
						retry = append(retry, tp.Partition)
					}
					errs = append(errs, fmt.Errorf("confluent: list offsets of %s partition %d: %w", topic, tp.Partition, info.Error))
				}
			}
			if len(errs) == 0 && answered != len(req) {
				errs = append(errs, fmt.Errorf("confluent: list offsets of %s: %d of %d partitions answered", topic, answered, len(req)))
			}
			if len(errs) == 0 {
				return nil
			}
			if len(retry) < len(errs) {
				return errors.Join(errs...)
			}
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("confluent: list offsets of %s: %w (last errors: %w)", topic, ctx.Err(), errors.Join(errs...))
			case <-t.C:
			}
			backoff = min(backoff*2, 500*time.Millisecond)
			pending = retry
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

var (
	_ kafkaclient.TopicLimiter      = (*Client)(nil)
	_ kafkaclient.TopicConfigReader = (*Client)(nil)
)

var _ kafkaclient.BatchBounder = (*Client)(nil)

// DefaultBatchSize is librdkafka's batch.size, the size up to which a
// producer batches the records of one partition when Config does not set
// it.
const DefaultBatchSize = 1000000

// MaxBatchBytes returns the producers' batch.size (Config's, or
// DefaultBatchSize): librdkafka batches the records of a partition up to
// it whatever the topic's max.message.bytes (kafkaclient.BatchBounder).
// Safe for concurrent use.
func (c *Client) MaxBatchBytes() int { return c.prodInt("batch.size", DefaultBatchSize) }

// prodInt returns the producers' integer setting key (normalize leaves
// ints as they are and turns other numbers into strings), or def when it
// is not set or not a number.
func (c *Client) prodInt(key string, def int) int {
	switch v := c.prodCfg[key].(type) {
	case int:
		return v
	case string:
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

var _ kafkaclient.TopicIdentifier = (*Client)(nil)

// TopicID returns topic's id (kafkaclient.TopicIdentifier), from the
// cluster's description of the topic (librdkafka's DescribeTopics). Without
// a deadline in ctx the call is bounded by 30s. Safe for concurrent use.
func (c *Client) TopicID(ctx context.Context, topic string) ([16]byte, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var id [16]byte
	err := c.withAdmin(func(p *producer) error {
		adm, err := p.adminClient()
		if err != nil {
			return fmt.Errorf("confluent: admin client: %w", err)
		}
		res, err := adm.DescribeTopics(ctx, kafka.NewTopicCollectionOfTopicNames([]string{topic}))
		if err != nil {
			return fmt.Errorf("confluent: description of %s: %w", topic, err)
		}
		if len(res.TopicDescriptions) != 1 {
			return fmt.Errorf("confluent: description of %s: %d results", topic, len(res.TopicDescriptions))
		}
		d := res.TopicDescriptions[0]
		if err := topicResultErr("description", topic, d.Error); err != nil {
			return err
		}
		binary.BigEndian.PutUint64(id[:8], uint64(d.TopicID.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(id[8:], uint64(d.TopicID.GetLeastSignificantBits()))
		return nil
	})
	return id, err
}

// topicResultErr returns the error of an admin result e about topic (what
// names the result: "description", "configuration"), or nil: a missing
// topic wraps kafkaclient.ErrUnknownTopic, a refused one
// kafkaclient.ErrNotAuthorized.
func topicResultErr(what, topic string, e kafka.Error) error {
	switch e.Code() {
	case kafka.ErrNoError:
		return nil
	case kafka.ErrUnknownTopicOrPart, kafka.ErrUnknownTopic:
		return fmt.Errorf("%w: %s", kafkaclient.ErrUnknownTopic, topic)
	case kafka.ErrTopicAuthorizationFailed:
		return fmt.Errorf("confluent: %s of %s: %w (%w)", what, topic, kafkaclient.ErrNotAuthorized, e)
	}
	return fmt.Errorf("confluent: %s of %s: %w", what, topic, e)
}

// TopicMaxMessageBytes returns topic's max.message.bytes, as the cluster
// describes the topic's configuration (kafkaclient.TopicLimiter). Without
// a deadline in ctx the call is bounded by 30s. Safe for concurrent use.
func (c *Client) TopicMaxMessageBytes(ctx context.Context, topic string) (int, error) {
	cfg, err := c.topicConfig(ctx, topic)
	if err != nil {
		return 0, err
	}
	// Kafka answers the topic's max.message.bytes with the value in
	// force (the topic's own, else the broker's message.max.bytes, else
	// the default). kfake, the embedded broker, answers the default under
	// the topic's name and a broker-level message.max.bytes under the
	// broker's name: the broker's then is the one in force.
	e, ok := cfg["max.message.bytes"]
	if b, set := cfg["message.max.bytes"]; set && (!ok || e.Source == kafka.ConfigSourceDefault) {
		e, ok = b, true
	}
	if !ok {
		return 0, fmt.Errorf("confluent: configuration of %s has no max.message.bytes", topic)
	}
	n, err := strconv.Atoi(e.Value)
	if err != nil {
		return 0, fmt.Errorf("confluent: max.message.bytes of %s: %w", topic, err)
	}
	return n, nil
}

// TopicConfig returns the value in force of topic's configuration entry
// name (kafkaclient.TopicConfigReader). Without a deadline in ctx the call
// is bounded by 30s. Safe for concurrent use.
func (c *Client) TopicConfig(ctx context.Context, topic, name string) (string, error) {
	cfg, err := c.topicConfig(ctx, topic)
	if err != nil {
		return "", err
	}
	e, ok := cfg[name]
	if !ok {
		return "", fmt.Errorf("confluent: configuration of %s has no %s", topic, name)
	}
	return e.Value, nil
}

// topicConfig describes topic's configuration.
func (c *Client) topicConfig(ctx context.Context, topic string) (map[string]kafka.ConfigEntryResult, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var cfg map[string]kafka.ConfigEntryResult
	err := c.withAdmin(func(p *producer) error {
		adm, err := p.adminClient()
		if err != nil {
			return fmt.Errorf("confluent: admin client: %w", err)
		}
		res, err := adm.DescribeConfigs(ctx, []kafka.ConfigResource{{Type: kafka.ResourceTopic, Name: topic}})
		if err != nil {
			return fmt.Errorf("confluent: configuration of %s: %w", topic, err)
		}
		if len(res) != 1 {
			return fmt.Errorf("confluent: configuration of %s: %d results", topic, len(res))
		}
		if err := topicResultErr("configuration", topic, res[0].Error); err != nil {
			return err
		}
		cfg = res[0].Config
		return nil
	})
	return cfg, err
}

// DeleteTopics deletes the named topics; one that does not exist is not an
// error. Without a deadline in ctx the call is bounded by 30s. It is not
// part of kafkaclient.Client: the test kit (runtime/kafkarpctest) deletes
// the topics it created with it. Safe for concurrent use.
func (c *Client) DeleteTopics(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	return c.withAdmin(func(p *producer) error {
		adm, err := p.adminClient()
		if err != nil {
			return fmt.Errorf("confluent: admin client: %w", err)
		}
		dl, _ := ctx.Deadline()
		res, err := adm.DeleteTopics(ctx, names, kafka.SetAdminOperationTimeout(time.Until(dl)))
		if err != nil {
			return fmt.Errorf("confluent: delete topics: %w", err)
		}
		var errs []error
		for _, r := range res {
			if code := r.Error.Code(); code != kafka.ErrNoError && code != kafka.ErrUnknownTopicOrPart && code != kafka.ErrUnknownTopic {
				errs = append(errs, fmt.Errorf("confluent: delete topic %s: %w", r.Topic, r.Error))
			}
		}
		return errors.Join(errs...)
	})
}
