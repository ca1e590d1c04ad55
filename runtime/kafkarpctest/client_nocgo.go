//go:build !cgo

package kafkarpctest

import (
	"fmt"
	"log/slog"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// DefaultClient names the Kafka client Start uses without WithClient and
// without KAFKA_CLIENT: the project's default, confluent
// (confluent-kafka-go, librdkafka through cgo), in a build with cgo; franz
// (franz-go, pure Go) in one without.
const DefaultClient = "franz"

// newClient makes the client named name (only franz without cgo) of
// brokers, with logger.
func newClient(name, brokers string, logger *slog.Logger) (kafkaclient.Client, error) {
	if name != "franz" {
		return nil, fmt.Errorf("Kafka client %q: %s", name, clientProblem(name))
	}
	return franz.New(franz.WithSeedBrokers(brokers), franz.WithLogger(logger))
}

// clientProblem says why this build cannot make the client named name, or "".
func clientProblem(name string) string {
	switch name {
	case "franz":
		return ""
	case "confluent":
		return "confluent needs cgo, and this test binary was built without it (CGO_ENABLED=0 or no C compiler): unset KAFKA_CLIENT or set it to franz"
	}
	return "want franz, the only client of a build without cgo (or unset)"
}
