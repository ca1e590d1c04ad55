package runtime_test

import (
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// stubbornStream answers EchoClientStream with its request messages joined
// by commas. Once it read its first message it tells started and waits for
// release, without watching its context (as a handler busy with work that
// takes no context does); a run on a stream whose first message is "m0"
// does so only the first time.
type stubbornStream struct {
	echoserver.Server
	started chan struct{}
	release chan struct{}
	held    atomic.Bool
}

func (h *stubbornStream) EchoClientStream(s grpc.ClientStreamingServer[echov1.EchoRequest, echov1.EchoResponse]) error {
	var msgs []string
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&echov1.EchoResponse{Message: strings.Join(msgs, ","), Index: int32(len(msgs))})
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, m.GetMessage())
		if len(msgs) == 1 && m.GetMessage() == "m0" && h.held.CompareAndSwap(false, true) {
			h.started <- struct{}{}
			<-h.release
		}
	}
}

// TestCallAbandonedOnLostPartitionIsServedWhenItComesBack: a client
// stream's handler is busy (not watching its context) when the worker
// loses the stream's partition (a session timeout: nothing may be
// committed, every call is given up), and the worker's member joins again
// and gets the partition back, reading it again from the committed offset,
// before the given-up handler returned. The call's first record, read
// again, must start the call over (it is uncommitted for that reason). The
// worker routed it to the given-up call, still in its table of calls in
// flight: it marked the record read on the partition's new track, where no
// call holds it (so a commit may pass it), fed it to a call that will never
// answer, and the rest of the stream, read later, started a call of its
// own: the handler ran on part of the request and the caller got "m1"
// instead of "m0,m1".
func TestCallAbandonedOnLostPartitionIsServedWhenItComesBack(t *testing.T) {
	impl := &stubbornStream{started: make(chan struct{}, 1), release: make(chan struct{})}
	var lo *rejoining
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client {
		lo = &rejoining{Client: kc, rejoin: make(chan struct{}), assigned: make(chan struct{}, 8), lost: true}
		return lo
	}, func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) })
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key, id = "lost-partition", "lost-partition-call"
	record := func(msg *string) *kafkaclient.Record {
		var v []byte
		if msg != nil {
			v, _ = proto.Marshal(&echov1.EchoRequest{Message: *msg})
		}
		return &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(key), Value: v,
			Headers: requestHeaders(e, echoService, "EchoClientStream", id).headers()}
	}
	defer close(impl.release) // also on failure: the worker's Close waits for the handler
	produce(t, e.kc, record(ptr("m0")))
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	close(lo.rejoin)
	awaitWorkerRead(t, e, key) // wakes the poll in which the partitions are lost, then read
	select {
	case <-lo.assigned:
	case <-time.After(60 * time.Second):
		t.Fatal("the worker's member was not assigned partitions again within 60 s")
	}
	awaitWorkerRead(t, e, key) // the call's first record was read again
	impl.release <- struct{}{} // the given-up handler returns
	produce(t, e.kc, record(ptr("m1")))
	produce(t, e.kc, record(nil))
	got := replies.await(t, id)
	if len(got) != 2 {
		t.Fatalf("the call was answered with %d records (status %q, message %q), want a response and an end",
			len(got), header(got[len(got)-1], "zilla:status"), header(got[len(got)-1], "zilla:message"))
	}
	var resp echov1.EchoResponse
	if err := proto.Unmarshal(got[0].Value, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.GetMessage() != "m0,m1" || header(got[1], "zilla:status") != "0" {
		t.Fatalf("the call was answered %q with status %q, want %q and 0: the handler ran on part of the request",
			resp.GetMessage(), header(got[1], "zilla:status"), "m0,m1")
	}
}

// deaf answers EchoUnary "slow" only once release is closed, without
// watching its context; started is told when it begins.
type deaf struct {
	echoserver.Server
	started chan struct{}
	release chan struct{}
}

func (d *deaf) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if req.GetMessage() == "slow" {
		d.started <- struct{}{}
		<-d.release
	}
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

// TestRevokeIsBoundedByRevokeTimeout: WorkerRevokeTimeout bounds how long
// a worker losing partitions in a rebalance waits for their calls. A
// handler that does not watch its context keeps the revocation (inside the
// group's poll: the rebalance and every other partition of the worker
// wait) until it returned: drain aborted the calls at the bound, then
// waited for each of them to be over, without a bound. It now waits at
// most abortGrace (1 s) more, and the call is left to the partition's
// next owner.
func TestRevokeIsBoundedByRevokeTimeout(t *testing.T) {
	impl := &deaf{started: make(chan struct{}, 1), release: make(chan struct{})}
	e := setup(t, impl, runtime.WorkerRevokeTimeout(100*time.Millisecond))
	defer close(impl.release)
	go func() { _, _ = e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "slow"}) }()
	select {
	case <-impl.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start within 30 s")
	}
	var parts []kafkaclient.TopicPartition
	for p := range int32(3) {
		parts = append(parts, kafkaclient.TopicPartition{Topic: e.topic("echo-requests"), Partition: p})
	}
	revoked := make(chan struct{})
	go func() {
		runtime.RevokeForTest(e.worker, parts...)
		close(revoked)
	}()
	select {
	case <-revoked:
	case <-time.After(15 * time.Second):
		t.Fatal("the revocation did not return within 15 s with WorkerRevokeTimeout 100 ms: it waits for a handler that ignores its context")
	}
}
