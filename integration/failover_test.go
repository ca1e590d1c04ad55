//go:build integration

package integration

import (
	"context"
	"fmt"
	goruntime "runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Shape of the failover measurement.
const (
	failoverCallersPer   = 2                // callers per request partition
	failoverAttemptLimit = 10 * time.Second // deadline of one attempt
	failoverCallBound    = 3 * time.Minute  // all attempts of one call
	failoverSteady       = 2 * time.Second  // load before the kill
	failoverAfter        = 2 * time.Second  // load after every partition served again
	failoverGroupTimeout = 2 * time.Minute  // until both workers own partitions
)

// TestFailoverWorkerKilled measures, for each consumer group protocol, how
// long the partitions of a SIGKILLed worker stop serving: two echo-worker
// processes share the three request partitions behind one echo-gateway;
// keyed unary calls go to every partition (two callers each, retried with
// their idempotency-key on UNAVAILABLE or DEADLINE_EXCEEDED); once the
// cluster lists both workers owning partitions, one is killed. For each
// partition it logs the time from the kill to the end of the first
// successful call there that started after the kill; the largest is the
// failover pause. Every call must be answered, none past its deadline, none
// with a wrong answer.
//
// `make failover` runs it on both clients and prints the figures
// (BENCHMARKS.md, Failover). It needs Kafka 4.0 or later (the consumer
// protocol of KIP-848).
func TestFailoverWorkerKilled(t *testing.T) {
	needKafka(t)
	for _, p := range []kafkaclient.GroupProtocol{kafkaclient.GroupProtocolClassic, kafkaclient.GroupProtocolConsumer} {
		t.Run(string(p), func(t *testing.T) { testFailover(t, p) })
	}
}

func testFailover(t *testing.T, protocol kafkaclient.GroupProtocol) {
	group := unique("failover-" + string(protocol))
	args := []string{"--brokers", brokers, "--group", group, "--group-protocol", string(protocol)}
	workers := []*proc{startProc(t, "echo-worker", args...), startProc(t, "echo-worker", args...)}
	for _, w := range workers {
		w.waitReady(t)
	}
	addr := freeAddr(t)
	gateway := startGateway(t, addr)
	c := dial(t, addr)
	warmUp(t, c)
	waitShared(t, group, protocol)

	run := unique("failover")
	var mu sync.Mutex
	type attempt struct {
		start, end time.Time
		partition  int32
		code       codes.Code
		msg        string
	}
	var attempts []attempt
	var wrong, unanswered []string
	calls := 0
	stop := make(chan struct{})
	ok := make(chan attempt, 1<<12)
	var wg sync.WaitGroup
	for i := 0; i < 3*failoverCallersPer; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := int32(i % 3)
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				key := keyFor(fmt.Sprintf("%s-%d-%d", run, i, j), "EchoUnary", p, true)
				want := fmt.Sprintf("caller %d call %d", i, j)
				began := time.Now()
				for {
					ctx, cancel := context.WithTimeout(context.Background(), failoverAttemptLimit)
					ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
					a := attempt{start: time.Now(), partition: p}
					err := unaryAttempt(ctx, c, want)
					a.end = time.Now()
					cancel()
					st := status.Convert(err)
					a.code, a.msg = st.Code(), st.Message()
					mu.Lock()
					attempts = append(attempts, a)
					if a.code == codes.DataLoss {
						wrong = append(wrong, fmt.Sprintf("%s: %s", key, a.msg))
					}
					mu.Unlock()
					if err == nil {
						select {
						case ok <- a:
						default:
						}
						break
					}
					if a.code != codes.Unavailable && a.code != codes.DeadlineExceeded {
						if a.code != codes.DataLoss {
							mu.Lock()
							unanswered = append(unanswered, fmt.Sprintf("%s: ended %s, which is not to be retried: %s", key, a.code, a.msg))
							mu.Unlock()
						}
						break
					}
					if time.Since(began) > failoverCallBound {
						mu.Lock()
						unanswered = append(unanswered, fmt.Sprintf("%s: no answer within %s, last %v", key, failoverCallBound, err))
						mu.Unlock()
						break
					}
					if a.code == codes.Unavailable {
						<-time.After(200 * time.Millisecond) // back-off before the retry
					}
				}
				mu.Lock()
				calls++
				mu.Unlock()
			}
		}(i)
	}

	<-time.After(failoverSteady) // the load runs; this is its length, not a synchronisation
	victim := workers[0]
	killed := time.Now()
	victim.kill(t)
	served := map[int32]time.Time{} // partition -> end of its first success started after the kill
	bound := time.After(failoverCallBound)
	for len(served) < 3 {
		select {
		case a := <-ok:
			if !a.start.Before(killed) {
				if _, seen := served[a.partition]; !seen {
					served[a.partition] = a.end
				}
			}
		case <-bound:
			t.Fatalf("partitions served again within %s of the kill: %v of 3", failoverCallBound, len(served))
		}
	}
	<-time.After(failoverAfter) // the load goes on after recovery
	close(stop)
	wg.Wait()

	// The channel may have dropped successes when full: the figures come
	// from the full list of attempts.
	first := map[int32]time.Duration{}
	counts := map[codes.Code]int{}
	var late []string
	for _, a := range attempts {
		counts[a.code]++
		if d := a.end.Sub(a.start); d > failoverAttemptLimit+deadlineSlack {
			late = append(late, fmt.Sprintf("an attempt started %s after the kill took %s (%s: %s)",
				a.start.Sub(killed).Round(time.Millisecond), d.Round(time.Millisecond), a.code, a.msg))
		}
		if a.code == codes.OK && !a.start.Before(killed) {
			if d, seen := first[a.partition]; !seen || a.end.Sub(killed) < d {
				first[a.partition] = a.end.Sub(killed)
			}
		}
	}
	var pause time.Duration
	var per []string
	for p := int32(0); p < 3; p++ {
		pause = max(pause, first[p])
		per = append(per, fmt.Sprintf("partition %d %s", p, first[p].Round(time.Millisecond)))
	}
	var cs []string
	for code, n := range counts {
		cs = append(cs, fmt.Sprintf("%s %d", code, n))
	}
	sort.Strings(cs)
	t.Logf("failover: %s protocol, client %s: pause %s (kill to the first served call on each partition: %s)",
		protocol, clientName(), pause.Round(time.Millisecond), strings.Join(per, ", "))
	t.Logf("%d calls, %d attempts: %s", calls, len(attempts), strings.Join(cs, ", "))
	for _, w := range wrong {
		t.Errorf("wrong answer: %s", w)
	}
	for i, l := range late {
		if i < 10 {
			t.Errorf("past its deadline: %s", l)
		}
	}
	for i, u := range unanswered {
		if i < 10 {
			t.Errorf("%s", u)
		}
	}
	gateway.stop(t)
	workers[1].stop(t)
}

