package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	goruntime "runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// Goals of the benchmark issue, as ratios measured in the same run.
const (
	goalP50Ratio       = 1.3 // rpc p50 ≤ 1.3 × (two-hop floor p50 + plain gRPC p50), 1 in flight
	goalThroughput     = 0.6 // rpc calls/s ≥ 0.6 × floor pipeline calls/s, 256 in flight
	goalVsWatermill    = 10  // rpc calls/s ≥ 10 × Watermill's, 256 in flight
	goalThroughputAt   = 256
	goalVsWatermillAt  = 256
	watermillKind      = "watermill"
	watermillClient    = "sarama"
	plainGRPCKind      = "grpc"
	rpcKind, floorKind = "rpc", "floor"
	twoHopKind         = "floor-2hop"
	twoHopProcKind     = "floor-2hop-proc"
	connKind           = "conn"
	floor4Kind         = "floor4"
	floor4WireKind     = "floor4w"
	// streamFloorWireKind is the stream floor with the wire's records: keys
	// as long as a correlation id, the reply headers, an end-of-stream record.
	streamFloorWireKind = "stream-floor-w"
)

// Goals of the client connection's issue (ClientConn), same run.
const (
	goalConnP50       = 1.15 // conn p50 ≤ 1.15 × two-hop floor p50, 1 in flight
	goalConnFloor4    = 0.5  // conn calls/s ≥ 0.5 × four-record floor pipeline, 256 in flight
	goalConnFloor4At  = 256
	watermillBestNote = "Watermill's best configuration at that load (the lowest p50 and the most calls/s of its three set-ups)"
)

// springRef are Spring Kafka's ReplyingKafkaTemplate figures on Apache
// Kafka given in the client connection's issue: p50 (0 when not given) and
// calls/s by calls in flight.
var springRef = map[int]struct {
	p50  time.Duration
	rate float64
}{1: {930 * time.Microsecond, 1000}, 16: {0, 3600}, 256: {0, 17600}}

var kindNames = map[string]string{
	"floor-2hop":        "Kafka floor, two hops on one goroutine",
	"floor-2hop-proc":   "Kafka floor, two hops, the relay in a child process (CPU: both processes; allocations: this one's)",
	"floor":             "Kafka floor pipeline (produce → relay → consume)",
	"rpc":               "**kafkarpc unary** (gRPC → gateway → Kafka → worker → Kafka → gateway)",
	"conn":              "**kafkarpc unary through runtime.ClientConn** (caller → Kafka → worker → Kafka → caller, no gateway)",
	"floor4":            "Kafka floor pipeline, four records per call (data and end-of-stream each way, as the wire format)",
	"floor4w":           "Kafka floor pipeline, four records per call with the wire format's headers and key length",
	"grpc":              "plain gRPC on loopback, no Kafka",
	"watermill":         "Watermill request-reply, one shared reply subscription",
	"watermill-fanout":  "Watermill request-reply, stock gochannel.FanOut for replies",
	"watermill-grpc":    "Watermill request-reply behind a gRPC server on loopback",
	"stream":            "**kafkarpc server stream** through gateway and worker",
	"stream-floor":      "raw consumer, records produced meanwhile (produce → consume)",
	streamFloorWireKind: "raw consumer of the wire's records (key, reply headers, end-of-stream record), produced meanwhile",
	"grpc-stream":       "plain gRPC server stream on loopback, no Kafka",
}

func find(cs []*contender, kind, client string, inflight int) *contender {
	for _, c := range cs {
		if c.kind == kind && c.client == client && c.inflight == inflight {
			return c
		}
	}
	return nil
}

func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "–"
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

