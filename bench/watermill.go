package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/components/requestreply"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// The closest Go peer: Watermill's request-reply component
// (components/requestreply) over its Kafka Pub/Sub (watermill-kafka, on
// sarama), doing the same echo, in the best configuration found:
//
//   - caller: cqrs.CommandBus on a watermill-kafka Publisher (a sarama
//     SyncProducer: Publish returns once Kafka acknowledged the command),
//     then requestreply.SendWithReply;
//   - replies: ONE watermill-kafka Subscriber on the reply topic for the
//     whole process (no consumer group, every partition), fanned out
//     in-process by operation id (dispatch below). requestreply asks its
//     SubscriberConstructor for a subscriber per call; giving it a new Kafka
//     subscription per call costs a consumer join per call (about 100 ms).
//     Watermill's own in-process fan-out, gochannel.FanOut, hands every reply
//     to every call waiting (one goroutine and one message copy per waiting
//     call per reply); it is measured too, as "watermill-fanout", when
//     -watermill-fanout is set;
//   - worker: cqrs.CommandProcessor on a message.Router with a
//     watermill-kafka Subscriber in a consumer group, handler
//     requestreply.NewCommandHandlerWithResult, replies published by its own
//     Publisher;
//   - protobuf payloads both ways (cqrs.ProtoMarshaler for the command, a
//     protobuf BackendPubsubMarshaler for the reply) instead of the default
//     JSON;
//   - sarama: see saramaConfig.
type watermillEnv struct {
	name      string
	front     *wkafka.Publisher // commands
	back      *wkafka.Publisher // replies
	cmdSub    *wkafka.Subscriber
	replySub  *wkafka.Subscriber
	router    *message.Router
	bus       *cqrs.CommandBus
	backend   *requestreply.PubSubBackend[*echov1.EchoResponse]
	dispatch  *dispatch
	fanout    *gochannel.FanOut
	cancel    context.CancelFunc
	replyDone chan struct{}
}

// saramaConfig is sarama tuned for request/reply latency, with the
// settings our clients use where sarama has them:
//
//   - Version 2.1 (sarama's default; watermill-kafka's 1.0 is refused by
//     Kafka 4);
//   - producer: RequiredAcks WaitForAll (as our acks=all; sarama's default
//     is WaitForLocal); Flush.Frequency/Bytes/Messages 0, i.e. no linger
//     (sarama's default: send as soon as possible); no compression
//     (default); MaxOpenRequests 5 (default); not idempotent (sarama's
//     idempotence forces MaxOpenRequests 1);
//   - consumer: Fetch.Min 1 byte (default), MaxWaitTime 100 ms (as ours;
//     sarama's default 500 ms; data ends the wait at once either way),
//     Offsets.Initial oldest (the topics are new, so nothing is skipped and
//     nothing is lost to a late start), auto-commit every second (default;
//     with it off watermill-kafka commits synchronously after every
//     message), Return.Errors.
func saramaConfig(producer bool) *sarama.Config {
	var c *sarama.Config
	if producer {
		c = wkafka.DefaultSaramaSyncPublisherConfig()
		c.Producer.RequiredAcks = sarama.WaitForAll
		c.Producer.Flush.Frequency = 0
		c.Producer.Flush.Bytes = 0
		c.Producer.Flush.Messages = 0
		c.Producer.Compression = sarama.CompressionNone
		c.Metadata.Retry.Backoff = 250 * time.Millisecond
	} else {
		c = wkafka.DefaultSaramaSubscriberConfig()
		c.Consumer.Fetch.Min = 1
		c.Consumer.MaxWaitTime = 100 * time.Millisecond
		c.Consumer.Offsets.Initial = sarama.OffsetOldest
		c.Consumer.Offsets.AutoCommit.Enable = true
	}
	c.Version = sarama.V2_1_0_0
	return c
}

