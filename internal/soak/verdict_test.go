package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

const sec = int64(time.Second)

// ok is an attempt of call that ended OK at end (seconds), keyed or not.
func ok(call string, keyed bool, end int64) attempt {
	return attempt{call: call, keyed: keyed, via: "gateway", began: end*sec - sec, ended: end * sec, deadline: 20 * time.Second}
}

// ran is an execution of call on proc from begin to end (seconds; end 0:
// the process died while it ran).
func ran(proc, call string, begin, end int64) execution {
	e := execution{proc: proc, call: call, begin: begin * sec}
	if end != 0 {
		e.end, e.code = end*sec, "OK"
	}
	return e
}

func TestAnalyseCleanRun(t *testing.T) {
	attempts := []attempt{
		ok("a", false, 2),
		ok("k", true, 3),
		ok("k", true, 9), // a repeat, answered from the stored outcome: no execution
		{call: "u", via: "conn", began: 0, ended: 20 * sec, deadline: 20 * time.Second, code: codes.DeadlineExceeded},
	}
	execs := []execution{
		ran("w0-0", "a", 1, 2),
		ran("w1-0", "k", 2, 3),
		ran("w1-0", "u", 1, 0), // killed while it ran
		ran("w0-0", "a", 5, 6), // an unkeyed call run again after a kill: not counted
	}
	v := analyse(attempts, execs, false, 2*time.Second, nil)
	if !v.ok() || v.calls != 4 || v.lost() != 0 || v.duplicated() != 0 || v.crossProc != 0 || v.failed["DeadlineExceeded"] != 1 {
		t.Fatalf("verdict %+v, want a clean run of 4 calls with one DeadlineExceeded", v)
	}
	got := v.summary(rss{30, 31.4}, rss{28, 29.6}, nil)
	want := "soak: 4 calls, 1 failed (DeadlineExceeded 1), 0 lost, 0 duplicated, gateway RSS 30→31 MiB, worker RSS 28→30 MiB"
	if got != want {
		t.Errorf("summary\n got %q\nwant %q", got, want)
	}
}

func TestAnalyseLost(t *testing.T) {
	attempts := []attempt{ok("a", false, 2), ok("b", true, 2)}
	execs := []execution{
		ran("w0-0", "a", 1, 0), // began, never returned: not an OK execution
	}
	v := analyse(attempts, execs, false, time.Second, nil)
	if v.lostCalls != 2 || v.ok() {
		t.Fatalf("lost %d (ok %v), want 2 and a failed verdict", v.lostCalls, v.ok())
	}
	v.addFetch([]fetchResult{{name: "0", received: 9, missing: 1}})
	if v.lost() != 3 || !strings.Contains(v.summary(rss{}, rss{}, nil), ", 3 lost (2 calls, 1 fetch events),") {
		t.Errorf("lost %d, summary %q", v.lost(), v.summary(rss{}, rss{}, nil))
	}
}

func TestAnalyseDuplicated(t *testing.T) {
	attempts := []attempt{ok("k1", true, 3), ok("k2", true, 3), ok("k3", true, 3)}
	execs := []execution{
		// k1: completed by w0-0, answered at 3 s, run again by w0-0 at 5 s:
		// the process had the outcome.
		ran("w0-0", "k1", 2, 3), ran("w0-0", "k1", 5, 6),
		// k2: completed by w1-0, which was killed; w0-0 ran it again after
		// the answer.
		ran("w1-0", "k2", 2, 3), ran("w0-0", "k2", 14, 15),
		// k3: two executions before the answer (a retry that joined while
		// the first still ran): not duplicated.
		ran("w0-0", "k3", 1, 2), ran("w1-0", "k3", 2, 3),
	}
	off := analyse(attempts, execs, false, time.Second, nil)
	if off.sameProc != 1 || off.crossProc != 1 || off.duplicated() != 1 || off.ok() {
		t.Fatalf("outcome topic off: same %d, cross %d, duplicated %d; want 1, 1, 1", off.sameProc, off.crossProc, off.duplicated())
	}
	if s := off.summary(rss{}, rss{}, nil); !strings.Contains(s, ", 1 duplicated (and 1 keyed re-executions on another worker process after the answer, not counted: no outcome topic),") {
		t.Errorf("summary %q", s)
	}
	on := analyse(attempts, execs, true, time.Second, nil)
	if on.duplicated() != 2 {
		t.Errorf("outcome topic on: duplicated %d, want 2", on.duplicated())
	}
	// Without the same-process one, the run passes with the topic off only.
	execs = append(execs[:1:1], execs[2:]...)
	if v := analyse(attempts, execs, false, time.Second, nil); !v.ok() || v.crossProc != 1 {
		t.Errorf("cross-process only, topic off: ok %v, cross %d; want a pass with 1 counted apart", v.ok(), v.crossProc)
	}
	if v := analyse(attempts, execs, true, time.Second, nil); v.ok() {
		t.Error("cross-process only, topic on: passed, want duplicated")
	}
}

