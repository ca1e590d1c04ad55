package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// child is a gateway or worker process of the soak: this program run again
// with -role. Its stdout and stderr go to a log file in the run directory;
// the first stdout line containing "ready" is its ready line. It gets
// SIGKILL should the soak itself die (Pdeathsig), so no process outlives a
// run.
type child struct {
	name  string
	cmd   *exec.Cmd
	ready chan string   // gets the ready line, once
	done  chan struct{} // closed once the process exited
	err   error         // Wait's result, set before done closes
	log   *os.File
}

// startChild starts exe with args, its output in logPath.
func startChild(name, exe string, args []string, logPath string) (*child, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	c := &child{name: name, ready: make(chan string, 1), done: make(chan struct{}), log: log}
	c.cmd = exec.Command(exe, args...)
	c.cmd.Stderr = log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		log.Close()
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(out)
		found := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(log, line)
			if !found && strings.Contains(line, "ready") {
				found = true
				c.ready <- line
			}
		}
		_, _ = io.Copy(io.Discard, out) // a line longer than the scanner's buffer
	}()
	go func() {
		<-copied // Wait closes the pipe: read it to the end first
		c.err = c.cmd.Wait()
		log.Close()
		close(c.done)
	}()
	return c, nil
}

// pid returns the process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// waitReady waits at most d for the ready line.
func (c *child) waitReady(d time.Duration) (string, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case line := <-c.ready:
		return line, nil
	case <-c.done:
		return "", fmt.Errorf("%s exited before it was ready: %v (log %s)", c.name, c.err, c.log.Name())
	case <-t.C:
		return "", fmt.Errorf("%s was not ready within %s (log %s)", c.name, d, c.log.Name())
	}
}

// wait waits at most d for the process to exit and reports whether it did.
func (c *child) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C:
		return false
	}
}

// kill sends SIGKILL and waits at most d for the process to be gone.
func (c *child) kill(d time.Duration) error {
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s: %w", c.name, err)
	}
	if !c.wait(d) {
		return fmt.Errorf("%s (pid %d) still runs %s after SIGKILL", c.name, c.pid(), d)
	}
	return nil
}

// stop sends SIGTERM, waits at most d for a clean exit, and kills the
// process when it did not exit by then. It returns an error for an unclean
// exit or a kill.
func (c *child) stop(d time.Duration) error {
	select {
	case <-c.done:
		return c.err
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping %s: %w", c.name, err)
	}
	if c.wait(d) {
		if c.err != nil {
			return fmt.Errorf("%s exited uncleanly after SIGTERM: %v (log %s)", c.name, c.err, c.log.Name())
		}
		return nil
	}
	_ = c.kill(10 * time.Second)
	return fmt.Errorf("%s did not exit within %s of SIGTERM: killed (log %s)", c.name, d, c.log.Name())
}

// rssMiB returns the resident set size of process pid, from /proc.
func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			fs := strings.Fields(rest)
			if len(fs) == 2 && fs[1] == "kB" {
				kb, err := strconv.ParseFloat(fs[0], 64)
				return kb / 1024, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
