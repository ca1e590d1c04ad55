//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/proctest"
)

// Bounds of the harness's own waits.
const (
	readyTimeout  = 90 * time.Second  // process start until its "ready" line
	exitTimeout   = 30 * time.Second  // SIGTERM until exit
	killTimeout   = 10 * time.Second  // SIGKILL until Wait returns
	scriptTimeout = 180 * time.Second // one scripts/kafka.sh stop or start
	warmupTimeout = 90 * time.Second  // until the first call through a fresh deployment succeeds
)

var (
	// brokers is KAFKA_BROKERS; the tests skip without it.
	brokers string
	// binDir holds the example binaries built by TestMain.
	binDir string
	// root is the module root.
	root string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	brokers = os.Getenv("KAFKA_BROKERS")
	if brokers == "" {
		fmt.Fprintln(os.Stderr, "integration: KAFKA_BROKERS is not set; the fault tests need Apache Kafka (make kafka-up, then make integration) and skip")
		return m.Run()
	}
	var err error
	if root, err = proctest.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "kafkarpc-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	build := proctest.BuildExamplesCmd(root, dir, "echo-gateway", "echo-worker")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the example binaries: %v\n%s", err, out)
		return 1
	}
	fmt.Fprintf(os.Stderr, "integration: built echo-gateway and echo-worker in %s; Kafka at %s\n", time.Since(start).Round(time.Millisecond), brokers)
	binDir = dir
	return m.Run()
}

// needKafka fails t when no broker was given: the suite is for Apache
// Kafka, and a run without one would pass on nothing.
func needKafka(t *testing.T) {
	t.Helper()
	if brokers == "" {
		t.Fatal("KAFKA_BROKERS is not set: run the fault tests with `make integration` (after `make kafka-up`)")
	}
}

// clientName is the Kafka client the example binaries use: KAFKA_CLIENT, or
// their default, confluent.
func clientName() string {
	if c := os.Getenv("KAFKA_CLIENT"); c != "" {
		return c
	}
	return "confluent"
}

// brokerList returns the addresses of KAFKA_BROKERS.
func brokerList() []string { return strings.Split(brokers, ",") }

// unique returns prefix with a random-enough suffix, for group ids.
func unique(prefix string) string {
	return prefix + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// freeAddr returns 127.0.0.1:<port> of a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	return proctest.FreeAddr(t)
}

// ---- the broker, through scripts/kafka.sh

// kafkaCtl stops and starts the broker of scripts/kafka.sh.
type kafkaCtl struct {
	script string
	env    []string
}

// managedKafka returns the controller of the broker at KAFKA_BROKERS, and
// fails t when that broker is not the one scripts/kafka.sh runs: the test
// stops and starts it.
func managedKafka(t *testing.T) *kafkaCtl {
	t.Helper()
	needKafka(t)
	k := &kafkaCtl{script: filepath.Join(root, "scripts", "kafka.sh")}
	// A cluster of scripts/kafka.sh lists its nodes from the first one's
	// port on; stop and start act on all of them.
	addrs := brokerList()
	if _, port, err := net.SplitHostPort(addrs[0]); err == nil {
		k.env = append(os.Environ(), "KAFKA_PORT="+port, "KAFKA_NODES="+strconv.Itoa(len(addrs)))
	}
	out, err := k.run(t, "addr")
	if err != nil || strings.TrimSpace(out) != brokers {
		t.Fatalf("KAFKA_BROKERS=%s is not the broker of scripts/kafka.sh (%q, %v): this test stops and starts the broker", brokers, strings.TrimSpace(out), err)
	}
	return k
}

// run runs the script with args, bounded by scriptTimeout, and returns its
// stdout; its stderr goes to the test log.
func (k *kafkaCtl) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.script, args...)
	cmd.Env = k.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("scripts/kafka.sh %s:\n%s", strings.Join(args, " "), s)
	}
	return stdout.String(), err
}

// stop stops the broker, keeping its storage.
func (k *kafkaCtl) stop(t *testing.T) {
	t.Helper()
	if _, err := k.run(t, "stop"); err != nil {
		t.Fatalf("stopping the broker: %v", err)
	}
}

// start starts the broker again and returns once it answers.
func (k *kafkaCtl) start(t *testing.T) {
	t.Helper()
	if _, err := k.run(t, "start"); err != nil {
		t.Fatalf("starting the broker: %v", err)
	}
}

