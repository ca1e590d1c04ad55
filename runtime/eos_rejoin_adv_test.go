package runtime_test

// Adversarial probes of the exactly-once worker's rejoin after a commit
// that raced a rebalance (kafkaclient.ErrGroupMoved).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// movedOnArm is a worker's Kafka client whose transactional producer,
// once armed, refuses its next commit as the group coordinator refuses one
// that raced a rebalance (an error wrapping kafkaclient.ErrGroupMoved),
// committing nothing; the worker aborts the transaction. Works on any
// broker.
type movedOnArm struct {
	kafkaclient.Client
	armed atomic.Bool
	hits  chan struct{} // one value per refused commit
}

func (f *movedOnArm) NewTxnProducer(id string) (kafkaclient.TxnProducer, error) {
	tc, ok := f.Client.(kafkaclient.TxnClient)
	if !ok {
		return nil, errors.New("the test's client has no transactions")
	}
	p, err := tc.NewTxnProducer(id)
	if err != nil {
		return nil, err
	}
	return &movedOnArmTxn{TxnProducer: p, f: f}, nil
}

type movedOnArmTxn struct {
	kafkaclient.TxnProducer
	f *movedOnArm
}

func (t *movedOnArmTxn) Commit(ctx context.Context, gr kafkaclient.GroupReader, offs []kafkaclient.TopicPartitionOffset) error {
	if t.f.armed.CompareAndSwap(true, false) {
		t.f.hits <- struct{}{}
		return fmt.Errorf("injected by the test: ILLEGAL_GENERATION (%w)", kafkaclient.ErrGroupMoved)
	}
	return t.TxnProducer.Commit(ctx, gr, offs)
}

// rejoinEnv starts an exactly-once echo worker on a movedOnArm client and
// returns it with a read_committed gateway's client.
func rejoinEnv(t *testing.T, impl echov1.EchoServiceServer, wopts ...runtime.WorkerOption) (*env, *movedOnArm, echov1.EchoServiceClient) {
	t.Helper()
	f := &movedOnArm{hits: make(chan struct{}, 16)}
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client { f.Client = kc; return f },
		func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, impl) },
		append([]runtime.WorkerOption{runtime.WorkerExactlyOnce(kafkatest.Unique("txn-"))}, wopts...)...)
	return e, f, advCommittedClient(t, e)
}

// TestEosRejoinAdvBidiEarlyResponses: a bidi caller that waits for each
// response before it sends the next message (its responses go out at the
// next commit, before the call's end) while a commit races a rebalance.
// Its call is given up at the rejoin and its request read again from the
// committed offsets: the caller must not get a response twice (the
// rejoined worker's handler answering the first message again), nor wait
// for its deadline; it gets its responses in order, once each, or a
// status it may retry (UNAVAILABLE), as README says of a bidi call given
// up after its early responses.
func TestEosRejoinAdvBidiEarlyResponses(t *testing.T) {
	e, f, client := rejoinEnv(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	bs, err := client.EchoBidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := range int32(4) {
		if i == 1 {
			f.armed.Store(true) // the commit making response 1 visible races a rebalance
		}
		if err := bs.Send(&echov1.EchoRequest{Message: fmt.Sprint(i)}); err != nil {
			t.Fatalf("Send %d: %v (got %q)", i, err, got)
		}
		r, err := bs.Recv()
		if status.Code(err) == codes.Unavailable {
			t.Logf("Recv %d: %v (got %q): a status to retry", i, err, got)
			return
		}
		if err != nil {
			t.Fatalf("Recv %d: %v (got %q)", i, err, got)
		}
		got = append(got, fmt.Sprintf("%d:%s", r.GetIndex(), r.GetMessage()))
		if r.GetIndex() != i || r.GetMessage() != fmt.Sprint(i) {
			t.Fatalf("Recv %d: got %q, want each response once, in order", i, got)
		}
	}
	_ = bs.CloseSend()
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("bidi end: %v (got %q)", err, got)
	}
	select {
	case <-f.hits:
	default:
		t.Fatal("no commit was refused: the test did not probe a rejoin")
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
}
