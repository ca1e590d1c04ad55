package franz

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// defaultAdminTimeout bounds admin and metadata calls whose ctx has no
// deadline.
const defaultAdminTimeout = 30 * time.Second

// withAdmin runs fn with the acks=all producer client (created if needed),
// whose connections admin requests share. The kadm client is made for the
// call, with its request timeout taken from ctx's deadline.
func (c *Client) withAdmin(ctx context.Context, fn func(kc *kgo.Client, adm *kadm.Client) error) error {
	kc, err := c.useProducer(kafkaclient.AcksAll)
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	adm := kadm.NewClient(kc)
	if dl, ok := ctx.Deadline(); ok {
		adm.SetTimeoutMillis(int32(min(max(time.Until(dl).Milliseconds(), 1), 1<<31-1)))
	}
	return fn(kc, adm)
}

// adminCtx gives ctx a deadline if it has none.
func adminCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultAdminTimeout)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// CreateTopics creates the topics that do not exist yet; a topic that
// already exists is not an error (its partition count and configuration are
// left as they are). Partitions <= 0 and ReplicationFactor <= 0 use the
// broker's defaults (-1, Kafka 2.4 and later); when the broker refuses a
// default replication factor, the topic is created again with 1. Config
// entries are passed through as topic configuration. Each topic is one
// kadm CreateTopic request (kadm takes one setting for all the topics of a
// request). It returns once the metadata shows every topic with a leader for
// each partition, so that the topics can be used at once (Kafka's brokers
// learn of a new topic shortly after the controller created it). Without a
// deadline in ctx the call is bounded by 30s. Safe for concurrent use.
func (c *Client) CreateTopics(ctx context.Context, topics []kafkaclient.TopicSpec) error {
	if len(topics) == 0 {
		return nil
	}
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	return c.withAdmin(ctx, func(kc *kgo.Client, adm *kadm.Client) error {
		var errs []error
		for _, t := range topics {
			parts, rf := t.Partitions, t.ReplicationFactor
			if parts <= 0 {
				parts = -1
			}
			if rf <= 0 {
				rf = -1
			}
			var cfg map[string]*string
			if len(t.Config) > 0 {
				cfg = make(map[string]*string, len(t.Config))
				for k, v := range t.Config {
					cfg[k] = kadm.StringPtr(v)
				}
			}
			for attempt := 0; ; attempt++ {
				res, err := adm.CreateTopic(ctx, parts, rf, cfg, t.Name)
				switch {
				case err == nil, errors.Is(err, kerr.TopicAlreadyExists):
				case attempt == 0 && rf == -1 && (errors.Is(err, kerr.InvalidReplicationFactor) ||
					errors.Is(err, kerr.UnsupportedVersion) || errors.Is(err, kerr.InvalidRequest)):
					rf = 1
					continue
				default:
					if res.ErrMessage != "" {
						err = fmt.Errorf("%w (%s)", err, res.ErrMessage)
					}
					errs = append(errs, fmt.Errorf("franz: create topic %s: %w", t.Name, err))
				}
				break
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		// Kafka answers once the controller created the topics; the
		// brokers learn of them a little later (KRaft propagates
		// metadata asynchronously), and until then they report the
		// topics unknown. Return once they are usable.
		for _, t := range topics {
			if err := waitTopic(ctx, kc, t.Name, 1); err != nil {
				return err
			}
		}
		return nil
	})
}

// waitTopic waits until the metadata of every broker shows topic with at
// least atLeast partitions and a leader for every partition, or ctx ends: a
// metadata request may go to any broker, and each learns of a new topic (or
// partition) on its own time. A broker listed but not answering (down, not
// yet fenced) is not waited for.
func waitTopic(ctx context.Context, kc *kgo.Client, topic string, atLeast int) error {
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, kc)
	if err != nil {
		return fmt.Errorf("franz: metadata of %s: %w", topic, err)
	}
	for _, b := range resp.Brokers {
		if err := waitTopicOn(ctx, kc.Broker(int(b.NodeID)), topic, atLeast); err != nil {
			return fmt.Errorf("%w (broker %d)", err, b.NodeID)
		}
	}
	return nil
}

// waitTopicOn waits until the metadata of broker b shows topic with at
// least atLeast partitions (and at least one) and a leader for every
// partition, or ctx ends.
func waitTopicOn(ctx context.Context, b *kgo.Broker, topic string, atLeast int) error {
	backoff := 5 * time.Millisecond
	for {
		req := kmsg.NewPtrMetadataRequest()
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(topic)
		req.Topics = append(req.Topics, rt)
		kresp, err := b.Request(ctx, req)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("franz: metadata of %s: %w", topic, err)
			}
			return nil // not answering: not a broker anyone reads stale metadata from now
		}
		resp := kresp.(*kmsg.MetadataResponse)
		var why error
		for _, t := range resp.Topics {
			if t.Topic == nil || *t.Topic != topic {
				continue
			}
			if why = kerr.ErrorForCode(t.ErrorCode); why == nil {
				if len(t.Partitions) < max(atLeast, 1) {
					why = fmt.Errorf("%d partitions, not %d yet", len(t.Partitions), max(atLeast, 1))
				}
				for _, p := range t.Partitions {
					if why = kerr.ErrorForCode(p.ErrorCode); why == nil && p.Leader < 0 {
						why = kerr.LeaderNotAvailable
					}
					if why != nil {
						break
					}
				}
			}
		}
		if why == nil && len(resp.Topics) > 0 {
			return nil
		}
		if err := sleep(ctx, backoff); err != nil {
			return fmt.Errorf("franz: topic %s created but not usable: %w (last error: %v)", topic, err, why)
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

// CreatePartitions raises the partition count of topic to total with one
// kadm UpdatePartitions request (Kafka's CreatePartitions): a topic that has
// total partitions or more already is left as it is, and that is not an
// error (nor is losing a race with another client raising it as far). A
// topic that does not exist is an error wrapping kafkaclient.ErrUnknownTopic.
// It returns once the metadata of every broker shows total partitions, each
// with a leader, and the client's producers know of them (a record to a
// chosen new partition is taken at once). Without a deadline in ctx the call is bounded by 30s. Safe
// for concurrent use.
func (c *Client) CreatePartitions(ctx context.Context, topic string, total int32) error {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	return c.withAdmin(ctx, func(kc *kgo.Client, adm *kadm.Client) error {
		have, _, err := fetchPartitions(ctx, kc, topic)
		if err != nil {
			return err
		}
		if int32(len(have)) >= total {
			return nil
		}
		res, err := adm.UpdatePartitions(ctx, int(total), topic)
		if err == nil {
			if r, ok := res[topic]; ok && r.Err != nil {
				err = r.Err
				if r.ErrMessage != "" {
					err = fmt.Errorf("%w (%s)", err, r.ErrMessage)
				}
			}
		}
		if err != nil {
			// Another client raised it meanwhile: fine when far enough.
			if have, _, perr := fetchPartitions(ctx, kc, topic); perr != nil || int32(len(have)) < total {
				return fmt.Errorf("franz: create partitions of %s (to %d): %w", topic, total, err)
			}
		}
		if err := waitTopic(ctx, kc, topic, int(total)); err != nil {
			return err
		}
		return c.refreshProducers(ctx, topic, total)
	})
}

// refreshProducers makes every producer of c that knows topic learn that it
// has total partitions: kgo fails a record to a partition it has not
// learnt of, and would learn of one only when its metadata ages
// (MetadataMaxAge). c.mu must be held (shared).
func (c *Client) refreshProducers(ctx context.Context, topic string, total int32) error {
	for _, kc := range c.liveProducers() {
		if leader, _, _ := kc.PartitionLeader(topic, 0); leader < 0 {
			continue // not known: its first record loads the topic afresh
		}
		backoff := 5 * time.Millisecond
		for {
			if leader, _, _ := kc.PartitionLeader(topic, total-1); leader >= 0 {
				break
			}
			kc.ForceMetadataRefresh()
			if err := sleep(ctx, backoff); err != nil {
				return fmt.Errorf("franz: topic %s grew to %d partitions, but a producer has not learnt of them: %w", topic, total, err)
			}
			backoff = min(backoff*2, 250*time.Millisecond)
		}
	}
	return nil
}

// Partitions lists the partition ids of topic, in increasing order, from a
// fresh (uncached) metadata request, which also refreshes the client's
// metadata cache for topic. A topic the cluster does not have is an error
// wrapping kafkaclient.ErrUnknownTopic; the lookup never creates it. One
// the client may not describe (TOPIC_AUTHORIZATION_FAILED) is an error
// wrapping kafkaclient.ErrNotAuthorized. A topic whose metadata is not ready yet (just created, leader election) is asked
// again until ctx ends (default bound 30s). Safe for concurrent use.
func (c *Client) Partitions(ctx context.Context, topic string) ([]int32, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var out []int32
	err := c.withAdmin(ctx, func(kc *kgo.Client, _ *kadm.Client) error {
		var err error
		out, _, err = fetchPartitions(ctx, kc, topic)
		return err
	})
	return out, err
}

var _ kafkaclient.TopicIdentifier = (*Client)(nil)

// TopicID returns topic's id (kafkaclient.TopicIdentifier), from a fresh
// metadata request, with the errors and retries of Partitions. Safe for
// concurrent use.
func (c *Client) TopicID(ctx context.Context, topic string) ([16]byte, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var id [16]byte
	err := c.withAdmin(ctx, func(kc *kgo.Client, _ *kadm.Client) error {
		var err error
		_, id, err = fetchPartitions(ctx, kc, topic)
		return err
	})
	return id, err
}

// fetchPartitions returns topic's partitions, sorted, and its topic id
// (zero from a broker older than metadata v10), from a fresh metadata
// request.
func fetchPartitions(ctx context.Context, kc *kgo.Client, topic string) ([]int32, [16]byte, error) {
	backoff := 10 * time.Millisecond
	for {
		req := kmsg.NewPtrMetadataRequest()
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(topic)
		req.Topics = append(req.Topics, rt)
		req.AllowAutoTopicCreation = false
		resp, err := req.RequestWith(ctx, kc)
		if err != nil {
			return nil, [16]byte{}, fmt.Errorf("franz: metadata of %s: %w", topic, err)
		}
		var lastErr error
		found := false
		for _, t := range resp.Topics {
			if t.Topic == nil || *t.Topic != topic {
				continue
			}
			found = true
			terr := kerr.ErrorForCode(t.ErrorCode)
			switch {
			case errors.Is(terr, kerr.UnknownTopicOrPartition):
				return nil, [16]byte{}, fmt.Errorf("%w: %s", kafkaclient.ErrUnknownTopic, topic)
			case errors.Is(terr, kerr.TopicAuthorizationFailed):
				return nil, [16]byte{}, fmt.Errorf("franz: metadata of %s: %w (%w)", topic, kafkaclient.ErrNotAuthorized, terr)
			case terr == nil || len(t.Partitions) > 0:
				out := make([]int32, 0, len(t.Partitions))
				for _, p := range t.Partitions {
					out = append(out, p.Partition)
				}
				slices.Sort(out)
				return out, t.TopicID, nil
			case !kerr.IsRetriable(terr):
				return nil, [16]byte{}, fmt.Errorf("franz: metadata of %s: %w", topic, terr)
			}
			lastErr = terr
		}
		if !found {
			return nil, [16]byte{}, fmt.Errorf("%w: %s", kafkaclient.ErrUnknownTopic, topic)
		}
		if err := sleep(ctx, backoff); err != nil {
			return nil, [16]byte{}, fmt.Errorf("franz: metadata of %s: %w (last error: %v)", topic, err, lastErr)
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

// Brokers returns how many brokers the cluster's metadata lists, from a
// fresh metadata request for no topic. Without a deadline in ctx the call
// is bounded by 30s. Safe for concurrent use.
func (c *Client) Brokers(ctx context.Context) (int, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var n int
	err := c.withAdmin(ctx, func(kc *kgo.Client, _ *kadm.Client) error {
		req := kmsg.NewPtrMetadataRequest()
		req.Topics = []kmsg.MetadataRequestTopic{} // none (nil would ask for all)
		resp, err := req.RequestWith(ctx, kc)
		if err != nil {
			return fmt.Errorf("franz: cluster metadata: %w", err)
		}
		n = len(resp.Brokers)
		return nil
	})
	return n, err
}

// Offsets looks up the earliest (log start) or latest (high watermark: the
// offset the next record gets) offset of each given partition with kadm's
// ListStartOffsets / ListEndOffsets (one ListOffsets request per partition
// leader). Partition-level errors that Kafka marks retriable (a leader
// moving, a topic just created) are asked again until ctx ends. An unknown
// topic or partition is an error wrapping kafkaclient.ErrUnknownTopic;
// since kadm resolves leaders from kgo's metadata cache (up to 5s old), an
// unknown topic is confirmed with a fresh metadata request, and looked up
// again if it exists after all. A topic the client may not describe
// (TOPIC_AUTHORIZATION_FAILED, from the metadata or the ListOffsets answer)
// is an error wrapping kafkaclient.ErrNotAuthorized. Without a deadline in ctx the call is
// bounded by 30s. Safe for concurrent use.
// It is one loop of requests, per-partition results, retries of leader
// elections and the confirmation of an unknown topic.
func (c *Client) Offsets(ctx context.Context, topic string, partitions []int32, which kafkaclient.OffsetSpec) (map[int32]int64, error) {
	out := make(map[int32]int64, len(partitions))
	if len(partitions) == 0 {
		return out, nil
	}
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	err := c.withAdmin(ctx, func(kc *kgo.Client, adm *kadm.Client) error {
		backoff := 10 * time.Millisecond
		confirmed := false
		for {
			list := adm.ListEndOffsets
			if which == kafkaclient.Earliest {
				list = adm.ListStartOffsets
			}
			listed, err := list(ctx, topic)
			if errors.Is(err, kerr.TopicAuthorizationFailed) {
				return fmt.Errorf("franz: list offsets of %s: %w (%w)", topic, kafkaclient.ErrNotAuthorized, err)
			}
			if err != nil {
				return fmt.Errorf("franz: list offsets of %s: %w", topic, err)
			}
			var retry, unknown bool
			var errs []error
			for _, p := range partitions {
				lo, ok := listed.Lookup(topic, p)
				switch {
				case !ok:
					unknown = true
					errs = append(errs, fmt.Errorf("%w: %s partition %d", kafkaclient.ErrUnknownTopic, topic, p))
				case lo.Err == nil:
					out[p] = lo.Offset
				case errors.Is(lo.Err, kerr.UnknownTopicOrPartition):
					unknown = true
					errs = append(errs, fmt.Errorf("%w: %s partition %d", kafkaclient.ErrUnknownTopic, topic, p))
				case errors.Is(lo.Err, kerr.TopicAuthorizationFailed):
					return fmt.Errorf("franz: list offsets of %s partition %d: %w (%w)", topic, p, kafkaclient.ErrNotAuthorized, lo.Err)
				case kerr.IsRetriable(lo.Err):
					retry = true
					errs = append(errs, fmt.Errorf("franz: list offsets of %s partition %d: %w", topic, p, lo.Err))
				default:
					errs = append(errs, fmt.Errorf("franz: list offsets of %s partition %d: %w", topic, p, lo.Err))
				}
			}
			if len(errs) == 0 {
				return nil
			}
			if unknown && !confirmed {
				// The cache may predate the topic: ask the cluster
				// (which refreshes the cache) and try once more.
				confirmed = true
				if _, _, err := fetchPartitions(ctx, kc, topic); err != nil {
					return err
				}
				retry = true
			}
			if !retry {
				return errors.Join(errs...)
			}
			if err := sleep(ctx, backoff); err != nil {
				return fmt.Errorf("franz: list offsets of %s: %w (last errors: %v)", topic, err, errors.Join(errs...))
			}
			backoff = min(backoff*2, 500*time.Millisecond)
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

// TopicMaxMessageBytes returns topic's max.message.bytes, as the cluster
// describes the topic's configuration (kafkaclient.TopicLimiter). Without
// a deadline in ctx the call is bounded by 30s. Safe for concurrent use.
func (c *Client) TopicMaxMessageBytes(ctx context.Context, topic string) (int, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var n int
	err := c.withAdmin(ctx, func(_ *kgo.Client, adm *kadm.Client) error {
		var err error
		n, err = topicMaxMessageBytes(ctx, adm, topic)
		return err
	})
	return n, err
}

// TopicConfig returns the value in force of topic's configuration entry
// name (kafkaclient.TopicConfigReader). Without a deadline in ctx the call
// is bounded by 30s. Safe for concurrent use.
func (c *Client) TopicConfig(ctx context.Context, topic, name string) (string, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	var v string
	err := c.withAdmin(ctx, func(_ *kgo.Client, adm *kadm.Client) error {
		rc, err := describeTopicConfig(ctx, adm, topic)
		if err != nil {
			return err
		}
		for _, cf := range rc.Configs {
			if cf.Key == name && cf.Value != nil {
				v = *cf.Value
				return nil
			}
		}
		return fmt.Errorf("franz: configuration of %s has no %s", topic, name)
	})
	return v, err
}

// describeTopicConfig describes topic's configuration through adm.
func describeTopicConfig(ctx context.Context, adm *kadm.Client, topic string) (kadm.ResourceConfig, error) {
	rcs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return kadm.ResourceConfig{}, fmt.Errorf("franz: configuration of %s: %w", topic, err)
	}
	rc, err := rcs.On(topic, nil)
	if err == nil {
		err = rc.Err
	}
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return rc, fmt.Errorf("%w: %s", kafkaclient.ErrUnknownTopic, topic)
	}
	if errors.Is(err, kerr.TopicAuthorizationFailed) {
		return rc, fmt.Errorf("franz: configuration of %s: %w (%w)", topic, kafkaclient.ErrNotAuthorized, err)
	}
	if err != nil {
		return rc, fmt.Errorf("franz: configuration of %s: %w", topic, err)
	}
	return rc, nil
}

// topicMaxMessageBytes looks up topic's max.message.bytes through adm
// (TopicMaxMessageBytes, batchLimits).
func topicMaxMessageBytes(ctx context.Context, adm *kadm.Client, topic string) (int, error) {
	rc, err := describeTopicConfig(ctx, adm, topic)
	if err != nil {
		return 0, err
	}
	// Kafka answers the topic's max.message.bytes with the value in force
	// (the topic's own, else the broker's message.max.bytes, else the
	// default). kfake, the embedded broker, answers the default under the
	// topic's name and a broker-level message.max.bytes under the broker's
	// name: the broker's then is the one in force.
	var own, broker, def *string
	for _, cf := range rc.Configs {
		switch {
		case cf.Value == nil:
		case cf.Key == "max.message.bytes" && cf.Source == kmsg.ConfigSourceDefaultConfig:
			def = cf.Value
		case cf.Key == "max.message.bytes":
			own = cf.Value
		case cf.Key == "message.max.bytes":
			broker = cf.Value
		}
	}
	v := cmp.Or(own, broker, def)
	if v == nil {
		return 0, fmt.Errorf("franz: configuration of %s has no max.message.bytes", topic)
	}
	n, err := strconv.Atoi(*v)
	if err != nil {
		return 0, fmt.Errorf("franz: max.message.bytes of %s: %w", topic, err)
	}
	return n, nil
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
	return c.withAdmin(ctx, func(_ *kgo.Client, adm *kadm.Client) error {
		resps, err := adm.DeleteTopics(ctx, names...)
		if err != nil {
			return fmt.Errorf("franz: delete topics: %w", err)
		}
		var errs []error
		for _, r := range resps.Sorted() {
			if r.Err != nil && !errors.Is(r.Err, kerr.UnknownTopicOrPartition) {
				errs = append(errs, fmt.Errorf("franz: delete topic %s: %w", r.Topic, r.Err))
			}
		}
		return errors.Join(errs...)
	})
}
