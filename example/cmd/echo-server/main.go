// Command echo-server serves example.echo.v1.EchoService as a plain gRPC
// server, with no Kafka: the same implementation the worker runs, for
// comparison and as the target of a proxying worker.
//
//	echo-server [--listen 127.0.0.1:7152]
package main

import (
	"flag"
	"fmt"
	"net"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/example/internal/app"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:7152", "gRPC listen address")
	app.RegisterServerFlags()
	app.ParseFlags("echo-server")
	logger := app.Logger()
	ctx, stop := app.Signals()
	defer stop()
	srv := app.NewServer()
	echov1.RegisterEchoServiceServer(srv, echoserver.Server{})
	err := app.Serve(ctx, srv, *listen, func(a net.Addr) {
		fmt.Printf("echo-server: ready: gRPC on %s\n", a)
	})
	if err != nil {
		app.Fatal(logger, "serving gRPC", err)
	}
}
