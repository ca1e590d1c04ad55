// Command echo-worker is the example's worker alone: it consumes the
// echo-requests topic in a consumer group and serves each call with the echo
// implementation, replying to the topic each request names. Run several to
// share the load. With --target it is a proxy instead: it forwards every call,
// as raw bytes, to the gRPC server at that address (for example echo-server),
// with no generated code involved.
//
//	echo-worker [--brokers 127.0.0.1:9092] [--group ID] [--group-protocol classic|consumer] [--target host:port] [--outcome-topic NAME]
package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/example/internal/app"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers")
	group := flag.String("group", "", "consumer group id (default kafkarpc-example.echo.v1.EchoService, or kafkarpc-proxy with --target)")
	target := flag.String("target", "", "forward every call to the gRPC server at this address instead of serving it here")
	outcomes := flag.String("outcome-topic", "", "also keep the stored outcomes of keyed calls in this compacted topic (runtime.WorkerOutcomeTopic, created with the others), so that a repeat served after a restart or by another worker does not run again; empty: in this process's memory only")
	protocol := flag.String("group-protocol", "", "consumer group protocol: classic or consumer (KIP-848, Kafka 4.0+); default: the client's, classic")
	app.RegisterKafkaFlags()
	app.RegisterMetricsFlag()
	app.ParseFlags("echo-worker", app.KafkaFlags(brokers, true), func() string {
		if err := kafkaclient.GroupProtocol(*protocol).Check(); err != nil {
			return fmt.Sprintf("--group-protocol %q: want classic or consumer (KIP-848, Kafka 4.0+), or empty for the client's", *protocol)
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
	opts := app.WorkerOptions(logger)
	if *group != "" {
		opts = append(opts, runtime.WorkerGroupID(*group))
	}
	if *outcomes != "" {
		opts = append(opts, runtime.WorkerOutcomeTopic(*outcomes))
	}
	if *protocol != "" {
		opts = append(opts, runtime.WorkerGroupProtocol(kafkaclient.GroupProtocol(*protocol)))
	}
	worker := runtime.NewWorker(client, opts...)
	if err := app.EnsureWorkerTopics(ctx, client, worker, logger); err != nil {
		app.Fatal(logger, "preparing the worker's topics", err)
	}
	if *target != "" {
		cc, err := grpc.NewClient(*target, append(runtime.CallerDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			app.Fatal(logger, "connecting to the target", err)
		}
		defer cc.Close()
		if err := worker.RegisterProxy(cc, []string{"echo-requests"}); err != nil {
			app.Fatal(logger, "registering the proxy", err)
		}
	} else if err := echov1.RegisterEchoServiceKafkaWorker(worker, echoserver.Server{}); err != nil {
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
	select {
	case <-ctx.Done():
	case <-worker.Done():
		// It stopped by itself (a failed transaction): exit, so that the
		// supervisor starts it again.
		app.Fatal(logger, "the worker stopped", worker.Err())
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := worker.Shutdown(sctx); err != nil {
		logger.Warn("shutting down", "error", err)
	}
}
