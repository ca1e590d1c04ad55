package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// soakOptions shape the run (see the flags in main.go).
type soakOptions struct {
	duration, killEvery, deadline, grace     time.Duration
	rate, callers, connCallers, fetchCallers int
	eventRate                                int
	keep                                     bool
}

// Bounds of the orchestrator's own waits.
const (
	readyTimeout  = 90 * time.Second // a child process's start until its ready line
	warmupTimeout = 90 * time.Second // until a first call succeeds through a fresh deployment
	stopTimeout   = 30 * time.Second // SIGTERM until exit
	killTimeout   = 30 * time.Second // SIGKILL until exit (seen taking over 10 s at a load average of 50)
	fetchTimeout  = 60 * time.Second // once publishing stopped, until every fetch caller has every event
	drainSlack    = 30 * time.Second // beyond one attempt's deadline, for the callers to return once the load ends
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[soak %s] %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (o soakOptions) check() error {
	switch {
	case o.duration <= 0 || o.killEvery <= 0 || o.deadline <= 0 || o.grace < 0:
		return errors.New("-duration, -kill-every and -deadline must be positive, -grace not negative")
	case o.rate <= 0 || o.eventRate <= 0:
		return errors.New("-rate and -event-rate must be positive")
	case o.callers < 0 || o.connCallers < 0 || o.fetchCallers < 0 || o.callers+o.connCallers == 0:
		return errors.New("-callers, -conn-callers and -fetch-callers must not be negative, and some callers are needed")
	}
	return nil
}

// deployment is the soak's gateway and two worker slots.
type deployment struct {
	exe     string
	dir     string
	cfg     roleConfig
	gateway *child
	mu      sync.Mutex
	workers [2]*child
	starts  [2]int // processes started per slot
}

func (d *deployment) args(role string, extra ...string) []string {
	a := []string{"-role", role, "-brokers", d.cfg.brokers, "-client", d.cfg.client, "-prefix", d.cfg.prefix, "-group", d.cfg.group}
	if d.cfg.outcomeTopic {
		a = append(a, "-outcome-topic")
	}
	return append(a, extra...)
}

// startWorker starts a new process in slot and waits until it joined the
// group. Its journal and log are w<slot>-<n>.journal and .log.
func (d *deployment) startWorker(slot int) (*child, error) {
	d.mu.Lock()
	n := d.starts[slot]
	d.starts[slot]++
	d.mu.Unlock()
	name := fmt.Sprintf("w%d-%d", slot, n)
	c, err := startChild("worker "+name, d.exe, d.args("worker", "-journal", filepath.Join(d.dir, name+".journal")), filepath.Join(d.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.workers[slot] = c
	d.mu.Unlock()
	if _, err := c.waitReady(readyTimeout); err != nil {
		return nil, err
	}
	return c, nil
}

func (d *deployment) worker(slot int) *child {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.workers[slot]
}

// killAll kills every process still running (on the way out of a failed
// run).
func (d *deployment) killAll() {
	d.mu.Lock()
	cs := []*child{d.gateway, d.workers[0], d.workers[1]}
	d.mu.Unlock()
	for _, c := range cs {
		if c != nil {
			_ = c.kill(killTimeout)
		}
	}
}

// soak runs the whole soak and returns the exit status.
func soak(cfg roleConfig, o soakOptions) int {
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 2
	}
	if cfg.outcomeTopic && outcomeTopicOption == nil {
		fmt.Fprintln(os.Stderr, "soak: -outcome-topic: this build's runtime has no WorkerOutcomeTopic (set outcomeTopicOption in internal/soak/roles.go)")
		return 2
	}
	run := "r" + strconv.FormatInt(time.Now().UnixNano(), 36)
	cfg.prefix = "soak-" + run + "."
	cfg.group = "soak-" + run
	dir, err := os.MkdirTemp("", "kafkarpc-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	d := &deployment{exe: exe, dir: dir, cfg: cfg}
	defer d.killAll()
	code, err := d.soak(run, o)
	if err != nil {
		logf("%v", err)
		code = 1
	}
	if code == 0 && !o.keep {
		_ = os.RemoveAll(dir)
		if err := deleteTopics(cfg); err != nil {
			logf("deleting the run's topics: %v", err)
		}
	} else {
		logf("journals and process logs kept in %s, and the topics %s*", dir, cfg.prefix)
	}
	return code
}

func (d *deployment) soak(run string, o soakOptions) (int, error) {
	cfg := d.cfg
	logFile, err := os.Create(filepath.Join(d.dir, "soak.log"))
	if err != nil {
		return 1, err
	}
	defer logFile.Close()
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelWarn}))
	logf("run %s: %s client, Kafka at %s, topics %s*, load for %s, worker 1 killed every %s, outcome topic %v; logs in %s",
		run, cfg.client, cfg.brokers, cfg.prefix, o.duration, o.killEvery, cfg.outcomeTopic, d.dir)

	client, err := newKafkaClient(cfg.client, cfg.brokers, logger)
	if err != nil {
		return 1, err
	}
	defer client.Close()
	tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	topics := echov1.EchoServiceKafkaSpec.Topics(cfg.mapper())
	if cfg.outcomeTopic {
		topics = append(topics, runtime.Topic{Name: cfg.mapper()(outcomeTopic), Role: runtime.TopicOutcome})
	}
	err = runtime.EnsureTopics(tctx, client, topics, runtime.EnsureTopicsOptions{})
	cancel()
	if err != nil {
		return 1, err
	}

	// The processes: a gateway and two workers.
	if d.gateway, err = startChild("gateway", d.exe, d.args("gateway"), filepath.Join(d.dir, "gateway.log")); err != nil {
		return 1, err
	}
	line, err := d.gateway.waitReady(readyTimeout)
	if err != nil {
		return 1, err
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "ready"))
	var werrs [2]error
	var wg sync.WaitGroup
	for slot := range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); _, werrs[slot] = d.startWorker(slot) }()
	}
	wg.Wait()
	if err := errors.Join(werrs[:]...); err != nil {
		return 1, err
	}

	// The callers' connections: the gateway, and a ClientConn of our own.
	cc, err := grpc.NewClient(addr, append(runtime.CallerDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return 1, err
	}
	defer cc.Close()
	viaGateway := echov1.NewEchoServiceClient(cc)
	conn := runtime.NewClientConn(client, runtime.WithTopicMapper(cfg.mapper()), runtime.WithLogger(logger))
	defer conn.Close()
	if err := conn.Register(echov1.EchoServiceKafkaSpec); err != nil {
		return 1, err
	}
	viaConn := echov1.NewEchoServiceClient(conn)
	warm := time.Now()
	if err := warmUp(viaGateway, run+"-warmup-gw"); err != nil {
		return 1, err
	}
	if o.connCallers > 0 || o.fetchCallers > 0 {
		if err := warmUp(viaConn, run+"-warmup-conn"); err != nil {
			return 1, err
		}
	}
	logf("gateway (pid %d) on %s and workers (pids %d, %d) answer; warm-up took %s", d.gateway.pid(), addr,
		d.worker(0).pid(), d.worker(1).pid(), time.Since(warm).Round(time.Millisecond))
	var gwRSS, wRSS rss
	if gwRSS.start, err = rssMiB(d.gateway.pid()); err != nil {
		return 1, err
	}
	if wRSS.start, err = rssMiB(d.worker(0).pid()); err != nil {
		return 1, err
	}

	// Fetch callers first, then the publisher, the callers and the killer.
	fetchCtx, stopFetch := context.WithCancel(context.Background())
	defer stopFetch()
	var fetchers []*fetcher
	var fetchWG sync.WaitGroup
	for i := range o.fetchCallers {
		via, c := "gateway", viaGateway
		if i == 0 && o.connCallers > 0 {
			via, c = "conn", viaConn
		}
		f := newFetcher(fmt.Sprintf("%d (via %s)", i, via), run, c.EchoEvents)
		fetchers = append(fetchers, f)
		fetchWG.Add(1)
		go func() { defer fetchWG.Done(); f.loop(fetchCtx, uint64(i)) }()
	}
	loadCtx, stopLoad := context.WithTimeout(context.Background(), o.duration)
	defer stopLoad()
	lag := startLagMonitor()
	defer lag.close()
	began := time.Now()
	pub := &publisher{run: run, pub: echov1.NewEchoService_EchoEvents_KafkaPublisher(client, runtime.PublisherTopicMapper(cfg.mapper()))}
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); pub.loop(loadCtx, time.Second/time.Duration(o.eventRate)) }()

	ticker := time.NewTicker(time.Second / time.Duration(o.rate))
	defer ticker.Stop()
	l := newLoad(run, o.deadline, ticker.C)
	callersDone := make(chan struct{})
	var callerWG sync.WaitGroup
	for i := range o.callers + o.connCallers {
		via, c := "gateway", viaGateway
		if i >= o.callers {
			via, c = "conn", viaConn
		}
		callerWG.Add(1)
		go func() { defer callerWG.Done(); l.caller(loadCtx, c, via, uint64(i)+1) }()
	}
	go func() { callerWG.Wait(); close(callersDone) }()

	type killResult struct {
		kills []string
		err   error
	}
	killerDone := make(chan killResult, 1)
	go func() {
		kills, err := d.killLoop(loadCtx, o.killEvery, began)
		killerDone <- killResult{kills, err}
	}()

	// The end: the load stops, every caller returns, every fetch caller
	// gets every acknowledged event, within bounds.
	<-loadCtx.Done()
	var extra []string
	drain := time.NewTimer(o.deadline + drainSlack)
	defer drain.Stop()
	select {
	case <-callersDone:
	case <-drain.C:
		extra = append(extra, fmt.Sprintf("callers still busy %s after the load ended", o.deadline+drainSlack))
	}
	var kills []string
	select {
	case r := <-killerDone:
		kills = r.kills
		if r.err != nil {
			extra = append(extra, r.err.Error())
		}
	case <-time.After(readyTimeout + killTimeout):
		extra = append(extra, "the kill schedule did not stop")
	}
	<-pubDone // each publish is bounded by 10 s
	acked, pubFailed := pub.results()
	fetchWait := time.Now()
	for _, f := range fetchers {
		f.expectAll(acked)
	}
	fetchBound := time.NewTimer(fetchTimeout)
	defer fetchBound.Stop()
