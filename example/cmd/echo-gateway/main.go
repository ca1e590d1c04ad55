// Command echo-gateway is the example's gateway alone: a gRPC server for
// example.echo.v1.EchoService whose every call is relayed through Kafka to
// whichever worker serves the request topic (echo-worker, or a Zilla
// kafka-grpc binding).
//
//	echo-gateway [--brokers 127.0.0.1:9092] [--listen 127.0.0.1:7151]
package main

import (
	"flag"
	"fmt"
	"net"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/example/internal/app"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:7151", "gRPC listen address")
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap servers")
	app.RegisterKafkaFlags()
	app.RegisterServerFlags()
	app.RegisterMetricsFlag()
	app.ParseFlags("echo-gateway", app.KafkaFlags(brokers, true))
	logger := app.Logger()
	ctx, stop := app.Signals()
	defer stop()

	client, ok := app.Connect(ctx, *brokers, logger)
	if !ok {
		return
	}
	defer client.Close()
	gw := runtime.NewGateway(client, app.GatewayOptions(logger)...)
	defer gw.Close()
	srv := app.NewServer()
	if err := echov1.RegisterEchoServiceKafkaGateway(srv, gw); err != nil {
		app.Fatal(logger, "registering the gateway", err)
	}
	err := app.Serve(ctx, srv, *listen, func(a net.Addr) {
		fmt.Printf("echo-gateway: ready: gRPC on %s, Kafka at %s\n", a, *brokers)
	})
	if err != nil {
		app.Fatal(logger, "serving gRPC", err)
	}
}
