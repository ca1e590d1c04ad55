//go:build !cgo

package kafkarpctest

import (
	"log/slog"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// DefaultClient names the Kafka client Start uses without WithClient: the
// project's default, confluent (confluent-kafka-go, librdkafka through
// cgo), in a build with cgo; franz (franz-go, pure Go) in one without.
const DefaultClient = "franz"

// defaultClient is franz.New with the seed brokers and logger.
func defaultClient(brokers string, logger *slog.Logger) (kafkaclient.Client, error) {
	return franz.New(franz.WithSeedBrokers(brokers), franz.WithLogger(logger))
}
