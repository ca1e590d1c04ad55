// Command bench measures, interleaved in one process against one broker,
// unary and server-streaming RPC through the kafkarpc gateway and worker
// with each Kafka client the runtime supports, the Kafka floor of the same
// path with the same client and settings, plain gRPC, and Watermill's
// request-reply over Kafka, and prints a markdown report with the ratios
// the project's goals are stated in.
//
//	cd bench && go run .                 # embedded broker (runtime/embedded)
//	KAFKA_BROKERS=host:9092 go run .     # a real cluster
//
// Every contender runs in short slices, round-robin, each round in a
// rotated order, so that machine noise falls on all of them alike. Every
// load loop is bounded in count (-max-calls per slice) and time (-slice,
// -call-timeout, -timeout).
//
// The one-in-flight floor is measured twice: on one goroutine (floor-2hop)
// and with its relay in a child process (floor-2hop-proc: the program runs
// itself again with -relay-child), which pays the process crossings a
// gateway and a worker in separate processes pay. The fetch fanout is
// measured against raw readers and against a plain gRPC in-memory broadcast
// of the same events to as many callers. The report ends with the goals of
// the performance issue, each with its ratio and met or missed.
//
// Profiling (item 3 of the benchmark issue): -profile rpc/confluent/256
// runs that contender alone for -profile-time, writing -cpuprofile and
// -memprofile (allocations) if given.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	goruntime "runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

