// Package proctest runs this module's example binaries as child processes
// for tests: it finds the module root, builds the binaries with one go
// build, starts them with their output recorded, waits for their "ready"
// line, signals them and waits for their exit. Every wait is bounded by a
// duration the caller gives.
//
// It reports outcomes as values and errors and leaves the wording of test
// failures to its callers; only the failures that both harnesses word alike
// (starting a process, finding a port, dialling) are reported here. It is
// imported only by tests (example/cmd and integration).
package proctest

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ModuleRoot returns the directory of the first go.mod found from the
// working directory upwards, or an error when there is none. It only reads
// the file system and is safe for concurrent use.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// BuildExamplesCmd returns, not yet started, the command that builds the
// example binaries names (the main packages example/cmd/<name>) into dir:
// one `go build -o dir/ ./example/cmd/<name>...` run in root, the module
// root. With -o naming a directory, go writes each main package there under
// its own name, and the packages compile in parallel. The command has no
// environment of its own (it inherits the test's) and no timeout; run it
// with CombinedOutput to get go's messages. Safe for concurrent use; the
// returned command is the caller's.
func BuildExamplesCmd(root, dir string, names ...string) *exec.Cmd {
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, name := range names {
		args = append(args, "./example/cmd/"+name)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	return cmd
}

// FreeAddr returns "127.0.0.1:<port>" of a TCP port that was free a moment
// ago, for a program the caller starts next. The port is picked at random
// below the system's ephemeral port range (Linux:
// /proc/sys/net/ipv4/ip_local_port_range; 32768 elsewhere) and at or above
// 20000, where neither outgoing connections nor listeners on port 0 (the
// Kafka clients and embedded brokers of tests running meanwhile) are given
// ports: a port from that range, as a listener on port 0 gets, was taken
// by one of them between FreeAddr and the program's listen once in CI
// ("bind: address already in use"). Another program that picks ports
// itself may still take it. It fails tb (Fatalf) when no port can be
// listened on. Safe for concurrent use.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	lo, hi := freeRange()
	for range 200 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+rand.IntN(hi-lo)))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // in use
		}
		if err := l.Close(); err != nil {
			tb.Fatalf("closing the probe listener: %v", err)
		}
		return addr
	}
	tb.Fatalf("finding a free port in [%d, %d): 200 random ports were all in use", lo, hi)
	return ""
}

// freeRange is the range FreeAddr picks ports from: [20000, the first
// ephemeral port).
func freeRange() (lo, hi int) {
	lo, hi = 20000, 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > lo+1000 {
				hi = n
			}
		}
	}
	return lo, hi
}

// Dial returns a gRPC client connection to addr without transport security
// and with grpc.NewClient's defaults otherwise: it connects lazily, on the
// first call. The connection is closed when tb's cleanups run; it fails tb
// (Fatalf) when the target is invalid. Safe for concurrent use, and so is
// the connection.
func Dial(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("connecting to %s: %v", addr, err)
	}
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// waitDelay bounds how long Wait keeps copying a process's output after it
// exited, should a descendant still hold its stdout or stderr.
const waitDelay = 5 * time.Second

// ErrExited is returned by WaitReady when the process exited without having
// printed a ready line; Err then gives its exit error.
var ErrExited = errors.New("proctest: the process exited")

// ErrTimeout is returned by WaitReady when the time given passed first.
var ErrTimeout = errors.New("proctest: timed out")

// Proc is a program running as a child process, started by Start. Its
// stdout and stderr are recorded in memory, without bound; the first line of
// its stdout that contains "ready" (a last line without a newline counts,
// once the process exited) is its ready line. All methods are safe for
// concurrent use; Name and Args must not be modified.
type Proc struct {
	// Name is the base name of the program, for messages.
	Name string
	// Args are the arguments given to Start, without the program.
	Args []string

	cmd  *exec.Cmd
	done chan struct{} // closed once Wait returned and the output is complete
	err  error         // Wait's result, written before done closes

	mu      sync.Mutex
	stdout  bytes.Buffer // as written
	stderr  bytes.Buffer // as written
	output  bytes.Buffer // stderr as written, stdout by whole lines
	partial []byte       // stdout after its last newline
	lines   []string     // stdout's whole lines so far
	watches []*lineWatch // WaitLine callers not yet answered
}

// lineWatch is a WaitLine caller waiting for a line containing substr.
type lineWatch struct {
	substr string
	found  chan string // buffered: gets the line once
}