func fmtRate(r float64) string {
	switch {
	case r <= 0:
		return "–"
	case r >= 100000:
		return fmt.Sprintf("%.0fk", r/1000)
	case r >= 10000:
		return fmt.Sprintf("%.1fk", r/1000)
	default:
		return fmt.Sprintf("%.0f", r)
	}
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// verdictBest is verdict, saying also when the goal was out of reach in the
// run (beyond the best possible).
func verdictBest(ok, reachable bool) string {
	if !ok && !reachable {
		return "**missed**: out of reach here"
	}
	return verdict(ok)
}

// bestRate is the most calls/s a call through client's two Kafka hops and
// one plain gRPC call could have carried at l in flight in the run, whatever
// the gateway and the worker did. One in flight, such a call lasts at least
// a two-hop floor call plus a plain gRPC call. More in flight, it carries at
// most plain gRPC's calls/s, and needs at least the floor pipeline's CPU per
// call plus plain gRPC's, of the most CPU any contender at that level got (all
// parts share the machine's CPUs). 0 when the run lacks a contender needed.
func bestRate(cs []*contender, client string, l int) float64 {
	g := find(cs, plainGRPCKind, "-", l)
	if g == nil || g.calls == 0 {
		return 0
	}
	if l == 1 {
		h := find(cs, twoHopKind, client, 1)
		if h == nil || h.rate() == 0 || g.rate() == 0 {
			return 0
		}
		return 1 / (1/h.rate() + 1/g.rate())
	}
	best := g.rate()
	if f := find(cs, floorKind, client, l); f != nil && f.calls > 0 {
		cpu := func(c *contender) float64 { return c.cpu.Seconds() / float64(c.calls) }
		capacity := 0.0 // CPU seconds per second
		for _, c := range cs {
			if c.inflight == l && c.calls > 0 && c.busy > 0 {
				capacity = max(capacity, c.cpu.Seconds()/c.busy.Seconds())
			}
		}
		best = min(best, capacity/(cpu(f)+cpu(g)))
	}
	return best
}

// ceiling is bestRate as a ratio to against's calls/s, and its table cell.
func ceiling(cs []*contender, client string, l int, against *contender) (float64, string) {
	b := bestRate(cs, client, l)
	if b == 0 || against == nil || against.rate() == 0 {
		return 0, "–"
	}
	x := b / against.rate()
	return x, fmt.Sprintf("%.2f", x)
}

func report(w io.Writer, cfg config, broker string, unaryCs, streamCs []*contender, fetch []*fetchResult) {
	fmt.Fprintf(w, "## Run of %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	hasWM := false
	for _, c := range unaryCs {
		hasWM = hasWM || strings.HasPrefix(c.kind, "watermill")
	}
	writeEnv(w, cfg, broker, hasWM)

	clients := clientsOf(unaryCs)
	if len(unaryCs) > 0 {
		fmt.Fprintf(w, "\n### Unary echo\n\n")
		whose := "the whole process's (the embedded broker included)"
		if !strings.Contains(broker, "in this process") {
			whose = "this process's (client, gateway, worker; the broker runs elsewhere and is not counted)"
		}
		fmt.Fprintf(w, "Each row: closed loop, that many calls in flight. p50/p99 over every call of %d slices of %v; calls/s = calls ÷ wall time of those slices; CPU and allocations are %s, per call.\n\n", cfg.rounds, cfg.slice, whose)
		fmt.Fprintln(w, "| in flight | path | client | p50 | p99 | calls/s | CPU/call | allocs/call | errors |")
		fmt.Fprintln(w, "|---:|---|---|---:|---:|---:|---:|---:|---:|")
		levels := append([]int{}, cfg.levels...)
		for _, l := range levels {
			for _, kind := range []string{twoHopKind, twoHopProcKind, floorKind, floor4Kind, floor4WireKind, rpcKind, connKind, plainGRPCKind, watermillKind, "watermill-grpc", "watermill-fanout"} {
				for _, c := range unaryCs {
					if c.kind != kind || c.inflight != l {
						continue
					}
					fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", l, kindNames[kind], c.client,
						fmtDur(c.p(50)), fmtDur(c.p(99)), fmtRate(c.rate()), perCall(c), allocsPerCall(c), errCell(c))
				}
			}
		}

		fmt.Fprintf(w, "\n### Ratios (same run)\n\n")
		fmt.Fprintln(w, "| client | in flight | rpc p50 ÷ floor pipeline p50 | rpc calls/s ÷ floor pipeline | rpc calls/s ÷ Watermill | rpc p50 ÷ Watermill p50 | rpc calls/s ÷ Watermill behind gRPC | rpc p50 ÷ Watermill behind gRPC |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|")
		for _, cl := range clients {
			for _, l := range levels {
				r, f, wm := find(unaryCs, rpcKind, cl, l), find(unaryCs, floorKind, cl, l), find(unaryCs, watermillKind, watermillClient, l)
				wg := find(unaryCs, "watermill-grpc", watermillClient, l)
				if r == nil {
					continue
				}
				fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %s |\n", cl, l, ratioDur(r, f), ratioRate(r, f), ratioRate(r, wm), ratioDur(r, wm), ratioRate(r, wg), ratioDur(r, wg))
			}
		}

		fmt.Fprintf(w, "\n### Goals of the first round (issue 6)\n\n")
		fmt.Fprintln(w, "Best possible: the best a call through a gRPC hop and the client's two Kafka hops could reach in this run, whatever the gateway and the worker did. Its p50 is at least the two-hop floor's plus a plain gRPC call's; one in flight, its calls/s at most 1 ÷ (1 ÷ the two-hop floor's + 1 ÷ plain gRPC's); more in flight, at most plain gRPC's, and at most the most CPU any contender at that level got ÷ (the floor pipeline's CPU per call + plain gRPC's), since client, gateway, worker and broker share the machine's CPUs. A goal beyond it cannot be met here by any change to the gateway or the worker.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| goal | client | measured | target | best possible | |")
		fmt.Fprintln(w, "|---|---|---:|---:|---:|---|")
		g := find(unaryCs, plainGRPCKind, "-", 1)
		wm := func(l int) *contender { return find(unaryCs, watermillKind, watermillClient, l) }
		for _, cl := range clients {
			r1, h := find(unaryCs, rpcKind, cl, 1), find(unaryCs, twoHopKind, cl, 1)
			if r1 != nil && h != nil && g != nil {
				x := float64(r1.p(50)) / float64(h.p(50)+g.p(50))
				fmt.Fprintf(w, "| unary p50 ÷ (two-hop floor p50 + plain gRPC p50), 1 in flight: %s ÷ (%s + %s) | %s | %.2f | ≤ %.1f | 1.00 | %s |\n",
					fmtDur(r1.p(50)), fmtDur(h.p(50)), fmtDur(g.p(50)), cl, x, goalP50Ratio, verdict(x <= goalP50Ratio))
			}
			rN, fN := find(unaryCs, rpcKind, cl, goalThroughputAt), find(unaryCs, floorKind, cl, goalThroughputAt)
			if rN != nil && fN != nil {
				x := rN.rate() / fN.rate()
				best, cell := ceiling(unaryCs, cl, goalThroughputAt, fN)
				fmt.Fprintf(w, "| calls/s ÷ floor pipeline calls/s, %d in flight: %s ÷ %s | %s | %.2f | ≥ %.1f | %s | %s |\n",
					goalThroughputAt, fmtRate(rN.rate()), fmtRate(fN.rate()), cl, x, goalThroughput, cell, verdictBest(x >= goalThroughput, best >= goalThroughput))
			}
			if rW, wW := find(unaryCs, rpcKind, cl, goalVsWatermillAt), wm(goalVsWatermillAt); rW != nil && wW != nil {
				x := rW.rate() / wW.rate()
				best, cell := ceiling(unaryCs, cl, goalVsWatermillAt, wW)
				fmt.Fprintf(w, "| calls/s ÷ Watermill calls/s, %d in flight: %s ÷ %s | %s | %.1f | ≥ %d | %s | %s |\n",
					goalVsWatermillAt, fmtRate(rW.rate()), fmtRate(wW.rate()), cl, x, goalVsWatermill, cell, verdictBest(x >= goalVsWatermill, best >= goalVsWatermill))
			}
			if cl == "franz" {
				for _, l := range levels {
					r, wl := find(unaryCs, rpcKind, cl, l), wm(l)
					if r == nil || wl == nil {
						continue
					}
					bestP50, reachable := "–", true
					if h, gl := find(unaryCs, twoHopKind, cl, l), find(unaryCs, plainGRPCKind, "-", l); h != nil && gl != nil && wl.p(50) > 0 {
						b := float64(h.p(50)+gl.p(50)) / float64(wl.p(50))
						bestP50, reachable = fmt.Sprintf("%.2f×", b), b < 1
					}
					fmt.Fprintf(w, "| lower p50 than Watermill, %d in flight: %s vs %s | %s | %s | < 1.00× | %s | %s |\n",
						l, fmtDur(r.p(50)), fmtDur(wl.p(50)), cl, ratioDur(r, wl), bestP50, verdictBest(r.p(50) < wl.p(50), reachable))
					best, cell := ceiling(unaryCs, cl, l, wl)
					fmt.Fprintf(w, "| more calls/s than Watermill, %d in flight: %s vs %s | %s | %s | > 1.00× | %s | %s |\n",
						l, fmtRate(r.rate()), fmtRate(wl.rate()), cl, ratioRate(r, wl), cell, verdictBest(r.rate() > wl.rate(), best > 1))
				}
			}
		}
	}

	if len(unaryCs) > 0 {
		connGoals(w, cfg, broker, unaryCs, clients)
	}

	if len(streamCs) > 0 {
		fmt.Fprintf(w, "\n### Server streaming\n\n")
		fmt.Fprintf(w, "One stream of %d echo responses at a time (EchoServerStream, repeat=%d), against a raw consumer reading the same number of records (one key, so one partition, as a stream's replies).\n\n", cfg.streamMsgs, cfg.streamMsgs)
		fmt.Fprintln(w, "| path | client | p50 per stream | messages/s | vs raw consumer (produce → consume) | CPU/message | errors |")
		fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|")
		for _, cl := range append(clientsOf(streamCs), "-") {
			for _, kind := range []string{"stream", "stream-floor", streamFloorWireKind, "grpc-stream"} {
				c := find(streamCs, kind, cl, 1)
				if c == nil {
					continue
				}
				rate := c.rate() * float64(cfg.streamMsgs)
				vs := "–"
				if f := find(streamCs, "stream-floor", cl, 1); f != nil && kind != "stream-floor" {
					vs = ratioRate(c, f)
				}
				cpu := "–"
				if c.calls > 0 {
					cpu = fmt.Sprintf("%.1f µs", float64(c.cpu.Microseconds())/float64(c.calls*cfg.streamMsgs))
				}
				fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", kindNames[kind], cl, fmtDur(c.p(50)), fmtRate(rate), vs, cpu, errCell(c))
			}
		}
	}

	fmt.Fprintf(w, "\n### Fanout (fetch)\n\n")
	if len(fetch) == 0 {
		fmt.Fprintln(w, "Not run.")
	}
	header := false
	for _, f := range fetch {
		if !f.available || f.firstError != nil {
			note := f.note
			if f.firstError != nil {
				note = "failed: " + f.firstError.Error()
			}
			fmt.Fprintf(w, "- %s: %s\n", f.client, note)
			continue
		}
		if !header {
			header = true
			fmt.Fprintf(w, "%d callers of EchoEvents through the gateway (one shared reader per topic: the fanout hub) against %d raw readers of the topic (one Kafka consumer each) and against %d callers of a plain gRPC server on loopback that broadcasts the same events from memory (no Kafka; each event with an event id of three partitions, as the gateway's, marshalled by gRPC for each caller as a plain server's are); batches of %d events produced, %d rounds each, in a rotated order; deliveries = events × callers; time from the first produce (publish) to the last caller's last event.\n\n",
				f.callers, f.callers, f.callers, f.events, f.rounds)
			fmt.Fprintln(w, "| path | client | p50 batch delivered to all | deliveries/s | vs raw readers | vs plain gRPC broadcast |")
			fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
		}
		fmt.Fprintf(w, "| kafkarpc fetch (fanout hub), %d callers | %s | %s | %s | %s | %s |\n", f.callers, f.client, fmtDur(f.rpcP50), fmtRate(f.rpcRate),
			ratio(f.rpcRate, f.floorRate), ratio(f.rpcRate, f.bcastRate))
		fmt.Fprintf(w, "| %d raw readers | %s | %s | %s | – | – |\n", f.callers, f.client, fmtDur(f.floorP50), fmtRate(f.floorRate))
		if f.bcastRate > 0 {
			fmt.Fprintf(w, "| plain gRPC in-memory broadcast, %d callers (measured alongside %s) | - | %s | %s | – | – |\n", f.callers, f.client, fmtDur(f.bcastP50), fmtRate(f.bcastRate))
		} else if f.bcastNote != "" {
			fmt.Fprintf(w, "| plain gRPC in-memory broadcast: %s | - | – | – | – | – |\n", f.bcastNote)
		}
	}

	perfGoals(w, cfg, broker, unaryCs, streamCs, fetch)
}

func clientsOf(cs []*contender) []string {
	var out []string
	for _, c := range cs {
		if c.kind == rpcKind || c.kind == connKind || c.kind == "stream" || c.kind == floorKind || c.kind == floor4Kind || c.kind == floor4WireKind || c.kind == twoHopKind || c.kind == twoHopProcKind || c.kind == "stream-floor" || c.kind == streamFloorWireKind {
			if !contains(out, c.client) {
				out = append(out, c.client)
			}
		}
	}
	return out
}

func ratioDur(a, b *contender) string {
	if a == nil || b == nil {
		return "–"
	}
	return ratio(float64(a.p(50)), float64(b.p(50)))
}

func ratioRate(a, b *contender) string {
	if a == nil || b == nil {
		return "–"
	}
	return ratio(a.rate(), b.rate())
}

func perCall(c *contender) string {
	if c.calls == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f µs", float64(c.cpu.Microseconds())/float64(c.calls))
}

func allocsPerCall(c *contender) string {
	if c.calls == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", float64(c.allocs)/float64(c.calls))
}

func errCell(c *contender) string {
	if c.errs == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%v)", c.errs, c.first)
}

