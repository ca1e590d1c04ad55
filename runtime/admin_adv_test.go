package runtime_test

// Adversarial faults of topic administration under a running service:
// partitions added, topics deleted and created again, broker-side
// settings changed. Each test failed on the code before its fix, for the
// reason its comment gives, or pins down a behaviour probed and found
// right.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// adminAdvGateway serves a gateway on kc behind a gRPC server and
// returns its client.
func adminAdvGateway(t *testing.T, kc kafkaclient.Client, opts ...runtime.GatewayOption) echov1.EchoServiceClient {
	t.Helper()
	gw := runtime.NewGateway(kc, append([]runtime.GatewayOption{runtime.WithLogger(kafkatest.Logger(t))}, opts...)...)
	t.Cleanup(func() { _ = gw.Close() })
	return echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
}

// TestAdminAdvRequestPartitionsAdded: partitions added to a request topic
// while a worker serves it. A gateway that knows the new count (here one
// started after the growth, as any restarted instance or other producer
// is) spreads its calls over all partitions; the running worker must
// serve them within the callers' deadline (30 s), not after its client's
// next periodic metadata refresh (5 minutes by default with both
// clients).
func TestAdminAdvRequestPartitionsAdded(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("aa") + "."
	req := prefix + "echo-requests"
	kafkatest.CreateTopics(t, kc, 1, req, prefix+"echo-responses")
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })

	worker := runtime.NewWorker(kc, mapper, runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(prefix+"workers"))
	if err := echov1.RegisterEchoServiceKafkaWorker(worker, echoserver.Server{}); err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Close() })

	before := adminAdvGateway(t, kc, mapper)
	if resp, err := before.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "before"}); err != nil || resp.GetMessage() != "before" {
		t.Fatalf("EchoUnary before the growth: %v, %v", resp, err)
	}

	if err := kc.CreatePartitions(ctxFor(t, 30*time.Second), req, 4); err != nil {
		t.Fatalf("adding partitions: %v", err)
	}
	after := adminAdvGateway(t, kafkatest.NewClient(t, brokers), mapper)
	// Idempotency keys chosen so that every new partition gets calls:
	// murmur2 of the correlation id spreads 12 keys over 4 partitions.
	const calls = 12
	errs := make(chan error, calls)
	for i := range calls {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			msg := fmt.Sprintf("after-%d", i)
			ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", prefix+msg)
			resp, err := after.EchoUnary(ctx, &echov1.EchoRequest{Message: msg})
			if err == nil && resp.GetMessage() != msg {
				err = fmt.Errorf("answer %q", resp.GetMessage())
			}
			if err != nil {
				err = fmt.Errorf("call %d after the growth: %w", i, err)
			}
			errs <- err
		}()
	}
	for range calls {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// adminAdvWorker starts an echo worker of group on kc.
func adminAdvWorker(t *testing.T, kc kafkaclient.Client, group string, opts ...runtime.WorkerOption) *runtime.Worker {
	t.Helper()
	return adminAdvWorkerOf(t, kc, group, echoserver.Server{}, opts...)
}

// adminAdvWorkerOf starts a worker of group on kc serving impl.
func adminAdvWorkerOf(t *testing.T, kc kafkaclient.Client, group string, impl echov1.EchoServiceServer, opts ...runtime.WorkerOption) *runtime.Worker {
	t.Helper()
	worker := runtime.NewWorker(kc, append([]runtime.WorkerOption{runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(group)}, opts...)...)
	if err := echov1.RegisterEchoServiceKafkaWorker(worker, impl); err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Close() })
	return worker
}