// waitShared waits until the cluster lists two members of group, each
// owning at least one partition, so that the killed worker has partitions.
func waitShared(t *testing.T, group string, protocol kafkaclient.GroupProtocol) {
	t.Helper()
	kc, err := kgo.NewClient(kgo.SeedBrokers(brokerList()...))
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	defer kc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), failoverGroupTimeout)
	defer cancel()
	var last string
	for {
		owned, err := memberPartitions(ctx, kc, group, protocol)
		if err == nil && len(owned) == 2 && owned[0] > 0 && owned[1] > 0 {
			return
		}
		last = fmt.Sprintf("partitions per member %v, error %v", owned, err)
		select {
		case <-ctx.Done():
			t.Fatalf("group %s did not share the partitions between two workers within %s: %s", group, failoverGroupTimeout, last)
		case <-time.After(200 * time.Millisecond): // poll interval of the group description
		}
	}
}

// memberPartitions describes group and returns how many partitions each
// member owns.
func memberPartitions(ctx context.Context, kc *kgo.Client, group string, protocol kafkaclient.GroupProtocol) ([]int, error) {
	var owned []int
	if protocol == kafkaclient.GroupProtocolConsumer {
		req := kmsg.NewPtrConsumerGroupDescribeRequest()
		req.Groups = []string{group}
		resp, err := req.RequestWith(ctx, kc)
		if err != nil {
			return nil, err
		}
		for _, g := range resp.Groups {
			if err := kerr.ErrorForCode(g.ErrorCode); err != nil {
				return nil, err
			}
			for _, m := range g.Members {
				n := 0
				for _, tp := range m.Assignment.TopicPartitions {
					n += len(tp.Partitions)
				}
				owned = append(owned, n)
			}
		}
		return owned, nil
	}
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	resp, err := req.RequestWith(ctx, kc)
	if err != nil {
		return nil, err
	}
	for _, g := range resp.Groups {
		if err := kerr.ErrorForCode(g.ErrorCode); err != nil {
			return nil, err
		}
		if g.State != "Stable" {
			return nil, fmt.Errorf("group state %s", g.State)
		}
		for _, m := range g.Members {
			var a kmsg.ConsumerMemberAssignment
			if err := a.ReadFrom(m.MemberAssignment); err != nil {
				return nil, err
			}
			n := 0
			for _, tp := range a.Topics {
				n += len(tp.Partitions)
			}
			owned = append(owned, n)
		}
	}
	return owned, nil
}