type config struct {
	slice, warmup, callTimeout, timeout time.Duration
	rounds, maxCalls, streamMsgs        int
	levels                              []int
	clients                             []string
	only                                *regexp.Regexp
	watermill, watermillFanout, stream  bool
	watermillGRPC, fetch, procHop       bool
	broadcast                           bool
	streamWorkers                       int
	grpcDefaults                        bool
	fanoutCallers, fanoutEvents         int
	message                             string
	profile                             string
	profileTime                         time.Duration
	cpuProfile, memProfile, benchOut    string
	breakdown                           bool
	blockProfile, mutexProfile, trace   string
	memRate                             int
	outcomes                            bool // outcomes.go
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == relayChildFlag {
		if err := relayChildMain(os.Args[2:]); err != nil {
			fatal(err)
		}
		return
	}
	var cfg config
	var levels, clients, only string
	flag.DurationVar(&cfg.slice, "slice", 250*time.Millisecond, "how long one contender runs before the next takes over")
	flag.IntVar(&cfg.rounds, "rounds", 8, "measured rounds: each contender runs one slice per round")
	flag.DurationVar(&cfg.warmup, "warmup", 250*time.Millisecond, "unrecorded warm-up slice of each contender")
	flag.IntVar(&cfg.maxCalls, "max-calls", 200000, "most calls of one slice (all goroutines)")
	flag.DurationVar(&cfg.callTimeout, "call-timeout", 30*time.Second, "timeout of one call")
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Minute, "bound of the whole run")
	flag.StringVar(&levels, "inflight", "1,16,256", "calls in flight, comma-separated")
	flag.StringVar(&clients, "clients", "", "Kafka clients to measure, comma-separated (default: every client the runtime supports)")
	flag.StringVar(&only, "only", "", "measure only contenders whose label (kind/client/inflight=N) matches this regexp")
	flag.BoolVar(&cfg.watermill, "watermill", true, "measure Watermill request-reply (sarama) with one shared reply subscription")
	flag.BoolVar(&cfg.watermillFanout, "watermill-fanout", true, "also measure Watermill with its stock gochannel.FanOut for replies")
	flag.BoolVar(&cfg.watermillGRPC, "watermill-grpc", true, "also measure Watermill behind a gRPC server on loopback (a gRPC hop in front, as our gateway has)")
	flag.BoolVar(&cfg.stream, "stream", true, "measure server streaming")
	flag.IntVar(&cfg.streamMsgs, "stream-msgs", 10000, "messages of one server stream")
	flag.BoolVar(&cfg.fetch, "fetch", true, "measure fanout (fetch) through the gateway")
	flag.BoolVar(&cfg.broadcast, "broadcast", true, "with -fetch, also measure a plain gRPC in-memory broadcast of the same events to the same number of callers")
	flag.IntVar(&cfg.streamWorkers, "grpc-stream-workers", 0, "grpc.NumStreamWorkers of every gRPC server (0: gRPC's default, a goroutine per stream)")
	flag.BoolVar(&cfg.grpcDefaults, "grpc-defaults", false, "gRPC's own default options on every gRPC server and client, instead of runtime.GatewayServerOptions and runtime.CallerDialOptions (the gateway's server keeps runtime.FetchServerCodec)")
	flag.IntVar(&cfg.fanoutCallers, "fanout-callers", 16, "fetch (fanout) callers")
	flag.IntVar(&cfg.fanoutEvents, "fanout-events", 1000, "events produced per fetch measurement")
	flag.StringVar(&cfg.message, "message", "ping", "message of each echo request")
	flag.StringVar(&cfg.profile, "profile", "", "run only this contender (kind/client/inflight, e.g. rpc/confluent/256) for -profile-time, with -cpuprofile/-memprofile")
	flag.DurationVar(&cfg.profileTime, "profile-time", 20*time.Second, "length of a -profile run")
	flag.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the measured part to this file")
	flag.StringVar(&cfg.memProfile, "memprofile", "", "write an allocation profile of the measured part to this file")
	flag.StringVar(&cfg.blockProfile, "blockprofile", "", "write a blocking profile of the measured part to this file")
	flag.StringVar(&cfg.mutexProfile, "mutexprofile", "", "write a mutex contention profile of the measured part to this file")
	flag.StringVar(&cfg.trace, "trace", "", "write an execution trace of the measured part to this file (keep -profile-time short)")
	flag.BoolVar(&cfg.breakdown, "breakdown", false, "with -profile and -cpuprofile: print where the CPU went (gRPC, runtime by part, Kafka client, broker, protobuf, OpenTelemetry, GC, scheduler) per call or message")
	flag.IntVar(&cfg.memRate, "memprofilerate", 0, "runtime.MemProfileRate while profiling (0: Go's default)")
	flag.BoolVar(&cfg.outcomes, "outcomes", true, "measure keyed unary calls without and with runtime.WorkerOutcomeTopic (outcomes.go)")
	flag.StringVar(&cfg.benchOut, "benchout", "", "also write one Go benchmark line per contender and round to this file (for benchstat)")
	flag.BoolVar(&cfg.procHop, "floor-proc", true, "also measure the two-hop floor with its relay in a child process (floor-2hop-proc)")
	flag.Parse()
	for _, s := range strings.Split(levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fatal(fmt.Errorf("-inflight: bad level %q", s))
		}
		cfg.levels = append(cfg.levels, n)
	}
	if clients != "" {
		cfg.clients = strings.Split(clients, ",")
	}
	if only != "" {
		cfg.only = regexp.MustCompile(only)
	}
	if cfg.streamWorkers > 0 {
		grpcServerOptions = append(grpcServerOptions, grpc.NumStreamWorkers(uint32(cfg.streamWorkers)))
	}
	if !cfg.grpcDefaults {
		grpcServerOptions = append(grpcServerOptions, runtime.GatewayServerOptions()...)
		grpcDialOptions = append(grpcDialOptions, runtime.CallerDialOptions()...)
	}
	if err := run(cfg, os.Stdout); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func progress(s string) { fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), s) }