func TestAnalyseDeadlineAndWrong(t *testing.T) {
	late := attempt{call: "a", began: 0, ended: 23 * sec, deadline: 20 * time.Second, code: codes.DeadlineExceeded}
	inGrace := attempt{call: "b", began: 0, ended: 21 * sec, deadline: 20 * time.Second, code: codes.DeadlineExceeded}
	wrong := attempt{call: "c", began: 0, ended: sec, deadline: 20 * time.Second, wrong: "unary answered \"x\""}
	stale := attempt{call: "d", began: 0, ended: 2 * sec, deadline: 20 * time.Second, code: codes.DeadlineExceeded}
	v := analyse([]attempt{late, inGrace, wrong, stale}, []execution{ran("w0-0", "c", 0, 1)}, false, 2*time.Second, nil)
	if v.pastDeadline != 1 || v.wrong != 1 || v.early != 1 || v.failed["DataLoss"] != 1 || v.ok() {
		t.Fatalf("past deadline %d, wrong %d, early %d, failed %v", v.pastDeadline, v.wrong, v.early, v.failed)
	}
	if s := v.summary(rss{}, rss{}, []string{"no worker was killed"}); !strings.HasSuffix(s, "; FAIL: 1 calls past their deadline, 1 wrong answers, 1 ended DEADLINE_EXCEEDED before their deadline, no worker was killed") {
		t.Errorf("summary %q", s)
	}
}

func TestJournalRoundTrip(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(filepath.Join(dir, "w0-0.journal"))
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		j.begin("a", 1), j.begin("a", 2), j.end("a", "OK", 3), j.begin("b", 4), j.end("a", "Unavailable", 5),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := openJournal(filepath.Join(dir, "w0-0.journal")); err == nil {
		t.Error("a second process opened the same journal")
	}
	// A line cut short, as a kill in the middle of a write would leave it.
	f, err := os.OpenFile(filepath.Join(dir, "w1-0.journal"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("S c 7\nE c O"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	execs, torn, err := readJournals(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []execution{
		{proc: "w0-0", call: "a", begin: 1, end: 3, code: "OK"},
		{proc: "w0-0", call: "a", begin: 2, end: 5, code: "Unavailable"},
		{proc: "w0-0", call: "b", begin: 4},
		{proc: "w1-0", call: "c", begin: 7},
	}
	if torn != 1 || len(execs) != len(want) {
		t.Fatalf("read %+v, %d torn; want %+v, 1 torn", execs, torn, want)
	}
	for i := range want {
		if execs[i] != want[i] {
			t.Errorf("execution %d: %+v, want %+v", i, execs[i], want[i])
		}
	}
}

func TestAnalyseDeadlineWhileStarved(t *testing.T) {
	a := attempt{call: "a", began: 0, ended: 23 * sec, deadline: 20 * time.Second, code: codes.DeadlineExceeded}
	var asked [2]int64
	starved := func(d time.Duration) func(from, to int64) time.Duration {
		return func(from, to int64) time.Duration { asked = [2]int64{from, to}; return d }
	}
	if v := analyse([]attempt{a}, nil, false, time.Second, starved(2500*time.Millisecond)); v.pastDeadline != 0 {
		t.Errorf("3 s late with 2.5 s of measured starvation and 1 s grace: counted past its deadline")
	}
	if want := [2]int64{20 * sec, 23*sec + int64(lateWindow)}; asked != want {
		t.Errorf("lateness asked for [%d, %d], want from the deadline to the end plus the window %v", asked[0], asked[1], want)
	}
	if v := analyse([]attempt{a}, nil, false, time.Second, starved(time.Second)); v.pastDeadline != 1 {
		t.Errorf("3 s late with 1 s of measured starvation and 1 s grace: not counted past its deadline")
	}
}

func TestLagMonitorMaxLate(t *testing.T) {
	m := &lagMonitor{samples: []lagSample{{woke: 1, late: 5}, {woke: 3, late: 9}, {woke: 4, late: 2}, {woke: 8, late: 7}}}
	for _, c := range []struct {
		from, to int64
		want     time.Duration
	}{{0, 10, 9}, {4, 8, 7}, {4, 7, 2}, {5, 7, 0}, {9, 20, 0}} {
		if got := m.maxLate(c.from, c.to); got != c.want {
			t.Errorf("maxLate(%d, %d) = %d, want %d", c.from, c.to, got, c.want)
		}
	}
	if most, p99 := m.summary(); most != 9 || p99 != 9 {
		t.Errorf("summary %d, %d; want 9, 9", most, p99)
	}
}