// Shape of the false failover check.
const (
	stallLoad    = 60 * time.Second // calls and CPU burners
	stallCallers = 16
)

// TestFailoverNoFalseFailover runs two echo-worker processes (classic
// protocol, the clients' default 6 s session with 1 s heartbeats) behind
// one echo-gateway for a minute while the machine is saturated: 16 callers
// and, in the test process, two busy goroutines per core. The group must
// keep the same two members throughout: a member the coordinator had
// timed out would come back with a new member id.
func TestFailoverNoFalseFailover(t *testing.T) {
	needKafka(t)
	group := unique("nofalse")
	workers := []*proc{startWorker(t, group), startWorker(t, group)}
	addr := freeAddr(t)
	gateway := startGateway(t, addr)
	c := dial(t, addr)
	warmUp(t, c)
	waitShared(t, group, kafkaclient.GroupProtocolClassic)
	kc, err := kgo.NewClient(kgo.SeedBrokers(brokerList()...))
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	defer kc.Close()
	before := memberIDs(t, kc, group)

	end := time.Now().Add(stallLoad)
	var wg sync.WaitGroup
	for i := 0; i < 2*goruntime.NumCPU(); i++ {
		wg.Add(1)
		go func() { // a CPU burner, bounded by end
			defer wg.Done()
			x := 0
			for time.Now().Before(end) {
				for j := 0; j < 1e6; j++ {
					x += j
				}
			}
			_ = x
		}()
	}
	var mu sync.Mutex
	failed := map[codes.Code]int{}
	calls := 0
	for i := 0; i < stallCallers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; time.Now().Before(end); j++ {
				ctx, cancel := context.WithTimeout(context.Background(), failoverAttemptLimit)
				err := unaryAttempt(ctx, c, fmt.Sprintf("caller %d call %d", i, j))
				cancel()
				mu.Lock()
				calls++
				if err != nil {
					failed[status.Code(err)]++
				}
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	after := memberIDs(t, kc, group)
	t.Logf("%d calls under a saturated CPU for %s; failed: %v; members before %v, after %v", calls, stallLoad, failed, before, after)
	if strings.Join(before, ",") != strings.Join(after, ",") {
		t.Errorf("the group's members changed under load (a false failover): before %v, after %v", before, after)
	}
	if len(failed) > 0 {
		t.Errorf("calls failed under load: %v", failed)
	}
	gateway.stop(t)
	for _, w := range workers {
		w.stop(t)
	}
}

// memberIDs returns the sorted member ids of the classic group.
func memberIDs(t *testing.T, kc *kgo.Client, group string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	resp, err := req.RequestWith(ctx, kc)
	if err != nil {
		t.Fatalf("describing group %s: %v", group, err)
	}
	var ids []string
	for _, g := range resp.Groups {
		if err := kerr.ErrorForCode(g.ErrorCode); err != nil {
			t.Fatalf("describing group %s: %v", group, err)
		}
		for _, m := range g.Members {
			ids = append(ids, m.MemberID)
		}
	}
	sort.Strings(ids)
	return ids
}