// adminAdvCalls makes n unary calls at once through client, each with
// deadline d, and reports those that failed.
func adminAdvCalls(t *testing.T, client echov1.EchoServiceClient, what string, n int, d time.Duration) {
	t.Helper()
	errs := make(chan error, n)
	for i := range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			defer cancel()
			msg := fmt.Sprintf("%s-%d", what, i)
			resp, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: msg})
			if err == nil && resp.GetMessage() != msg {
				err = fmt.Errorf("answer %q", resp.GetMessage())
			}
			if err != nil {
				err = fmt.Errorf("%s call %d: %w", what, i, err)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestAdminAdvRequestTopicRecreatedOffsets: a request topic deleted and
// created again while its worker group is down (its committed offsets
// point far into the old topic); calls sent to the new topic before a
// worker of the group starts again must be served from the new topic's
// first record, not skipped up to the old committed offset.
func TestAdminAdvRequestTopicRecreatedOffsets(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("aa") + "."
	req := prefix + "echo-requests"
	kafkatest.CreateTopics(t, kc, 1, req, prefix+"echo-responses")
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	group := prefix + "workers"

	wkc := kafkatest.NewClient(t, brokers)
	worker := adminAdvWorker(t, wkc, group, mapper)
	client := adminAdvGateway(t, kc, mapper)
	adminAdvCalls(t, client, "old", 20, 30*time.Second)
	if err := worker.Shutdown(ctxFor(t, 30*time.Second)); err != nil {
		t.Fatalf("worker shutdown: %v", err)
	}

	deleteTopic(t, brokers, req)
	kafkatest.CreateTopics(t, kc, 1, req)
	// The calls' requests wait in the new topic for a worker. A gateway
	// of its own: the old one's producer may fail its first records to
	// the new topic (UNAVAILABLE, as README's "Topics" says).
	fresh := adminAdvGateway(t, kafkatest.NewClient(t, brokers), mapper)
	done := make(chan struct{})
	go func() {
		defer close(done)
		adminAdvCalls(t, fresh, "new", 10, 45*time.Second)
	}()
	waitEnd := time.Now().Add(30 * time.Second)
	for {
		end, err := kc.Offsets(ctxFor(t, 10*time.Second), req, []int32{0}, kafkaclient.Latest)
		if err == nil && end[0] >= 10 {
			break
		}
		if time.Now().After(waitEnd) {
			t.Fatalf("the new topic's end offsets are %v (%v) after 30 s, want 10 requests", end, err)
		}
		time.Sleep(50 * time.Millisecond) // polling the topic's end, bounded above
	}
	adminAdvWorker(t, kafkatest.NewClient(t, brokers), group, mapper)
	<-done
}

// adminAdvKeyOn returns an idempotency key whose call, on the echo
// service's EchoUnary routed to replyTo, lands on partition p of a request
// topic of n partitions.
func adminAdvKeyOn(t *testing.T, replyTo string, p, n int32) string {
	t.Helper()
	for i := range 1000 {
		key := fmt.Sprintf("key-%d", i)
		id := wire.CorrelationID(wire.DefaultNames(), key, "example.echo.v1.EchoService", "EchoUnary", replyTo)
		if kafkaclient.KeyPartition([]byte(id), n) == p {
			return key
		}
	}
	t.Fatalf("no key of 1000 lands on partition %d of %d", p, n)
	return ""
}

// TestAdminAdvRequestPartitionsAddedOutcomeTopic: partitions added to a
// request topic whose worker stores outcomes in an outcome topic that
// keeps its old count (README: an outcome topic with fewer partitions is
// logged, and the worker serves on). A call on a new partition is served
// within its deadline, and its repeat with the same idempotency key is
// answered without running the handler again (from memory).
func TestAdminAdvRequestPartitionsAddedOutcomeTopic(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("aa") + "."
	req, rep := prefix+"echo-requests", prefix+"echo-responses"
	kafkatest.CreateTopics(t, kc, 1, req, rep)
	if err := kc.CreateTopics(ctxFor(t, 30*time.Second), []kafkaclient.TopicSpec{
		{Name: prefix + "outcomes", Partitions: 1, Config: map[string]string{"cleanup.policy": "compact"}},
	}); err != nil {
		t.Fatal(err)
	}
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	impl := &counting{}
	adminAdvWorkerOf(t, kafkatest.NewClient(t, brokers), prefix+"workers", impl, mapper, runtime.WorkerOutcomeTopic("outcomes"))
	client := adminAdvGateway(t, kc, mapper)
	if _, err := client.EchoUnary(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "before"}); err != nil {
		t.Fatalf("call before the growth: %v", err)
	}

	if err := kc.CreatePartitions(ctxFor(t, 30*time.Second), req, 2); err != nil {
		t.Fatalf("adding a partition: %v", err)
	}
	after := adminAdvGateway(t, kafkatest.NewClient(t, brokers), mapper)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", adminAdvKeyOn(t, rep, 1, 2))
	for i := range 2 {
		resp, err := after.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
		if err != nil || resp.GetMessage() != "charge" {
			t.Fatalf("call %d on the new partition: %v, %v", i, resp, err)
		}
	}
	if n := impl.count("charge"); n != 1 {
		t.Fatalf("the handler ran %d times for one idempotency key, want 1", n)
	}
}
