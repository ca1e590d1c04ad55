package confluent

import (
	"errors"
	"testing"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestDeliveryError checks how a delivery report becomes Produce's outcome:
// an acks=all report without an offset (librdkafka's report of a
// DUPLICATE_SEQUENCE_NUMBER answer) is not taken for a success.
func TestDeliveryError(t *testing.T) {
	topic := "t"
	report := func(offset kafka.Offset, err error) *kafka.Message {
		return &kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: 2, Offset: offset, Error: err}}
	}
	failed := kafka.NewError(kafka.ErrMsgTimedOut, "timed out", false)
	for _, tc := range []struct {
		name    string
		acks    kafkaclient.Acks
		msg     *kafka.Message
		unknown bool // ErrUnknownOutcome
		ok      bool
	}{
		{"acks=all with an offset", kafkaclient.AcksAll, report(41, nil), false, true},
		{"acks=all without an offset", kafkaclient.AcksAll, report(kafka.OffsetInvalid, nil), true, false},
		{"acks=all failed", kafkaclient.AcksAll, report(kafka.OffsetInvalid, failed), false, false},
		{"acks=1 with an offset", kafkaclient.AcksLeader, report(7, nil), false, true},
		{"acks=0 never has an offset", kafkaclient.AcksNone, report(kafka.OffsetInvalid, nil), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := deliveryError(tc.acks, tc.msg, topic)
			if (err == nil) != tc.ok {
				t.Fatalf("deliveryError = %v, want success %v", err, tc.ok)
			}
			if errors.Is(err, kafkaclient.ErrUnknownOutcome) != tc.unknown {
				t.Fatalf("deliveryError = %v, want ErrUnknownOutcome %v", err, tc.unknown)
			}
			if !tc.ok && !tc.unknown && !errors.Is(err, failed) {
				t.Fatalf("deliveryError = %v, want it to wrap %v", err, failed)
			}
		})
	}
}
