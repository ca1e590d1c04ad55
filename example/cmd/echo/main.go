// Command echo runs the whole example in one process: a gRPC gateway whose
// calls travel through Kafka to a worker serving the echo implementation.
// Without --brokers it starts an embedded Kafka broker first, so nothing else
// is needed:
//
//	echo [--listen 127.0.0.1:7151] [--brokers host:port] [--demo=false]
//
// Once it prints "ready", it makes one call of each kind through itself and
// prints the answers (--demo=false skips them), then serves until
// interrupted. Call it yourself with grpcurl, for example:
//
//	grpcurl -plaintext -d '{"message":"hello"}' 127.0.0.1:7151 example.echo.v1.EchoService/EchoUnary
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/example/internal/app"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:7151", "gRPC listen address")
	brokers := flag.String("brokers", "", "Kafka bootstrap servers; empty starts an embedded broker")
	showDemo := flag.Bool("demo", true, "once ready, call each method kind through the gateway and print the answers")
	app.RegisterKafkaFlags()
	app.RegisterServerFlags()
	app.RegisterMetricsFlag()
	app.ParseFlags("echo", app.KafkaFlags(brokers, false))
	logger := app.Logger()
	ctx, stop := app.Signals()
	defer stop()

	if *brokers == "" {
		b, err := embedded.Start()
		if err != nil {
			app.Fatal(logger, "starting the embedded broker", err)
		}
		defer b.Close()
		*brokers = b.Addr()
		fmt.Printf("echo: embedded Kafka broker listening on %s\n", *brokers)
	}
	client, ok := app.Connect(ctx, *brokers, logger)
	if !ok {
		return
	}
	defer client.Close()

	worker := runtime.NewWorker(client, app.WorkerOptions(logger)...)
	if err := echov1.RegisterEchoServiceKafkaWorker(worker, echoserver.Server{}); err != nil {
		app.Fatal(logger, "registering the worker", err)
	}
	if err := worker.Start(); err != nil {
		app.Fatal(logger, "starting the worker", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = worker.Shutdown(sctx)
	}()
	select {
	case <-worker.Ready():
	case <-ctx.Done():
		return
	}

	gw := runtime.NewGateway(client, app.GatewayOptions(logger)...)
	defer gw.Close()
	srv := app.NewServer()
	if err := echov1.RegisterEchoServiceKafkaGateway(srv, gw); err != nil {
		app.Fatal(logger, "registering the gateway", err)
	}
	err := app.Serve(ctx, srv, *listen, func(a net.Addr) {
		fmt.Printf("echo: ready: gRPC on %s, Kafka at %s, group %s\n", a, *brokers, worker.GroupID())
		if !*showDemo {
			return
		}
		go func() {
			if err := demo(ctx, a.String()); err != nil {
				logger.Error("echo: demo failed", "error", err)
				return
			}
			fmt.Printf("echo: each call went gateway → %s → worker → %s → gateway; serving on %s until interrupted (Ctrl-C)\n",
				"echo-requests", "echo-responses", a)
		}()
	})
	if err != nil {
		app.Fatal(logger, "serving gRPC", err)
	}
}
