//go:build integration

package integration

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Shape of the cluster leader kill test.
const (
	leaderCallers      = 12
	leaderAttemptLimit = 10 * time.Second // deadline of one attempt
	leaderCallBound    = 2 * time.Minute  // all attempts of one call
	leaderSteady       = 3 * time.Second  // load before the leader is killed
	leaderAfter        = 5 * time.Second  // load after the victim's partition served again
	leaderMoveTimeout  = 60 * time.Second // until a leadership change shows in the metadata
)

// Topics of the echo example: every unary and server-stream call goes
// through these two.
const (
	echoRequests  = "echo-requests"
	echoResponses = "echo-responses"
)

// needCluster fails t unless KAFKA_BROKERS lists at least three brokers of
// a cluster that scripts/kafka.sh runs (KAFKA_NODES=3 make kafka-up): the
// test kills one of them.
func needCluster(t *testing.T) *kafkaCtl {
	t.Helper()
	needKafka(t)
	if n := len(brokerList()); n < 3 {
		t.Fatalf("KAFKA_BROKERS=%s lists %d broker(s): this test needs a cluster of three (make integration-cluster, or KAFKA_NODES=3 make kafka-up)", brokers, n)
	}
	return managedKafka(t)
}

// clusterAdmin returns a kadm client on KAFKA_BROKERS, closed in cleanup.
func clusterAdmin(t *testing.T) *kadm.Client {
	t.Helper()
	kc, err := kgo.NewClient(kgo.SeedBrokers(brokerList()...), kgo.RequestTimeoutOverhead(5*time.Second))
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	t.Cleanup(kc.Close)
	return kadm.NewClient(kc)
}

// partitionInfo returns the leader and replicas of partition p of each of
// topics.
func partitionInfo(ctx context.Context, adm *kadm.Client, p int32, topics ...string) (leaders map[string]int32, replicas map[string][]int32, err error) {
	md, err := adm.Metadata(ctx, topics...)
	if err != nil {
		return nil, nil, err
	}
	leaders, replicas = map[string]int32{}, map[string][]int32{}
	for _, topic := range topics {
		td, ok := md.Topics[topic]
		if !ok || td.Err != nil {
			return nil, nil, fmt.Errorf("topic %s: %v", topic, td.Err)
		}
		pd, ok := td.Partitions[p]
		if !ok {
			return nil, nil, fmt.Errorf("topic %s has no partition %d", topic, p)
		}
		leaders[topic], replicas[topic] = pd.Leader, pd.Replicas
	}
	return leaders, replicas, nil
}

// leadBoth makes one broker the leader of partition p of both echo topics,
// moving the reply partition's leadership (replica order, then a preferred
// leader election) when another broker leads it, and returns that broker.
// It fails t unless both partitions have three replicas.
func leadBoth(t *testing.T, adm *kadm.Client, p int32) int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), leaderMoveTimeout)
	defer cancel()
	leaders, replicas, err := partitionInfo(ctx, adm, p, echoRequests, echoResponses)
	if err != nil {
		t.Fatalf("metadata of the echo topics: %v", err)
	}
	for topic, r := range replicas {
		if len(r) < 3 {
			t.Fatalf("%s/%d has replicas %v: the topics must have three replicas (they were created on fewer brokers; run on a fresh cluster)", topic, p, r)
		}
	}
	victim := leaders[echoRequests]
	if leaders[echoResponses] == victim {
		return victim
	}
	order := []int32{victim}
	for _, b := range replicas[echoResponses] {
		if b != victim {
			order = append(order, b)
		}
	}
	var req kadm.AlterPartitionAssignmentsReq
	req.Assign(echoResponses, p, order)
	res, err := adm.AlterPartitionAssignments(ctx, req)
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		t.Fatalf("reordering the replicas of %s/%d to %v: %v", echoResponses, p, order, err)
	}
	for {
		set := kadm.TopicsSet{}
		set.Add(echoResponses, p)
		if _, err := adm.ElectLeaders(ctx, kadm.ElectPreferredReplica, set); err != nil && ctx.Err() == nil {
			t.Logf("preferred leader election of %s/%d: %v (trying again)", echoResponses, p, err)
		}
		if leaders, _, err := partitionInfo(ctx, adm, p, echoResponses); err == nil && leaders[echoResponses] == victim {
			return victim
		}
		select {
		case <-ctx.Done():
			t.Fatalf("broker %d did not become the leader of %s/%d within %s", victim, echoResponses, p, leaderMoveTimeout)
		case <-time.After(200 * time.Millisecond): // poll interval of the metadata
		}
	}
}

