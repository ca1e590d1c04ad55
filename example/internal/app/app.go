// Package app holds what the example binaries share: flags, the Kafka client,
// the topics of the service's spec (created, or checked with
// --create-topics=false), the gRPC server with health and reflection, and
// shutdown on SIGTERM.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Logger returns the binaries' logger: text on stderr, at LOG_LEVEL (debug,
// info, warn, error; default info).
func Logger() *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(os.Getenv("LOG_LEVEL"))); err != nil {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Signals returns a context ended by SIGTERM or SIGINT.
func Signals() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// ParseFlags parses the command line (flag.Parse) and checks it: no
// argument that is not a flag, --tls-cert and --tls-key together, then each
// of checks, which returns what is wrong with the binary's own flags, or
// "". A problem is a usage error, reported on stderr after name with exit
// status 2 before anything starts, as the flag package does for a flag it
// refuses.
func ParseFlags(name string, checks ...func() string) {
	flag.Parse()
	problem := ""
	switch {
	case flag.NArg() > 0:
		problem = fmt.Sprintf("unexpected argument %q: every setting is a flag (%s -h lists them)", flag.Arg(0), name)
	case *tlsCert != "" && *tlsKey == "":
		problem = "--tls-cert needs --tls-key, the certificate's private key"
	case *tlsKey != "" && *tlsCert == "":
		problem = "--tls-key needs --tls-cert, the certificate it is the key of"
	}
	for _, check := range checks {
		if problem != "" {
			break
		}
		problem = check()
	}
	if problem != "" {
		UsageError(name, problem)
	}
}

// KafkaFlags is the check of ParseFlags of a binary that connects to
// Kafka: a known --client (its default is $KAFKA_CLIENT) and, with
// required, a non-empty --brokers (brokers).
func KafkaFlags(brokers *string, required bool) func() string {
	return func() string {
		if *client != ClientConfluent && *client != ClientFranz {
			from := "--client"
			if !IsFlagSet("client") {
				from = "--client (from $KAFKA_CLIENT)"
			}
			return fmt.Sprintf("%s %q: want %s or %s", from, *client, ClientConfluent, ClientFranz)
		}
		if required && *brokers == "" {
			return "--brokers is empty: give the Kafka bootstrap servers, host:port[,host:port...]"
		}
		return ""
	}
}

// IsFlagSet reports whether the command line set the flag name (after
// ParseFlags).
func IsFlagSet(name string) (set bool) {
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// UsageError reports problem, a bad command line, on stderr after name and
// exits with status 2.
func UsageError(name, problem string) {
	fmt.Fprintf(os.Stderr, "%s: %s\n", name, problem)
	os.Exit(2)
}

// Kafka client libraries the --client flag selects.
const (
	ClientConfluent = "confluent" // confluent-kafka-go (librdkafka, cgo): the default
	ClientFranz     = "franz"     // franz-go (pure Go)
)

// client is the --client flag (RegisterKafkaFlags). Its default is the
// KAFKA_CLIENT environment variable (which the tests set), else confluent.
var client = new(string)

func defaultClient() string {
	if v := os.Getenv("KAFKA_CLIENT"); v != "" {
		return v
	}
	return ClientConfluent
}

// ClientName returns the client library selected by --client (after
// flag.Parse).
func ClientName() string { return *client }

// NewClient connects to brokers with the client library selected by
// --client: confluent-kafka-go by default, or franz-go.
func NewClient(brokers string, logger *slog.Logger) (kafkaclient.Client, error) {
	switch *client {
	case ClientConfluent:
		return confluent.New(confluent.Config{"bootstrap.servers": brokers}, confluent.WithLogger(logger))
	case ClientFranz:
		return franz.New(franz.WithSeedBrokers(brokers), franz.WithLogger(logger))
	default:
		return nil, fmt.Errorf("--client %q: want %q or %q", *client, ClientConfluent, ClientFranz)
	}
}

// createTopics is the --create-topics flag (RegisterKafkaFlags); true
// when not registered.
var createTopics = func() *bool { b := true; return &b }()

// Connect returns a Kafka client of brokers (the --client flag's library)
// with the echo service's topics created, or with --create-topics=false
// checked. It exits the program on an error (naming every missing topic),
// and returns ok false when a signal ended ctx while it was starting: the
// caller then returns.
func Connect(ctx context.Context, brokers string, logger *slog.Logger) (c kafkaclient.Client, ok bool) {
	c, err := NewClient(brokers, logger)
	if err != nil {
		Fatal(logger, "connecting to Kafka", err)
	}
	if err := EnsureTopics(ctx, c, logger); err != nil {
		_ = c.Close()
		if ctx.Err() != nil {
			return nil, false // stopped by a signal while starting
		}
		Fatal(logger, "preparing topics", err)
	}
	return c, true
}

// EnsureTopics creates the topics of the echo service's spec when missing
// (every topic its methods use, from echov1.EchoServiceKafkaSpec), or with
// --create-topics=false checks that they exist. Bounded by 10 s.
func EnsureTopics(ctx context.Context, c kafkaclient.Client, logger *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return runtime.EnsureTopics(ctx, c, echov1.EchoServiceKafkaSpec.Topics(nil), runtime.EnsureTopicsOptions{
		VerifyOnly: !*createTopics,
		Logger:     logger,
	})
}

// EnsureWorkerTopics creates (or with --create-topics=false checks) the
// topics a worker's options name, worker.ExtraTopics(), as EnsureTopics does
// the spec's. The spec's topics go along (they exist by now), so that an
// outcome topic gets as many partitions as the request topic has. Bounded
// by 10 s.
func EnsureWorkerTopics(ctx context.Context, c kafkaclient.Client, w *runtime.Worker, logger *slog.Logger) error {
	extra := w.ExtraTopics()
	if len(extra) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	topics := append(echov1.EchoServiceKafkaSpec.Topics(nil), extra...)
	return runtime.EnsureTopics(ctx, c, topics, runtime.EnsureTopicsOptions{VerifyOnly: !*createTopics, Logger: logger})
}

// NewServer returns a gRPC server with the options recommended for a gateway
// (runtime.GatewayServerOptions) and health and reflection registered, so
// that grpcurl works without proto files.
func NewServer() *grpc.Server {
	opts := runtime.GatewayServerOptions()
	if *tlsCert != "" || *tlsKey != "" {
		creds, err := credentials.NewServerTLSFromFile(*tlsCert, *tlsKey)
		if err != nil {
			Fatal(slog.Default(), "loading --tls-cert/--tls-key", err)
		}
		opts = append(opts, grpc.Creds(creds))
	}
	s := grpc.NewServer(opts...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s
}

// Serve listens on addr and serves s until ctx ends, then stops gracefully
// (bounded). ready is called with the bound address once it accepts calls.
func Serve(ctx context.Context, s *grpc.Server, addr string, ready func(net.Addr)) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(lis) }()
	ready(lis.Addr())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		s.Stop()
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// Fatal logs err and exits with status 1.
func Fatal(logger *slog.Logger, msg string, err error) {
	logger.Error(msg, "error", err)
	os.Exit(1)
}

// The flags of RegisterServerFlags and RegisterMetricsFlag; empty when not
// registered.
var (
	metricsAddr = new(string)
	tlsCert     = new(string)
	tlsKey      = new(string)
)

// RegisterKafkaFlags registers --client and --create-topics on the default
// flag set, for a binary that connects to Kafka (NewClient, Connect). Call
// it before ParseFlags. Each binary registers only the groups of flags
// that do something in it, so that -h lists no flag it ignores.
func RegisterKafkaFlags() {
	flag.StringVar(client, "client", defaultClient(),
		"Kafka client library: "+ClientConfluent+" (confluent-kafka-go, librdkafka) or "+ClientFranz+" (franz-go, pure Go); default $KAFKA_CLIENT, else "+ClientConfluent)
	flag.BoolVar(createTopics, "create-topics", true,
		"create the Kafka topics the echo service uses when missing (3 partitions, max.message.bytes 8 MiB); false: only check that they exist, and exit naming the missing ones")
}

// RegisterServerFlags registers --tls-cert and --tls-key on the default
// flag set, for a binary that serves gRPC (NewServer). Call it before
// ParseFlags.
func RegisterServerFlags() {
	flag.StringVar(tlsCert, "tls-cert", "", "serve gRPC over TLS with this certificate (PEM), with --tls-key")
	flag.StringVar(tlsKey, "tls-key", "", "the private key (PEM) of --tls-cert")
}

// RegisterMetricsFlag registers --metrics on the default flag set, for a
// binary that runs a worker, a gateway or a ClientConn (WorkerOptions,
// GatewayOptions). Call it before ParseFlags.
func RegisterMetricsFlag() {
	flag.StringVar(metricsAddr, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464); empty: off")
}

var (
	meterOnce sync.Once
	meter     metric.MeterProvider
)

// meterProvider starts the Prometheus endpoint of --metrics, once, and
// returns its meter provider; nil when the flag is off.
func meterProvider(logger *slog.Logger) metric.MeterProvider {
	meterOnce.Do(func() {
		if *metricsAddr == "" {
			return
		}
		reg := prometheus.NewRegistry()
		exp, err := otelprom.New(otelprom.WithRegisterer(reg))
		if err != nil {
			Fatal(logger, "starting the Prometheus exporter", err)
		}
		lis, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			Fatal(logger, "listening for --metrics", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		go func() { _ = http.Serve(lis, mux) }()
		logger.Info("metrics", "url", "http://"+lis.Addr().String()+"/metrics")
		meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	})
	return meter
}

// runtimeOptions are the runtime options of the shared flags.
func runtimeOptions(logger *slog.Logger) []runtime.Option {
	opts := []runtime.Option{runtime.WithLogger(logger)}
	if mp := meterProvider(logger); mp != nil {
		opts = append(opts, runtime.WithMeterProvider(mp))
	}
	return opts
}

// WorkerOptions returns the worker options of the shared flags (logger,
// metrics), then extra.
func WorkerOptions(logger *slog.Logger, extra ...runtime.WorkerOption) []runtime.WorkerOption {
	var out []runtime.WorkerOption
	for _, o := range runtimeOptions(logger) {
		out = append(out, o)
	}
	return append(out, extra...)
}

// GatewayOptions returns the gateway options of the shared flags (logger,
// metrics), then extra.
func GatewayOptions(logger *slog.Logger, extra ...runtime.GatewayOption) []runtime.GatewayOption {
	var out []runtime.GatewayOption
	for _, o := range runtimeOptions(logger) {
		out = append(out, o)
	}
	return append(out, extra...)
}
