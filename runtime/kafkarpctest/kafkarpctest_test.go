package kafkarpctest_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	goruntime "runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestStartEcho starts the kit with its default client (DefaultClient of
// this build: CGO_ENABLED=0 runs it on franz; KAFKA_CLIENT unset) and the
// example's echo service: a unary call through Kafka, and a fetch of
// records produced to the test's topic, sent uncopied by the kit's gateway
// server.
func TestStartEcho(t *testing.T) {
	t.Setenv("KAFKA_CLIENT", "")
	env := kafkarpctest.Start(t, kafkarpctest.Service{
		Spec:            echov1.EchoServiceKafkaSpec,
		RegisterGateway: echov1.RegisterEchoServiceKafkaGateway,
		RegisterWorker: func(w *runtime.Worker) error {
			return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{})
		},
	})
	if !isDefaultClient(env.Client) {
		t.Fatalf("the kit's client is a %T, want %s's", env.Client, kafkarpctest.DefaultClient)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := echov1.NewEchoServiceClient(env.Conn)

	resp, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil || resp.GetMessage() != "hello" {
		t.Fatalf("EchoUnary = %q, %v; want hello", resp.GetMessage(), err)
	}

	const n = 20
	errc := make(chan error, n)
	for i := range n {
		v, err := proto.Marshal(&echov1.EchoEvent{Message: fmt.Sprint("event-", i)})
		if err != nil {
			t.Fatal(err)
		}
		// One partition key: the records arrive in the order produced.
		env.Client.Produce(&kafkaclient.Record{Topic: env.Topic("echo-events"), Partition: kafkaclient.AnyPartition, Key: []byte("k"), Value: v},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
	}
	for range n {
		if err := <-errc; err != nil {
			t.Fatalf("producing: %v", err)
		}
	}
	events, err := client.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ev, err := events.Recv()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if want := fmt.Sprint("event-", i); ev.GetMessage() != want {
			t.Fatalf("event %d = %q, want %q", i, ev.GetMessage(), want)
		}
		raw, ok := wire.EventIDFromMessage(ev, wire.DefaultEventIDField)
		if !ok {
			t.Fatalf("event %d has no event id", i)
		}
		if id, err := wire.DecodeEventID(raw); err != nil || len(id) == 0 {
			t.Fatalf("event %d: event id %v, %v", i, id, err)
		}
	}
	if st := env.Gateway.FetchStats(); st.Delivered < n || st.Uncopied != st.Delivered {
		t.Fatalf("fetch stats %+v: want %d or more deliveries, all uncopied", st, n)
	}
}

// TestNoConfluentWithoutCgo: built without cgo, the kit and its tests
// depend on no confluent package and no package with cgo files, so that
// CGO_ENABLED=0 go test ./runtime/kafkarpctest/... builds.
func TestNoConfluentWithoutCgo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	list := exec.CommandContext(ctx, "go", "list", "-deps", "-test", "-f", "{{if .CgoFiles}}cgo{{else}}-{{end}} {{.ImportPath}}", ".")
	list.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("CGO_ENABLED=0 go list -deps -test: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, line := range lines {
		cgo, path, _ := strings.Cut(line, " ")
		if strings.Contains(path, "confluent") || cgo != "-" {
			t.Errorf("without cgo, the kit depends on %s (%s)", path, cgo)
		}
	}
	if len(lines) < 10 {
		t.Fatalf("go list printed %d packages: %s", len(lines), out)
	}
}

