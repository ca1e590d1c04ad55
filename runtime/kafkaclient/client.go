// Package kafkaclient is the narrow seam between the runtime and a Kafka client
// library. The gateway, the worker and generated code only ever talk to these
// interfaces; package confluent implements them on confluent-kafka-go
// (librdkafka), and other implementations can be added without touching the
// rest of the runtime.
//
// Implementations must be safe for concurrent use where a method says so, and
// must never log raw lines to stderr: they report through log/slog.
package kafkaclient

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Header is one Kafka record header (the wire package's): names may repeat;
// order is kept.
type Header = wire.Header

// Record is one Kafka record, produced or consumed.
//
// A nil Value is a tombstone (a null record), which the wire format uses as the
// end-of-stream marker; an empty non-nil Value is an empty message.
type Record struct {
	Topic string
	// Partition to produce to; AnyPartition (-1) lets the client pick one from
	// the key with Kafka's Java-compatible murmur2 partitioner. Filled in by
	// the client on delivery and on consumption.
	Partition int32
	// Offset is filled in on delivery and on consumption.
	Offset  int64
	Key     []byte
	Value   []byte
	Headers []Header
	// Timestamp is the record's create time. Zero on produce means "now".
	Timestamp time.Time
}

// AnyPartition asks Produce to choose the partition from the record key.
const AnyPartition int32 = -1

// Acks is the producer acknowledgement level of a produce.
type Acks int8

const (
	// AcksAll waits for all in-sync replicas (acks=-1). The default.
	AcksAll Acks = iota
	// AcksLeader waits for the partition leader only (acks=1).
	AcksLeader
	// AcksNone does not wait for the broker (acks=0): delivery is reported as
	// soon as the record is sent.
	AcksNone
)

// String returns the librdkafka spelling of a.
func (a Acks) String() string {
	switch a {
	case AcksLeader:
		return "1"
	case AcksNone:
		return "0"
	default:
		return "all"
	}
}

// TopicPartition names one partition of a topic.
type TopicPartition struct {
	Topic     string
	Partition int32
}

// TopicPartitionOffset is a partition with an offset: the next offset to read
// (for Assign) or to commit (for Commit).
type TopicPartitionOffset struct {
	Topic     string
	Partition int32
	Offset    int64
}

// TopicSpec describes a topic to create.
type TopicSpec struct {
	Name       string
	Partitions int32
	// ReplicationFactor; 0 or -1 uses the broker's default.
	ReplicationFactor int16
	// Config holds topic configuration entries such as "max.message.bytes".
	Config map[string]string
}

// OffsetSpec selects which offsets Offsets looks up.
type OffsetSpec int8

const (
	// Earliest is the first retained offset of each partition.
	Earliest OffsetSpec = iota
	// Latest is the high watermark: the offset the next produced record gets.
	Latest
)

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("kafkaclient: closed")

// Client is one connection to a Kafka cluster: a producer shared by every
// caller, plus factories for readers and group readers, plus topic admin.
// All methods are safe for concurrent use.
type Client interface {
	// Produce enqueues r and returns at once; the caller must not modify r or
	// its slices afterwards (records of one call may share a Headers slice); done is called exactly once,
	// on a goroutine owned by the client, with the delivered record (its
	// Partition and Offset filled in) or the error that failed it. done must
	// not block for long. Records with the same key and acks keep their
	// order. Produce never blocks on the network; when the client's queue is
	// full it reports the error through done.
	Produce(r *Record, acks Acks, done func(*Record, error))
	// Flush waits until every record produced before the call was delivered
	// or failed and its done returned (a record refused before it was sent
	// included), or until ctx ends.
	Flush(ctx context.Context) error

	// NewReader returns a reader of explicitly assigned partitions, with no
	// consumer group.
	NewReader(cfg ReaderConfig) (Reader, error)
	// NewGroupReader returns a member of a consumer group.
	NewGroupReader(cfg GroupConfig) (GroupReader, error)

	// CreateTopics creates the topics that do not exist yet; a topic that
	// already exists is not an error.
	CreateTopics(ctx context.Context, topics []TopicSpec) error
	// CreatePartitions raises the partition count of topic to total (Kafka
	// never lowers one): a topic that has total partitions or more already
	// is left as it is, and that is not an error. A topic that does not
	// exist is an error wrapping ErrUnknownTopic. It returns once the
	// metadata shows every partition with a leader, so that the new ones can
	// be used at once.
	CreatePartitions(ctx context.Context, topic string, total int32) error
	// Partitions lists the partition ids of topic. A topic that does not exist
	// is an error wrapping ErrUnknownTopic; one the client's principal may
	// not describe, an error wrapping ErrNotAuthorized.
	Partitions(ctx context.Context, topic string) ([]int32, error)
	// Offsets looks up the earliest or latest offset of each given partition.
	// A topic that does not exist is an error wrapping ErrUnknownTopic; one
	// the client's principal may not describe, an error wrapping
	// ErrNotAuthorized.
	Offsets(ctx context.Context, topic string, partitions []int32, which OffsetSpec) (map[int32]int64, error)
	// Brokers returns how many brokers the cluster's metadata lists now (a
	// broker that is down drops out once the cluster has noticed). The
	// project's topic creation uses it to choose a replication factor.
	Brokers(ctx context.Context) (int, error)

	// Close flushes (bounded by a short timeout) and releases everything. Readers
	// created from the client must be closed first.
	Close() error
}

// ErrUnknownTopic reports a topic the cluster does not have.
var ErrUnknownTopic = errors.New("kafkaclient: unknown topic")

// ErrNotAuthorized reports a record the cluster refused because the
// client's principal may not write its topic, or a lookup (Partitions,
// Offsets, TopicMaxMessageBytes) refused because it may not describe the
// topic (Kafka's TOPIC_AUTHORIZATION_FAILED): asking again fails the same
// way until someone grants the access.
var ErrNotAuthorized = errors.New("kafkaclient: not authorized to access the topic")

// ErrRecordTooLarge is reported through Produce's done for a record the
// cluster refused as larger than it takes (Kafka's MESSAGE_TOO_LARGE, or
// RECORD_LIST_TOO_LARGE for a batch larger than the topic's segment), or
// that the client refused for its own size limit: producing it again fails
// the same way.
var ErrRecordTooLarge = errors.New("kafkaclient: record too large")

// ErrRecordRefused is reported through Produce's done for a record the
// cluster refused for a reason producing it again does not cure, one Kafka
// marks not retriable and that none of the sentinels above names:
// INVALID_RECORD (a record the topic's configuration rejects, such as one
// without a key on a compacted topic), INVALID_TIMESTAMP, POLICY_VIOLATION,
// UNSUPPORTED_FOR_MESSAGE_FORMAT, UNSUPPORTED_COMPRESSION_TYPE,
// INVALID_TOPIC_EXCEPTION or INVALID_REQUIRED_ACKS. The error also names
// the Kafka error. A record refused as too large, for an unknown topic or
// as not authorized wraps ErrRecordTooLarge, ErrUnknownTopic or
// ErrNotAuthorized instead, not this; errors of the client itself
// (timeouts, lost connections) and UNKNOWN_SERVER_ERROR are not refusals.
//
// Kafka refuses a produce request's batch for a partition as a whole: the
// records sent in one batch with a refused record are refused with it,
// and franz-go also fails with it the records of that partition not yet
// acknowledged behind it (to keep the partition's sequence numbers
// right). Records of other partitions are not affected. The refusals
// above come from a topic's configuration and are alike for every record
// of the topic, so in practice they are all-or-nothing per topic.
var ErrRecordRefused = errors.New("kafkaclient: the cluster refused the record")

// ErrGroupMoved is wrapped by a TxnProducer.Commit (or GroupReader.Commit)
// that the group coordinator refused because the commit named a
// generation or member the group has moved past: a rebalance completed
// while the commit was on its way (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
// REBALANCE_IN_PROGRESS, and KIP-848's FENCED_MEMBER_EPOCH and
// STALE_MEMBER_EPOCH). Nothing was committed. The member's view of its
// partitions is out of date: committing again with the group's new
// generation could commit offsets of partitions now read by another
// member, so a transactional worker aborts and rejoins instead.
var ErrGroupMoved = errors.New("kafkaclient: the consumer group moved to a new generation")

// ErrUnknownOutcome is reported through Produce's done for a record the
// client cannot tell was written: it may or may not be in the log. Produce
// it again if it must not be lost (and tolerate a duplicate).
var ErrUnknownOutcome = errors.New("kafkaclient: the record may or may not have been written")

// ReaderConfig configures a Reader.
type ReaderConfig struct {
	// ReadCommitted reads only committed transactional records.
	ReadCommitted bool
}

// Reader reads explicitly assigned partitions from explicit offsets.
// Poll must be called from one goroutine at a time; Assign may be called from
// any goroutine; Close must be called once, after the last Poll returned.
type Reader interface {
	// Assign adds partitions to read, each from its given offset (never a
	// logical offset: look the offsets up with Client.Offsets). Assigning a
	// partition again moves it to the new offset.
	Assign(parts []TopicPartitionOffset) error
	// Poll blocks until at least one record is available, ctx ends (returning
	// ctx.Err()) or the reader is closed. The returned slice and records are
	// owned by the caller. When the cluster refuses to serve an assigned
	// partition because the client's principal may not read its topic
	// (TOPIC_AUTHORIZATION_FAILED), Poll returns an error wrapping
	// ErrNotAuthorized naming the topic; the reader keeps asking, and a
	// later Poll returns records once access is granted.
	Poll(ctx context.Context) ([]*Record, error)
	// Close releases the reader.
	Close() error
}

// GroupConfig configures a GroupReader.
type GroupConfig struct {
	// GroupID is the consumer group to join. Required.
	GroupID string
	// Topics to subscribe to. Required.
	Topics []string
	// OnAssigned is called from inside Poll when partitions are assigned to
	// this member, before any of their records is returned, and with an
	// empty list when a rebalance gave it nothing new (so a member of a group
	// with more members than partitions learns that it joined). May be nil.
	OnAssigned func(parts []TopicPartition)
	// OnRevoked is called from inside Poll when partitions are taken away
	// (rebalance or Close), while their offsets can still be committed. It
	// should finish or abandon the work of those partitions and commit. lost
	// reports that the partitions were lost (the member was fenced) and a
	// commit would fail. May be nil.
	OnRevoked func(parts []TopicPartition, lost bool)
	// ReadCommitted reads only committed transactional records.
	ReadCommitted bool
	// StartAtLatest makes a partition that has no committed offset start at
	// its end. By default such a partition starts at its earliest retained
	// offset, so that requests sent before the group first joined are served.
	StartAtLatest bool
	// Protocol is the group protocol the member speaks. "" (the default)
	// leaves it to the client's configuration, which is classic unless
	// configured otherwise; any other value overrides that configuration.
	Protocol GroupProtocol
}

// GroupProtocol names a consumer group protocol.
type GroupProtocol string

const (
	// GroupProtocolClassic is the classic protocol (JoinGroup/SyncGroup, the
	// assignment computed by one member). A member that dies unannounced
	// keeps its partitions for the client's session timeout, which the
	// client chooses (within the broker's group.min.session.timeout.ms and
	// group.max.session.timeout.ms, by default 6 s to 30 min).
	GroupProtocolClassic GroupProtocol = "classic"
	// GroupProtocolConsumer is the consumer protocol of KIP-848 (Kafka 4.0
	// and later): the broker assigns partitions, members heartbeat and
	// reconcile one partition at a time, with no group-wide barrier. Its
	// session timeout and heartbeat interval are the broker's
	// (group.consumer.session.timeout.ms, default 45 s, and no less than
	// group.consumer.min.session.timeout.ms, default 45 s), not the
	// client's.
	GroupProtocolConsumer GroupProtocol = "consumer"
)

// Check returns an error naming p unless it is "", GroupProtocolClassic or
// GroupProtocolConsumer.
func (p GroupProtocol) Check() error {
	switch p {
	case "", GroupProtocolClassic, GroupProtocolConsumer:
		return nil
	}
	return fmt.Errorf("kafkaclient: unknown group protocol %q (want %q or %q)", string(p), GroupProtocolClassic, GroupProtocolConsumer)
}

// GroupReader is one member of a consumer group. Poll and Close must be
// called from one goroutine; Commit may be called from any goroutine.
// Offsets are never committed automatically.
type GroupReader interface {
	// Poll blocks until at least one record is available, ctx ends or the
	// reader is closed. Rebalance callbacks run inside Poll. As with
	// Reader.Poll, a fetch refused because the client's principal may not
	// read a topic of the group (TOPIC_AUTHORIZATION_FAILED) makes Poll
	// return an error wrapping ErrNotAuthorized naming the topic; the
	// member stays in the group and keeps asking, and a later Poll returns
	// records once access is granted.
	Poll(ctx context.Context) ([]*Record, error)
	// Commit commits the given offsets (each the next offset to read)
	// synchronously.
	Commit(ctx context.Context, offsets []TopicPartitionOffset) error
	// Close revokes (calling OnRevoked), leaves the group and releases the
	// reader.
	Close() error
}

// Pauser is implemented by a GroupReader that can stop fetching records
// while its Poll goes on serving the group (heartbeats, rebalances): the
// worker pauses reading requests while too many wait for a handler slot
// (runtime.WorkerMaxQueuedCalls). Both clients of this module implement it.
type Pauser interface {
	// Pause stops fetching the records of every partition assigned to the
	// member, now and later, until Resume; Poll returns no records
	// meanwhile but those of a Poll already under way, and the reading
	// carries on at the first record not returned. An implementation may
	// stop a partition only at the first record it delivers after Pause,
	// holding that record until Resume (the confluent client does). Resume
	// starts fetching again; a Poll waiting for records returns them as
	// they come (the confluent client's within 10 ms of Resume). Both are
	// safe for concurrent use, with each other and with Poll; calling
	// either twice in a row is harmless.
	Pause()
	Resume()
}

// TxnClient is implemented by clients that support Kafka transactions, which
// the worker's exactly-once option needs.
type TxnClient interface {
	// NewTxnProducer returns a transactional producer with its first
	// transaction open. transactionalID must be unique per worker instance
	// and stable across its restarts (it fences a previous incarnation).
	NewTxnProducer(transactionalID string) (TxnProducer, error)
}

// TxnProducer is a transactional producer: one transaction is always open;
// every record produced goes into it, and Commit ends it and opens the next.
// Produce may be called from any goroutine; Flush, Commit, Abort and Close
// must not run concurrently with each other or with Produce (the caller
// serialises them).
type TxnProducer interface {
	// Produce enqueues r in the open transaction, like Client.Produce with
	// AcksAll. A record whose done gets an error is not in the transaction
	// Commit commits; the records acknowledged are (a record refused does
	// not make the records of other partitions fail: see ErrRecordRefused).
	Produce(r *Record, done func(*Record, error))
	// Flush waits until every record produced so far was acknowledged (as
	// part of the open transaction, not yet visible to read_committed
	// readers).
	Flush(ctx context.Context) error
	// Commit adds offsets (the next offsets to read) as the consumer group's
	// committed offsets of gr to the open transaction, commits it, and opens
	// the next one. gr must come from the same client. A commit the group
	// coordinator refused because gr's group rebalanced meanwhile returns
	// an error wrapping ErrGroupMoved; the transaction must then be
	// aborted.
	Commit(ctx context.Context, gr GroupReader, offsets []TopicPartitionOffset) error
	// Abort aborts the open transaction and opens the next one.
	Abort(ctx context.Context) error
	// Close aborts the open transaction and releases the producer.
	Close() error
}

// TopicLimiter is implemented by clients that can look up a topic's
// record size limit (both of the project's clients do).
type TopicLimiter interface {
	// TopicMaxMessageBytes returns topic's max.message.bytes: its own
	// setting, or the broker's message.max.bytes it falls back to. A
	// topic that does not exist is an error wrapping ErrUnknownTopic; one
	// the client may not describe, an error wrapping ErrNotAuthorized.
	TopicMaxMessageBytes(ctx context.Context, topic string) (int, error)
}

// TopicConfigReader is implemented by clients that can look up a topic's
// configuration (both of the project's clients do).
type TopicConfigReader interface {
	// TopicConfig returns the value in force of topic's configuration
	// entry name (cleanup.policy, retention.ms, ...): the topic's own, or
	// the default it falls back to. A topic that does not exist is an
	// error wrapping ErrUnknownTopic; one the client may not describe, an
	// error wrapping ErrNotAuthorized.
	TopicConfig(ctx context.Context, topic, name string) (string, error)
}

// TopicIdentifier is implemented by clients that can look up a topic's id
// (both of the project's clients do): the UUID Kafka gives a topic when it
// creates it, so that a topic deleted and created again under the same
// name has another, though its name, partitions and offsets may all look
// the same.
type TopicIdentifier interface {
	// TopicID returns topic's id; a cluster that keeps no topic ids (Kafka
	// before 2.8) gives the zero id. A topic that does not exist is an error
	// wrapping ErrUnknownTopic; one the client may not describe, an error
	// wrapping ErrNotAuthorized.
	TopicID(ctx context.Context, topic string) ([16]byte, error)
}

// BatchBounder is implemented by clients whose transactional producers
// batch records up to one size for every topic (librdkafka's batch.size),
// not up to each topic's max.message.bytes. Kafka refuses a whole batch
// larger than the topic's limit: the exactly-once worker then writes to a
// topic whose limit is below MaxBatchBytes one record at a time, since a
// refused batch fails its transaction.
type BatchBounder interface {
	// MaxBatchBytes returns the size up to which the client's producers
	// batch the records of one partition.
	MaxBatchBytes() int
}

// MaxMessageBytes is the record size limit the clients are configured for
// (8 MiB), so that messages of a megabyte and more travel as one record. The
// topics the project creates set max.message.bytes to it, so that an Apache
// Kafka broker with its default limit (about 1 MiB) accepts them too.
const MaxMessageBytes = 8 << 20

// TopicConfig returns the topic configuration the project's own topics are
// created with: max.message.bytes = MaxMessageBytes.
func TopicConfig() map[string]string {
	return map[string]string{"max.message.bytes": strconv.Itoa(MaxMessageBytes)}
}

// Replication returns the replication factor and min.insync.replicas the
// project creates its topics with on a cluster of brokers brokers: 3 and 2
// from three brokers on (one broker may fail without refusing acks=all
// writes or losing an acknowledged record), else 0 and 0 (the broker's
// defaults). Safe for concurrent use.
func Replication(brokers int) (factor int16, minInsync int) {
	if brokers >= 3 {
		return 3, 2
	}
	return 0, 0
}

// ReplicatedSpecs sets the replication factor and min.insync.replicas of
// the specs that leave the factor to the broker (0 or -1), as Replication
// says for the cluster of c, and returns them; the Config maps are copied
// before they are changed. It is how the project's test helpers create
// topics. Safe for concurrent use.
func ReplicatedSpecs(ctx context.Context, c interface {
	Brokers(ctx context.Context) (int, error)
}, specs []TopicSpec) ([]TopicSpec, error) {
	n, err := c.Brokers(ctx)
	if err != nil {
		return nil, err
	}
	factor, isr := Replication(n)
	if factor == 0 {
		return specs, nil
	}
	out := make([]TopicSpec, len(specs))
	for i, s := range specs {
		if s.ReplicationFactor <= 0 {
			s.ReplicationFactor = factor
			cfg := make(map[string]string, len(s.Config)+1)
			for k, v := range s.Config {
				cfg[k] = v
			}
			if _, set := cfg["min.insync.replicas"]; !set {
				cfg["min.insync.replicas"] = strconv.Itoa(isr)
			}
			s.Config = cfg
		}
		out[i] = s
	}
	return out, nil
}