wait:
	for _, f := range fetchers {
		select {
		case <-f.complete:
		case <-fetchBound.C:
			break wait
		}
	}
	logf("load over after %s; fetch callers caught up %s after the last publish", time.Since(began).Round(time.Millisecond), time.Since(fetchWait).Round(time.Millisecond))
	if gwRSS.end, err = rssMiB(d.gateway.pid()); err != nil {
		extra = append(extra, "the gateway is gone: "+err.Error())
	}
	if wRSS.end, err = rssMiB(d.worker(0).pid()); err != nil {
		extra = append(extra, "worker 0 is gone: "+err.Error())
	}
	stopFetch()
	fetchWG.Wait() // each Recv returns once fetchCtx ended
	var fetchResults []fetchResult
	for _, f := range fetchers {
		fetchResults = append(fetchResults, f.result(acked))
	}

	// Stop the processes, then read what the workers journalled.
	_ = conn.Close()
	_ = cc.Close()
	var stopErrs []error
	stopErrs = append(stopErrs, d.gateway.stop(stopTimeout))
	for slot := range 2 {
		stopErrs = append(stopErrs, d.worker(slot).stop(stopTimeout))
	}
	if err := errors.Join(stopErrs...); err != nil {
		extra = append(extra, "stopping: "+err.Error())
	}
	execs, torn, err := readJournals(d.dir)
	if err != nil {
		return 1, err
	}
	attempts := l.ledger.all()
	v := analyse(attempts, execs, cfg.outcomeTopic, o.grace, lag.maxLate)
	v.addFetch(fetchResults)
	extra = append(extra, sanity(attempts, fetchResults, kills)...)

	// Details, then the one summary line.
	logf("kills: %s", strings.Join(kills, "; "))
	most, p99 := lag.summary()
	logf("this process's timers woke up to %s late (99th percentile %s): the machine's load", most.Round(time.Millisecond), p99.Round(time.Millisecond))
	report(attempts, execs, torn, run)
	for _, r := range fetchResults {
		logf("fetch caller %s: %d of %d acknowledged events, %d missing, %d redelivered, %d reconnects of its own, streams ended by %v",
			r.name, r.received, len(acked), r.missing, r.redelivered, r.reopens, r.errs)
	}
	if pubFailed > 0 {
		logf("%d publishes failed (not required of the fetch callers)", pubFailed)
	}
	for _, p := range v.problems {
		logf("%s", p)
	}
	fmt.Println(v.summary(gwRSS, wRSS, extra))
	if !v.ok() || len(extra) > 0 {
		return 1, nil
	}
	return 0, nil
}

