package runtime

import (
	"context"
	"strconv"

	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Headers a worker adds to the records it copies to its dead-letter topic
// (WorkerDeadLetterTopic), after the request's own headers.
const (
	// wire.DeadLetterTopic names the request topic the record came from.
	DeadLetterTopic = "dead-letter:topic"
	// wire.DeadLetterPartition is that topic's partition, in decimal.
	DeadLetterPartition = "dead-letter:partition"
	// wire.DeadLetterOffset is the record's offset there, in decimal.
	DeadLetterOffset = "dead-letter:offset"
	// wire.DeadLetterStatus is the gRPC code the call ended with, in decimal.
	DeadLetterStatus = "dead-letter:status"
	// wire.DeadLetterMessage is that status's message.
	DeadLetterMessage = "dead-letter:message"
	// wire.DeadLetterAttempts is how many times the handler ran, in decimal (1
	// for a request that could not be decoded: it is not retried).
	DeadLetterAttempts = "dead-letter:attempts"
	// wire.DeadLetterGroup is the consumer group of the worker that gave up.
	DeadLetterGroup = "dead-letter:group"
)

// deadLetter copies the call's request records to the dead-letter topic,
// each with headers saying where it came from and why. The call's offset is
// committed only once they are acknowledged, like its replies.
func (c *wCall) deadLetter(st *status.Status) {
	c.inMu.Lock()
	recs := append([]*kafkaclient.Record(nil), c.all...)
	c.inMu.Unlock()
	c.w.stats.deadLettered.Add(1)
	c.w.deadLet.Add(context.Background(), 1)
	c.w.cfg.logger.Warn("kafkarpc: request sent to the dead-letter topic", "topic", c.w.cfg.topic(c.w.cfg.deadLetterTopic),
		"correlation_id", c.id, "code", st.Code().String(), "message", st.Message(),
		"from_topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first, "attempts", c.attempts)
	for _, r := range recs {
		hs := make([]kafkaclient.Header, 0, len(r.Headers)+7)
		hs = append(hs, r.Headers...)
		hs = append(hs,
			kafkaclient.Header{Key: wire.DeadLetterTopic, Value: []byte(r.Topic)},
			kafkaclient.Header{Key: wire.DeadLetterPartition, Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
			kafkaclient.Header{Key: wire.DeadLetterOffset, Value: strconv.AppendInt(nil, r.Offset, 10)},
			kafkaclient.Header{Key: wire.DeadLetterStatus, Value: strconv.AppendInt(nil, int64(st.Code()), 10)},
			kafkaclient.Header{Key: wire.DeadLetterMessage, Value: []byte(st.Message())},
			kafkaclient.Header{Key: wire.DeadLetterAttempts, Value: strconv.AppendInt(nil, int64(c.attempts), 10)},
			kafkaclient.Header{Key: wire.DeadLetterGroup, Value: []byte(c.w.cfg.groupID)},
		)
		c.send(&kafkaclient.Record{
			Topic:     c.w.cfg.topic(c.w.cfg.deadLetterTopic),
			Partition: kafkaclient.AnyPartition,
			Key:       r.Key,
			Value:     r.Value,
			Headers:   hs,
		})
	}
}
