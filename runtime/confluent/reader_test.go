package confluent

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestToRecord checks the conversion of consumed messages across more than
// one slab of records: each record keeps its own fields and headers (also
// past the room a record has for them) after those converted after it.
func TestToRecord(t *testing.T) {
	var b consumerBase
	topic := "t"
	ts := time.UnixMilli(1700000000123)
	var got []*kafkaclient.Record
	var want []kafkaclient.Record
	for i := range 2*slabSize + 3 {
		m := &kafka.Message{
			TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: int32(i % 3), Offset: kafka.Offset(100 + i)},
			Key:            []byte(fmt.Sprint("k", i)),
			Timestamp:      ts,
		}
		w := kafkaclient.Record{Topic: topic, Partition: int32(i % 3), Offset: int64(100 + i), Key: m.Key, Timestamp: ts}
		if i%4 != 0 { // every fourth a tombstone
			m.Value = []byte{}
			w.Value = []byte{}
		}
		for h := range i % 11 { // up to 10 headers: more than a record has room for
			name, val := fmt.Sprint("h", h), []byte(fmt.Sprint(i, ".", h))
			m.Headers = append(m.Headers, kafka.Header{Key: name, Value: val})
			w.Headers = append(w.Headers, kafkaclient.Header{Key: name, Value: val})
		}
		got = append(got, b.toRecord(m))
		want = append(want, w)
	}
	for i := range got {
		if !reflect.DeepEqual(*got[i], want[i]) {
			t.Errorf("record %d = %+v, want %+v", i, *got[i], want[i])
		}
		if (got[i].Value == nil) != (want[i].Value == nil) {
			t.Errorf("record %d: value nil %v, want %v", i, got[i].Value == nil, want[i].Value == nil)
		}
	}
}