// echoPartition returns the partition (of the request and of the reply
// topic: both have three, keyed by the correlation id) of a keyed echo
// call of method.
func echoPartition(method, key string) int32 {
	id := wire.CorrelationID(wire.DefaultNames(), key, "example.echo.v1.EchoService", method, echoResponses)
	return kafkaclient.KeyPartition([]byte(id), 3)
}

// keyFor returns a key of the form prefix-N whose method call lands on (or
// off) partition p, as on says.
func keyFor(prefix, method string, p int32, on bool) string {
	for n := 0; ; n++ {
		k := prefix + "-" + strconv.Itoa(n)
		if (echoPartition(method, k) == p) == on {
			return k
		}
	}
}

// leaderAttempt is one attempt of a call of the leader kill test.
type leaderAttempt struct {
	start, end time.Time
	victim     bool // the call's partitions are led by the killed broker
	code       codes.Code
	msg        string
}

// TestClusterLeaderKilledUnderKeyedLoad runs echo-gateway and two echo-worker
// processes on a three-broker cluster, makes one broker the leader of
// partition 0 of both the request and the reply topic, and SIGKILLs that
// broker under a load of keyed calls (unary and server streams, each with
// its own idempotency-key, retried with it on UNAVAILABLE or
// DEADLINE_EXCEEDED). Half of the callers' calls land on partition 0, the
// rest on the others. The topics have three replicas and
// min.insync.replicas 2, so after the leader election every call must be
// answered: none lost, none past its deadline, none ending OK over a wrong
// stream. It logs the pause of partition 0: from the kill to the end of the
// first successful call there that started once the broker was gone.
func TestClusterLeaderKilledUnderKeyedLoad(t *testing.T) {
	k := needCluster(t)
	t.Cleanup(func() { k.ensureRunning(t) })
	adm := clusterAdmin(t)

	group := unique("leader")
	workers := []*proc{startWorker(t, group), startWorker(t, group)}
	addr := freeAddr(t)
	gateway := startGateway(t, addr)
	c := dial(t, addr)
	warmUp(t, c)

	const p = 0
	victim := leadBoth(t, adm, p)
	node := strconv.Itoa(int(victim)) // scripts/kafka.sh: node id = broker id
	var victimAddr string
	if _, port, err := net.SplitHostPort(brokerList()[0]); err == nil {
		first, _ := strconv.Atoi(port)
		victimAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(first+int(victim)-1))
	}
	t.Logf("broker %d (%s) leads %s/%d and %s/%d", victim, victimAddr, echoRequests, p, echoResponses, p)

	run := unique("leader")
	var mu sync.Mutex
	var attempts []leaderAttempt
	var wrong, unanswered []string
	var calls, retried int
	stop := make(chan struct{})
	okVictim := make(chan time.Time, 1<<12) // start times of successful attempts on partition 0
	var wg sync.WaitGroup
	for i := 0; i < leaderCallers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			onVictim := i%2 == 0
			stream := i%4 >= 2
			method := "EchoUnary"
			if stream {
				method = "EchoServerStream"
			}
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				key := keyFor(fmt.Sprintf("%s-%d-%d", run, i, j), method, p, onVictim)
				want := fmt.Sprintf("caller %d call %d", i, j)
				began := time.Now()
				for n := 1; ; n++ {
					ctx, cancel := context.WithTimeout(context.Background(), leaderAttemptLimit)
					ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
					a := leaderAttempt{start: time.Now(), victim: onVictim}
					var err error
					if stream {
						err = streamAttempt(ctx, c, want)
					} else {
						err = unaryAttempt(ctx, c, want)
					}
					a.end = time.Now()
					cancel()
					st := status.Convert(err)
					a.code, a.msg = st.Code(), st.Message()
					mu.Lock()
					attempts = append(attempts, a)
					if n == 2 {
						retried++
					}
					if a.code == codes.DataLoss {
						wrong = append(wrong, fmt.Sprintf("%s: %s", key, a.msg))
					}
					mu.Unlock()
					if err == nil {
						if onVictim {
							select {
							case okVictim <- a.start:
							default:
							}
						}
						break
					}
					if a.code != codes.Unavailable && a.code != codes.DeadlineExceeded {
						if a.code != codes.DataLoss { // counted as a wrong answer already
							mu.Lock()
							unanswered = append(unanswered, fmt.Sprintf("%s: ended %s, which is not to be retried: %s", key, a.code, a.msg))
							mu.Unlock()
						}
						break
					}
					if time.Since(began) > leaderCallBound {
						mu.Lock()
						unanswered = append(unanswered, fmt.Sprintf("%s: no answer within %s, last %v", key, leaderCallBound, err))
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

	<-time.After(leaderSteady) // the load runs; this is its length, not a synchronisation
	// The broker dies somewhere between killed and gone (the script checks
	// its pid file first, then waits for the process to end): only calls
	// started once it is gone count for the pause, which is measured from
	// killed, so it may be up to that interval too long, never too short.
	killed := time.Now()
	if _, err := k.run(t, "kill", node); err != nil {
		t.Fatalf("killing broker %d: %v", victim, err)
	}
	gone := time.Now()
	var recovered time.Time
	bound := time.After(leaderCallBound)
	for recovered.IsZero() {
		select {
		case s := <-okVictim:
			if !s.Before(gone) {
				recovered = time.Now()
			}
		case <-bound:
			t.Errorf("no call on partition %d that started after the kill succeeded within %s", p, leaderCallBound)
			recovered = time.Now()
		}
	}
	<-time.After(leaderAfter) // the load goes on after recovery
	close(stop)
	wg.Wait()

	// The pause: the first success on partition 0 among the attempts that
	// started once the broker was gone, and the longest time without a
	// success on the other partitions after the kill.
	var pause time.Duration
	var okOthers []time.Time
	counts := map[codes.Code]int{}
	var late []string
	failedOn := map[bool]int{} // failed attempts on partition 0 (true) and elsewhere
	for _, a := range attempts {
		counts[a.code]++
		if a.code != codes.OK {
			failedOn[a.victim]++
		}
		if d := a.end.Sub(a.start); d > leaderAttemptLimit+deadlineSlack {
			late = append(late, fmt.Sprintf("an attempt started %s after the kill took %s (%s: %s)",
				a.start.Sub(killed).Round(time.Millisecond), d.Round(time.Millisecond), a.code, a.msg))
		}
		if a.code != codes.OK || a.start.Before(killed) {
			continue
		}
		if a.victim && !a.start.Before(gone) {
			if d := a.end.Sub(killed); pause == 0 || d < pause {
				pause = d
			}
		} else if !a.victim {
			okOthers = append(okOthers, a.end)
		}
	}
	okOthers = append(okOthers, killed)
	slices.SortFunc(okOthers, func(a, b time.Time) int { return a.Compare(b) })
	var othersGap time.Duration
	for i := 1; i < len(okOthers); i++ {
		othersGap = max(othersGap, okOthers[i].Sub(okOthers[i-1]))
	}
	var cs []string
	for code, n := range counts {
		cs = append(cs, fmt.Sprintf("%s %d", code, n))
	}
	sort.Strings(cs)
	t.Logf("leader kill: pause of partition %d (kill to the first successful call started once the broker was gone, %s after the kill) %s; longest gap between successes on the other partitions %s",
		p, gone.Sub(killed).Round(time.Millisecond), pause.Round(time.Millisecond), othersGap.Round(time.Millisecond))
	t.Logf("%d calls (%d needed a retry), %d attempts: %s; failed attempts on partition %d: %d, on the others: %d",
		calls, retried, len(attempts), strings.Join(cs, ", "), p, failedOn[true], failedOn[false])
	if pause == 0 {
		t.Errorf("no call on partition %d that started after the kill succeeded", p)
	}
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
	for _, w := range workers {
		w.stop(t)
	}
	if _, err := k.run(t, "start", node); err != nil {
		t.Errorf("starting broker %d again: %v", victim, err)
	}
}
