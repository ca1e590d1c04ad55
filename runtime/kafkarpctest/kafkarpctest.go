// Package kafkarpctest runs your own generated service over Kafka inside a Go
// test, in one call: an embedded Kafka broker (or the cluster named by
// KAFKA_BROKERS), topics of the test's own, a worker serving your
// implementation, and a runtime.ClientConn that calls it over Kafka with no
// gRPC server at all. Everything is closed when the test ends.
//
//	env := kafkarpctest.Start(t, kafkarpctest.Service{
//		Spec: echov1.EchoServiceKafkaSpec,
//		RegisterWorker: func(w *runtime.Worker) error {
//			return echov1.RegisterEchoServiceKafkaWorker(w, myServer{})
//		},
//	})
//	client := echov1.NewEchoServiceClient(env.ClientConn)
//
// To test through a gateway as well, give the generated
// Register<Service>KafkaGateway as Service.RegisterGateway: Start then also
// runs a gateway behind an in-memory gRPC connection, like grpc's bufconn,
// in Env.Conn. Its gRPC server is built with runtime.GatewayServerOptions,
// as a production one should be (fetch methods send records uncopied).
//
// # Kafka client
//
// Without WithClient, the environment variable KAFKA_CLIENT (confluent or
// franz) names the Kafka client, as it does for this project's own tests,
// so one test suite runs on either; unset, the client depends on the build
// (DefaultClient names it): with cgo, the project's default, confluent
// (confluent-kafka-go, librdkafka); without cgo (CGO_ENABLED=0, or no C
// compiler), franz (franz-go, pure Go). A test of the kit thus builds and
// runs without a C toolchain, and the kit built without cgo links no
// confluent package (KAFKA_CLIENT=confluent then fails the test, saying
// so). WithClient picks one in code, for example franz in a build with cgo:
//
//	kafkarpctest.Start(t, svc, kafkarpctest.WithClient(func(brokers string) (kafkaclient.Client, error) {
//		return franz.New(franz.WithSeedBrokers(brokers))
//	}))
//
// # Several services
//
// Service describes one generated service. For a test of several (one
// calling another, or two served by one worker), give the others with
// WithServices: one worker, one ClientConn and one gateway then serve and
// call them all, and Start creates every one's topics.
package kafkarpctest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Service is what Start needs of a generated service: its spec (for the
// topics to create and the ClientConn) and its generated registration
// functions.
type Service struct {
	// Spec is the generated <Service>KafkaSpec.
	Spec *runtime.ServiceSpec
	// RegisterGateway is the generated Register<Service>KafkaGateway. Nil
	// (in every service, with WithServices) starts no gateway and no gRPC
	// server (Env.Conn and Env.Gateway are nil): calls go through
	// Env.ClientConn.
	RegisterGateway func(grpc.ServiceRegistrar, *runtime.Gateway) error
	// RegisterWorker registers your implementation, typically by calling
	// the generated Register<Service>KafkaWorker. Nil (in every service,
	// with WithServices) starts no worker (to test against a worker of
	// your own).
	RegisterWorker func(*runtime.Worker) error
}

// Env is a running worker, a Kafka client connection, and optionally a
// gateway. Its fields are safe for concurrent use.
type Env struct {
	// ClientConn calls the service over Kafka, with no gRPC server: pass it
	// to the generated New<Service>Client. Every service's Spec is registered.
	ClientConn *runtime.ClientConn
	// Conn is a gRPC connection to the gateway; nil without
	// RegisterGateway.
	Conn *grpc.ClientConn
	// Gateway and Worker are the runtime objects (Gateway is nil without
	// RegisterGateway, Worker without RegisterWorker).
	Gateway *runtime.Gateway
	Worker  *runtime.Worker
	// Client is the Kafka client both use.
	Client kafkaclient.Client
	// Brokers is the bootstrap address of the cluster.
	Brokers string
	// Prefix is prepended to every topic of the spec, so that tests sharing a
	// cluster stay apart.
	Prefix string
}

// Topic returns the name a topic of the spec has in this test.
func (e *Env) Topic(name string) string { return e.Prefix + name }

// Option configures Start. Options are plain functions: one may be shared
// by tests running in parallel.
type Option func(*config)

type config struct {
	brokers    string
	partitions int32
	gwOpts     []runtime.GatewayOption
	wkOpts     []runtime.WorkerOption
	connOpts   []runtime.ConnOption
	client     func(brokers string) (kafkaclient.Client, error)
	more       []Service
}

// WithServices adds services to the one given to Start: their topics are
// created, their RegisterWorker and RegisterGateway are called on the same
// worker and gateway (in the order given, after Start's own service's),
// and their specs are registered with Env.ClientConn, so that one test
// calls them all. A gateway runs when any of them has RegisterGateway, a
// worker when any has RegisterWorker. Default: none.
func WithServices(more ...Service) Option {
	return func(c *config) { c.more = append(c.more, more...) }
}

// WithBrokers uses the cluster at brokers instead of an embedded broker.
// Default: KAFKA_BROKERS when set, else a fresh embedded broker.
func WithBrokers(brokers string) Option { return func(c *config) { c.brokers = brokers } }

// WithPartitions sets the partition count of the topics Start creates.
// Default 3.
func WithPartitions(n int32) Option { return func(c *config) { c.partitions = n } }

// WithGatewayOptions adds options to the gateway and to Env.ClientConn (the
// connection is the gateway's call path: GatewayReadCommitted, for example,
// applies to both).
func WithGatewayOptions(opts ...runtime.GatewayOption) Option {
	return func(c *config) { c.gwOpts = append(c.gwOpts, opts...) }
}

// WithConnOptions adds options to Env.ClientConn, after the kit's topic
// mapper and logger and those of WithGatewayOptions.
func WithConnOptions(opts ...runtime.ConnOption) Option {
	return func(c *config) { c.connOpts = append(c.connOpts, opts...) }
}

// WithWorkerOptions adds options to the worker.
func WithWorkerOptions(opts ...runtime.WorkerOption) Option {
	return func(c *config) { c.wkOpts = append(c.wkOpts, opts...) }
}

// WithClient sets how the Kafka client is made from the bootstrap address
// (comma-separated host:port). Start calls f once and closes the client
// when the test ends. Default: the client KAFKA_CLIENT names (confluent or
// franz), else DefaultClient, with its default settings and the test's
// logger (see the package doc).
func WithClient(f func(brokers string) (kafkaclient.Client, error)) Option {
	return func(c *config) { c.client = f }
}

// Start starts everything for svc (and the services of WithServices) and
// returns once the worker holds its partitions. Failures end the test with
// tb.Fatal, naming the brokers and where their address came from, so call
// it from the test's own goroutine; tests calling it in parallel get topics
// and groups of their own.
// The topics it creates (with runtime.EnsureTopics) are the specs' and
// those the worker's options name (Worker.ExtraTopics: a dead-letter or
// outcome topic), each with the test's prefix. On a cluster of
// KAFKA_BROKERS or WithBrokers they are deleted when the test ends (with
// the clients of runtime/confluent and runtime/franz, not a WithClient
// client of another type), so that a shared cluster does not collect them.
// It reads top to bottom: broker, client, worker, topics, gateway, server
// and connection, each with its cleanup.
func Start(tb testing.TB, svc Service, opts ...Option) *Env {
	tb.Helper()
	cfg := config{brokers: os.Getenv("KAFKA_BROKERS"), partitions: 3}
	for _, o := range opts {
		o(&cfg)
	}
	services := append([]Service{svc}, cfg.more...)
	for i, s := range services {
		if s.Spec == nil {
			which := "Service.Spec"
			if i > 0 {
				which = fmt.Sprintf("the Spec of service %d of WithServices", i-1)
			}
			tb.Fatalf("kafkarpctest: %s is nil: give it the generated <Service>KafkaSpec", which)
		}
	}
	where := "from KAFKA_BROKERS"
	if os.Getenv("KAFKA_BROKERS") != cfg.brokers {
		where = "from WithBrokers"
	}
	logw := &tbWriter{tb: tb}
	tb.Cleanup(logw.stop) // registered first, so it runs last: the client may log while it closes
	logger := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if cfg.client == nil {
		name := DefaultClient
		if v := os.Getenv("KAFKA_CLIENT"); v != "" {
			if problem := clientProblem(v); problem != "" {
				tb.Fatalf("kafkarpctest: KAFKA_CLIENT=%q: %s", v, problem)
			}
			name = v
		}
		cfg.client = func(brokers string) (kafkaclient.Client, error) { return newClient(name, brokers, logger) }
	}
	if cfg.brokers == "" {
		b, err := embedded.Start()
		if err != nil {
			tb.Fatalf("kafkarpctest: starting the embedded broker: %v", err)
		}
		tb.Cleanup(func() { _ = b.Close() })
		cfg.brokers = b.Addr()
		where = "the embedded broker"
	}
	at := fmt.Sprintf("Kafka at %s (%s)", cfg.brokers, where)
	kc, err := cfg.client(cfg.brokers)
	if err != nil {
		tb.Fatalf("kafkarpctest: Kafka client of %s: %v", at, err)
	}
	tb.Cleanup(func() { _ = kc.Close() })
	env := &Env{Client: kc, Brokers: cfg.brokers, Prefix: "t" + randomHex() + "."}
	// On a cluster that outlives the test, the topics Start creates (all
	// new: their names have the test's prefix) are deleted when it ends,
	// after everything else of the kit stopped, before the client closes.
	var created []string
	if d, ok := kc.(topicDeleter); ok && where != "the embedded broker" {
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := d.DeleteTopics(ctx, created); err != nil {
				logger.Warn("kafkarpctest: deleting the test's topics", "error", err)
			}
		})
	}

	common := []runtime.Option{runtime.WithTopicMapper(env.Topic), runtime.WithLogger(logger)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The worker is made before the topics are created: its options may
	// name topics of their own (a dead-letter topic, an outcome topic),
	// which get the test's prefix and so only the kit can create in time.
	var w *runtime.Worker
	for _, s := range services {
		if s.RegisterWorker == nil {
			continue
		}
		if w == nil {
			wopts := []runtime.WorkerOption{runtime.WorkerGroupID(env.Prefix + "worker")}
			for _, o := range common {
				wopts = append(wopts, o)
			}
			w = runtime.NewWorker(kc, append(wopts, cfg.wkOpts...)...)
			tb.Cleanup(func() { _ = w.Close() })
		}
		if err := s.RegisterWorker(w); err != nil {
			tb.Fatalf("kafkarpctest: registering %s with the worker: %v", s.Spec.Name, err)
		}
	}
	var topics []runtime.Topic
	for _, s := range services {
		topics = append(topics, s.Spec.Topics(env.Topic)...)
	}
	if w != nil {
		topics = append(topics, w.ExtraTopics()...)
	}
	if err := runtime.EnsureTopics(ctx, kc, topics, runtime.EnsureTopicsOptions{Partitions: cfg.partitions, Logger: logger}); err != nil {
		tb.Fatalf("kafkarpctest: creating topics on %s: %v", at, err)
	}
	for _, t := range topics {
		created = append(created, t.Name)
	}
	if w != nil {
		if err := w.Start(); err != nil {
			tb.Fatalf("kafkarpctest: starting the worker on %s: %v", at, err)
		}
		select {
		case <-w.Ready():
		case <-ctx.Done():
			tb.Fatalf("kafkarpctest: the worker got no partitions within 30 s from %s", at)
		}
		env.Worker = w
	}

	copts := make([]runtime.ConnOption, 0, len(common)+len(cfg.gwOpts)+len(cfg.connOpts))
	for _, o := range common {
		copts = append(copts, o)
	}
	for _, o := range cfg.gwOpts {
		copts = append(copts, o)
	}
	env.ClientConn = runtime.NewClientConn(kc, append(copts, cfg.connOpts...)...)
	tb.Cleanup(func() { _ = env.ClientConn.Close() })
	for _, s := range services {
		if err := env.ClientConn.Register(s.Spec); err != nil {
			tb.Fatalf("kafkarpctest: registering %s with the ClientConn: %v", s.Spec.Name, err)
		}
	}
	gateway := false
	for _, s := range services {
		gateway = gateway || s.RegisterGateway != nil
	}
	if !gateway {
		return env
	}

	gopts := make([]runtime.GatewayOption, 0, len(common)+len(cfg.gwOpts))
	for _, o := range common {
		gopts = append(gopts, o)
	}
	env.Gateway = runtime.NewGateway(kc, append(gopts, cfg.gwOpts...)...)
	tb.Cleanup(func() { _ = env.Gateway.Close() })
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(runtime.GatewayServerOptions()...)
	for _, s := range services {
		if s.RegisterGateway == nil {
			continue
		}
		if err := s.RegisterGateway(srv, env.Gateway); err != nil {
			tb.Fatalf("kafkarpctest: registering %s with the gateway: %v", s.Spec.Name, err)
		}
	}
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///kafkarpctest", append(runtime.CallerDialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		tb.Fatalf("kafkarpctest: connecting to the gateway: %v", err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	env.Conn = conn
	return env
}

// topicDeleter is the DeleteTopics of the clients of runtime/confluent and
// runtime/franz.
type topicDeleter interface {
	DeleteTopics(ctx context.Context, names []string) error
}

func randomHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// tbWriter sends log lines to the test's log until stop: testing panics on
// a Log after the test ended, which a client's goroutine may still attempt.
type tbWriter struct {
	mu      sync.Mutex
	tb      testing.TB
	stopped bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.tb.Log(string(p))
	}
	return len(p), nil
}

func (w *tbWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
