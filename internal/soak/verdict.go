package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// verdict is what the soak found. See the package doc for the definitions
// of lost and duplicated.
type verdict struct {
	calls  int            // attempts of the four kinds
	failed map[string]int // attempts that did not end OK, by code (a wrong answer counts as DataLoss)

	lostCalls  int // attempts that ended OK whose call no worker journalled as executed OK
	lostEvents int // acknowledged events a fetch caller never received
	// sameProc counts executions of a keyed call that began after a caller
	// had its OK answer, on a worker process that had already completed
	// the call OK: duplicated, always.
	sameProc int
	// crossProc counts executions of a keyed call that began after a caller
	// had its OK answer, on a worker process that had not completed it
	// (another process ran it): duplicated only with the outcome topic on,
	// since without it the stored outcome lives in the process that
	// answered (README, Idempotency).
	crossProc    int
	outcomeTopic bool

	pastDeadline int // attempts that ended later than their deadline plus the grace
	early        int // attempts that ended DEADLINE_EXCEEDED well before their deadline: a stale status
	wrong        int // attempts that ended OK over a wrong answer
	redelivered  int // fetch deliveries of an event a caller already had

	problems []string // the first few findings, for the report
}

// lost returns lost calls plus lost events.
func (v *verdict) lost() int { return v.lostCalls + v.lostEvents }

// duplicated returns the executions that count as duplicated.
func (v *verdict) duplicated() int {
	if v.outcomeTopic {
		return v.sameProc + v.crossProc
	}
	return v.sameProc
}

// ok reports whether the soak passed: nothing lost, duplicated, past its
// deadline or wrong.
func (v *verdict) ok() bool {
	return v.lost() == 0 && v.duplicated() == 0 && v.pastDeadline == 0 && v.early == 0 && v.wrong == 0 && v.redelivered == 0
}

const maxProblems = 20

// earlySlack is how much earlier than its deadline an attempt may end
// DEADLINE_EXCEEDED (the gateway and the worker count the deadline from a
// little later than the caller, and round it to the millisecond).
const earlySlack = 500 * time.Millisecond

// lateWindow is how long after an attempt's end a late wake of the lag
// monitor still counts for it: after a stall the monitor and the caller
// wake in either order.
const lateWindow = 500 * time.Millisecond

func (v *verdict) problem(format string, args ...any) {
	if len(v.problems) < maxProblems {
		v.problems = append(v.problems, fmt.Sprintf(format, args...))
	}
}

// analyse compares what the callers saw with what the workers journalled.
// An attempt may end later than its deadline by grace plus late(from, to),
// the largest lateness of this process's own timers measured from the
// deadline until shortly after the attempt ended (lagMonitor.maxLate; nil:
// none).
func analyse(attempts []attempt, execs []execution, outcomeTopic bool, grace time.Duration, late func(from, to int64) time.Duration) verdict {
	v := verdict{failed: map[string]int{}, outcomeTopic: outcomeTopic}
	byCall := map[string][]execution{}
	for _, e := range execs {
		byCall[e.call] = append(byCall[e.call], e)
	}
	answered := map[string]int64{} // keyed call -> when a caller first had its OK answer
	for _, a := range attempts {
		v.calls++
		if took := time.Duration(a.ended - a.began); took > a.deadline+grace {
			var starved time.Duration
			if late != nil {
				starved = late(a.began+int64(a.deadline), a.ended+int64(lateWindow))
			}
			if took > a.deadline+grace+starved {
				v.pastDeadline++
				v.problem("call %s (%s via %s) ended %s after it began, past its %s deadline, the %s grace and the %s this process's timers were late meanwhile",
					a.call, kindNames[a.kind], a.via, took.Round(time.Millisecond), a.deadline, grace, starved.Round(time.Millisecond))
			}
		}
		switch {
		case a.wrong != "":
			v.wrong++
			v.failed[codes.DataLoss.String()]++
			v.problem("call %s (%s via %s, keyed %v, repeat %v) ended OK with a wrong answer: %s", a.call, kindNames[a.kind], a.via, a.keyed, a.repeat, a.wrong)
			continue
		case a.code != codes.OK:
			v.failed[a.code.String()]++
			if took := time.Duration(a.ended - a.began); a.code == codes.DeadlineExceeded && took < a.deadline-earlySlack {
				v.early++
				v.problem("call %s (%s via %s, keyed %v, repeat %v) ended DEADLINE_EXCEEDED after %s of its %s deadline: a stale status",
					a.call, kindNames[a.kind], a.via, a.keyed, a.repeat, took.Round(time.Millisecond), a.deadline)
			}
			continue
		}
		if !executedOK(byCall[a.call]) {
			v.lostCalls++
			v.problem("lost: call %s (%s via %s, keyed %v, repeat %v) ended OK but no worker journalled an OK execution of it", a.call, kindNames[a.kind], a.via, a.keyed, a.repeat)
		}
		if a.keyed {
			if t, ok := answered[a.call]; !ok || a.ended < t {
				answered[a.call] = a.ended
			}
		}
	}
	calls := make([]string, 0, len(answered))
	for c := range answered {
		calls = append(calls, c)
	}
	sort.Strings(calls)
	for _, call := range calls {
		at := answered[call]
		es := byCall[call]
		for _, e := range es {
			if e.begin <= at {
				continue
			}
			if completedBefore(es, e.proc, e.begin) {
				v.sameProc++
				v.problem("duplicated: keyed call %s ran again on worker process %s, which had completed it, %s after its answer", call, e.proc, time.Duration(e.begin-at).Round(time.Millisecond))
				continue
			}
			v.crossProc++
			if outcomeTopic {
				v.problem("duplicated: keyed call %s ran again on worker process %s %s after its answer (completed by another process; the outcome topic is on)", call, e.proc, time.Duration(e.begin-at).Round(time.Millisecond))
			}
		}
	}
	return v
}