// TestStartWithoutGateway runs the kit with no gateway and no gRPC server:
// the test calls through Env.ClientConn, every kind, a fetch, and an error.
func TestStartWithoutGateway(t *testing.T) {
	var intercepted atomic.Int32
	env := kafkarpctest.Start(t, kafkarpctest.Service{
		Spec: echov1.EchoServiceKafkaSpec,
		RegisterWorker: func(w *runtime.Worker) error {
			return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{})
		},
	}, kafkarpctest.WithConnOptions(runtime.ConnUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		intercepted.Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	})))
	if env.Conn != nil || env.Gateway != nil {
		t.Fatalf("without RegisterGateway: Conn %v, Gateway %v; want neither", env.Conn, env.Gateway)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := echov1.NewEchoServiceClient(env.ClientConn)
	if resp, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"}); err != nil || resp.GetMessage() != "hello" {
		t.Fatalf("EchoUnary = %q, %v; want hello", resp.GetMessage(), err)
	}
	if n := intercepted.Load(); n != 1 {
		t.Fatalf("the interceptor of WithConnOptions ran %d times, want 1", n)
	}
	if _, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "x", FailCode: int32(codes.NotFound)}); status.Code(err) != codes.NotFound {
		t.Fatalf("failing EchoUnary: %v, want NOT_FOUND", err)
	}
	s, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int32(3) {
		if r, err := s.Recv(); err != nil || r.GetIndex() != i {
			t.Fatalf("server stream %d: %v, %v", i, r, err)
		}
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("server stream end: %v", err)
	}
	cs, err := client.EchoClientStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"a", "b"} {
		if err := cs.Send(&echov1.EchoRequest{Message: m}); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := cs.CloseAndRecv(); err != nil || r.GetMessage() != "a,b" {
		t.Fatalf("client stream: %v, %v", r, err)
	}
	bs, err := client.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&echov1.EchoRequest{Message: "x"}); err != nil {
		t.Fatal(err)
	}
	if r, err := bs.Recv(); err != nil || r.GetMessage() != "x" {
		t.Fatalf("bidi: %v, %v", r, err)
	}
	_ = bs.CloseSend()
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("bidi end: %v", err)
	}
	v, _ := proto.Marshal(&echov1.EchoEvent{Message: "event"})
	errc := make(chan error, 1)
	env.Client.Produce(&kafkaclient.Record{Topic: env.Topic("echo-events"), Partition: kafkaclient.AnyPartition, Value: v},
		kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	events, err := client.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.Recv()
	if err != nil || ev.GetMessage() != "event" {
		t.Fatalf("EchoEvents: %v, %v", ev, err)
	}
	if _, ok := wire.EventIDFromMessage(ev, wire.DefaultEventIDField); !ok {
		t.Fatal("the event has no event id")
	}
}

// TestStartCreatesWorkerTopics: the topics the worker's own options name (a
// dead-letter topic, an outcome topic) get the test's prefix through the
// kit's topic mapper, so the test cannot create them before Start; Start
// creates them with the spec's topics, before the worker starts.
func TestStartCreatesWorkerTopics(t *testing.T) {
	env := kafkarpctest.Start(t, kafkarpctest.Service{
		Spec: echov1.EchoServiceKafkaSpec,
		RegisterWorker: func(w *runtime.Worker) error {
			return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{})
		},
	}, kafkarpctest.WithWorkerOptions(runtime.WorkerDeadLetterTopic("dlq"), runtime.WorkerOutcomeTopic("outcomes")))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	extra := env.Worker.ExtraTopics()
	if len(extra) != 2 {
		t.Fatalf("the worker's extra topics: %+v, want a dead-letter and an outcome topic", extra)
	}
	for _, want := range []string{env.Topic("dlq"), env.Topic("outcomes")} {
		if ps, err := env.Client.Partitions(ctx, want); err != nil || len(ps) == 0 {
			t.Errorf("topic %s after Start: partitions %v, %v; want it created", want, ps, err)
		}
	}
}

// fatalTB records the first Fatal of Start and ends its goroutine as
// testing's does; other methods are the real test's.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatal(args ...any) { f.msg = fmt.Sprint(args...); goruntime.Goexit() }

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	goruntime.Goexit()
}

// TestStartWithoutSpecFails: a Service without its Spec ends the test with
// a message saying so, before any broker starts. Start panicked with a nil
// pointer dereference.
func TestStartWithoutSpecFails(t *testing.T) {
	tb := &fatalTB{TB: t}
	var panicked any
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { panicked = recover() }()
		kafkarpctest.Start(tb, kafkarpctest.Service{RegisterWorker: func(w *runtime.Worker) error {
			return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{})
		}})
	}()
	<-done
	if panicked != nil || !strings.Contains(tb.msg, "Spec") {
		t.Fatalf("Start without a Spec: panic %v, fatal %q; want a fatal naming Service.Spec", panicked, tb.msg)
	}
}
