package runtime

import (
	"bytes"
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/topicname"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Producer is the part of a Kafka client a Publisher needs;
// kafkaclient.Client implements it.
type Producer interface {
	// Produce enqueues r and calls done once with the delivered record or
	// the error that failed it (see kafkaclient.Client).
	Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error))
}

// Publisher produces messages to the topic of a fetch method, which the
// gateways stream to the method's callers: what a service publishing events
// does, without building Kafka records by hand. Generated code returns one
// per fetch method (New<Service>_<Method>_KafkaPublisher), typed with the
// method's response message.
//
// A Publisher is safe for concurrent use; records published with the same
// key keep their order.
type Publisher[M proto.Message] struct {
	producer Producer
	method   string
	topic    string
	acks     Acks
	// badTopic says what makes topic a name Kafka refuses, or is "".
	badTopic string
}

// PublisherOption configures a Publisher.
type PublisherOption interface{ applyPublisher(*publisherConfig) }

type publisherConfig struct {
	topic func(string) string
	acks  Acks
}

type publisherOptionFunc func(*publisherConfig)

func (f publisherOptionFunc) applyPublisher(c *publisherConfig) { f(c) }

// PublisherTopicMapper resolves the fetch topic named in the proto, as
// WithTopicMapper does for gateways (give both the same function). Default:
// unchanged.
func PublisherTopicMapper(m func(topic string) string) PublisherOption {
	return publisherOptionFunc(func(c *publisherConfig) { c.topic = m })
}

// PublisherAcks sets the acknowledgement level of the records. Default
// AcksAll.
func PublisherAcks(a Acks) PublisherOption {
	return publisherOptionFunc(func(c *publisherConfig) { c.acks = a })
}

// NewPublisher returns a Publisher of M to the topic of the fetch method m,
// producing through p (which stays owned by the caller). It panics when m
// is not a fetch method: generated code calls it with its own specs only.
func NewPublisher[M proto.Message](p Producer, m *MethodSpec, opts ...PublisherOption) *Publisher[M] {
	if m.Fetch == nil {
		panic(fmt.Sprintf("kafkarpc: NewPublisher: %s is not a fetch method", m.FullMethod()))
	}
	cfg := publisherConfig{acks: AcksAll}
	for _, o := range opts {
		o.applyPublisher(&cfg)
	}
	topic := m.Fetch.Topic
	if cfg.topic != nil {
		topic = cfg.topic(topic)
	}
	return &Publisher[M]{producer: p, method: m.FullMethod(), topic: topic, acks: cfg.acks, badTopic: topicname.Problem(topic)}
}

// Topic returns the topic the publisher produces to, after the topic mapper.
func (p *Publisher[M]) Topic() string { return p.topic }

// PublishOption sets something of one published record.
type PublishOption interface{ applyPublish(*kafkaclient.Record) }

type publishOptionFunc func(*kafkaclient.Record)

func (f publishOptionFunc) applyPublish(r *kafkaclient.Record) { f(r) }

// PublishKey sets the record key. Records with the same key go to the same
// partition and keep their order; a fetch method's callers may select
// records by key (metadata idempotency-key, or a filter in the proto).
// Default: no key, a partition chosen by the client. The key is copied:
// the caller may reuse its buffer once Publish or PublishAsync returned.
func PublishKey(key []byte) PublishOption {
	return publishOptionFunc(func(r *kafkaclient.Record) { r.Key = bytes.Clone(key) })
}

// PublishHeader adds a record header, which fetch filters in the proto can
// select on. Default: none. The value is copied, as PublishKey's key.
func PublishHeader(name string, value []byte) PublishOption {
	return publishOptionFunc(func(r *kafkaclient.Record) {
		r.Headers = append(r.Headers, kafkaclient.Header{Key: name, Value: bytes.Clone(value)})
	})
}

// Published is where Kafka wrote a published record.
type Published struct {
	Topic     string
	Partition int32
	// Offset is -1 when not known (AcksNone).
	Offset int64
}

// String returns topic/partition@offset.
func (p Published) String() string { return fmt.Sprintf("%s/%d@%d", p.Topic, p.Partition, p.Offset) }

// Publish produces msg and waits until Kafka acknowledged it (per the
// publisher's acks) or ctx ends. A ctx that ended before the call
// publishes nothing; one that ends while Publish waits leaves the record
// on its way (it may still be written), unless Kafka's answer is in
// already: then that answer is returned. Errors name the method and the
// topic; a missing topic is an error wrapping kafkaclient.ErrUnknownTopic,
// an ended ctx one wrapping ctx.Err().
func (p *Publisher[M]) Publish(ctx context.Context, msg M, opts ...PublishOption) (Published, error) {
	if err := ctx.Err(); err != nil {
		return Published{Topic: p.topic, Partition: -1, Offset: -1}, fmt.Errorf("kafkarpc: %s: not publishing to %s: %w", p.method, p.topic, err)
	}
	type result struct {
		pub Published
		err error
	}
	done := make(chan result, 1)
	p.PublishAsync(msg, func(pub Published, err error) { done <- result{pub, err} }, opts...)
	select {
	case r := <-done:
		return r.pub, r.err
	case <-ctx.Done():
		select {
		case r := <-done: // answered as ctx ended: the answer is what happened
			return r.pub, r.err
		default:
		}
		return Published{Topic: p.topic, Partition: -1, Offset: -1}, fmt.Errorf("kafkarpc: %s: publishing to %s: %w (the record may still be written)", p.method, p.topic, ctx.Err())
	}
}

// PublishAsync produces msg and returns at once; done is called once, on a
// goroutine of the Kafka client, with where the record was written or the
// error that failed it. done must not block for long. A message that cannot
// be encoded, or a topic name Kafka refuses (1 to 249 characters of
// [a-zA-Z0-9._-], not "." or ".."), fails without producing anything.
func (p *Publisher[M]) PublishAsync(msg M, done func(Published, error), opts ...PublishOption) {
	if p.badTopic != "" {
		// Said here, the same with every broker: the embedded one
		// takes records to such a topic, Apache Kafka refuses them.
		go done(Published{Topic: p.topic, Partition: -1, Offset: -1},
			fmt.Errorf("kafkarpc: %s: publishing to %q: not a valid Kafka topic name: %s", p.method, p.topic, p.badTopic))
		return
	}
	v, err := proto.Marshal(msg)
	if err != nil {
		go done(Published{Topic: p.topic, Partition: -1, Offset: -1}, fmt.Errorf("kafkarpc: %s: encoding the message: %w", p.method, err))
		return
	}
	if v == nil {
		v = []byte{} // an empty message, not a tombstone (which callers never receive)
	}
	rec := &kafkaclient.Record{Topic: p.topic, Partition: kafkaclient.AnyPartition, Value: v}
	for _, o := range opts {
		o.applyPublish(rec)
	}
	p.producer.Produce(rec, p.acks, func(r *kafkaclient.Record, err error) {
		if err != nil {
			done(Published{Topic: p.topic, Partition: -1, Offset: -1}, fmt.Errorf("kafkarpc: %s: publishing to %s: %w", p.method, p.topic, err))
			return
		}
		done(Published{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}, nil)
	})
}
