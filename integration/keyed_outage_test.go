//go:build integration

package integration

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Shape of the keyed streaming outage test.
const (
	keyedCallers      = 20
	keyedAttemptLimit = 10 * time.Second // deadline of one attempt
	keyedCallBound    = 3 * time.Minute  // all attempts of one call
	keyedSteady       = 3 * time.Second  // load before the broker is killed
	keyedDown         = 10 * time.Second // broker down
	keyedAfter        = 5 * time.Second  // load after the first call that started after the restart succeeded
)

// keyedAttempt is one attempt of a keyed call.
type keyedAttempt struct {
	start, end time.Time
	code       codes.Code
	msg        string
}

// TestBrokerKillUnderKeyedStreams SIGKILLs the broker under a load of keyed
// server streams (three messages 100 ms apart) through echo-gateway and
// echo-worker processes, and starts it again 10 s later. Each call has its
// own idempotency-key and is retried with it on UNAVAILABLE or
// DEADLINE_EXCEEDED, as the README advises. A retry shares its correlation
// id with the earlier attempts, whose replies may sit in the worker's
// producer until the broker is back: no attempt may end OK with anything but
// its three messages, none may end past its deadline, and every call must
// succeed once the broker is back.
func TestBrokerKillUnderKeyedStreams(t *testing.T) {
	k := managedKafka(t)
	t.Cleanup(func() { k.ensureRunning(t) })

	addr := freeAddr(t)
	worker := startWorker(t, unique("keyed"))
	gateway := startGateway(t, addr)
	c := dial(t, addr)
	warmUp(t, c)

	run := unique("keyed")
	var mu sync.Mutex
	var attempts []keyedAttempt
	var wrong, unanswered []string
	stop := make(chan struct{})
	okAfter := make(chan time.Time, 1<<12) // start times of successful attempts
	var wg sync.WaitGroup
	for i := 0; i < keyedCallers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("%s-%d-%d", run, i, j)
				want := fmt.Sprintf("caller %d call %d", i, j)
				began := time.Now()
				for {
					ctx, cancel := context.WithTimeout(context.Background(), keyedAttemptLimit)
					ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", key)
					a := keyedAttempt{start: time.Now()}
					err := streamAttempt(ctx, c, want)
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
						case okAfter <- a.start:
						default:
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
					if time.Since(began) > keyedCallBound {
						mu.Lock()
						unanswered = append(unanswered, fmt.Sprintf("%s: no answer within %s, last %v", key, keyedCallBound, err))
						mu.Unlock()
						break
					}
					if a.code == codes.Unavailable {
						<-time.After(200 * time.Millisecond) // back-off before the retry
					}
				}
			}
		}(i)
	}

	<-time.After(keyedSteady) // the load runs; this is its length, not a synchronisation
	killed := time.Now()
	if _, err := k.run(t, "kill"); err != nil {
		t.Fatalf("killing the broker: %v", err)
	}
	<-time.After(keyedDown) // the outage itself
	k.start(t)
	back := time.Now()
	t.Logf("broker SIGKILLed, started again %s later", back.Sub(killed).Round(time.Millisecond))
	recovered := false
	bound := time.After(keyedCallBound)
	for !recovered {
		select {
		case s := <-okAfter:
			recovered = !s.Before(back)
		case <-bound:
			t.Errorf("no keyed stream started after the restart succeeded within %s", keyedCallBound)
			recovered = true
		}
	}
	<-time.After(keyedAfter) // the load goes on after recovery
	close(stop)
	wg.Wait()

	counts := map[codes.Code]int{}
	var late []string
	for _, a := range attempts {
		counts[a.code]++
		if d := a.end.Sub(a.start); d > keyedAttemptLimit+deadlineSlack {
			late = append(late, fmt.Sprintf("an attempt started %s after the kill took %s (%s: %s)",
				a.start.Sub(killed).Round(time.Millisecond), d.Round(time.Millisecond), a.code, a.msg))
		}
	}
	var cs []string
	for code, n := range counts {
		cs = append(cs, fmt.Sprintf("%s %d", code, n))
	}
	sort.Strings(cs)
	t.Logf("%d attempts: %s", len(attempts), strings.Join(cs, ", "))
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
	worker.stop(t)
}
