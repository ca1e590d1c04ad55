//go:build integration

package integration

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// Shape of the outage test.
const (
	outageCallers     = 4
	outageInterval    = 20 * time.Millisecond // between one caller's calls: 200 calls/s in all
	outageCallTimeout = 5 * time.Second       // deadline of each call
	deadlineSlack     = time.Second           // a call may end this much after its deadline
	outageSteady      = 3 * time.Second       // load before the broker stops
	outageLength      = 10 * time.Second      // broker down
	outageRecovery    = 15 * time.Second      // back within this of the broker listening again
	outageRecoveryMax = 90 * time.Second      // how long the test looks for recovery at all
	outageAfter       = 5 * time.Second       // load after recovery
	outageSettle      = 3 * time.Second       // after recovery, calls started later than this must all succeed
)

// callResult is one call of a load.
type callResult struct {
	start, end time.Time
	code       codes.Code
	msg        string
}

// unaryLoad calls EchoUnary from a few goroutines at a steady pace.
type unaryLoad struct {
	c       echov1.EchoServiceClient
	mu      sync.Mutex
	results []callResult
	okc     chan callResult // each successful call, best effort (dropped when full)
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startUnaryLoad(c echov1.EchoServiceClient, callers int) *unaryLoad {
	l := &unaryLoad{c: c, okc: make(chan callResult, 1<<16), stop: make(chan struct{})}
	for i := 0; i < callers; i++ {
		l.wg.Add(1)
		go l.caller(i)
	}
	return l
}

func (l *unaryLoad) caller(id int) {
	defer l.wg.Done()
	tick := time.NewTicker(outageInterval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		want := fmt.Sprintf("caller %d call %d", id, seq)
		ctx, cancel := context.WithTimeout(context.Background(), outageCallTimeout)
		r := callResult{start: time.Now()}
		resp, err := l.c.EchoUnary(ctx, &echov1.EchoRequest{Message: want})
		r.end = time.Now()
		cancel()
		st := status.Convert(err)
		r.code, r.msg = st.Code(), st.Message()
		if err == nil && resp.GetMessage() != want {
			r.code, r.msg = codes.DataLoss, fmt.Sprintf("answered %q to %q", resp.GetMessage(), want)
		}
		l.mu.Lock()
		l.results = append(l.results, r)
		l.mu.Unlock()
		if r.code == codes.OK {
			select {
			case l.okc <- r:
			default:
			}
		}
	}
}

// finish stops the callers and returns every result.
func (l *unaryLoad) finish() []callResult {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.results
}

// waitOKStartedAfter waits, up to limit, for a successful call that started
// at or after t0, and returns when that call ended.
func (l *unaryLoad) waitOKStartedAfter(t0 time.Time, limit time.Duration) (time.Time, bool) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		select {
		case r := <-l.okc:
			if !r.start.Before(t0) {
				return r.end, true
			}
		case <-deadline.C:
			return time.Time{}, false
		}
	}
}

// summary counts results by code in [from, to) of their start time.
func summary(rs []callResult, from, to time.Time) string {
	counts := map[codes.Code]int{}
	n := 0
	for _, r := range rs {
		if r.start.Before(from) || !r.start.Before(to) {
			continue
		}
		counts[r.code]++
		n++
	}
	var parts []string
	for c, k := range counts {
		parts = append(parts, fmt.Sprintf("%s %d", c, k))
	}
	sort.Strings(parts)
	return fmt.Sprintf("%d calls (%s)", n, strings.Join(parts, ", "))
}

