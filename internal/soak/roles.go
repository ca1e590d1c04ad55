package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// outcomeTopicOption is the worker option that keeps stored outcomes in a
// Kafka topic, so that a repeat landing on another worker process is
// answered from the stored outcome (issue 18, item 1).
var outcomeTopicOption = runtime.WorkerOutcomeTopic

// outcomeTopic is the outcome topic's name before the topic mapper.
const outcomeTopic = "echo-outcomes"

// The soak's own metadata: the call id a worker journals (see journal.go).
const callMetadata = "soak-call"

// newKafkaClient connects to brokers with the client library name
// (confluent or franz).
func newKafkaClient(name, brokers string, logger *slog.Logger) (kafkaclient.Client, error) {
	switch name {
	case "confluent":
		return confluent.New(confluent.Config{"bootstrap.servers": brokers}, confluent.WithLogger(logger))
	case "franz":
		return franz.New(franz.WithSeedBrokers(brokers), franz.WithLogger(logger))
	default:
		return nil, fmt.Errorf("-client %q: want confluent or franz", name)
	}
}

// roleLogger logs warnings and errors to stderr, which the orchestrator sends
// to the process's log file in the run directory.
func roleLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// runGateway is the gateway process: a gRPC server on 127.0.0.1 relaying
// every call of the echo service through Kafka. It prints "ready <addr>"
// once it listens and stops gracefully on SIGTERM (bounded).
func runGateway(cfg roleConfig) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := roleLogger()
	client, err := newKafkaClient(cfg.client, cfg.brokers, logger)
	if err != nil {
		return err
	}
	defer client.Close()
	gw := runtime.NewGateway(client, runtime.WithLogger(logger), runtime.WithTopicMapper(cfg.mapper()))
	defer gw.Close()
	srv := grpc.NewServer(runtime.GatewayServerOptions()...)
	if err := echov1.RegisterEchoServiceKafkaGateway(srv, gw); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	fmt.Printf("ready %s\n", lis.Addr())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	return nil
}

// runWorker is a worker process: it serves the echo service from the
// request topic in the soak's consumer group, journalling every execution
// (recorder), prints "ready" once it joined the group and shuts down on
// SIGTERM (bounded).
func runWorker(cfg roleConfig) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := roleLogger()
	j, err := openJournal(cfg.journal)
	if err != nil {
		return err
	}
	defer j.close()
	client, err := newKafkaClient(cfg.client, cfg.brokers, logger)
	if err != nil {
		return err
	}
	defer client.Close()
	opts := []runtime.WorkerOption{runtime.WithLogger(logger), runtime.WithTopicMapper(cfg.mapper()), runtime.WorkerGroupID(cfg.group)}
	if cfg.outcomeTopic {
		if outcomeTopicOption == nil {
			return errors.New("-outcome-topic: this build's runtime has no WorkerOutcomeTopic (see outcomeTopicOption in internal/soak/roles.go)")
		}
		opts = append(opts, outcomeTopicOption(outcomeTopic)) // the mapper adds the prefix
	}
	w := runtime.NewWorker(client, opts...)
	if err := echov1.RegisterEchoServiceKafkaWorker(w, recorder{j: j}); err != nil {
		return err
	}
	if err := w.Start(); err != nil {
		return err
	}
	select {
	case <-w.Ready():
		fmt.Printf("ready pid %d\n", os.Getpid())
	case <-ctx.Done():
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return w.Shutdown(sctx)
}

// recorder is the echo service (echoserver.Server) with every execution
// journalled: a begin before the handler runs, an end with its code after
// it returned. A journal that cannot be written fails the call with
// INTERNAL, so that an unrecorded execution never answers OK.
type recorder struct {
	echov1.UnimplementedEchoServiceServer
	j *journal
}

// run journals one execution of the call in ctx around h.
func (r recorder) run(ctx context.Context, h func() error) error {
	call := "-"
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(callMetadata)) == 1 {
		call = md.Get(callMetadata)[0]
	}
	if err := r.j.begin(call, time.Now().UnixNano()); err != nil {
		return status.Errorf(codes.Internal, "soak: journal: %v", err)
	}
	err := h()
	if jerr := r.j.end(call, status.Code(err).String(), time.Now().UnixNano()); jerr != nil {
		return status.Errorf(codes.Internal, "soak: journal: %v", jerr)
	}
	return err
}

var echo echoserver.Server

func (r recorder) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (resp *echov1.EchoResponse, err error) {
	err = r.run(ctx, func() error {
		resp, err = echo.EchoUnary(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (r recorder) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	return r.run(s.Context(), func() error { return echo.EchoServerStream(req, s) })
}

func (r recorder) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	return r.run(s.Context(), func() error { return echo.EchoClientStream(s) })
}

func (r recorder) EchoBidiStream(s grpc.BidiStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	return r.run(s.Context(), func() error { return echo.EchoBidiStream(s) })
}
