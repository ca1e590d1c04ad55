package runtime_test

// Adversarial tests of the worker's request path under faults: each test
// shows what a caller gets when something goes wrong in the worker (see
// each test's comment for the fault it failed on before its fix).

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// advCommittedClient returns an echo client of a new gateway on e's topics
// that reads replies read_committed, as exactly-once workers need.
func advCommittedClient(t *testing.T, e *env) echov1.EchoServiceClient {
	t.Helper()
	gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReadCommitted())
	t.Cleanup(func() { _ = gw.Close() })
	return echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
}

var errAdvCommit = errors.New("injected by the test: the transaction's commit failed")

// failFirstCommit is a worker's Kafka client whose transactional producer
// fails its first commit that carries offsets, as a commit that timed out
// or lost its coordinator does; every later commit goes through.
type failFirstCommit struct {
	kafkaclient.Client
	failed chan struct{} // closed once the commit failed
	once   atomic.Bool
}

func (f *failFirstCommit) NewTxnProducer(id string) (kafkaclient.TxnProducer, error) {
	tc, ok := f.Client.(kafkaclient.TxnClient)
	if !ok {
		return nil, errors.New("the test's client has no transactions")
	}
	p, err := tc.NewTxnProducer(id)
	if err != nil {
		return nil, err
	}
	return &failFirstCommitTxn{TxnProducer: p, f: f}, nil
}

type failFirstCommitTxn struct {
	kafkaclient.TxnProducer
	f *failFirstCommit
}

func (t *failFirstCommitTxn) Commit(ctx context.Context, gr kafkaclient.GroupReader, offs []kafkaclient.TopicPartitionOffset) error {
	if len(offs) > 0 && t.f.once.CompareAndSwap(false, true) {
		close(t.f.failed)
		return errAdvCommit
	}
	return t.TxnProducer.Commit(ctx, gr, offs)
}

// TestWorkerAdvFailedTransactionCommitsNothingMore: with WorkerExactlyOnce,
// a call's reply goes into the open transaction and its offset is marked
// done; the transaction's commit fails, the worker aborts it (the reply is
// gone: read_committed gateways never see it) and stops, "nothing more is
// committed, and the group moves the partitions to other members, which
// serve the uncommitted requests again" (WorkerExactlyOnce). The worker
// committed again after the failure all the same (its committer ran on,
// and committed one last time when the worker stopped), with the offset of
// the call whose reply was aborted: no member ever served that request
// again, and its caller waited for its deadline.
func TestWorkerAdvFailedTransactionCommitsNothingMore(t *testing.T) {
	impl := &counting{}
	f := &failFirstCommit{failed: make(chan struct{})}
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client { f.Client = kc; return f },
		func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	client := advCommittedClient(t, e)
	res := goUnary(ctxFor(t, 45*time.Second), client, "aborted-reply")
	select {
	case <-f.failed:
	case r := <-res:
		t.Fatalf("the call ended (%v, %v) before the transaction holding its reply was committed", r.r, r.err)
	case <-time.After(60 * time.Second):
		t.Fatal("no transaction commit within 60 s of the call")
	}
	if err := e.worker.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.worker.Err(); !errors.Is(err, errAdvCommit) {
		t.Fatalf("worker.Err() = %v after its transaction failed, want the commit's failure", err)
	}
	// Another member of the group serves the request whose reply was
	// aborted: its offset was not committed.
	next := runtime.NewWorker(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.WorkerGroupID(e.worker.GroupID()),
		runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	if err := echov1.RegisterEchoServiceKafkaWorker(next, impl); err != nil {
		t.Fatal(err)
	}
	if err := next.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = next.Close() })
	r := <-res // bounded by the call's deadline
	if r.err != nil || r.r.GetMessage() != "aborted-reply" {
		t.Fatalf("the call whose reply was in the aborted transaction ended %v, %v; want its response from the next member "+
			"(the failed worker committed its request's offset after all, so nobody served it again)", r.r, r.err)
	}
	if n := impl.count("aborted-reply"); n != 2 {
		t.Fatalf("the handler ran %d times, want 2 (once per member)", n)
	}
}
