package kafkatest_test

import (
	"fmt"
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
)

var clients = []string{kafkatest.Confluent, kafkatest.Franz}

// BenchmarkClients runs the seam's benchmarks for both clients side by side
// in one run, each on a fresh embedded broker:
//
//	go test -run '^$' -bench Clients -benchtime 2000x ./internal/kafkatest/
//
// TwoHopFloor is one call in flight (p50/p90/p99 µs); Load is 1, 16 and 256
// calls in flight (calls/s, p50/p99 µs).
func BenchmarkClients(b *testing.B) {
	b.Run("TwoHopFloor", func(b *testing.B) {
		for _, c := range clients {
			b.Run(c, func(b *testing.B) { kafkaclienttest.BenchTwoHopFloor(b, kafkatest.Factory(c)) })
		}
	})
	for _, n := range []int{1, 16, 256} {
		b.Run(fmt.Sprint("Load/inflight=", n), func(b *testing.B) {
			for _, c := range clients {
				b.Run(c, func(b *testing.B) {
					kafkaclienttest.BenchTwoHopLoad(b, kafkatest.Factory(c), kafkaclienttest.Config{}, n)
				})
			}
		})
	}
}
