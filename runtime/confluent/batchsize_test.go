package confluent

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// produceBurst produces n records of size bytes to topic's partition 0 and
// waits for every done; it returns the errors, counted by message.
func (e *env) produceBurst(t *testing.T, topic string, n, size int) map[string]int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := map[string]int{}
	wg.Add(n)
	for range n {
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Key: []byte("k"), Value: make([]byte, size)}, kafkaclient.AcksAll,
			func(_ *kafkaclient.Record, err error) {
				if err != nil {
					mu.Lock()
					failed[err.Error()]++
					mu.Unlock()
				}
				wg.Done()
			})
	}
	wg.Wait()
	return failed
}

// TestBurstToTopicCreatedLater: a record to a topic that does not exist
// yet fails (ErrUnknownTopic); once the topic is created with a
// max.message.bytes below batch.size, a burst of small records to it is
// delivered, as it is to a topic that existed before the client's first
// record.
func TestBurstToTopicCreatedLater(t *testing.T) {
	e := newEnv(t, nil)
	const topic = "created-later"
	errc := make(chan error, 1)
	e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("early")}, kafkaclient.AcksAll,
		func(_ *kafkaclient.Record, err error) { errc <- err })
	if err := <-errc; !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("record to a missing topic: %v, want an error wrapping ErrUnknownTopic", err)
	}
	if err := e.client.CreateTopics(ctxT(t, 10*time.Second), []kafkaclient.TopicSpec{{Name: topic, Partitions: 1,
		Config: map[string]string{"max.message.bytes": "20000"}}}); err != nil {
		t.Fatal(err)
	}
	if failed := e.produceBurst(t, topic, 300, 2000); len(failed) > 0 {
		t.Errorf("300 records of 2000 bytes to a topic with max.message.bytes 20000, created after a first record failed: %v", failed)
	}
}
