//go:build cgo

package kafkarpctest

import (
	"log/slog"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// DefaultClient names the Kafka client Start uses without WithClient: the
// project's default, confluent (confluent-kafka-go, librdkafka through
// cgo), in a build with cgo; franz (franz-go, pure Go) in one without.
const DefaultClient = "confluent"

// defaultClient is confluent.New with bootstrap.servers and logger.
func defaultClient(brokers string, logger *slog.Logger) (kafkaclient.Client, error) {
	return confluent.New(confluent.Config{"bootstrap.servers": brokers}, confluent.WithLogger(logger))
}
