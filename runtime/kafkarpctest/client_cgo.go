//go:build cgo

package kafkarpctest

import (
	"fmt"
	"log/slog"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// DefaultClient names the Kafka client Start uses without WithClient and
// without KAFKA_CLIENT: the project's default, confluent
// (confluent-kafka-go, librdkafka through cgo), in a build with cgo; franz
// (franz-go, pure Go) in one without.
const DefaultClient = "confluent"

// newClient makes the client named name (confluent or franz) of brokers,
// with logger.
func newClient(name, brokers string, logger *slog.Logger) (kafkaclient.Client, error) {
	switch name {
	case "confluent":
		return confluent.New(confluent.Config{"bootstrap.servers": brokers}, confluent.WithLogger(logger))
	case "franz":
		return franz.New(franz.WithSeedBrokers(brokers), franz.WithLogger(logger))
	}
	return nil, fmt.Errorf("unknown Kafka client %q: want confluent or franz", name)
}

// clientProblem says why this build cannot make the client named name, or "".
func clientProblem(name string) string {
	if name != "confluent" && name != "franz" {
		return fmt.Sprintf("want confluent or franz (or unset for %s)", DefaultClient)
	}
	return ""
}