func run(cfg config, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	brokers, brokerDesc := os.Getenv("KAFKA_BROKERS"), ""
	if brokers == "" {
		b, err := embedded.Start()
		if err != nil {
			return err
		}
		defer b.Close()
		brokers, brokerDesc = b.Addr(), "embedded (runtime/embedded: franz-go kfake, in this process, 127.0.0.1)"
	} else {
		brokerDesc = "KAFKA_BROKERS=" + brokers
	}
	progress("broker: " + brokerDesc)

	req := &echov1.EchoRequest{Message: cfg.message}
	value, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	maxLevel := 1
	for _, l := range cfg.levels {
		maxLevel = max(maxLevel, l)
	}
	run := fmt.Sprintf("b%d.", time.Now().Unix()%100000)
	var unaryCs, streamCs []*contender
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	want := func(kind, client string, inflight int) bool {
		lbl := fmt.Sprintf("%s/%s/inflight=%d", kind, client, inflight)
		if cfg.profile != "" {
			return cfg.profile == fmt.Sprintf("%s/%s/%d", kind, client, inflight)
		}
		return cfg.only == nil || cfg.only.MatchString(lbl)
	}
	wantAny := func(kind, client string) bool {
		for _, l := range append([]int{1}, cfg.levels...) {
			if want(kind, client, l) {
				return true
			}
		}
		return false
	}
	add := func(list *[]*contender, kind, client string, inflight int, call func(context.Context, int) error) {
		if want(kind, client, inflight) {
			*list = append(*list, &contender{kind: kind, client: client, inflight: inflight, call: call})
		}
	}

	// Each Kafka client: two clients (front: the gateway's side; back: the
	// worker's side), the floor, our RPC.
	var fetchProbe []fetchSlot
	for _, kc := range kafkaClients {
		if len(cfg.clients) > 0 && !contains(cfg.clients, kc.name) {
			continue
		}
		if !wantAny("rpc", kc.name) && !wantAny("conn", kc.name) && !wantAny("floor", kc.name) && !wantAny("floor4", kc.name) && !wantAny(floor4WireKind, kc.name) && !wantAny("floor-2hop", kc.name) && !wantAny(twoHopProcKind, kc.name) &&
			!wantAny("stream", kc.name) && !wantAny("stream-floor", kc.name) && !wantAny(streamFloorWireKind, kc.name) {
			continue
		}
		progress("setting up " + kc.name)
		front, err := kc.new(brokers, log.With("side", "front"))
		if err != nil {
			return fmt.Errorf("%s: %w", kc.name, err)
		}
		closers = append(closers, func() { _ = front.Close() })
		back, err := kc.new(brokers, log.With("side", "back"))
		if err != nil {
			return fmt.Errorf("%s: %w", kc.name, err)
		}
		closers = append(closers, func() { _ = back.Close() })
		prefix := run + kc.name + "."
		if err := createTopics(front, 3, prefix+"floor-a", prefix+"floor-b", prefix+"floor4-a", prefix+"floor4-b", prefix+"floor4w-a", prefix+"floor4w-b", prefix+"hop-a", prefix+"hop-b", prefix+"hopp-a", prefix+"hopp-b", prefix+"stream", prefix+"streamw"); err != nil {
			return fmt.Errorf("%s: %w", kc.name, err)
		}
		if want("floor-2hop", kc.name, 1) {
			h, err := newTwoHop(front, back, prefix+"hop-a", prefix+"hop-b", value)
			if err != nil {
				return fmt.Errorf("%s two-hop: %w", kc.name, err)
			}
			closers = append(closers, h.close)
			add(&unaryCs, "floor-2hop", kc.name, 1, h.call)
		}
		if cfg.procHop && want(twoHopProcKind, kc.name, 1) {
			progress("starting the relay child of " + kc.name)
			h, err := newProcHop(front, kc.name, brokers, prefix+"hopp-a", prefix+"hopp-b", value)
			if err != nil {
				return fmt.Errorf("%s two-hop with a relay child: %w", kc.name, err)
			}
			closers = append(closers, h.close)
			add(&unaryCs, twoHopProcKind, kc.name, 1, h.call)
			unaryCs[len(unaryCs)-1].extraCPU = h.childCPU
		}
		if wantAny("floor", kc.name) {
			p, err := newPipeline(front, back, prefix+"floor-a", prefix+"floor-b", value, maxLevel, false, nil, log)
			if err != nil {
				return fmt.Errorf("%s floor: %w", kc.name, err)
			}
			closers = append(closers, p.close)
			for _, l := range cfg.levels {
				add(&unaryCs, "floor", kc.name, l, p.call)
			}
		}
		if wantAny("floor4", kc.name) {
			p, err := newPipeline(front, back, prefix+"floor4-a", prefix+"floor4-b", value, maxLevel, true, nil, log)
			if err != nil {
				return fmt.Errorf("%s four-record floor: %w", kc.name, err)
			}
			closers = append(closers, p.close)
			for _, l := range cfg.levels {
				add(&unaryCs, "floor4", kc.name, l, p.call)
			}
		}
		if wantAny(floor4WireKind, kc.name) {
			p, err := newPipeline(front, back, prefix+"floor4w-a", prefix+"floor4w-b", value, maxLevel, true, newWireHeaders(prefix+"floor4w-b"), log)
			if err != nil {
				return fmt.Errorf("%s four-record floor with the wire's headers: %w", kc.name, err)
			}
			closers = append(closers, p.close)
			for _, l := range cfg.levels {
				add(&unaryCs, floor4WireKind, kc.name, l, p.call)
			}
		}
		if wantAny("rpc", kc.name) || wantAny("conn", kc.name) || wantAny("stream", kc.name) {
			e, err := newRPCEnv(front, back, prefix, log, wantAny("conn", kc.name))
			if err != nil {
				return fmt.Errorf("%s rpc: %w", kc.name, err)
			}
			closers = append(closers, e.close)
			for _, l := range cfg.levels {
				add(&unaryCs, "rpc", kc.name, l, unary(e.echo, req))
				if e.conn != nil {
					add(&unaryCs, "conn", kc.name, l, unary(e.conn, req))
				}
			}
			if cfg.stream {
				add(&streamCs, "stream", kc.name, 1, serverStream(e.echo, cfg.message, cfg.streamMsgs))
			}
			if cfg.fetch {
				fetchProbe = append(fetchProbe, fetchSlot{client: kc.name, env: e, back: back, front: front})
			}
		}
		if cfg.stream && want("stream-floor", kc.name, 1) {
			f, err := newStreamFloor(back, front, prefix+"stream", value, cfg.streamMsgs, nil, log)
			if err != nil {
				return fmt.Errorf("%s stream floor: %w", kc.name, err)
			}
			closers = append(closers, f.close)
			add(&streamCs, "stream-floor", kc.name, 1, f.call)
		}
		if cfg.stream && want(streamFloorWireKind, kc.name, 1) {
			f, err := newStreamFloor(back, front, prefix+"streamw", value, cfg.streamMsgs, newWireHeaders(prefix+"streamw"), log)
			if err != nil {
				return fmt.Errorf("%s stream floor with the wire's records: %w", kc.name, err)
			}
			closers = append(closers, f.close)
			add(&streamCs, streamFloorWireKind, kc.name, 1, f.call)
		}
	}

	if cfg.outcomes {
		oc, ocClose, err := outcomeContenders(cfg, brokers, run, log, want)
		closers = append(closers, ocClose...)
		if err != nil {
			return err
		}
		unaryCs = append(unaryCs, oc...)
	}

	if wantAny("grpc", "-") {
		g, err := newGRPCEnv(func(s *grpc.Server) error { echov1.RegisterEchoServiceServer(s, echoserver.Server{}); return nil })
		if err != nil {
			return err
		}
		closers = append(closers, g.close)
		for _, l := range cfg.levels {
			add(&unaryCs, "grpc", "-", l, unary(g.echo, req))
		}
		if cfg.stream {
			add(&streamCs, "grpc-stream", "-", 1, serverStream(g.echo, cfg.message, cfg.streamMsgs))
		}
	}

	var admin kafkaclient.Client
	if (cfg.watermill && wantAny("watermill", "sarama")) || (cfg.watermillFanout && wantAny("watermill-fanout", "sarama")) {
		admin, err = newFranz(brokers, log)
		if err != nil {
			return err
		}
		closers = append(closers, func() { _ = admin.Close() })
	}
	if cfg.watermill && wantAny("watermill", "sarama") {
		progress("setting up watermill")
		w, err := newWatermillEnv(admin, brokers, run+"wm.", false)
		if err != nil {
			return fmt.Errorf("watermill: %w", err)
		}
		closers = append(closers, w.close)
		for _, l := range cfg.levels {
			add(&unaryCs, "watermill", "sarama", l, w.call(req))
		}
		if cfg.watermillGRPC && wantAny("watermill-grpc", "sarama") {
			g, err := newGRPCEnv(func(s *grpc.Server) error { echov1.RegisterEchoServiceServer(s, watermillEcho{w: w}); return nil })
			if err != nil {
				return err
			}
			closers = append(closers, g.close)
			for _, l := range cfg.levels {
				add(&unaryCs, "watermill-grpc", "sarama", l, unary(g.echo, req))
			}
		}
	}
	if cfg.watermillFanout && wantAny("watermill-fanout", "sarama") {
		progress("setting up watermill with gochannel.FanOut")
		w, err := newWatermillEnv(admin, brokers, run+"wmf.", true)
		if err != nil {
			return fmt.Errorf("watermill fanout: %w", err)
		}
		closers = append(closers, w.close)
		for _, l := range cfg.levels {
			add(&unaryCs, "watermill-fanout", "sarama", l, w.call(req))
		}
	}

	lim := limits{slice: cfg.slice, maxPerSlice: cfg.maxCalls, callTimeout: cfg.callTimeout}
	if err := firstCalls(ctx, append(append([]*contender{}, unaryCs...), streamCs...), lim); err != nil {
		return err
	}

	if cfg.profile != "" {
		return profileRun(ctx, cfg, append(unaryCs, streamCs...), lim)
	}

	stopProf, err := startProfiles(cfg)
	if err != nil {
		return err
	}
	start := time.Now()
	for _, group := range [][]*contender{unaryCs, streamCs} {
		if len(group) == 0 {
			continue
		}
		if err := runInterleaved(ctx, group, cfg.rounds, cfg.warmup, lim, progress); err != nil {
			return err
		}
	}
	var fetch []*fetchResult
	var bc *broadcast
	bcNote := ""
	if len(fetchProbe) > 0 && cfg.broadcast {
		progress(fmt.Sprintf("starting the plain gRPC broadcast: %d callers", cfg.fanoutCallers))
		if bc, err = newBroadcast(cfg.fanoutCallers, cfg.fanoutEvents, cfg.message); err != nil {
			bcNote = "not measured: " + err.Error()
		} else {
			defer bc.close()
		}
	}
	for _, s := range fetchProbe {
		f := s.measure(ctx, cfg, lim, log, bc)
		f.bcastNote = bcNote
		fetch = append(fetch, f)
	}
	if err := stopProf(); err != nil {
		return err
	}
	progress(fmt.Sprintf("measured in %v", time.Since(start).Round(time.Second)))
	if cfg.benchOut != "" {
		if err := writeBench(cfg.benchOut, append(unaryCs, streamCs...), cfg); err != nil {
			return err
		}
	}
	report(out, cfg, brokerDesc, unaryCs, streamCs, fetch)
	reportOutcomes(out, unaryCs)
	return nil
}

