package runtime_test

// The exactly-once worker (WorkerExactlyOnce) when a transaction's commit
// races a rebalance: the group coordinator refuses the transaction's
// offsets (ILLEGAL_GENERATION and the like), the transaction is aborted,
// and the worker must neither stop nor lose or double a reply.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
)

// TestEosRejoinCommitRacedRebalance: the group coordinator answers the
// transaction's offset commit with an error saying the group moved to a
// new generation, as it does when a rebalance completes while the commit
// is on its way. The worker gave up, and stopped: every call in that
// transaction waited for its deadline, and so did every later call until
// someone restarted the worker. Now it aborts the transaction, rejoins its
// group and serves the calls again: each caller gets its whole answer
// once, and the worker keeps serving.
func TestEosRejoinCommitRacedRebalance(t *testing.T) {
	for _, ke := range []*kerr.Error{kerr.IllegalGeneration, kerr.UnknownMemberID, kerr.RebalanceInProgress, kerr.FencedMemberEpoch, kerr.StaleMemberEpoch} {
		t.Run(ke.Message, func(t *testing.T) {
			env, c := startEchoOnFaults(t,
				kafkarpctest.WithWorkerOptions(runtime.WorkerExactlyOnce(kafkatest.Unique("txn-"))),
				kafkarpctest.WithGatewayOptions(runtime.GatewayReadCommitted()))
			echo := echov1.NewEchoServiceClient(env.Conn)
			ctx := ctxFor(t, 90*time.Second)
			// Warm up: the group joined, a transaction committed.
			if r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "before"}); err != nil || r.GetMessage() != "before" {
				t.Fatalf("first call: %v, %v", r, err)
			}
			h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: ke, Count: 1})
			defer h.Remove()
			before := env.Worker.Stats()

			const unary, streams = 8, 3
			var wg sync.WaitGroup
			errs := make(chan error, unary+streams+1)
			for i := range unary {
				wg.Go(func() {
					m := fmt.Sprintf("u%d", i)
					r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: m})
					if err != nil || r.GetMessage() != m {
						errs <- fmt.Errorf("unary %s: %v, %v", m, r, err)
					}
				})
			}
			wg.Go(func() {
				// In flight when the commit fails: given up at the rejoin
				// (its handler cancelled), and served again.
				r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "slow", DelayMs: 800})
				if err != nil || r.GetMessage() != "slow" {
					errs <- fmt.Errorf("unary slow: %v, %v", r, err)
				}
			})
			for i := range streams {
				wg.Go(func() {
					m := fmt.Sprintf("s%d", i)
					errs <- wholeStreamOnce(ctx, echo, m, 3)
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			if h.Hits() != 1 {
				t.Fatalf("the fault hit %d transactional offset commits, want 1", h.Hits())
			}
			select {
			case <-env.Worker.Done():
				t.Fatalf("the worker stopped: %v", env.Worker.Err())
			default:
			}
			after := env.Worker.Stats()
			if n := after.Rejoins - before.Rejoins; n != 1 {
				t.Errorf("Stats().Rejoins went up by %d, want 1", n)
			}
			if n := after.Calls - before.Calls; n <= unary+streams+1 {
				t.Errorf("%d handlers ran for %d calls: none served again after the aborted transaction", n, unary+streams+1)
			}
			if r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}); err != nil || r.GetMessage() != "after" {
				t.Fatalf("the call after the rejoin: %v, %v", r, err)
			}
			if err := env.Worker.Err(); err != nil {
				t.Fatalf("worker.Err() = %v", err)
			}
		})
	}
}

// wholeStreamOnce calls EchoServerStream with m repeated n times and
// checks that the caller gets each of the n responses once, in order, and
// an OK end.
func wholeStreamOnce(ctx context.Context, echo echov1.EchoServiceClient, m string, n int) error {
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: m, Repeat: int32(n)})
	if err != nil {
		return fmt.Errorf("stream %s: %w", m, err)
	}
	var got []string
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("stream %s after %q: %w", m, got, err)
		}
		got = append(got, fmt.Sprintf("%d:%s", r.GetIndex(), r.GetMessage()))
	}
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("%d:%s", i, m))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("stream %s: got %q, want %q (each response once)", m, got, want)
	}
	return nil
}

// TestEosRejoinRebalancesUnderLoad: exactly-once workers joining and
// leaving the group, four times, while calls flow. Every call is answered
// once, and no worker stops: a transaction's commit that races one of
// those rebalances (about twice a run with the confluent client) is
// aborted and its calls served again. Before, the worker stopped (5 runs
// of 6 with the confluent client on the embedded broker).
func TestEosRejoinRebalancesUnderLoad(t *testing.T) { eosMembersComeAndGo(t, 4) }

// TestEosRejoinConsumerProtocolUnderLoad: the same with a KIP-848 group
// (WorkerGroupProtocol(GroupProtocolConsumer)), twice.
func TestEosRejoinConsumerProtocolUnderLoad(t *testing.T) {
	eosMembersComeAndGo(t, 2, runtime.WorkerGroupProtocol(kafkaclient.GroupProtocolConsumer))
}

// eosMembersComeAndGo: two exactly-once workers join the first one's group
// and leave again, rounds times, while unary calls and server streams
// flow (opts are every worker's): no worker stops, and every call gets its
// whole answer once.
func eosMembersComeAndGo(t *testing.T, rounds int, opts ...runtime.WorkerOption) {
	t.Helper()
	e, client := eosEnv(t, echoserver.Server{}, true, opts...)
	ctx := ctxFor(t, 240*time.Second)
	const callers, perCaller = 4, 1000
	errs := make(chan error, callers*perCaller)
	stop := make(chan struct{})
	done := make(chan struct{})
	var answered atomic.Int64
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for c := range callers {
			wg.Go(func() {
				for i := range perCaller {
					select {
					case <-stop:
						return
					default:
					}
					m := fmt.Sprintf("c%d-%d", c, i)
					cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
					var err error
					if c%2 == 0 {
						var r *echov1.EchoResponse
						r, err = client.EchoUnary(cctx, &echov1.EchoRequest{Message: m})
						if err == nil && r.GetMessage() != m {
							err = fmt.Errorf("answered %q", r.GetMessage())
						}
					} else {
						err = wholeStreamOnce(cctx, client, m, 3)
					}
					cancel()
					if err != nil {
						errs <- fmt.Errorf("call %s: %w", m, err)
					}
					answered.Add(1)
				}
			})
		}
		wg.Wait()
	}()
	// Calls flow across each change of the group's members.
	progress := func() {
		want := answered.Load() + 40
		for answered.Load() < want {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond): // polling a counter, bounded by ctx
			}
		}
	}
	var rejoins uint64
	for range rounds {
		progress()
		var others []*runtime.Worker
		for range 2 {
			others = append(others, startWorker(t, e, echoserver.Server{}, append([]runtime.WorkerOption{runtime.WorkerExactlyOnce(kafkatest.Unique("txn-"))}, opts...)...))
		}
		progress()
		for _, w := range others {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_ = w.Shutdown(sctx)
			cancel()
			if err := w.Err(); err != nil {
				t.Errorf("a worker that left stopped by itself: %v", err)
			}
			rejoins += w.Stats().Rejoins
		}
	}
	close(stop)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("calls not over within 240 s")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the first worker stopped: %v", err)
	}
	t.Logf("%d calls answered; %d rejoins after a commit raced a rebalance", answered.Load(), rejoins+e.worker.Stats().Rejoins)
}
