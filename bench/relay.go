package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// The one-in-flight floor with the relay in a process of its own
// (floor-2hop-proc): the caller's side produces to topic a and reads topic
// b in this process, as a gateway would; a child process (this program run
// again with -relay-child) reads a and produces each record to b, as a
// worker with no handler would. It pays the process crossings a gateway and
// a worker in separate processes pay, which the one-goroutine two-hop floor
// (floor-2hop) does not: two Go runtimes, each woken by its own network
// poller, each Kafka client in the process that uses it.

// relayChildReady is the line the child writes to its standard output once
// its reader is assigned, so that no record produced after it is missed.
const relayChildReady = "relay ready"

// relayChildCPU is the line that asks the child for its CPU time.
const relayChildCPU = "cpu"

// relayChildFlag, as the first argument, makes the program the relay
// child; the flags after it are relayChildMain's.
const relayChildFlag = "-relay-child"

// relayChildConfig is what the parent passes to the child in flags.
type relayChildConfig struct {
	client, brokers, from, to string
}

// relayChildMain parses the child's flags (args: those after
// relayChildFlag) and runs it.
func relayChildMain(args []string) error {
	var rc relayChildConfig
	fs := flag.NewFlagSet("bench "+relayChildFlag, flag.ContinueOnError)
	fs.StringVar(&rc.client, "client", "", "Kafka client (as in bench/kafka.go)")
	fs.StringVar(&rc.brokers, "brokers", "", "bootstrap brokers")
	fs.StringVar(&rc.from, "from", "", "topic read")
	fs.StringVar(&rc.to, "to", "", "topic written")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return runRelayChild(rc)
}

// runRelayChild is the child's main: it relays every record of from to to
// with a client of the given kind until its standard input ends (the parent
// closed it, or died), then closes its client.
func runRelayChild(rc relayChildConfig) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("side", "relay-child")
	var kind *kafkaClientKind
	for i := range kafkaClients {
		if kafkaClients[i].name == rc.client {
			kind = &kafkaClients[i]
		}
	}
	if kind == nil {
		return fmt.Errorf("%s -client: unknown Kafka client %q", relayChildFlag, rc.client)
	}
	if rc.brokers == "" || rc.from == "" || rc.to == "" {
		return fmt.Errorf("%s needs -brokers, -from and -to", relayChildFlag)
	}
	c, err := kind.new(rc.brokers, log)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := newReaderAtEnd(c, rc.from)
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// Each line "cpu" asks for the child's CPU time so far (user +
		// system, nanoseconds, one line on standard output); the end of
		// standard input (the parent closed it, or exited) ends the child.
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			if in.Text() == relayChildCPU {
				fmt.Println(cpuTime().Nanoseconds())
			}
		}
		cancel()
	}()
	if _, err := fmt.Println(relayChildReady); err != nil {
		return err
	}
	delivered := func(_ *kafkaclient.Record, err error) {
		if err != nil {
			log.Warn("relay child produce", "error", err)
		}
	}
	failures := 0
	for {
		recs, err := r.Poll(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// The parent's calls time out and count errors meanwhile;
			// a reader that keeps failing ends the child.
			if failures++; failures >= 100 {
				return fmt.Errorf("relay child: %d reads failed in a row, last: %w", failures, err)
			}
			log.Warn("relay child read", "error", err)
			continue
		}
		failures = 0
		for _, rec := range recs {
			c.Produce(&kafkaclient.Record{Topic: rc.to, Partition: kafkaclient.AnyPartition, Key: rec.Key, Value: rec.Value},
				kafkaclient.AcksAll, delivered)
		}
	}
}

// procHop is the parent's side of floor-2hop-proc: one call at a time, a
// record produced to a (front client) and the relayed record read from b
// (front client).
type procHop struct {
	front  kafkaclient.Client
	a      string
	rb     kafkaclient.Reader
	value  []byte
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader // the child's standard output
	exited chan struct{}
	mu     sync.Mutex
	failed atomic.Pointer[error]
	cpuMu  sync.Mutex
	cpu    time.Duration // the child's CPU time when last asked
}

// newProcHop starts the relay child (client kind, brokers) and waits, at
// most 60 s, until it reads a.
func newProcHop(front kafkaclient.Client, client, brokers, a, b string, value []byte) (*procHop, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("relay child: %w", err)
	}
	rb, err := newReaderAtEnd(front, b)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, relayChildFlag, "-client", client, "-brokers", brokers, "-from", a, "-to", b)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		_ = rb.Close()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		_ = rb.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		_ = rb.Close()
		return nil, fmt.Errorf("relay child: %w", err)
	}
	h := &procHop{front: front, a: a, rb: rb, value: value, cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout), exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(h.exited)
	}()
	ready := make(chan error, 1)
	go func() {
		line, err := h.out.ReadString('\n')
		if err == nil && strings.TrimSpace(line) != relayChildReady {
			err = fmt.Errorf("relay child said %q, want %q", line, relayChildReady)
		}
		ready <- err
	}()
	t := time.NewTimer(60 * time.Second)
	defer t.Stop()
	select {
	case err := <-ready:
		if err != nil {
			h.close()
			return nil, fmt.Errorf("relay child: %w", err)
		}
	case <-t.C:
		h.close()
		return nil, fmt.Errorf("relay child not ready within 60 s")
	}
	return h, nil
}

// close ends the child (its standard input closed; killed if it has not
// exited 10 s later) and the reader.
func (h *procHop) close() {
	_ = h.stdin.Close()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-h.exited:
	case <-t.C:
		_ = h.cmd.Process.Kill()
		<-h.exited
	}
	_ = h.rb.Close()
}

func (h *procHop) delivered(_ *kafkaclient.Record, err error) {
	if err != nil {
		h.failed.Store(&err)
	}
}

// call is one round trip through the child; only one runs at a time.
func (h *procHop) call(ctx context.Context, _ int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.exited:
		return fmt.Errorf("relay child exited")
	default:
	}
	h.front.Produce(&kafkaclient.Record{Topic: h.a, Partition: kafkaclient.AnyPartition, Key: []byte("k"), Value: h.value},
		kafkaclient.AcksAll, h.delivered)
	recs, err := h.rb.Poll(ctx)
	if err != nil {
		return fmt.Errorf("two-hop through the relay child: %w", err)
	}
	if len(recs) != 1 {
		return fmt.Errorf("two-hop through the relay child: %d records, want 1", len(recs))
	}
	if p := h.failed.Swap(nil); p != nil {
		return *p
	}
	return nil
}

// childCPU is the child's user+system CPU time so far, as the child
// reports it (getrusage), or the last figure it reported when it no longer
// answers.
func (h *procHop) childCPU() time.Duration {
	h.cpuMu.Lock()
	defer h.cpuMu.Unlock()
	if _, err := fmt.Fprintln(h.stdin, relayChildCPU); err != nil {
		return h.cpu
	}
	line, err := h.out.ReadString('\n')
	if err != nil {
		return h.cpu
	}
	if ns, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64); err == nil {
		h.cpu = time.Duration(ns)
	}
	return h.cpu
}