// firstCalls makes one call of every contender, so that a broken setup
// fails at once with a clear error rather than as a table of errors.
func firstCalls(ctx context.Context, cs []*contender, lim limits) error {
	for _, c := range cs {
		var err error
		for range 20 { // the first calls may wait for groups and metadata
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = c.call(cctx, 0)
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("first call of %s: %w", c.label(), err)
		}
	}
	return nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if strings.TrimSpace(x) == s {
			return true
		}
	}
	return false
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startProfiles(cfg config) (stop func() error, err error) {
	if cfg.memRate > 0 {
		goruntime.MemProfileRate = cfg.memRate
	}
	var cpuF *os.File
	if cfg.cpuProfile != "" {
		if cpuF, err = os.Create(cfg.cpuProfile); err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(cpuF); err != nil {
			return nil, err
		}
	}
	if cfg.memProfile != "" {
		goruntime.GC() // the allocation profile then covers the measured part mostly
	}
	if cfg.blockProfile != "" {
		goruntime.SetBlockProfileRate(10000) // one sample per 10 µs blocked
	}
	if cfg.mutexProfile != "" {
		goruntime.SetMutexProfileFraction(10)
	}
	var traceF *os.File
	if cfg.trace != "" {
		if traceF, err = os.Create(cfg.trace); err != nil {
			return nil, err
		}
		if err := trace.Start(traceF); err != nil {
			return nil, err
		}
	}
	return func() error {
		var errs []error
		if traceF != nil {
			trace.Stop()
			errs = append(errs, traceF.Close())
		}
		for _, p := range []struct{ name, file string }{{"block", cfg.blockProfile}, {"mutex", cfg.mutexProfile}} {
			if p.file == "" {
				continue
			}
			f, err := os.Create(p.file)
			if err != nil {
				return err
			}
			errs = append(errs, pprof.Lookup(p.name).WriteTo(f, 0), f.Close())
		}
		if cpuF != nil {
			pprof.StopCPUProfile()
			errs = append(errs, cpuF.Close())
		}
		if cfg.memProfile != "" {
			f, err := os.Create(cfg.memProfile)
			if err != nil {
				return err
			}
			errs = append(errs, pprof.Lookup("allocs").WriteTo(f, 0), f.Close())
		}
		return errors.Join(errs...)
	}, nil
}