// killLoop SIGKILLs worker 1 half of every after into the load, then every
// after once the previous restart joined, and restarts it at once, until
// ctx ends. It returns a line per kill.
func (d *deployment) killLoop(ctx context.Context, every time.Duration, began time.Time) ([]string, error) {
	var kills []string
	t := time.NewTimer(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return kills, nil
		case <-t.C:
		}
		victim := d.worker(1)
		at := time.Since(began)
		if err := victim.kill(killTimeout); err != nil {
			return kills, err
		}
		restart := time.Now()
		c, err := d.startWorker(1)
		if err != nil {
			return kills, fmt.Errorf("restarting worker 1: %w", err)
		}
		kills = append(kills, fmt.Sprintf("pid %d at %s, pid %d joined %s later", victim.pid(), at.Round(time.Second), c.pid(), time.Since(restart).Round(time.Millisecond)))
		logf("killed worker 1 (pid %d) %s into the load; its successor (pid %d) joined the group %s later", victim.pid(), at.Round(time.Second), c.pid(), time.Since(restart).Round(time.Millisecond))
		t.Reset(every)
	}
}

// warmUp calls EchoUnary until a call succeeds, bounded by warmupTimeout:
// the gateway's reply readers and the workers' assignments may still be
// settling.
func warmUp(c echov1.EchoServiceClient, id string) error {
	end := time.Now().Add(warmupTimeout)
	var last error
	for n := 0; time.Now().Before(end); n++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, callMetadata, id+"-"+strconv.Itoa(n))
		_, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: id})
		cancel()
		if err == nil {
			return nil
		}
		last = err
		<-time.After(200 * time.Millisecond) // back-off between failed tries
	}
	return fmt.Errorf("warm-up: no call succeeded within %s: last error %v", warmupTimeout, last)
}