func writeEnv(w io.Writer, cfg config, broker string, watermill bool) {
	fmt.Fprintf(w, "- machine: %d CPUs (GOMAXPROCS %d), %s, memory %s\n", goruntime.NumCPU(), goruntime.GOMAXPROCS(0), cpuModel(), memTotal())
	fmt.Fprintf(w, "- broker: %s\n", broker)
	fmt.Fprintf(w, "- Go %s %s/%s; %s\n", strings.TrimPrefix(goruntime.Version(), "go"), goruntime.GOOS, goruntime.GOARCH, versions())
	if rev := gitRevision(); rev != "" {
		fmt.Fprintf(w, "- code: %s\n", rev)
	}
	_, lib := kafka.LibraryVersion()
	fmt.Fprintf(w, "- librdkafka %s (bundled with confluent-kafka-go)\n", lib)
	fmt.Fprintf(w, "- settings: each Kafka client with the runtime's defaults (acks=all, idempotent, linger 0; see README); topics of 3 partitions; gateway and worker in this process with a Kafka client each; echo message %q; %d measured rounds of %v slices per contender, after one %v warm-up slice; at most %d calls per slice, %v per call\n",
		cfg.message, cfg.rounds, cfg.slice, cfg.warmup, cfg.maxCalls, cfg.callTimeout)
	if cfg.grpcDefaults {
		fmt.Fprintln(w, "- every gRPC server and client with gRPC's default options (-grpc-defaults); the gateway's server with runtime.FetchServerCodec()")
	} else {
		fmt.Fprintln(w, "- every gRPC server with runtime.GatewayServerOptions() and every gRPC client with runtime.CallerDialOptions(): fixed 1 MiB / 16 MiB HTTP/2 windows, so no bandwidth-estimation PINGs")
	}
	if cfg.streamWorkers > 0 {
		fmt.Fprintf(w, "- every gRPC server with grpc.NumStreamWorkers(%d)\n", cfg.streamWorkers)
	}
	if watermill {
		fmt.Fprintln(w, "- Watermill: cqrs.CommandBus + requestreply over watermill-kafka (sarama): protobuf payloads both ways, one reply subscription for the process dispatched by operation id; sarama producer acks=all, no linger (Flush.* = 0), no compression, MaxOpenRequests 5, not idempotent; consumer Fetch.Min 1, MaxWaitTime 100 ms, auto-commit 1 s, oldest offset for new groups; Kafka version 2.1.0")
	}
}