// TestBrokerOutageDuringUnaryLoad stops the broker for 10 s under a steady
// unary load through echo-gateway and echo-worker processes, and starts it
// again on the same storage. Every call must either succeed or fail with
// UNAVAILABLE or DEADLINE_EXCEEDED, none may end later than its deadline, and
// calls must succeed again within 15 s of the broker listening again, with
// neither process restarted.
func TestBrokerOutageDuringUnaryLoad(t *testing.T) {
	k := managedKafka(t)
	t.Cleanup(func() { k.ensureRunning(t) })

	addr := freeAddr(t)
	worker := startWorker(t, unique("outage"))
	gateway := startGateway(t, addr)
	c := dial(t, addr)
	warmUp(t, c)

	load := startUnaryLoad(c, outageCallers)
	t0 := time.Now()
	<-time.After(outageSteady) // the load runs; this is its length, not a synchronisation

	stopBegin := time.Now()
	k.stop(t)
	stopped := time.Now()
	t.Logf("broker stopped in %s", stopped.Sub(stopBegin).Round(time.Millisecond))
	<-time.After(outageLength) // the outage itself

	// "Back" is the moment the broker accepts connections again, which the
	// test watches itself: scripts/kafka.sh start returns later, once its
	// admin probe (a JVM of its own) got answers.
	startBegin := time.Now()
	listening := watchListening(brokers)
	k.start(t)
	answered := time.Now()
	back := <-listening
	if back.IsZero() || back.After(answered) {
		back = answered
	}
	t.Logf("broker down for %s in all; it listened again %s after its start and answered the script's probe %s after its start",
		back.Sub(stopBegin).Round(time.Millisecond), back.Sub(startBegin).Round(time.Millisecond), answered.Sub(startBegin).Round(time.Millisecond))

	recovered, ok := load.waitOKStartedAfter(back, outageRecoveryMax)
	if ok {
		<-time.After(outageAfter) // the load goes on after recovery
	}
	results := load.finish()
	end := time.Now()

	t.Logf("before the stop:    %s", summary(results, t0, stopBegin))
	t.Logf("broker stopping:    %s", summary(results, stopBegin, stopped))
	t.Logf("broker down:        %s", summary(results, stopped, startBegin))
	t.Logf("broker starting:    %s", summary(results, startBegin, back))
	if ok {
		t.Logf("broker back:        %s", summary(results, back, recovered))
		t.Logf("after recovery:     %s", summary(results, recovered, end))
	}

	var longest time.Duration
	var bad []string
	for _, r := range results {
		d := r.end.Sub(r.start)
		longest = max(longest, d)
		if d > outageCallTimeout+deadlineSlack {
			bad = append(bad, fmt.Sprintf("a call started %s into the test took %s (%s %q), past its %s deadline",
				r.start.Sub(t0).Round(time.Millisecond), d.Round(time.Millisecond), r.code, r.msg, outageCallTimeout))
		}
		switch r.code {
		case codes.OK, codes.Unavailable, codes.DeadlineExceeded:
		default:
			bad = append(bad, fmt.Sprintf("a call started %s into the test failed with %s %q; want OK, UNAVAILABLE or DEADLINE_EXCEEDED",
				r.start.Sub(t0).Round(time.Millisecond), r.code, r.msg))
		}
	}
	t.Logf("%d calls, longest %s", len(results), longest.Round(time.Millisecond))
	for i, b := range bad {
		if i == 20 {
			t.Errorf("... and %d more", len(bad)-20)
			break
		}
		t.Error(b)
	}
	if n := countStarted(results, t0, stopBegin, codes.OK); n == 0 {
		t.Errorf("no call succeeded before the broker stopped")
	}

	if !ok {
		t.Fatalf("no call succeeded within %s of the broker answering again", outageRecoveryMax)
	}
	took := recovered.Sub(back)
	t.Logf("service back %s after the broker listened again (%s after its start)", took.Round(time.Millisecond), recovered.Sub(startBegin).Round(time.Millisecond))
	if took > outageRecovery {
		t.Errorf("service back %s after the broker listened again; want within %s", took.Round(time.Millisecond), outageRecovery)
	}
	settled := recovered.Add(outageSettle)
	for _, r := range results {
		if !r.start.Before(settled) && r.code != codes.OK {
			t.Errorf("a call started %s after recovery failed: %s %q", r.start.Sub(recovered).Round(time.Millisecond), r.code, r.msg)
		}
	}
	if countStarted(results, settled, end, codes.OK) == 0 {
		t.Errorf("no call started %s after recovery succeeded", outageSettle)
	}

	// Neither process was restarted: both still run and stop cleanly.
	for _, p := range []*proc{gateway, worker} {
		select {
		case <-p.Done():
			t.Fatalf("%s exited during the outage: %v", p.Name, p.Err())
		default:
		}
	}
	gateway.stop(t)
	worker.stop(t)
}

// watchListening dials addr every 50 ms, for at most scriptTimeout, and
// sends the time of the first connection that succeeds (zero if none did).
func watchListening(addr string) <-chan time.Time {
	out := make(chan time.Time, 1)
	go func() {
		deadline := time.Now().Add(scriptTimeout)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for time.Now().Before(deadline) {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				at := time.Now()
				_ = c.Close()
				out <- at
				return
			}
			<-tick.C
		}
		out <- time.Time{}
	}()
	return out
}

// countStarted counts the results with code that started in [from, to).
func countStarted(rs []callResult, from, to time.Time, code codes.Code) int {
	n := 0
	for _, r := range rs {
		if r.code == code && !r.start.Before(from) && r.start.Before(to) {
			n++
		}
	}
	return n
}
