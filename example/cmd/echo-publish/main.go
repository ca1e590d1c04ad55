// Command echo-publish produces EchoEvent records to the topic that the
// example's fetch method, EchoEvents, streams to its callers: what a service
// publishing events would do, with the generated typed publisher
// (echov1.NewEchoService_EchoEvents_KafkaPublisher), one at a time. Every caller of EchoEvents receives each record.
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

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/example/internal/app"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers")
	topic := flag.String("topic", "echo-events", "topic to produce to")
	count := flag.Int("count", 1, "number of records to produce")
	message := flag.String("message", "event", "text of each event, followed by its number")
	key := flag.String("key", "", "record key (empty: no key, spread over the partitions)")
	app.RegisterKafkaFlags()
	app.ParseFlags("echo-publish", app.KafkaFlags(brokers, true), func() string {
		switch {
		case *count < 1:
			return fmt.Sprintf("--count %d: want 1 or more records", *count)
		case *topic == "":
			return "--topic is empty: give the topic to produce to (default echo-events)"
		}
		return ""
	})
	logger := app.Logger()
	ctx, stop := app.Signals()
	defer stop()

	client, ok := app.Connect(ctx, *brokers, logger)
	if !ok {
		return
	}
	defer client.Close()
	// The generated typed publisher of EchoEvents: EchoEvent in, a record
	// on its topic out.
	var opts []runtime.PublisherOption
	if *topic != "echo-events" {
		opts = append(opts, runtime.PublisherTopicMapper(func(string) string { return *topic }))
	}
	pub := echov1.NewEchoService_EchoEvents_KafkaPublisher(client, opts...)
	var pubOpts []runtime.PublishOption
	if *key != "" {
		pubOpts = append(pubOpts, runtime.PublishKey([]byte(*key)))
	}
	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for i := 1; i <= *count; i++ {
		p, err := pub.Publish(wait, &echov1.EchoEvent{Message: *message + " " + strconv.Itoa(i)}, pubOpts...)
		if err != nil {
			app.Fatal(logger, "publishing", err)
		}
		fmt.Printf("echo-publish: %s\n", p)
	}
}
