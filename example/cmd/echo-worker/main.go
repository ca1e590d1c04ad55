// Command echo-worker is the example's worker alone: it consumes the
// echo-requests topic in a consumer group and serves each call with the echo
// implementation, replying to the topic each request names. Run several to
// share the load.
//
//	echo-worker [--brokers 127.0.0.1:9092] [--group ID]
package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/example/internal/app"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers")
	group := flag.String("group", "", "consumer group id (default kafkarpc-example.echo.v1.EchoService)")
	flag.Parse()
	logger := app.Logger()
	ctx, stop := app.Signals()
	defer stop()

	client, err := app.NewClient(*brokers, logger)
	if err != nil {
		app.Fatal(logger, "connecting to Kafka", err)
	}
	defer client.Close()
	if err := app.EnsureTopics(ctx, client); err != nil {
		app.Fatal(logger, "preparing topics", err)
	}
	opts := []runtime.WorkerOption{runtime.WithLogger(logger)}
	if *group != "" {
		opts = append(opts, runtime.WithGroupID(*group))
	}
	worker := runtime.NewWorker(client, opts...)
	if err := echov1.RegisterEchoServiceKafkaWorker(worker, echoserver.Server{}); err != nil {
		app.Fatal(logger, "registering the worker", err)
	}
	if err := worker.Start(); err != nil {
		app.Fatal(logger, "starting the worker", err)
	}
	select {
	case <-worker.Ready():
		fmt.Printf("echo-worker: ready: serving %v from Kafka at %s, group %s\n", worker.Topics(), *brokers, worker.GroupID())
	case <-ctx.Done():
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := worker.Shutdown(sctx); err != nil {
		logger.Warn("shutting down", "error", err)
	}
}