func newWatermillEnv(admin kafkaclient.Client, brokers, prefix string, withFanout bool) (*watermillEnv, error) {
	reqTopic, replyTopic := prefix+"requests", prefix+"replies"
	if err := createTopics(admin, 3, reqTopic, replyTopic); err != nil {
		return nil, err
	}
	bl := strings.Split(brokers, ",")
	if err := waitForLeaders(bl, 30*time.Second, reqTopic, replyTopic); err != nil {
		return nil, err
	}
	logger := watermill.NopLogger{}
	e := &watermillEnv{name: prefix, replyDone: make(chan struct{})}
	var err error
	if e.front, err = wkafka.NewPublisher(wkafka.PublisherConfig{Brokers: bl, Marshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: saramaConfig(true)}, logger); err != nil {
		return nil, err
	}
	if e.back, err = wkafka.NewPublisher(wkafka.PublisherConfig{Brokers: bl, Marshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: saramaConfig(true)}, logger); err != nil {
		return nil, err
	}
	if e.cmdSub, err = wkafka.NewSubscriber(wkafka.SubscriberConfig{Brokers: bl, Unmarshaler: wkafka.DefaultMarshaler{},
		OverwriteSaramaConfig: saramaConfig(false), ConsumerGroup: prefix + "workers"}, logger); err != nil {
		return nil, err
	}
	if e.replySub, err = wkafka.NewSubscriber(wkafka.SubscriberConfig{Brokers: bl, Unmarshaler: wkafka.DefaultMarshaler{},
		OverwriteSaramaConfig: saramaConfig(false)}, logger); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel

	// One reply subscription for the process.
	var constructor requestreply.PubSubBackendSubscriberConstructorFn
	if withFanout {
		if e.fanout, err = gochannel.NewFanOut(e.replySub, logger); err != nil {
			return nil, err
		}
		e.fanout.AddSubscription(replyTopic)
		go func() { _ = e.fanout.Run(ctx) }()
		<-e.fanout.Running()
		close(e.replyDone)
		constructor = func(requestreply.PubSubBackendSubscribeParams) (message.Subscriber, error) { return e.fanout, nil }
	} else {
		replies, err := e.replySub.Subscribe(ctx, replyTopic)
		if err != nil {
			return nil, err
		}
		e.dispatch = &dispatch{waiting: map[string]chan *message.Message{}}
		go func() {
			defer close(e.replyDone)
			e.dispatch.run(replies)
		}()
		constructor = func(p requestreply.PubSubBackendSubscribeParams) (message.Subscriber, error) {
			return callSubscriber{d: e.dispatch, id: string(p.OperationID)}, nil
		}
	}

	e.backend, err = requestreply.NewPubSubBackend[*echov1.EchoResponse](requestreply.PubSubBackendConfig{
		Publisher:              e.back,
		SubscriberConstructor:  constructor,
		GenerateSubscribeTopic: func(requestreply.PubSubBackendSubscribeParams) (string, error) { return replyTopic, nil },
		GeneratePublishTopic:   func(requestreply.PubSubBackendPublishParams) (string, error) { return replyTopic, nil },
		Logger:                 logger,
		AckCommandErrors:       true,
	}, protoReplies{})
	if err != nil {
		return nil, err
	}
	e.bus, err = cqrs.NewCommandBusWithConfig(e.front, cqrs.CommandBusConfig{
		GeneratePublishTopic: func(cqrs.CommandBusGeneratePublishTopicParams) (string, error) { return reqTopic, nil },
		Marshaler:            cqrs.ProtoMarshaler{},
		Logger:               logger,
	})
	if err != nil {
		return nil, err
	}
	if e.router, err = message.NewRouter(message.RouterConfig{}, logger); err != nil {
		return nil, err
	}
	proc, err := cqrs.NewCommandProcessorWithConfig(e.router, cqrs.CommandProcessorConfig{
		GenerateSubscribeTopic: func(cqrs.CommandProcessorGenerateSubscribeTopicParams) (string, error) { return reqTopic, nil },
		SubscriberConstructor: func(cqrs.CommandProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			return e.cmdSub, nil
		},
		Marshaler: cqrs.ProtoMarshaler{},
		Logger:    logger,
	})
	if err != nil {
		return nil, err
	}
	err = proc.AddHandlers(requestreply.NewCommandHandlerWithResult[echov1.EchoRequest, *echov1.EchoResponse]("echo", e.backend,
		func(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
			return &echov1.EchoResponse{Message: req.GetMessage()}, nil
		}))
	if err != nil {
		return nil, err
	}
	go func() { _ = e.router.Run(ctx) }()
	<-e.router.Running()
	return e, nil
}

// call is one request/reply through Watermill.
func (e *watermillEnv) call(req *echov1.EchoRequest) func(context.Context, int) error {
	return func(ctx context.Context, _ int) error {
		reply, err := requestreply.SendWithReply[*echov1.EchoResponse](ctx, e.bus, e.backend, req)
		if err != nil {
			return err
		}
		if reply.Error != nil {
			return reply.Error
		}
		if reply.HandlerResult.GetMessage() != req.GetMessage() {
			return fmt.Errorf("watermill echo: got %q", reply.HandlerResult.GetMessage())
		}
		return nil
	}
}

func (e *watermillEnv) close() {
	_ = e.router.Close()
	e.cancel()
	if e.fanout != nil {
		_ = e.fanout.Close()
	}
	_ = e.replySub.Close()
	_ = e.cmdSub.Close()
	select {
	case <-e.replyDone:
	case <-time.After(10 * time.Second):
	}
	_ = e.front.Close()
	_ = e.back.Close()
}

// dispatch hands each reply of the one shared reply subscription to the
// call waiting for its operation id, and acknowledges it at once so that
// the partition's next reply is not held behind the caller.
type dispatch struct {
	mu      sync.Mutex
	waiting map[string]chan *message.Message
}

