package runtime_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestRouteAdvShardIndexOutOfRange configures a gateway as instance index of
// count with index outside 0..count-1 (a deployment's off-by-one: the
// fourth pod of three, or -1). Such an instance reads no reply partition of
// a topic, so no correlation id it can draw lands on one it reads: the
// gateway must refuse the configuration when it prepares the service,
// naming the index and the count, not take calls it can never answer.
func TestRouteAdvShardIndexOutOfRange(t *testing.T) {
	e := setup(t, echoserver.Server{})
	for _, tc := range []struct{ index, count int }{{3, 3}, {-1, 3}, {5, 2}} {
		t.Run(fmt.Sprintf("%d_of_%d", tc.index, tc.count), func(t *testing.T) {
			kc := kafkatest.NewClient(t, e.brokers)
			gw := runtime.NewGateway(kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
				runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReplyShard(tc.index, tc.count))
			t.Cleanup(func() { _ = gw.Close() })
			var regErr error
			client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
				regErr = echov1.RegisterEchoServiceKafkaGateway(s, gw)
			}))
			if regErr != nil {
				msg := regErr.Error()
				if !strings.Contains(msg, fmt.Sprint(tc.index)) || !strings.Contains(msg, "GatewayReplyShard") {
					t.Fatalf("registration refused with %q, want an error naming GatewayReplyShard and the index %d", msg, tc.index)
				}
				return
			}
			// Accepted: show what a caller gets (before the fix: DEADLINE_EXCEEDED,
			// and a gateway goroutine drawing ids forever).
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
				done <- err
			}()
			select {
			case err := <-done:
				t.Fatalf("GatewayReplyShard(%d, %d) accepted; a call through it ended %v", tc.index, tc.count, err)
			case <-time.After(30 * time.Second):
				t.Fatalf("GatewayReplyShard(%d, %d) accepted; a call with a 5 s deadline through it had not returned 30 s later", tc.index, tc.count)
			}
		})
	}
}

// TestRouteAdvShardRepliesOnAddedPartitions: a reply topic of 3 partitions
// shared by 3 gateway instances grows to 4 while they run. A worker whose
// producer knows the 4 partitions before a gateway noticed them (its
// refresh runs every 10 s) writes each reply where murmur2 over 4 puts it;
// the gateway drew the call's id for 3. Half of those land on a partition
// of another instance's share (1 or 2 for instance 0), which this instance
// never read even once it noticed the growth: the calls waited for their
// deadline. An unsharded gateway reads the added partitions from their
// start when it notices them (TestRepliesOnPartitionsAddedToReplyTopicArrive).
func TestRouteAdvShardRepliesOnAddedPartitions(t *testing.T) {
	defer runtime.SetPartitionsRefresh(time.Hour)() // the test says when the gateway notices
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("rs") + "."
	requests, replies := prefix+"echo-requests", prefix+"echo-responses"
	kafkatest.CreateTopics(t, kc, 3, requests, replies)
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	gw := runtime.NewGateway(kafkatest.NewClient(t, brokers), mapper, runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReplyShard(0, 3))
	t.Cleanup(func() { _ = gw.Close() })
	client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))

	ctx := ctxFor(t, 90*time.Second)
	// Other instances' replies of the past on their partitions, then a
	// look at the topic as the periodic refresh takes: none of those is
	// read again once the topic grew.
	const history = 50
	produced := make(chan error, 2*history)
	for i := range 2 * history {
		kc.Produce(&kafkaclient.Record{Topic: replies, Partition: int32(1 + i%2), Key: []byte("past"), Value: []byte("x"),
			Headers: []kafkaclient.Header{{Key: "zilla:correlation-id", Value: []byte(fmt.Sprint("past-", i))}}},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { produced <- err })
	}
	for range 2 * history {
		if err := <-produced; err != nil {
			t.Fatal(err)
		}
	}
	if err := runtime.RefreshReplyPartitionsForTest(ctx, gw); err != nil {
		t.Fatal(err)
	}
	const grown = 4
	if err := kc.CreatePartitions(ctx, replies, grown); err != nil {
		t.Fatal(err)
	}
	// A worker whose client learns the reply topic as it is now.
	w := runtime.NewWorker(kafkatest.NewClient(t, brokers), mapper, runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(prefix+"workers"))
	if err := echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	select {
	case <-w.Ready():
	case <-ctx.Done():
		t.Fatal("worker got no partitions")
	}

	// Each call's id is random: 24 calls put some replies on partition 1
	// or 2 (each one does with odds 1/2).
	const calls = 24
	type result struct {
		msg string
		err error
	}
	results := make(chan result, calls)
	callCtx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	for i := range calls {
		go func() {
			msg := fmt.Sprint("call-", i)
			r, err := client.EchoUnary(callCtx, &echov1.EchoRequest{Message: msg})
			if err == nil && r.GetMessage() != msg {
				err = fmt.Errorf("answered %q", r.GetMessage())
			}
			results <- result{msg, err}
		}()
	}

	// Wait until the worker answered every call, then let the gateway notice.
	reader, err := kc.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	parts := []int32{0, 1, 2, 3}
	offs, err := kc.Offsets(ctx, replies, parts, kafkaclient.Earliest)
	if err != nil {
		t.Fatal(err)
	}
	var assign []kafkaclient.TopicPartitionOffset
	for _, p := range parts {
		assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: replies, Partition: p, Offset: offs[p]})
	}
	if err := reader.Assign(assign); err != nil {
		t.Fatal(err)
	}
	ends, foreign := 0, 0
	for ends < calls {
		recs, err := reader.Poll(callCtx)
		if err != nil {
			t.Fatalf("reading the reply topic: %d of %d calls answered: %v", ends, calls, err)
		}
		for _, r := range recs {
			if r.Value == nil {
				ends++
				if r.Partition%3 != 0 {
					foreign++
				}
			}
		}
	}
	if foreign == 0 {
		t.Fatalf("no reply of %d went to partition 1 or 2: the test shows nothing", calls)
	}
	if err := runtime.RefreshReplyPartitionsForTest(ctx, gw); err != nil {
		t.Fatal(err)
	}
	var failed []string
	for range calls {
		if r := <-results; r.err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", r.msg, r.err))
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d calls (%d answered on another instance's partition) failed after the gateway noticed the added partition:\n%s",
			len(failed), calls, foreign, strings.Join(failed, "\n"))
	}
	if d := gw.Stats().RepliesDropped; d >= history {
		t.Fatalf("the gateway dropped %d reply records: it read the %d records other instances had on their partitions before the topic grew", d, 2*history)
	}
}

