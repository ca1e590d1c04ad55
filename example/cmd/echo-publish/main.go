// Command echo-publish produces EchoEvent records to the topic that the
// example's fetch method, EchoEvents, streams to its callers: what a service
// publishing events would do. Every caller of EchoEvents receives each record.
//
//	echo-publish [--brokers 127.0.0.1:9092] [--count 1] [--message event] [--key ""] [--topic echo-events]
//
// With the all-in-one echo binary, pass --brokers the address it prints for
// its embedded broker. Message i (from 1) of a run reads "<message> <i>".
package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/example/internal/app"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers")
	topic := flag.String("topic", "echo-events", "topic to produce to")
	count := flag.Int("count", 1, "number of records to produce")
	message := flag.String("message", "event", "text of each event, followed by its number")
	key := flag.String("key", "", "record key (empty: no key, spread over the partitions)")
	flag.Parse()
	logger := app.Logger()
	ctx, stop := app.Signals()
	defer stop()

	client, ok := app.Connect(ctx, *brokers, logger)
	if !ok {
		return
	}
	defer client.Close()
	type result struct {
		rec *kafkaclient.Record
		err error
	}
	done := make(chan result, *count)
	for i := 1; i <= *count; i++ {
		v, err := proto.Marshal(&echov1.EchoEvent{Message: *message + " " + strconv.Itoa(i)})
		if err != nil {
			app.Fatal(logger, "encoding an event", err)
		}
		rec := &kafkaclient.Record{Topic: *topic, Partition: kafkaclient.AnyPartition, Value: v}
		if *key != "" {
			rec.Key = []byte(*key)
		}
		client.Produce(rec, kafkaclient.AcksAll, func(r *kafkaclient.Record, err error) { done <- result{r, err} })
	}
	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for range *count {
		select {
		case r := <-done:
			if r.err != nil {
				app.Fatal(logger, "producing", r.err)
			}
			fmt.Printf("echo-publish: %s/%d@%d\n", r.rec.Topic, r.rec.Partition, r.rec.Offset)
		case <-wait.Done():
			app.Fatal(logger, "producing", wait.Err())
		}
	}
}