func (d *dispatch) run(replies <-chan *message.Message) {
	for msg := range replies {
		id := msg.Metadata.Get(requestreply.OperationIDMetadataKey)
		d.mu.Lock()
		ch := d.waiting[id]
		d.mu.Unlock()
		if ch != nil {
			select {
			case ch <- msg:
			default:
			}
		}
		msg.Ack()
	}
}

// callSubscriber is what requestreply's SubscriberConstructor returns for
// one call: a view of the shared subscription with that call's replies.
type callSubscriber struct {
	d  *dispatch
	id string
}

func (s callSubscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	ch := make(chan *message.Message, 1)
	s.d.mu.Lock()
	s.d.waiting[s.id] = ch
	s.d.mu.Unlock()
	go func() {
		<-ctx.Done() // requestreply cancels it when the call returns
		s.d.mu.Lock()
		delete(s.d.waiting, s.id)
		s.d.mu.Unlock()
	}()
	return ch, nil
}

func (callSubscriber) Close() error { return nil }

// protoReplies is a requestreply.BackendPubsubMarshaler with protobuf
// payloads (the default is JSON), keeping the error metadata of
// BackendPubsubJSONMarshaler.
type protoReplies struct{}

func (protoReplies) MarshalReply(p requestreply.BackendOnCommandProcessedParams[*echov1.EchoResponse]) (*message.Message, error) {
	var b []byte
	if p.HandlerResult != nil {
		var err error
		if b, err = proto.Marshal(p.HandlerResult); err != nil {
			return nil, err
		}
	}
	msg := message.NewMessage(watermill.NewUUID(), b)
	if p.HandleErr != nil {
		msg.Metadata.Set(requestreply.ErrorMetadataKey, p.HandleErr.Error())
		msg.Metadata.Set(requestreply.HasErrorMetadataKey, "1")
	} else {
		msg.Metadata.Set(requestreply.HasErrorMetadataKey, "0")
	}
	return msg, nil
}

func (protoReplies) UnmarshalReply(msg *message.Message) (requestreply.Reply[*echov1.EchoResponse], error) {
	var r requestreply.Reply[*echov1.EchoResponse]
	if msg.Metadata.Get(requestreply.HasErrorMetadataKey) == "1" {
		r.Error = errors.New(msg.Metadata.Get(requestreply.ErrorMetadataKey))
	}
	resp := &echov1.EchoResponse{}
	if err := proto.Unmarshal(msg.Payload, resp); err != nil {
		return r, err
	}
	r.HandlerResult = resp
	return r, nil
}

// watermillEcho serves EchoUnary over gRPC by a Watermill request-reply
// call: Watermill with a gRPC hop in front, as our gateway has one.
type watermillEcho struct {
	echov1.UnimplementedEchoServiceServer
	w *watermillEnv
}

func (s watermillEcho) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	reply, err := requestreply.SendWithReply[*echov1.EchoResponse](ctx, s.w.bus, s.w.backend, req)
	if err != nil {
		return nil, err
	}
	if reply.Error != nil {
		return nil, reply.Error
	}
	return reply.HandlerResult, nil
}

// waitForLeaders waits until every partition of topics has a leader that
// answers sarama's ListOffsets, up to limit, so that Watermill's publishers
// and subscribers never start on a topic not ready yet. Metadata naming a
// leader is not enough: Apache Kafka's metadata can name a broker before it
// leads the partition, which then answers NOT_LEADER_OR_FOLLOWER (seen once
// as a failed setup of Watermill's reply subscription, whose start asks each
// partition's offset). ListOffsets is answered by the leader only, which is
// how the other contenders' setup waits too: the runtime's CreateTopics
// (confluent: until every partition answers ListOffsets) and the readers'
// end offsets (newReaderAtEnd, a ListOffsets retried on leader errors).
func waitForLeaders(brokers []string, limit time.Duration, topics ...string) error {
	c, err := sarama.NewClient(brokers, saramaConfig(false))
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(limit)
	for {
		err = c.RefreshMetadata(topics...)
		for _, t := range topics {
			if err != nil {
				break
			}
			var parts []int32
			if parts, err = c.Partitions(t); err == nil && len(parts) == 0 {
				err = fmt.Errorf("topic %s has no partitions yet", t)
			}
			for _, p := range parts {
				if err != nil {
					break
				}
				if _, err = c.Leader(t, p); err == nil {
					// Asked of the leader sarama's metadata names; an
					// error refreshes that metadata for the next round.
					if _, err = c.GetOffset(t, p, sarama.OffsetNewest); err != nil {
						err = fmt.Errorf("partition %s/%d does not answer ListOffsets yet: %w", t, p, err)
					}
				}
			}
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("watermill: no leader for every partition of %v within %v: %w", topics, limit, err)
		}
		time.Sleep(100 * time.Millisecond) // a bounded retry of a setup step
	}
}
