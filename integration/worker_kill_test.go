//go:build integration

package integration

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// Shape of the worker kill test.
const (
	killCallers       = 6
	killCallsEach     = 60
	killAttemptLimit  = 8 * time.Second // deadline of one attempt
	killCallBound     = 3 * time.Minute // all attempts of one call
	killAfterAnswered = 60              // calls answered before the kill
)

// TestWorkerKilledUnderLoad runs three echo-worker processes in one group
// behind one echo-gateway, and SIGKILLs one of them under a load of unary
// calls and server streams. Every call must be answered: a call whose
// attempt fails is tried again with the same idempotency key (so a worker
// that already ran it answers from its stored reply) until it succeeds,
// within generous bounds. The killed worker's partitions are stuck until the
// group notices it is gone, so some calls need several tries. No attempt may
// fail with a stale status: the partition's new owner serves the earlier
// attempts' requests again (they were not committed), and what it answers
// them (DEADLINE_EXCEEDED, their deadline long past) shares the retry's
// correlation id but must not end the retry before its own deadline.
func TestWorkerKilledUnderLoad(t *testing.T) {
	needKafka(t)
	group := unique("kill")
	var workers []*proc
	for i := 0; i < 3; i++ {
		workers = append(workers, startWorker(t, group))
	}
	addr := freeAddr(t)
	gateway := startGateway(t, addr)
	c := dial(t, addr)
	warmUp(t, c)

	var answered atomic.Int64
	killNow := make(chan struct{})
	var killOnce sync.Once
	type outcome struct {
		attempts int
		took     time.Duration
		failures []string
		stale    []string
		err      error
	}
	results := make([][]outcome, killCallers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < killCallers; i++ {
		results[i] = make([]outcome, killCallsEach)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < killCallsEach; j++ {
				key := fmt.Sprintf("%s-caller%d-call%d", group, i, j)
				want := fmt.Sprintf("caller %d call %d", i, j)
				o := &results[i][j]
				began := time.Now()
				for {
					o.attempts++
					ctx, cancel := context.WithTimeout(context.Background(), killAttemptLimit)
					ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
					tried := time.Now()
					var err error
					if i%2 == 0 {
						err = unaryAttempt(ctx, c, want)
					} else {
						err = streamAttempt(ctx, c, want)
					}
					cancel()
					if err == nil {
						break
					}
					st := status.Convert(err)
					o.failures = append(o.failures, st.Code().String())
					if st.Code() == codes.DataLoss { // a wrong answer: never to be retried away
						o.err = err
						break
					}
					if took := time.Since(tried); st.Code() == codes.DeadlineExceeded && took < killAttemptLimit-staleSlack {
						o.stale = append(o.stale, fmt.Sprintf("attempt %d ended DEADLINE_EXCEEDED after %s of its %s: %s",
							o.attempts, took.Round(time.Millisecond), killAttemptLimit, st.Message()))
					}
					if time.Since(began) > killCallBound {
						o.err = fmt.Errorf("no answer after %d attempts in %s: last %v", o.attempts, time.Since(began).Round(time.Millisecond), err)
						break
					}
					// A refused attempt (not a timeout) is tried again after
					// a short back-off.
					if st.Code() != codes.DeadlineExceeded {
						<-time.After(200 * time.Millisecond)
					}
				}
				o.took = time.Since(began)
				if answered.Add(1) == killAfterAnswered {
					killOnce.Do(func() { close(killNow) })
				}
			}
		}(i)
	}

	victim := workers[1]
	select {
	case <-killNow:
	case <-time.After(killCallBound):
		t.Fatalf("only %d calls answered within %s before the kill", answered.Load(), killCallBound)
	}
	killedAt := time.Now()
	victim.kill(t)
	t.Logf("killed one of three workers (pid %d) %s into the load, after %d calls", victim.Pid(), killedAt.Sub(start).Round(time.Millisecond), answered.Load())
	wg.Wait()
	total := time.Since(start)

	var retried, failed int
	var longest time.Duration
	codesSeen := map[string]int{}
	for i := range results {
		for j, o := range results[i] {
			longest = max(longest, o.took)
			if o.attempts > 1 {
				retried++
			}
			for _, f := range o.failures {
				codesSeen[f]++
			}
			for _, s := range o.stale {
				t.Errorf("caller %d call %d: stale status: %s", i, j, s)
			}
			if o.err != nil {
				failed++
				if failed <= 10 {
					t.Errorf("caller %d call %d: %v (failures %v)", i, j, o.err, o.failures)
				}
			}
		}
	}
	var cs []string
	for k, v := range codesSeen {
		cs = append(cs, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(cs)
	t.Logf("%d calls in %s: %d needed more than one attempt, %d unanswered; failed attempts: %s; longest call %s",
		killCallers*killCallsEach, total.Round(time.Millisecond), retried, failed, strings.Join(cs, ", "), longest.Round(time.Millisecond))

	gateway.stop(t)
	for _, w := range workers {
		if w != victim {
			w.stop(t)
		}
	}
}

// staleSlack is how much earlier than its deadline an attempt may end
// DEADLINE_EXCEEDED (the gateway counts the deadline from a little later
// than the caller).
const staleSlack = 500 * time.Millisecond

// unaryAttempt calls EchoUnary once: nil when it answered want.
func unaryAttempt(ctx context.Context, c echov1.EchoServiceClient, want string) error {
	resp, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: want})
	if err == nil && resp.GetMessage() != want {
		err = status.Errorf(codes.DataLoss, "answered %q to %q", resp.GetMessage(), want)
	}
	return err
}

// streamAttempt calls EchoServerStream once for three messages: nil when it
// ended OK with exactly indexes 0, 1, 2 of want. An OK end over anything
// else is DATA_LOSS: a wrong answer, not a failure to retry.
func streamAttempt(ctx context.Context, c echov1.EchoServiceClient, want string) error {
	s, err := c.EchoServerStream(ctx, &echov1.EchoRequest{Message: want, Repeat: 3})
	if err != nil {
		return err
	}
	var got []int32
	for {
		r, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if r.GetMessage() != want {
			return status.Errorf(codes.DataLoss, "answered %q to %q", r.GetMessage(), want)
		}
		got = append(got, r.GetIndex())
	}
	if len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 2 {
		return status.Errorf(codes.DataLoss, "the stream ended OK with indexes %v, want [0 1 2]", got)
	}
	return nil
}
