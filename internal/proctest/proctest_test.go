package proctest_test

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/proctest"
)

// bound is every wait of these tests.
const bound = 30 * time.Second

// helperArg, as the first argument, makes the test binary act as the child
// process of the tests: see child.
const helperArg = "proctest-child"

func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == helperArg {
		os.Exit(child(os.Args[2]))
	}
	os.Exit(m.Run())
}

// child is the child process. "ready" prints to both streams, a ready line,
// then waits for SIGTERM and exits 0; "hang" prints a ready line and waits
// for SIGKILL, taking no notice of SIGTERM; "silent" waits for a signal;
// "fail" prints an unterminated line and exits 3.
func child(mode string) int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	switch mode {
	case "ready":
		fmt.Println("one")
		fmt.Fprintln(os.Stderr, "err one")
		fmt.Println("child: ready")
		<-term
		fmt.Print("bye")
		return 0
	case "hang":
		fmt.Println("hanging, ready for SIGKILL") // SIGTERM only goes to term
		select {}
	case "silent":
		select {}
	case "fail":
		fmt.Print("no luck")
		return 3
	}
	return 2
}

func start(t *testing.T, mode string, after func(*proctest.Proc, bool)) *proctest.Proc {
	t.Helper()
	return proctest.Start(t, os.Args[0], []string{helperArg, mode}, bound, after)
}

func TestReadyThenTerminate(t *testing.T) {
	p := start(t, "ready", nil)
	if want := filepath.Base(os.Args[0]); p.Name != want {
		t.Errorf("Name %q, want %q", p.Name, want)
	}
	line, err := p.WaitReady(bound)
	if err != nil || line != "child: ready" {
		t.Fatalf("WaitReady: %q, %v; want %q", line, err, "child: ready")
	}
	if err := p.Err(); err != nil {
		t.Errorf("Err while running: %v", err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, exited := p.Wait(bound); !exited {
		t.Fatalf("no exit within %s of SIGTERM:\n%s", bound, p.Output())
	}
	if err := p.Err(); err != nil {
		t.Errorf("Err after a clean exit: %v", err)
	}
	if got, want := p.Stdout(), "one\nchild: ready\nbye"; got != want {
		t.Errorf("Stdout %q, want %q", got, want)
	}
	if got, want := p.Stderr(), "err one\n"; got != want {
		t.Errorf("Stderr %q, want %q", got, want)
	}
	// stderr and stdout are separate pipes, so only each one's order is
	// certain: stderr's line comes whole somewhere between stdout's, and the
	// last line of stdout gets its newline.
	out := p.Output()
	if got, want := strings.Replace(out, "err one\n", "", 1), "one\nchild: ready\nbye\n"; got != want {
		t.Errorf("Output %q, want %q with %q somewhere between its lines", out, want, "err one\n")
	}
	// Ready is still answered once the process is gone.
	if line, err := p.WaitReady(0); err != nil || line != "child: ready" {
		t.Errorf("WaitReady after the exit: %q, %v", line, err)
	}
}

func TestWaitLine(t *testing.T) {
	p := start(t, "ready", nil)
	bye := make(chan error, 1)
	go func() {
		line, err := p.WaitLine("by", bound)
		if err == nil && line != "bye" {
			err = fmt.Errorf("line %q, want %q", line, "bye")
		}
		bye <- err
	}()
	if _, err := p.WaitReady(bound); err != nil {
		t.Fatal(err)
	}
	// A line printed before the call counts.
	if line, err := p.WaitLine("on", 0); err != nil || line != "one" {
		t.Errorf("WaitLine(on): %q, %v; want %q", line, err, "one")
	}
	if _, err := p.WaitLine("err one", 10*time.Millisecond); err != proctest.ErrTimeout {
		t.Errorf("WaitLine of a stderr line: %v, want ErrTimeout (stdout only)", err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The unterminated last line, printed on the way out, is found.
	if err := <-bye; err != nil {
		t.Errorf("WaitLine(by) while running: %v", err)
	}
	if _, exited := p.Wait(bound); !exited {
		t.Fatal("no exit after SIGTERM")
	}
	if _, err := p.WaitLine("never", bound); err != proctest.ErrExited {
		t.Errorf("WaitLine after the exit: %v, want ErrExited", err)
	}
}

func TestExitedBeforeReady(t *testing.T) {
	p := start(t, "fail", nil)
	if _, err := p.WaitReady(bound); err != proctest.ErrExited {
		t.Fatalf("WaitReady: %v, want ErrExited", err)
	}
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Err %v, want exit status 3", err)
	}
	// The unterminated last line is a line of Output once the process is
	// gone.
	if got, want := p.Output(), "no luck\n"; got != want {
		t.Errorf("Output %q, want %q", got, want)
	}
}

func TestTimeoutsAndCleanupKill(t *testing.T) {
	var p *proctest.Proc
	t.Run("hang", func(t *testing.T) {
		p = start(t, "hang", func(q *proctest.Proc, gone bool) {
			if q != p || !gone {
				t.Errorf("after(%p, %v), want (%p, true)", q, gone, p)
			}
		})
		if _, err := p.WaitReady(bound); err != nil {
			t.Fatalf("WaitReady: %v", err)
		}
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if _, exited := p.Wait(10 * time.Millisecond); exited {
			t.Errorf("exited after an ignored SIGTERM")
		}
	})
	// The subtest's cleanup killed it.
	select {
	case <-p.Done():
	default:
		t.Fatal("the process still runs after its test's cleanup")
	}
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err %v, want killed", err)
	}
}

func TestReadyTimeout(t *testing.T) {
	p := start(t, "silent", nil)
	if _, err := p.WaitReady(10 * time.Millisecond); err != proctest.ErrTimeout {
		t.Errorf("WaitReady: %v, want ErrTimeout", err)
	}
}

// TestFreeAddr: the address is one a program can listen on, outside the
// range the system hands out to outgoing connections and port-0 listeners.
func TestFreeAddr(t *testing.T) {
	lo, hi := proctest.FreeRange()
	for range 20 {
		addr := proctest.FreeAddr(t)
		host, p, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("FreeAddr: %q", addr)
		}
		port, _ := strconv.Atoi(p)
		if port < lo || port >= hi {
			t.Fatalf("FreeAddr: port %d outside [%d, %d)", port, lo, hi)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listening on FreeAddr's %s: %v", addr, err)
		}
		_ = l.Close()
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 && f[0] != strconv.Itoa(hi) {
			t.Fatalf("FreeAddr's range ends at %d, the ephemeral range starts at %s", hi, f[0])
		}
	}
}

func TestModuleRootAndBuildCmd(t *testing.T) {
	root, err := proctest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatal(err)
	}
	cmd := proctest.BuildExamplesCmd(root, "/tmp/bin", "echo", "echo-worker")
	want := []string{"go", "build", "-o", "/tmp/bin/", "./example/cmd/echo", "./example/cmd/echo-worker"}
	if strings.Join(cmd.Args, " ") != strings.Join(want, " ") || cmd.Dir != root {
		t.Errorf("command %q in %s, want %q in %s", cmd.Args, cmd.Dir, want, root)
	}
}
