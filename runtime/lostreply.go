package runtime

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// lostStatus is the status a caller gets when Kafka did not take every reply
// of its call: the call ran, and what it answered did not all arrive.
// stored says whether a retry with the same idempotency key gets the
// outcome from the worker's memory. A reply refused as too large is
// RESOURCE_EXHAUSTED, as gRPC ends a call whose message is over a size
// limit: a retry would get the same answer refused again. One Kafka refused
// for another reason no retry cures (kafkaclient.ErrRecordRefused) is
// FAILED_PRECONDITION.
func lostStatus(method string, err error, stored bool) *status.Status {
	if method != "" {
		method += ": "
	}
	if tooLarge(err) {
		return status.Newf(codes.ResourceExhausted, "%sthe worker answered the call but a reply is larger than Kafka takes (%v); a retry cannot succeed",
			method, err)
	}
	if errors.Is(err, kafkaclient.ErrRecordRefused) {
		return status.Newf(codes.FailedPrecondition, "%sthe worker answered the call but Kafka refused a reply (%v); a retry cannot succeed until the reply topic takes it",
			method, err)
	}
	retry := "retry it; it may run again"
	if stored {
		retry = "retry it with the same idempotency-key to get its outcome without running it again"
	}
	return status.Newf(codes.Unavailable, "%sthe worker answered the call but Kafka did not take every reply (%v); %s",
		method, err, retry)
}

// lostAfterEnd handles a reply that failed after the end went out, or the
// end itself failing: the caller is told (reportLost) instead of being left
// waiting for its deadline; unless repeats wait for the same outcome, whose
// replay goes to the same correlation id and answers the caller too.
func (c *call) lostAfterEnd(outcome *status.Status) {
	w := c.w
	w.mu.Lock()
	// A replay to waiters reaches this call's caller only when neither
	// carries an attempt id to tell them apart.
	replayed := c.keepReplies && remembered(outcome) && w.repeats.hasWaiters(c) && c.attempt == nil
	w.mu.Unlock()
	if !replayed {
		c.reportLost(outcome)
	}
}

// reportLost writes one more end-of-stream record, with lostStatus, after a
// reply of the call failed. A gateway that got the whole answer has ended the
// call and drops it; one still waiting ends the call with it. A failure of
// this record too is logged, and the caller waits for its deadline.
func (c *call) reportLost(outcome *status.Status) {
	names := &c.w.cfg.names
	hs := make([]kafkaclient.Header, 0, 4+len(c.w.incarnation)+len(c.attempt))
	hs = append(hs, kafkaclient.Header{Key: names.CorrelationID, Value: c.idb})
	hs = append(append(hs, c.w.incarnation...), c.attempt...)
	hs = wire.AppendStatus(hs, names, lostStatus(c.method(), c.sent.failure(), c.keepReplies && remembered(outcome)))
	c.countLost()
	c.w.writer.send(c, &kafkaclient.Record{Topic: c.replyTo, Partition: kafkaclient.AnyPartition, Key: c.idb, Headers: hs})
	_ = c.w.writer.flush(c) // its failure is logged by the delivery callback
}

func (c *call) countLost() {
	c.w.stats.lostReplies.Add(1)
	c.w.tel.lost.Add(context.Background(), 1)
}

// givenUpEnd returns an end-of-stream record with the UNAVAILABLE status of
// a call the worker gave up midway, for a txnWriter to write should the
// transaction holding the call's own end be aborted at a rejoin.
func (c *call) givenUpEnd() *kafkaclient.Record {
	names := &c.w.cfg.names
	hs := make([]kafkaclient.Header, 0, 4+len(c.w.incarnation)+len(c.attempt))
	hs = append(hs, kafkaclient.Header{Key: names.CorrelationID, Value: c.idb})
	hs = append(append(hs, c.w.incarnation...), c.attempt...)
	hs = wire.AppendStatus(hs, names, status.New(codes.Unavailable, "the worker gave up the call midway (rebalance or shutdown); retry it"))
	return &kafkaclient.Record{Topic: c.replyTo, Partition: kafkaclient.AnyPartition, Key: c.idb, Headers: hs}
}