// profileRun runs the one contender selected by -profile for -profile-time,
// profiled, and prints its figures with the process's cost per call.
func profileRun(ctx context.Context, cfg config, cs []*contender, lim limits) error {
	if len(cs) != 1 {
		return fmt.Errorf("-profile %q selects %d contenders, want 1 (kind/client/inflight, e.g. rpc/confluent/256)", cfg.profile, len(cs))
	}
	c := cs[0]
	wl := lim
	wl.slice = 2 * time.Second
	runSlice(ctx, c, wl) // warm up
	stop, err := startProfiles(cfg)
	if err != nil {
		return err
	}
	var ms0, ms1 goruntime.MemStats
	goruntime.ReadMemStats(&ms0)
	cpu0 := c.cpuNow()
	pl := lim
	pl.slice = cfg.profileTime
	pl.maxPerSlice = 1 << 30
	lat, n, wall, errs, first := runSlice(ctx, c, pl)
	cpu := c.cpuNow() - cpu0
	goruntime.ReadMemStats(&ms1)
	if err := stop(); err != nil {
		return err
	}
	c.lat, c.calls, c.busy, c.errs, c.first = lat, n, wall, errs, first
	fmt.Printf("%s: %d calls in %v: %.0f calls/s, p50 %v, p99 %v, %d errors (first: %v)\n",
		c.label(), n, wall.Round(time.Millisecond), c.rate(), fmtDur(c.p(50)), fmtDur(c.p(99)), errs, first)
	if n > 0 {
		fmt.Printf("process: %.1f µs CPU/call, %.1f Go allocs/call, %.0f Go bytes/call (whole process: client, gateway, worker, broker)\n",
			float64(cpu.Microseconds())/float64(n), float64(ms1.Mallocs-ms0.Mallocs)/float64(n), float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(n))
	}
	if cfg.breakdown && cfg.cpuProfile != "" && n > 0 {
		shares, err := readBreakdown(cfg.cpuProfile)
		if err != nil {
			return err
		}
		unit, per := "call", float64(cpu.Nanoseconds())/1e3/float64(n)
		if strings.Contains(c.kind, "stream") { // a call is a stream of -stream-msgs messages
			unit, per = "message", per/float64(cfg.streamMsgs)
		}
		printBreakdown(os.Stdout, c.label(), shares, per, unit)
	}
	return nil
}
