package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// A journal is one worker process's record of the handler executions it
// began and ended: one file per process, opened with O_APPEND, each entry
// one line written with one write(2) (os.File.Write does not buffer). What a
// process wrote before it was SIGKILLed is in the page cache and survives
// it, so the journals of killed workers are complete up to the kill (a line
// cut by the kill cannot happen for a write this small to a regular file,
// but the reader skips one all the same and says so).
//
// Lines:
//
//	S <call> <unix ns>          the handler began the call
//	E <call> <code> <unix ns>   the handler returned, with that gRPC code
//
// <call> is the caller's soak-call metadata (see load.go): the idempotency
// key of a keyed call, a fresh id per attempt otherwise.
type journal struct {
	f *os.File
}

// openJournal creates the journal at path (failing when it exists: every
// process writes its own).
func openJournal(path string) (*journal, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &journal{f: f}, nil
}

// begin records that the handler began call at ns. Safe for concurrent use:
// each line is one write(2) on an O_APPEND file.
func (j *journal) begin(call string, ns int64) error {
	_, err := j.f.Write([]byte("S " + call + " " + strconv.FormatInt(ns, 10) + "\n"))
	return err
}

// end records that the handler of call returned code at ns.
func (j *journal) end(call, code string, ns int64) error {
	_, err := j.f.Write([]byte("E " + call + " " + code + " " + strconv.FormatInt(ns, 10) + "\n"))
	return err
}

func (j *journal) close() error { return j.f.Close() }

// execution is one handler run read back from a journal.
type execution struct {
	proc  string // the journal's file name: one worker process
	call  string
	begin int64 // unix ns
	end   int64 // unix ns; 0 when the journal has no end (the process died while it ran)
	code  string
}

// readJournals reads every *.journal file of dir. A call that one process
// ran several times pairs each end with the earliest begin not yet ended.
// torn counts lines that were not whole entries.
func readJournals(dir string) (execs []execution, torn int, err error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.journal"))
	if err != nil {
		return nil, 0, err
	}
	sort.Strings(paths)
	for _, p := range paths {
		e, t, err := readJournal(p)
		if err != nil {
			return nil, 0, err
		}
		execs = append(execs, e...)
		torn += t
	}
	return execs, torn, nil
}

func readJournal(path string) ([]execution, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	proc := strings.TrimSuffix(filepath.Base(path), ".journal")
	var execs []execution
	open := map[string][]int{} // call -> indexes into execs without an end, oldest first
	torn := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		switch {
		case len(fs) == 3 && fs[0] == "S":
			ns, err := strconv.ParseInt(fs[2], 10, 64)
			if err != nil {
				torn++
				continue
			}
			open[fs[1]] = append(open[fs[1]], len(execs))
			execs = append(execs, execution{proc: proc, call: fs[1], begin: ns})
		case len(fs) == 4 && fs[0] == "E":
			ns, err := strconv.ParseInt(fs[3], 10, 64)
			q := open[fs[1]]
			if err != nil || len(q) == 0 {
				torn++
				continue
			}
			execs[q[0]].end, execs[q[0]].code = ns, fs[2]
			open[fs[1]] = q[1:]
		default:
			torn++
		}
	}
	if err := sc.Err(); err != nil {
		return nil, 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return execs, torn, nil
}