// ensureRunning starts the broker when a failed test left it stopped, so
// that the tests after it still have one.
func (k *kafkaCtl) ensureRunning(t *testing.T) {
	if _, err := k.run(t, "status"); err != nil {
		t.Logf("the broker is not running: starting it again for the next tests")
		if _, err := k.run(t, "start"); err != nil {
			t.Errorf("starting the broker again: %v", err)
		}
	}
}

// ---- example binaries as processes

// proc is a running example binary.
type proc struct{ *proctest.Proc }

// startProc runs the named example binary with args. It is killed in cleanup
// if still running, and its output is logged when the test failed.
func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return &proc{proctest.Start(t, filepath.Join(binDir, name), args, killTimeout, func(p *proctest.Proc, gone bool) {
		if !gone {
			t.Errorf("%s (pid %d) did not exit within %s of SIGKILL", name, p.Pid(), killTimeout)
		}
		if t.Failed() || os.Getenv("INTEGRATION_LOGS") != "" {
			t.Logf("--- %s %s (output):\n%s", name, strings.Join(args, " "), tail(p.Output(), 120))
		}
	})}
}

// tail returns the last n lines of s, leaving out the worker's warnings
// about requests whose deadline passed before it read them (a worker in a new
// group reads the shared request topic from its start, where older tests
// left thousands of them), counted instead.
func tail(s string, n int) string {
	var lines []string
	skipped := 0
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if strings.Contains(l, `msg="kafkarpc: rejecting request"`) && strings.Contains(l, "code=DeadlineExceeded") {
			skipped++
			continue
		}
		lines = append(lines, l)
	}
	if skipped > 0 {
		lines = append(lines, fmt.Sprintf("(%d warnings about expired requests left out)", skipped))
	}
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// waitReady waits for the ready line.
func (p *proc) waitReady(t *testing.T) string {
	t.Helper()
	line, err := p.WaitReady(readyTimeout)
	switch err {
	case nil:
	case proctest.ErrExited:
		t.Fatalf("%s exited before it was ready: %v\n%s", p.Name, p.Err(), tail(p.Output(), 60))
	default:
		t.Fatalf("%s was not ready within %s\n%s", p.Name, readyTimeout, tail(p.Output(), 60))
	}
	return line
}

// signal sends sig.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.Signal(sig); err != nil {
		t.Fatalf("sending %s to %s: %v", sig, p.Name, err)
	}
}

// wait waits for the process to exit, bounded by d, and returns how long
// it took.
func (p *proc) wait(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	took, exited := p.Wait(d)
	if !exited {
		t.Fatalf("%s did not exit within %s\n%s", p.Name, d, tail(p.Output(), 60))
	}
	return took
}

// stop sends SIGTERM and requires a clean exit within exitTimeout.
func (p *proc) stop(t *testing.T) time.Duration {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	d := p.wait(t, exitTimeout)
	if err := p.Err(); err != nil {
		t.Fatalf("%s did not exit cleanly after SIGTERM: %v\n%s", p.Name, err, tail(p.Output(), 60))
	}
	return d
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	p.wait(t, killTimeout)
}

// startWorker starts echo-worker in group and waits until it has joined.
func startWorker(t *testing.T, group string) *proc {
	t.Helper()
	p := startProc(t, "echo-worker", "--brokers", brokers, "--group", group)
	p.waitReady(t)
	return p
}

// startGateway starts echo-gateway on addr and waits until it listens.
func startGateway(t *testing.T, addr string) *proc {
	t.Helper()
	p := startProc(t, "echo-gateway", "--brokers", brokers, "--listen", addr)
	p.waitReady(t)
	return p
}

// dial returns an echo client of the gateway at addr.
func dial(t *testing.T, addr string) echov1.EchoServiceClient {
	t.Helper()
	return echov1.NewEchoServiceClient(proctest.Dial(t, addr))
}

// warmUp calls EchoUnary until one call succeeds, bounded by warmupTimeout:
// a worker that just joined may still be catching up with older requests of
// the shared topic.
func warmUp(t *testing.T, c echov1.EchoServiceClient) {
	t.Helper()
	deadline := time.Now().Add(warmupTimeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: "warm-up"})
		cancel()
		if err == nil && resp.GetMessage() == "warm-up" {
			return
		}
		last = err
		<-time.After(100 * time.Millisecond) // back-off between failed tries
	}
	t.Fatalf("no call succeeded within %s: last error %v", warmupTimeout, last)
}
