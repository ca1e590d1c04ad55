package franz_test

import (
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
)

// TestConformance runs the seam's shared suite (the same code as for every
// other client) against this client.
func TestConformance(t *testing.T) {
	kafkaclienttest.Run(t, kafkatest.Factory(kafkatest.Franz))
}

// BenchmarkTwoHopFloor measures the floor of one RPC through Kafka with this
// client at one call in flight: produce a request, read it, produce the
// reply, read that. Reports p50/p90/p99 in microseconds.
func BenchmarkTwoHopFloor(b *testing.B) {
	kafkaclienttest.BenchTwoHopFloor(b, kafkatest.Factory(kafkatest.Franz))
}

// BenchmarkFlush measures one record produced then Flush against one record
// produced then its own delivery report (kafkaclienttest.BenchFlush).
func BenchmarkFlush(b *testing.B) {
	kafkaclienttest.BenchFlush(b, kafkatest.Factory(kafkatest.Franz))
}