// TestRouteAdvShardsMismatchedAndRestarted runs gateway instances on one
// reply topic whose shard settings disagree (0 of 3, 1 of 2, and one
// unsharded), with calls keyed by the caller's idempotency key and not, and
// then restarts the first instance: every call gets its own answer, none
// another's, whichever instances read its reply partition.
func TestRouteAdvShardsMismatchedAndRestarted(t *testing.T) {
	e := setup(t, echoserver.Server{})
	newInstance := func(opts ...runtime.GatewayOption) (*runtime.Gateway, echov1.EchoServiceClient) {
		kc := kafkatest.NewClient(t, e.brokers)
		gw := runtime.NewGateway(kc, append([]runtime.GatewayOption{runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
			runtime.WithLogger(kafkatest.Logger(t))}, opts...)...)
		t.Cleanup(func() { _ = gw.Close() })
		return gw, echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
			if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
				t.Fatal(err)
			}
		}))
	}
	first, c0 := newInstance(runtime.GatewayReplyShard(0, 3))
	_, c1 := newInstance(runtime.GatewayReplyShard(1, 2))
	_, c2 := newInstance()
	ctx := ctxFor(t, 120*time.Second)
	round := func(name string, clients []echov1.EchoServiceClient) {
		t.Helper()
		const calls = 30
		errs := make(chan error, calls)
		for i := range calls {
			go func() {
				msg := fmt.Sprintf("%s-%d", name, i)
				cctx := ctx
				if i%3 == 0 {
					cctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", msg)
				}
				r, err := clients[i%len(clients)].EchoUnary(cctx, &echov1.EchoRequest{Message: msg})
				if err == nil && r.GetMessage() != msg {
					err = fmt.Errorf("answered %q", r.GetMessage())
				}
				if err != nil {
					err = fmt.Errorf("%s call %d through instance %d: %w", name, i, i%len(clients), err)
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
	round("mismatched", []echov1.EchoServiceClient{c0, c1, c2})
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	_, c0 = newInstance(runtime.GatewayReplyShard(0, 3))
	round("restarted", []echov1.EchoServiceClient{c0, c1, c2})
}
