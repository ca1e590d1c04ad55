//go:build integration

package integration

import (
	"context"
	"fmt"
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
// behind one echo-gateway, and SIGKILLs one of them under a unary load. Every
// call must be answered: a call whose attempt fails is tried again with the
// same idempotency key (so a worker that already ran it answers from its
// stored reply) until it succeeds, within generous bounds. The killed
// worker's partitions are stuck until the group notices it is gone
// (session.timeout.ms, 45 s by default), so some calls need several tries.
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
					resp, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: want})
					cancel()
					if err == nil && resp.GetMessage() == want {
						break
					}
					if err == nil {
						err = fmt.Errorf("answered %q to %q", resp.GetMessage(), want)
					}
					st := status.Convert(err)
					o.failures = append(o.failures, st.Code().String())
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
