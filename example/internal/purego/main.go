// Command purego is the whole echo example (gateway, worker, embedded broker)
// in a program that imports only the runtime, runtime/franz and
// runtime/embedded of this module, besides the example's generated code and
// gRPC: it builds with CGO_ENABLED=0, which main_test.go checks. It makes
// one unary call through Kafka and prints the answer.
//
//	CGO_ENABLED=0 go run ./example/internal/purego
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msg, err := run(ctx, "hello without cgo")
	if err != nil {
		fmt.Fprintln(os.Stderr, "purego:", err)
		os.Exit(1)
	}
	fmt.Println(msg)
}

// run starts a broker, a worker and a gateway, and echoes message through
// them.
func run(ctx context.Context, message string) (string, error) {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	broker, err := embedded.Start()
	if err != nil {
		return "", err
	}
	defer broker.Close()
	client, err := franz.New(franz.WithSeedBrokers(broker.Addr()), franz.WithLogger(logger))
	if err != nil {
		return "", err
	}
	defer client.Close()
	topics := []kafkaclient.TopicSpec{{Name: "echo-requests", Partitions: 3}, {Name: "echo-responses", Partitions: 3}}
	if err := client.CreateTopics(ctx, topics); err != nil {
		return "", err
	}

	worker := runtime.NewWorker(client, runtime.WithLogger(logger))
	if err := echov1.RegisterEchoServiceKafkaWorker(worker, echoserver.Server{}); err != nil {
		return "", err
	}
	if err := worker.Start(); err != nil {
		return "", err
	}
	defer worker.Close()
	select {
	case <-worker.Ready():
	case <-ctx.Done():
		return "", errors.New("the worker got no partitions")
	}

	gw := runtime.NewGateway(client, runtime.WithLogger(logger))
	defer gw.Close()
	srv := grpc.NewServer(runtime.GatewayServerOptions()...)
	if err := echov1.RegisterEchoServiceKafkaGateway(srv, gw); err != nil {
		return "", err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	cc, err := grpc.NewClient(lis.Addr().String(), append(runtime.CallerDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return "", err
	}
	defer cc.Close()
	resp, err := echov1.NewEchoServiceClient(cc).EchoUnary(ctx, &echov1.EchoRequest{Message: message})
	if err != nil {
		return "", err
	}
	return resp.GetMessage(), nil
}
