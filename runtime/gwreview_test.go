package runtime_test

// Faults of the gateway's and ClientConn's caller side found by review
// (gateway.go, gwcall.go, connstream.go). Each test compares a behaviour
// with what grpc-go's own server or ClientConn does in the same situation.

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// cancelOnLookup is a Kafka client whose lookup of topic runs hook first
// (with the caller's context), e.g. to cancel the call that looks it up.
type cancelOnLookup struct {
	produceLog
	topic string
	hook  func()
}

func (c *cancelOnLookup) Partitions(ctx context.Context, topic string) ([]int32, error) {
	if topic == c.topic && c.hook != nil {
		c.hook()
	}
	return c.produceLog.Partitions(ctx, topic)
}

// TestConnCancelDuringTopicLookupSendsNothing: the first call to a request
// topic waits while the topic is looked up (up to GatewaySetupTimeout). A
// caller that cancels during that wait is told CANCELLED, and nothing may
// reach the worker, as with a context cancelled before the call (grpc-go
// sends nothing for a call cancelled while it waits for a transport).
// begin looked at the context before the lookup only: the request and its
// end were produced after the cancel, so the worker could run a call whose
// caller had been told it was cancelled.
func TestConnCancelDuringTopicLookupSendsNothing(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("cl") + "."
	kafkatest.CreateTopics(t, kc, 1, prefix+"echo-requests", prefix+"echo-responses")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wrapped := &cancelOnLookup{produceLog: produceLog{Client: kc}, topic: prefix + "echo-requests", hook: cancel}
	_, echo := connTo(t, wrapped, prefix)

	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("unary cancelled during the topic lookup: %v, want CANCELLED", err)
	}
	if n := wrapped.count(prefix + "echo-requests"); n != 0 {
		t.Errorf("a unary call cancelled during its topic lookup produced %d request records, want none", n)
	}
}

// TestConnOnFinishBeforeStreamEnds: grpc-go runs a stream's grpc.OnFinish
// callbacks inside the RecvMsg that ends the stream (clientStream.finish,
// before RecvMsg returns io.EOF or the status), so that what a streaming
// interceptor records there is in place once the caller sees the end. The
// connection released RecvMsg first and ran OnFinish afterwards on its own
// goroutine: a caller reading what its OnFinish recorded right after Recv
// returned io.EOF could find nothing there yet (a data race). Here OnFinish
// waits for the caller's Recv to return: it must not (the wait's bound is
// what the correct order costs, and Trailer must be ready inside OnFinish,
// as grpc-go's is).
func TestConnOnFinishBeforeStreamEnds(t *testing.T) {
	e := setup(t, headerStream{})
	recvDone := make(chan struct{})
	type finished struct {
		err            error
		afterRecv      bool
		trailerPresent bool
	}
	var s grpc.ServerStreamingClient[echov1.EchoResponse]
	got := make(chan finished, 1)
	onFinish := func(err error) {
		f := finished{err: err}
		select {
		case <-recvDone:
			f.afterRecv = true
		case <-time.After(time.Second):
		}
		f.trailerPresent = len(s.Trailer().Get("x-done")) == 1
		got <- f
	}
	var err error
	s, err = e.conn(t).EchoServerStream(ctxFor(t, 30*time.Second), &echov1.EchoRequest{Message: "m", Repeat: 1}, grpc.OnFinish(onFinish))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	close(recvDone)
	if err != io.EOF {
		t.Fatalf("end of stream: %v, want io.EOF", err)
	}
	f := <-got
	if f.err != nil || f.afterRecv {
		t.Errorf("OnFinish(%v) ran after Recv returned io.EOF: %v; want it run before (as grpc-go)", f.err, f.afterRecv)
	}
	if !f.trailerPresent {
		t.Errorf("Trailer() inside OnFinish lacks the worker's trailer")
	}
}

// cancelOnOffsets is a Kafka client whose offset lookup of topic, once
// armed, runs hook first (with the caller's context), e.g. to cancel the
// call that looks them up.
type cancelOnOffsets struct {
	kafkaclient.Client
	topic string
	armed atomic.Bool
	hook  func()
}

func (c *cancelOnOffsets) Offsets(ctx context.Context, topic string, parts []int32, which kafkaclient.OffsetSpec) (map[int32]int64, error) {
	if topic == c.topic && c.armed.Load() {
		c.hook()
	}
	return c.Client.Offsets(ctx, topic, parts, which)
}

// TestConnCancelWhileShardStartsReadingIsCancelled: a keyed call on an
// instance sharing the reply topic (GatewayReplyShard) whose correlation
// id hashes to another instance's partition waits while that partition's
// end is looked up. A caller that gives up meanwhile is told its own
// status (CANCELLED; DEADLINE_EXCEEDED for a deadline), not UNAVAILABLE,
// which says Kafka failed and invites a retry.
func TestConnCancelWhileShardStartsReadingIsCancelled(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("cs") + "."
	kafkatest.CreateTopics(t, kc, 2, prefix+"echo-requests", prefix+"echo-responses")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wrapped := &cancelOnOffsets{Client: kc, topic: prefix + "echo-responses", hook: cancel}
	_, echo := connTo(t, wrapped, prefix, runtime.GatewayReplyShard(0, 2))
	var foreign string
	for k := 0; foreign == ""; k++ {
		key := fmt.Sprint("key-", k)
		id := wire.CorrelationID(wire.DefaultNames(), key, "example.echo.v1.EchoService", "EchoUnary", prefix+"echo-responses")
		if kafkaclient.KeyPartition([]byte(id), 2)%2 != 0 {
			foreign = key
		}
	}
	wrapped.armed.Store(true)
	_, err := echo.EchoUnary(metadata.AppendToOutgoingContext(ctx, "idempotency-key", foreign), &echov1.EchoRequest{Message: "m"})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("keyed call cancelled while its reply partition was being assigned: %v, want CANCELLED", err)
	}
}
