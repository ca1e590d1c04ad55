package runtime

import (
	"context"

	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Headers a worker adds to the records it copies to its dead-letter topic
// (WorkerDeadLetterTopic), after the request's own headers. They are the
// names of package wire, kept here for existing callers.
const (
	// DeadLetterTopic names the request topic the record came from.
	DeadLetterTopic = wire.DeadLetterTopic
	// DeadLetterPartition is that topic's partition, in decimal.
	DeadLetterPartition = wire.DeadLetterPartition
	// DeadLetterOffset is the record's offset there, in decimal.
	DeadLetterOffset = wire.DeadLetterOffset
	// DeadLetterStatus is the gRPC code the call ended with, in decimal.
	DeadLetterStatus = wire.DeadLetterStatus
	// DeadLetterMessage is that status's message.
	DeadLetterMessage = wire.DeadLetterMessage
	// DeadLetterAttempts is how many times the handler ran, in decimal (1
	// for a request that could not be decoded: it is not retried).
	DeadLetterAttempts = wire.DeadLetterAttempts
	// DeadLetterGroup is the consumer group of the worker that gave up.
	DeadLetterGroup = wire.DeadLetterGroup
)

// deadLetter copies the call's request records to the dead-letter topic,
// each with headers saying where it came from and why. The call's offset is
// committed only once they are acknowledged, like its replies.
func (c *call) deadLetter(st *status.Status) {
	w := c.w
	topic := w.cfg.topic(w.cfg.deadLetterTopic)
	w.stats.deadLettered.Add(1)
	w.tel.deadLetter.Add(context.Background(), 1)
	w.cfg.logger.Warn("kafkarpc: request sent to the dead-letter topic", "topic", topic,
		"correlation_id", c.id, "code", st.Code().String(), "message", st.Message(),
		"from_topic", c.tp.Topic, "partition", c.tp.Partition, "offset", c.first, "attempts", c.attempts)
	for _, r := range c.in.records() {
		hs := make([]kafkaclient.Header, 0, len(r.Headers)+7)
		hs = append(hs, r.Headers...)
		hs = wire.AppendDeadLetter(hs, wire.DeadLetter{
			Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
			Code: uint32(st.Code()), Message: st.Message(), Attempts: c.attempts, Group: w.cfg.groupID,
		})
		w.writer.send(c, &kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: r.Key, Value: r.Value, Headers: hs})
	}
}