// gitRevision names the commit of the repository the program runs in, and
// whether the work tree differs from it (best effort).
func gitRevision() string {
	rev, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	r := "commit " + strings.TrimSpace(string(rev))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		r += " with uncommitted changes"
	}
	return r
}

func versions() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	want := []string{"github.com/confluentinc/confluent-kafka-go/v2", "github.com/twmb/franz-go", "github.com/twmb/franz-go/pkg/kfake",
		"google.golang.org/grpc", "github.com/ThreeDotsLabs/watermill", "github.com/ThreeDotsLabs/watermill-kafka/v3", "github.com/IBM/sarama"}
	var out []string
	for _, m := range want {
		for _, d := range bi.Deps {
			if d.Path == m {
				v := d.Version
				if d.Replace != nil {
					v = d.Replace.Version
				}
				out = append(out, fmt.Sprintf("%s %s", strings.TrimPrefix(m, "github.com/"), v))
			}
		}
	}
	return strings.Join(out, ", ")
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func memTotal() string {
	out, err := exec.Command("free", "-h").Output()
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Mem:" {
			return f[1]
		}
	}
	return "unknown"
}

// writeBench writes one Go benchmark line per contender and round, so that
// two runs (before/after a change) compare with benchstat.
func writeBench(path string, cs []*contender, cfg config) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "goos: %s\ngoarch: %s\npkg: github.com/kafkarpc/protoc-gen-go-kafka/bench\ncpu: %s\n", goruntime.GOOS, goruntime.GOARCH, cpuModel())
	for _, c := range cs {
		for _, r := range c.rounds {
			if r.calls == 0 {
				continue
			}
			fmt.Fprintf(f, "Benchmark%s/%s/inflight=%d %d %.0f ns/op %.1f p50-µs %.0f calls/s %.1f cpu-µs/call %.1f allocs/call\n",
				strings.ReplaceAll(c.kind, "-", "_"), c.client, c.inflight, r.calls,
				float64(r.busy.Nanoseconds())/float64(r.calls), float64(r.p50.Nanoseconds())/1e3, float64(r.calls)/r.busy.Seconds(),
				float64(r.cpu.Nanoseconds())/1e3/float64(r.calls), float64(r.allocs)/float64(r.calls))
		}
	}
	return f.Close()
}