// sanity returns why the run proved nothing, if it did not: no kill, a kind
// of call that never ended OK, no event delivered.
func sanity(attempts []attempt, fetches []fetchResult, kills []string) []string {
	var out []string
	if len(kills) == 0 {
		out = append(out, "no worker was killed (the load was shorter than half of -kill-every)")
	}
	var okByKind [numKinds]int
	for _, a := range attempts {
		if a.code == codes.OK && a.wrong == "" {
			okByKind[a.kind]++
		}
	}
	for k, n := range okByKind {
		if n == 0 {
			out = append(out, "no "+kindNames[k]+" call ended OK")
		}
	}
	for _, r := range fetches {
		if r.received == 0 {
			out = append(out, "fetch caller "+r.name+" received no event")
		}
	}
	return out
}

// report logs the load's shape: attempts by kind and path, keyed calls,
// retries and repeats, and how often calls ran again.
func report(attempts []attempt, execs []execution, torn int, run string) {
	type key struct {
		kind int
		via  string
	}
	total, ok := map[key]int{}, map[key]int{}
	keyed, repeats, retries := 0, 0, 0
	seen := map[string]int{}
	for _, a := range attempts {
		k := key{a.kind, a.via}
		total[k]++
		if a.code == codes.OK && a.wrong == "" {
			ok[k]++
		}
		if a.keyed {
			keyed++
		}
		if a.repeat {
			repeats++
		}
		seen[a.call]++
		if a.keyed && !a.repeat && seen[a.call] > 1 {
			retries++
		}
	}
	var parts []string
	for kind := range numKinds {
		for _, via := range []string{"gateway", "conn"} {
			k := key{kind, via}
			if total[k] > 0 {
				parts = append(parts, fmt.Sprintf("%s via %s %d/%d", kindNames[kind], via, ok[k], total[k]))
			}
		}
	}
	logf("attempts OK/made: %s; %d keyed (%d retries, %d repeats of answered calls)", strings.Join(parts, ", "), keyed, retries, repeats)
	runs := map[string]int{}
	for _, e := range execs {
		if strings.HasPrefix(e.call, run+"-") && !strings.Contains(e.call, "warmup") {
			runs[e.call]++
		}
	}
	again := 0
	for _, n := range runs {
		if n > 1 {
			again++
		}
	}
	logf("workers journalled %d executions of %d calls; %d calls ran more than once (keyed or not; see duplicated for those that count)", len(execs), len(runs), again)
	if torn > 0 {
		logf("%d journal lines were not whole entries", torn)
	}
}

// deleteTopics deletes the run's topics (bounded by 30 s), through franz-go's
// admin client whichever client the run used: the seam has no deletion.
func deleteTopics(cfg roleConfig) error {
	var names []string
	for _, t := range echov1.EchoServiceKafkaSpec.Topics(cfg.mapper()) {
		names = append(names, t.Name)
	}
	if cfg.outcomeTopic {
		names = append(names, cfg.prefix+"echo-outcomes")
	}
	kc, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(cfg.brokers, ",")...))
	if err != nil {
		return err
	}
	defer kc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(kc).DeleteTopics(ctx, names...)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.UnknownTopicOrPartition) {
			errs = append(errs, fmt.Errorf("%s: %w", r.Topic, r.Err))
		}
	}
	return errors.Join(errs...)
}
