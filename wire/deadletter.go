package wire

import "strconv"

// Headers a worker adds to the records it copies to its dead-letter topic,
// after the request's own headers.
const (
	// DeadLetterTopic names the request topic the record came from.
	DeadLetterTopic = "dead-letter:topic"
	// DeadLetterPartition is that topic's partition, in decimal.
	DeadLetterPartition = "dead-letter:partition"
	// DeadLetterOffset is the record's offset there, in decimal.
	DeadLetterOffset = "dead-letter:offset"
	// DeadLetterStatus is the gRPC code the call ended with, in decimal.
	DeadLetterStatus = "dead-letter:status"
	// DeadLetterMessage is that status's message.
	DeadLetterMessage = "dead-letter:message"
	// DeadLetterAttempts is how many times the handler ran, in decimal (1
	// for a request that could not be decoded: it is not retried).
	DeadLetterAttempts = "dead-letter:attempts"
	// DeadLetterGroup is the consumer group of the worker that gave up.
	DeadLetterGroup = "dead-letter:group"
)

// DeadLetter says where a dead-lettered request record came from and why it
// was given up.
type DeadLetter struct {
	Topic     string
	Partition int32
	Offset    int64
	Code      uint32 // the gRPC code the call ended with
	Message   string // that status's message
	Attempts  int
	Group     string
}

// AppendDeadLetter appends the dead-letter headers of d, in the order of the
// constants above.
func AppendDeadLetter(hs []Header, d DeadLetter) []Header {
	return append(hs,
		Header{Key: DeadLetterTopic, Value: []byte(d.Topic)},
		Header{Key: DeadLetterPartition, Value: strconv.AppendInt(nil, int64(d.Partition), 10)},
		Header{Key: DeadLetterOffset, Value: strconv.AppendInt(nil, d.Offset, 10)},
		Header{Key: DeadLetterStatus, Value: strconv.AppendUint(nil, uint64(d.Code), 10)},
		Header{Key: DeadLetterMessage, Value: []byte(d.Message)},
		Header{Key: DeadLetterAttempts, Value: strconv.AppendInt(nil, int64(d.Attempts), 10)},
		Header{Key: DeadLetterGroup, Value: []byte(d.Group)},
	)
}
