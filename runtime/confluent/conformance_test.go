package confluent_test

import (
	"fmt"
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
)

// TestConformance runs the seam's shared suite (the same code as for every
// other client) against this client.
func TestConformance(t *testing.T) {
	kafkaclienttest.Run(t, kafkatest.Factory(kafkatest.Confluent))
}

// BenchmarkTwoHopFloor measures the floor of one RPC through Kafka with this
// client at one call in flight: produce a request, read it, produce the
// reply, read that. Reports p50/p90/p99 in microseconds.
func BenchmarkTwoHopFloor(b *testing.B) {
	kafkaclienttest.BenchTwoHopFloor(b, kafkatest.Factory(kafkatest.Confluent))
}

// BenchmarkTwoHopLoad is the two-hop floor with 1, 16 and 256 calls in
// flight: calls/s and latency with batching under load.
func BenchmarkTwoHopLoad(b *testing.B) {
	for _, n := range []int{1, 16, 256} {
		b.Run(fmt.Sprint("inflight=", n), func(b *testing.B) {
			kafkaclienttest.BenchTwoHopLoad(b, kafkatest.Factory(kafkatest.Confluent), kafkaclienttest.Config{}, n)
		})
	}
}

// BenchmarkFlush measures one record produced then Flush against one record
// produced then its own delivery report (kafkaclienttest.BenchFlush).
func BenchmarkFlush(b *testing.B) {
	kafkaclienttest.BenchFlush(b, kafkatest.Factory(kafkatest.Confluent))
}