// Start starts the program at path with args, with no standard input and the
// test's environment, and records its output (see Stdout, Stderr and
// Output). It fails tb (Fatalf "starting <name>: <error>") when the program
// cannot start.
//
// The process is stopped by the caller, with Signal and Wait; in case it is
// not, Start registers a cleanup on tb that kills it (SIGKILL) if it still
// runs and waits at most killWait for it to be gone. That cleanup then calls
// after, when not nil, with whether the process is gone: after reports a
// process that would not die and logs the output, in the caller's words.
//
// Once the process exited, its output is still copied for at most 5
// seconds, should a descendant keep the pipes open. Safe for concurrent use.
func Start(tb testing.TB, path string, args []string, killWait time.Duration, after func(p *Proc, gone bool)) *Proc {
	tb.Helper()
	p := &Proc{
		Name: filepath.Base(path),
		Args: args,
		done: make(chan struct{}),
	}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout = writerFunc(p.writeStdout)
	p.cmd.Stderr = writerFunc(p.writeStderr)
	p.cmd.WaitDelay = waitDelay
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("starting %s: %v", p.Name, err)
	}
	go func() {
		err := p.cmd.Wait()
		p.mu.Lock()
		if len(p.partial) > 0 { // a last line without a newline
			p.line(p.partial)
			p.partial = nil
		}
		p.mu.Unlock()
		p.err = err
		close(p.done)
	}()
	tb.Cleanup(func() {
		gone := p.kill(killWait)
		if after != nil {
			after(p, gone)
		}
	})
	return p
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (p *Proc) writeStdout(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stdout.Write(b)
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		p.line(p.partial[:i])
		p.partial = p.partial[i+1:]
	}
	return len(b), nil
}

func (p *Proc) writeStderr(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stderr.Write(b)
	p.output.Write(b)
	return len(b), nil
}

// line takes one line of stdout, without its newline (and, as
// bufio.ScanLines, without a carriage return before it). p.mu is held.
func (p *Proc) line(l []byte) {
	l = bytes.TrimSuffix(l, []byte{'\r'})
	p.output.Write(l)
	p.output.WriteByte('\n')
	line := string(l)
	p.lines = append(p.lines, line)
	for i := 0; i < len(p.watches); {
		if w := p.watches[i]; strings.Contains(line, w.substr) {
			w.found <- line
			p.watches = append(p.watches[:i], p.watches[i+1:]...)
			continue
		}
		i++
	}
}

// WaitLine waits at most d for a line of stdout that contains substr (one
// already printed counts) and returns the first such line. It returns
// ErrExited when the process exited without printing one, and ErrTimeout
// when d passed first. Safe for concurrent use.
func (p *Proc) WaitLine(substr string, d time.Duration) (string, error) {
	w := &lineWatch{substr: substr, found: make(chan string, 1)}
	p.mu.Lock()
	for _, l := range p.lines {
		if strings.Contains(l, substr) {
			p.mu.Unlock()
			return l, nil
		}
	}
	p.watches = append(p.watches, w)
	p.mu.Unlock()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case l := <-w.found:
		return l, nil
	case <-p.done:
	case <-timer.C:
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case l := <-w.found: // found while we woke for another reason
		return l, nil
	default:
	}
	p.watches = slices.DeleteFunc(p.watches, func(x *lineWatch) bool { return x == w })
	select {
	case <-p.done:
		return "", ErrExited
	default:
		return "", ErrTimeout
	}
}

// Pid returns the process id. Safe for concurrent use.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stdout returns what the process wrote to stdout so far. Safe for
// concurrent use.
func (p *Proc) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

// Stderr returns what the process wrote to stderr so far. Safe for
// concurrent use.
func (p *Proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// Output returns stdout and stderr so far, interleaved in the order they
// arrived: stderr as written, stdout by whole lines (a last line without a
// newline is added, with one, once the process exited), so that a line of
// stdout is never cut by stderr. Safe for concurrent use.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.output.String()
}

// Done returns a channel closed once the process exited and its output is
// complete. Safe for concurrent use.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns the result of exec.Cmd.Wait once the process exited (nil for
// a clean exit with status 0), and nil while it runs. Safe for concurrent
// use.
func (p *Proc) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// WaitReady waits at most d for the ready line, the first line of stdout
// that contains "ready", and returns it. It returns ErrExited when the
// process exited without printing one (a process that printed it and then
// exited counts as ready), and ErrTimeout when d passed first; a line or an
// exit already there is returned even when d is 0. Safe for
// concurrent use; every caller gets the same line.
func (p *Proc) WaitReady(d time.Duration) (string, error) {
	return p.WaitLine("ready", d)
}

// Signal sends sig to the process and returns os.Process.Signal's error
// (os.ErrProcessDone once it exited). Safe for concurrent use.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits at most d for the process to exit (see Done). It returns how
// long it waited and whether the process exited; Err then tells how. Safe
// for concurrent use.
func (p *Proc) Wait(d time.Duration) (time.Duration, bool) {
	start := time.Now()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
		return time.Since(start), true
	case <-timer.C:
		return time.Since(start), false
	}
}

// kill kills the process (SIGKILL) unless it already exited, waits at most
// d for it to be gone, and reports whether it is.
func (p *Proc) kill(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	_ = p.cmd.Process.Kill()
	_, gone := p.Wait(d)
	return gone
}
