package kafkarpctest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
	kindsv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/kinds/v1"
)

// startFatal runs Start on a fatalTB in a goroutine of its own (Fatal ends
// it as testing's does) and returns the message of its Fatal, or "" when
// Start returned.
func startFatal(t *testing.T, svc kafkarpctest.Service, opts ...kafkarpctest.Option) string {
	t.Helper()
	tb := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		kafkarpctest.Start(tb, svc, opts...)
	}()
	<-done
	return tb.msg
}

func echoKitService() kafkarpctest.Service {
	return kafkarpctest.Service{
		Spec:            echov1.EchoServiceKafkaSpec,
		RegisterGateway: echov1.RegisterEchoServiceKafkaGateway,
		RegisterWorker: func(w *runtime.Worker) error {
			return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{})
		},
	}
}

// TestKitAdvKafkaClientFromEnv: KAFKA_CLIENT picks the kit's Kafka client,
// as it does for this project's tests and as the README says of `go test
// ./...` ("KAFKA_CLIENT=franz runs them on franz-go"). The kit ignored it:
// KAFKA_CLIENT=franz ran on confluent in a build with cgo, and a value it
// cannot use was not refused.
func TestKitAdvKafkaClientFromEnv(t *testing.T) {
	t.Run("franz", func(t *testing.T) {
		t.Setenv("KAFKA_CLIENT", "franz")
		env := kafkarpctest.Start(t, echoKitService())
		if _, ok := env.Client.(*franz.Client); !ok {
			t.Fatalf("KAFKA_CLIENT=franz: the kit's client is a %T, want *franz.Client", env.Client)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if r, err := echov1.NewEchoServiceClient(env.ClientConn).EchoUnary(ctx, &echov1.EchoRequest{Message: "hi"}); err != nil || r.GetMessage() != "hi" {
			t.Fatalf("EchoUnary on franz = %v, %v", r, err)
		}
	})
	t.Run("confluent", func(t *testing.T) {
		t.Setenv("KAFKA_CLIENT", "confluent")
		if kafkarpctest.DefaultClient == "franz" { // a build without cgo
			if msg := startFatal(t, echoKitService()); !strings.Contains(msg, "KAFKA_CLIENT") || !strings.Contains(msg, "cgo") {
				t.Fatalf("KAFKA_CLIENT=confluent without cgo: fatal %q, want one naming KAFKA_CLIENT and cgo", msg)
			}
			return
		}
		env := kafkarpctest.Start(t, echoKitService())
		if !isDefaultClient(env.Client) {
			t.Fatalf("KAFKA_CLIENT=confluent: the kit's client is a %T", env.Client)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		t.Setenv("KAFKA_CLIENT", "sarama")
		if msg := startFatal(t, echoKitService()); !strings.Contains(msg, `KAFKA_CLIENT="sarama"`) || !strings.Contains(msg, "franz") {
			t.Fatalf("KAFKA_CLIENT=sarama: fatal %q, want one naming the variable, its value and what it may be", msg)
		}
	})
}

// TestKitAdvStartErrorNamesBrokers: when Kafka cannot be reached, Start's
// fatal names the address and where it came from: KAFKA_BROKERS (set in a
// shell or CI, unseen in the test's code) or WithBrokers. It said only
// "creating topics: ..." with the client's error, which on confluent is
// "Local: Broker transport failure", naming neither.
func TestKitAdvStartErrorNamesBrokers(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	_ = lis.Close() // nothing listens there now: connecting is refused at once
	// franz gives up on a refused connection at once (confluent retries
	// until Start's 30 s bound); the message is the kit's either way.
	viaFranz := kafkarpctest.WithClient(func(brokers string) (kafkaclient.Client, error) {
		return franz.New(franz.WithSeedBrokers(brokers), franz.WithLogger(slog.New(slog.DiscardHandler)))
	})
	t.Run("KAFKA_BROKERS", func(t *testing.T) {
		t.Setenv("KAFKA_BROKERS", dead)
		if msg := startFatal(t, echoKitService(), viaFranz); !strings.Contains(msg, dead+" (from KAFKA_BROKERS)") {
			t.Fatalf("Start's fatal with KAFKA_BROKERS=%s unreachable: %q, want it to name the address and KAFKA_BROKERS", dead, msg)
		}
	})
	t.Run("WithBrokers", func(t *testing.T) {
		t.Setenv("KAFKA_BROKERS", "")
		if msg := startFatal(t, echoKitService(), viaFranz, kafkarpctest.WithBrokers(dead)); !strings.Contains(msg, dead+" (from WithBrokers)") {
			t.Fatalf("Start's fatal with WithBrokers(%s) unreachable: %q, want it to name the address and WithBrokers", dead, msg)
		}
	})
}

// defaultsServer answers DefaultsService.Inherit with the text it got.
type defaultsServer struct {
	kindsv1.UnimplementedDefaultsServiceServer
}

func (defaultsServer) Inherit(_ context.Context, in *kindsv1.Ping) (*kindsv1.Pong, error) {
	return &kindsv1.Pong{Text: "defaults " + in.GetText()}, nil
}

// TestKitAdvServices: one kit serves and calls two services (WithServices),
// through the ClientConn and the gateway, with every service's topics
// created. Service took one Spec, so a second service registered by
// RegisterWorker had no topics (its worker logged "request topic does not
// exist" and its calls waited until their deadline) and no ClientConn
// registration (UNIMPLEMENTED).
func TestKitAdvServices(t *testing.T) {
	env := kafkarpctest.Start(t, echoKitService(), kafkarpctest.WithServices(kafkarpctest.Service{
		Spec:            kindsv1.DefaultsServiceKafkaSpec,
		RegisterGateway: kindsv1.RegisterDefaultsServiceKafkaGateway,
		RegisterWorker: func(w *runtime.Worker) error {
			return kindsv1.RegisterDefaultsServiceKafkaWorker(w, defaultsServer{})
		},
	}))
	for _, want := range []string{env.Topic("echo-requests"), env.Topic("defaults-requests")} {
		found := false
		for _, have := range env.Worker.Topics() {
			found = found || have == want
		}
		if !found {
			t.Fatalf("the worker reads %v, want %s among them", env.Worker.Topics(), want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for name, cc := range map[string]interface {
		echov1.EchoServiceClient
	}{"ClientConn": echov1.NewEchoServiceClient(env.ClientConn), "gateway": echov1.NewEchoServiceClient(env.Conn)} {
		if r, err := cc.EchoUnary(ctx, &echov1.EchoRequest{Message: "e"}); err != nil || r.GetMessage() != "e" {
			t.Fatalf("%s: EchoUnary = %v, %v", name, r, err)
		}
	}
	for name, cc := range map[string]kindsv1.DefaultsServiceClient{
		"ClientConn": kindsv1.NewDefaultsServiceClient(env.ClientConn), "gateway": kindsv1.NewDefaultsServiceClient(env.Conn),
	} {
		if r, err := cc.Inherit(ctx, &kindsv1.Ping{Text: "d"}); err != nil || r.GetText() != "defaults d" {
			t.Fatalf("%s: DefaultsService.Inherit = %v, %v; want %q", name, r, err, "defaults d")
		}
	}
	if msg := startFatal(t, echoKitService(), kafkarpctest.WithServices(kafkarpctest.Service{})); !strings.Contains(msg, "Spec") || !strings.Contains(msg, "WithServices") {
		t.Fatalf("a service of WithServices without its Spec: fatal %q, want one naming it", msg)
	}
}

// blockingServer blocks EchoUnary until its context ends, after saying it
// started.
type blockingServer struct {
	echoserver.Server
	started chan<- struct{}
}

func (b blockingServer) EchoUnary(ctx context.Context, _ *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	b.started <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestKitAdvCallsInFlightAtEnd: a (sub)test that ends with calls in flight
// on both paths ends (its cleanup neither hangs nor logs after the test),
// the calls end CANCELLED, and the kit used after its test ended fails each
// call at once with CANCELLED, as grpc-go's closed ClientConn does.
func TestKitAdvCallsInFlightAtEnd(t *testing.T) {
	started := make(chan struct{}, 2)
	ended := make(chan error, 2)
	var env *kafkarpctest.Env
	t.Run("sub", func(t *testing.T) {
		env = kafkarpctest.Start(t, kafkarpctest.Service{
			Spec:            echov1.EchoServiceKafkaSpec,
			RegisterGateway: echov1.RegisterEchoServiceKafkaGateway,
			RegisterWorker: func(w *runtime.Worker) error {
				return echov1.RegisterEchoServiceKafkaWorker(w, blockingServer{started: started})
			},
		})
		for _, c := range []echov1.EchoServiceClient{echov1.NewEchoServiceClient(env.ClientConn), echov1.NewEchoServiceClient(env.Conn)} {
			go func() {
				_, err := c.EchoUnary(context.Background(), &echov1.EchoRequest{Message: "block"})
				ended <- err
			}()
		}
		for range 2 {
			<-started
		}
	})
	for range 2 {
		select {
		case err := <-ended:
			if status.Code(err) != codes.Canceled {
				t.Errorf("a call in flight when its test ended: %v, want CANCELLED", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a call in flight when its test ended has not ended 30 s after the test")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, c := range map[string]echov1.EchoServiceClient{"ClientConn": echov1.NewEchoServiceClient(env.ClientConn), "gateway": echov1.NewEchoServiceClient(env.Conn)} {
		if _, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}); status.Code(err) != codes.Canceled || ctx.Err() != nil {
			t.Errorf("%s used after its test ended: %v (context: %v), want CANCELLED at once", name, err, ctx.Err())
		}
	}
}

// TestKitAdvDeletesTopicsOnACluster: on a cluster the kit did not start
// (KAFKA_BROKERS, WithBrokers), the topics Start created are deleted when
// the test ends. They were left behind: every run of a test suite on a
// shared cluster added each kit's topics (600 of them on this project's
// test broker after a day).
func TestKitAdvDeletesTopicsOnACluster(t *testing.T) {
	brokers := os.Getenv("KAFKA_BROKERS")
	if brokers == "" {
		b, err := embedded.Start()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		brokers = b.Addr()
	}
	var topics []string
	t.Run("kit", func(t *testing.T) {
		env := kafkarpctest.Start(t, echoKitService(), kafkarpctest.WithBrokers(brokers),
			kafkarpctest.WithWorkerOptions(runtime.WorkerDeadLetterTopic("dlq")))
		for _, tp := range echov1.EchoServiceKafkaSpec.Topics(env.Topic) {
			topics = append(topics, tp.Name)
		}
		topics = append(topics, env.Topic("dlq"))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if r, err := echov1.NewEchoServiceClient(env.ClientConn).EchoUnary(ctx, &echov1.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != "m" {
			t.Fatalf("EchoUnary = %v, %v", r, err)
		}
	})
	kc, err := franz.New(franz.WithSeedBrokers(brokers), franz.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, name := range topics {
		for { // a deletion reaches every broker's metadata shortly after Kafka answered it
			ps, err := kc.Partitions(ctx, name)
			if errors.Is(err, kafkaclient.ErrUnknownTopic) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("topic %s 30 s after the kit's test ended: still there (last answer: %d partitions, %v); want it deleted", name, len(ps), err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// TestKitAdvParallelSubtestsShareAKit: one kit, started by the parent
// test, serves parallel subtests (named with '/' and spaces), each calling
// through both paths with every kind it needs; the parent's cleanup runs
// after them all.
func TestKitAdvParallelSubtestsShareAKit(t *testing.T) {
	env := kafkarpctest.Start(t, echoKitService())
	for i := range 6 {
		t.Run(fmt.Sprintf("caller %d/of six", i), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for _, c := range []echov1.EchoServiceClient{echov1.NewEchoServiceClient(env.ClientConn), echov1.NewEchoServiceClient(env.Conn)} {
				for j := range 5 {
					msg := fmt.Sprintf("%d-%d", i, j)
					if r, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: msg}); err != nil || r.GetMessage() != msg {
						t.Fatalf("EchoUnary(%s) = %v, %v", msg, r, err)
					}
				}
				bs, err := c.EchoBidiStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for j := range 3 {
					msg := fmt.Sprintf("b%d-%d", i, j)
					if err := bs.Send(&echov1.EchoRequest{Message: msg}); err != nil {
						t.Fatal(err)
					}
					if r, err := bs.Recv(); err != nil || r.GetMessage() != msg {
						t.Fatalf("bidi %s: %v, %v", msg, r, err)
					}
				}
				if err := bs.CloseSend(); err != nil {
					t.Fatal(err)
				}
				if _, err := bs.Recv(); err != io.EOF {
					t.Fatalf("bidi end: %v, want io.EOF", err)
				}
			}
		})
	}
}