// executedOK reports whether one of es ended OK.
func executedOK(es []execution) bool {
	for _, e := range es {
		if e.code == codes.OK.String() {
			return true
		}
	}
	return false
}

// completedBefore reports whether process proc completed one of es OK
// before ns.
func completedBefore(es []execution, proc string, ns int64) bool {
	for _, e := range es {
		if e.proc == proc && e.code == codes.OK.String() && e.end != 0 && e.end < ns {
			return true
		}
	}
	return false
}

// addFetch adds the fetch callers' results.
func (v *verdict) addFetch(rs []fetchResult) {
	for _, r := range rs {
		v.lostEvents += r.missing
		v.redelivered += r.redelivered
		if r.missing > 0 {
			v.problem("lost: fetch caller %s never received %d acknowledged events", r.name, r.missing)
		}
		if r.redelivered > 0 {
			v.problem("fetch caller %s received %d events again after a resume", r.name, r.redelivered)
		}
	}
}

// rss is a process's resident set size at the start and the end of the load.
type rss struct{ start, end float64 }

// summary is the soak's one summary line.
func (v *verdict) summary(gateway, worker rss, extra []string) string {
	var b strings.Builder
	failed := 0
	for _, n := range v.failed {
		failed += n
	}
	fmt.Fprintf(&b, "soak: %d calls, %d failed", v.calls, failed)
	if failed > 0 {
		b.WriteString(" (" + byCount(v.failed) + ")")
	}
	fmt.Fprintf(&b, ", %d lost", v.lost())
	if v.lost() > 0 {
		fmt.Fprintf(&b, " (%d calls, %d fetch events)", v.lostCalls, v.lostEvents)
	}
	fmt.Fprintf(&b, ", %d duplicated", v.duplicated())
	switch {
	case v.outcomeTopic && v.duplicated() > 0:
		fmt.Fprintf(&b, " (%d on the process that had completed the call, %d on another)", v.sameProc, v.crossProc)
	case !v.outcomeTopic && v.crossProc > 0:
		fmt.Fprintf(&b, " (and %d keyed re-executions on another worker process after the answer, not counted: no outcome topic)", v.crossProc)
	}
	fmt.Fprintf(&b, ", gateway RSS %.0f→%.0f MiB, worker RSS %.0f→%.0f MiB", gateway.start, gateway.end, worker.start, worker.end)
	var fails []string
	if v.pastDeadline > 0 {
		fails = append(fails, fmt.Sprintf("%d calls past their deadline", v.pastDeadline))
	}
	if v.wrong > 0 {
		fails = append(fails, fmt.Sprintf("%d wrong answers", v.wrong))
	}
	if v.early > 0 {
		fails = append(fails, fmt.Sprintf("%d ended DEADLINE_EXCEEDED before their deadline", v.early))
	}
	if v.redelivered > 0 {
		fails = append(fails, fmt.Sprintf("%d fetch events redelivered", v.redelivered))
	}
	fails = append(fails, extra...)
	if len(fails) > 0 {
		b.WriteString("; FAIL: " + strings.Join(fails, ", "))
	}
	return b.String()
}

// byCount formats counts as "A 3, B 1", most first.
func byCount(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
