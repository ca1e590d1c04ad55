package main

// The cost of WorkerOutcomeTopic (stored outcomes that survive the process):
// keyed unary calls, each with an idempotency key of its own (so every call
// runs its handler and stores its outcome), through a gateway and a worker
// without the option ("keyed") and with it ("keyed-outcomes": every outcome
// also written to the compacted outcome topic, acknowledged before the
// request's offset is committed). Both run interleaved with the other unary
// contenders; reportOutcomes prints them side by side.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// Contender kinds of this file.
const (
	keyedKind    = "keyed"
	outcomesKind = "keyed-outcomes"
)

// outcomeContenders sets up, for each Kafka client of the run, a gateway and
// a worker without and with WorkerOutcomeTopic, each pair on its own
// clients (front: the gateway's, back: the worker's) and topics, and
// returns their contenders (those want selects) and what closes them.
func outcomeContenders(cfg config, brokers, run string, log *slog.Logger, want func(kind, client string, inflight int) bool) ([]*contender, []func(), error) {
	var cs []*contender
	var closers []func()
	req := &echov1.EchoRequest{Message: cfg.message}
	for _, kc := range kafkaClients {
		if len(cfg.clients) > 0 && !contains(cfg.clients, kc.name) {
			continue
		}
		for _, kind := range []string{keyedKind, outcomesKind} {
			var levels []int
			for _, l := range cfg.levels {
				if want(kind, kc.name, l) {
					levels = append(levels, l)
				}
			}
			if len(levels) == 0 {
				continue
			}
			progress("setting up " + kind + " " + kc.name)
			prefix := fmt.Sprintf("%s%s.%s.", run, kc.name, kind)
			echo, closeFn, err := newKeyedEnv(kc, brokers, prefix, log, kind == outcomesKind)
			if closeFn != nil {
				closers = append(closers, closeFn)
			}
			if err != nil {
				return cs, closers, fmt.Errorf("%s %s: %w", kind, kc.name, err)
			}
			for _, l := range levels {
				cs = append(cs, &contender{kind: kind, client: kc.name, inflight: l, call: keyedUnary(echo, req, prefix)})
			}
		}
	}
	return cs, closers, nil
}

// newKeyedEnv starts a worker (with the outcome topic when outcomes) and a
// gateway on clients of kind kc, on topics under prefix created as
// EnsureTopics creates them.
func newKeyedEnv(kc kafkaClientKind, brokers, prefix string, log *slog.Logger, outcomes bool) (echov1.EchoServiceClient, func(), error) {
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	front, err := kc.new(brokers, log.With("side", "front"))
	if err != nil {
		return nil, nil, err
	}
	closers = append(closers, func() { _ = front.Close() })
	back, err := kc.new(brokers, log.With("side", "back"))
	if err != nil {
		return nil, closeAll, err
	}
	closers = append(closers, func() { _ = back.Close() })
	mapName := func(t string) string { return prefix + t }
	mapper := runtime.WithTopicMapper(mapName)
	wopts := []runtime.WorkerOption{mapper, runtime.WithLogger(log), runtime.WorkerGroupID(prefix + "workers")}
	if outcomes {
		wopts = append(wopts, runtime.WorkerOutcomeTopic("outcomes"))
	}
	w := runtime.NewWorker(back, wopts...)
	topics := append(echov1.EchoServiceKafkaSpec.Topics(mapName), w.ExtraTopics()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := runtime.EnsureTopics(ctx, front, topics, runtime.EnsureTopicsOptions{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		return nil, closeAll, err
	}
	if err := echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}); err != nil {
		return nil, closeAll, err
	}
	if err := w.Start(); err != nil {
		return nil, closeAll, err
	}
	closers = append(closers, func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = w.Shutdown(sctx)
	})
	gw := runtime.NewGateway(front, mapper, runtime.WithLogger(log))
	closers = append(closers, func() { _ = gw.Close() })
	ge, err := newGRPCEnv(func(s *grpc.Server) error { return echov1.RegisterEchoServiceKafkaGateway(s, gw) }, runtime.FetchServerCodec())
	if err != nil {
		return nil, closeAll, err
	}
	closers = append(closers, ge.close)
	select {
	case <-w.Ready():
	case <-ctx.Done():
		return nil, closeAll, fmt.Errorf("worker of %s got no partitions within 60 s", prefix)
	}
	if outcomes && w.Stats().OutcomesUnwritten > 0 {
		return nil, closeAll, fmt.Errorf("outcomes not written")
	}
	return ge.echo, closeAll, nil
}

// keyedUnary returns a call of EchoUnary with an idempotency key of its
// own: a new key per call, so that each call runs the handler and stores
// an outcome.
func keyedUnary(c echov1.EchoServiceClient, req *echov1.EchoRequest, prefix string) func(context.Context, int) error {
	var seq atomic.Uint64
	return func(ctx context.Context, _ int) error {
		key := prefix + strconv.FormatUint(seq.Add(1), 10)
		resp, err := c.EchoUnary(metadata.AppendToOutgoingContext(ctx, "idempotency-key", key), req)
		if err != nil {
			return err
		}
		if resp.GetMessage() != req.GetMessage() {
			return fmt.Errorf("echo: got %q, want %q", resp.GetMessage(), req.GetMessage())
		}
		return nil
	}
}

// reportOutcomes prints the keyed contenders, without and with the outcome
// topic, and the cost of the option in calls/s and p50.
func reportOutcomes(w io.Writer, cs []*contender) {
	any := false
	for _, c := range cs {
		any = any || c.kind == outcomesKind
	}
	if !any {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "### Stored outcomes in Kafka (WorkerOutcomeTopic)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Unary calls each with an idempotency key of its own (every call runs its handler and stores its outcome), "+
		"through gateway and worker, without and with `runtime.WorkerOutcomeTopic` (each outcome also written to the compacted outcome topic, "+
		"acknowledged before the request's offset is committed). Interleaved with the other unary rows. CPU/call is the whole process's (client, gateway, worker, embedded broker).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| in flight | client | calls/s without | calls/s with | p50 without | p50 with | p99 without | p99 with | CPU/call without | CPU/call with | errors |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range cs {
		if c.kind != outcomesKind {
			continue
		}
		off := find(cs, keyedKind, c.client, c.inflight)
		if off == nil {
			continue
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s (%+.0f%%) | %s | %s (%+.0f%%) | %s | %s | %.0f µs | %.0f µs (%+.0f%%) | %d / %d |\n", c.inflight, c.client,
			fmtRate(off.rate()), fmtRate(c.rate()), pct(c.rate(), off.rate()),
			fmtDur(off.p(50)), fmtDur(c.p(50)), pct(float64(c.p(50)), float64(off.p(50))),
			fmtDur(off.p(99)), fmtDur(c.p(99)), cpuPerCall(off), cpuPerCall(c), pct(cpuPerCall(c), cpuPerCall(off)), off.errs, c.errs)
	}
}

// cpuPerCall is the process's CPU time per call in µs (client, gateway,
// worker and an embedded broker alike): less disturbed than the rates by
// other processes on a shared machine.
func cpuPerCall(c *contender) float64 {
	if c.calls == 0 {
		return 0
	}
	return float64(c.cpu.Microseconds()) / float64(c.calls)
}

// pct is how much a differs from b, in per cent of b.
func pct(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * (a - b) / b
}