// watermillBest returns the lowest p50 and the most calls/s of Watermill's
// set-ups at l in flight, and whether any ran.
func watermillBest(cs []*contender, l int) (time.Duration, float64, bool) {
	var p50 time.Duration
	var rate float64
	found := false
	for _, kind := range []string{watermillKind, "watermill-fanout", "watermill-grpc"} {
		c := find(cs, kind, watermillClient, l)
		if c == nil || c.calls == 0 {
			continue
		}
		if !found || c.p(50) < p50 {
			p50 = c.p(50)
		}
		rate = max(rate, c.rate())
		found = true
	}
	return p50, rate, found
}

// connGoals reports the client connection's goals: its p50 against the
// two-hop floor, its calls/s against the floor pipelines, against
// Watermill's best configuration, and, on Apache Kafka, against Spring
// Kafka's figures.
func connGoals(w io.Writer, cfg config, broker string, cs []*contender, clients []string) {
	any := false
	for _, c := range cs {
		any = any || c.kind == connKind
	}
	if !any {
		return
	}
	fmt.Fprintf(w, "\n### Client connection (runtime.ClientConn) goals\n\n")
	fmt.Fprintln(w, "The connection's call (no gRPC hop, no gateway) against the Kafka floors of the same client: the two-hop floor (one goroutine, one record each way) and the floor pipelines of two records per call and of four (the wire format's data and end-of-stream record each way). "+watermillBestNote+". Spring's figures are from the issue, not measured here; they are compared only on Apache Kafka.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| goal | client | measured | target | |")
	fmt.Fprintln(w, "|---|---|---:|---:|---|")
	real := !strings.Contains(broker, "in this process")
	for _, cl := range clients {
		c1, h := find(cs, connKind, cl, 1), find(cs, twoHopKind, cl, 1)
		if c1 == nil {
			continue
		}
		if h != nil && h.p(50) > 0 {
			x := float64(c1.p(50)) / float64(h.p(50))
			fmt.Fprintf(w, "| conn p50 ÷ two-hop floor p50, 1 in flight: %s ÷ %s | %s | %.2f | ≤ %.2f | %s |\n", fmtDur(c1.p(50)), fmtDur(h.p(50)), cl, x, goalConnP50, verdict(x <= goalConnP50))
		}
		if hp := find(cs, twoHopProcKind, cl, 1); hp != nil && hp.p(50) > 0 {
			x := float64(c1.p(50)) / float64(hp.p(50))
			fmt.Fprintf(w, "| conn p50 ÷ two-hop floor p50 with the relay in a child process, 1 in flight: %s ÷ %s | %s | %.2f | ≤ %.2f | %s |\n", fmtDur(c1.p(50)), fmtDur(hp.p(50)), cl, x, goalConnP50, verdict(x <= goalConnP50))
		}
		if cN, f4 := find(cs, connKind, cl, goalConnFloor4At), find(cs, floor4Kind, cl, goalConnFloor4At); cN != nil && f4 != nil && f4.rate() > 0 {
			x := cN.rate() / f4.rate()
			fmt.Fprintf(w, "| conn calls/s ÷ four-record floor pipeline, %d in flight: %s ÷ %s | %s | %.2f | ≥ %.1f | %s |\n", goalConnFloor4At, fmtRate(cN.rate()), fmtRate(f4.rate()), cl, x, goalConnFloor4, verdict(x >= goalConnFloor4))
			if fw := find(cs, floor4WireKind, cl, goalConnFloor4At); fw != nil && fw.rate() > 0 {
				fmt.Fprintf(w, "| conn calls/s ÷ four-record floor pipeline with the wire's headers, %d in flight (stated, no target): %s ÷ %s | %s | %.2f | – | |\n", goalConnFloor4At, fmtRate(cN.rate()), fmtRate(fw.rate()), cl, cN.rate()/fw.rate())
			}
			if f2 := find(cs, floorKind, cl, goalConnFloor4At); f2 != nil && f2.rate() > 0 {
				fmt.Fprintf(w, "| conn calls/s ÷ two-record floor pipeline, %d in flight (stated, no target): %s ÷ %s | %s | %.2f | – | |\n", goalConnFloor4At, fmtRate(cN.rate()), fmtRate(f2.rate()), cl, cN.rate()/f2.rate())
			}
		}
		for _, l := range cfg.levels {
			c := find(cs, connKind, cl, l)
			if c == nil {
				continue
			}
			if p50, rate, ok := watermillBest(cs, l); ok {
				fmt.Fprintf(w, "| lower p50 than Watermill's best, %d in flight: %s vs %s | %s | %s | < 1.00× | %s |\n", l, fmtDur(c.p(50)), fmtDur(p50), cl, ratio(float64(c.p(50)), float64(p50)), verdict(c.p(50) < p50))
				fmt.Fprintf(w, "| more calls/s than Watermill's best, %d in flight: %s vs %s | %s | %s | > 1.00× | %s |\n", l, fmtRate(c.rate()), fmtRate(rate), cl, ratio(c.rate(), rate), verdict(c.rate() > rate))
			}
			if sp, ok := springRef[l]; ok && real {
				if sp.p50 > 0 {
					fmt.Fprintf(w, "| lower p50 than Spring Kafka, %d in flight: %s vs %s | %s | %s | < 1.00× | %s |\n", l, fmtDur(c.p(50)), fmtDur(sp.p50), cl, ratio(float64(c.p(50)), float64(sp.p50)), verdict(c.p(50) < sp.p50))
				}
				fmt.Fprintf(w, "| more calls/s than Spring Kafka, %d in flight: %s vs %s | %s | %s | > 1.00× | %s |\n", l, fmtRate(c.rate()), fmtRate(sp.rate), cl, ratio(c.rate(), sp.rate), verdict(c.rate() > sp.rate))
			}
		}
	}
}
