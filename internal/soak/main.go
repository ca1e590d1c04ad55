// Command soak runs a mixed load against Apache Kafka while a worker process
// is SIGKILLed and restarted on a schedule, and checks that no call was lost
// or executed twice (`make soak`; issue 18, item 4).
//
//	soak -brokers 127.0.0.1:19092 [-client confluent|franz] [-duration 10m] [-outcome-topic=false]
//
// It starts, as child processes of this same program (-role), one gateway
// and two workers of the echo service, on topics of their own (prefix
// soak-<run>., so that nothing else on the broker reads or answers them, and
// a run starts on empty topics). Its workers wrap the example's handlers
// (example/echo/echoserver) and journal every execution to a file per
// process (journal.go). Callers make calls of all four kinds, half of them
// with an idempotency-key (retried with the same key on a retryable code, up
// to 5 attempts, and some repeated later once answered), through the gateway
// with the gRPC client and through an in-process runtime.ClientConn; fetch
// callers read the fetch method's stream of events that the soak publishes,
// and reconnect now and then resuming from their last event id. Worker 1 is
// SIGKILLed every -kill-every and restarted at once; worker 0 runs
// throughout, and its RSS is the summary's worker RSS.
//
// At the end it prints one line to stdout:
//
//	soak: N calls, F failed (by code), L lost, D duplicated, gateway RSS A→B MiB, worker RSS C→D MiB
//
// with "; FAIL: ..." appended for anything else that fails the run, and
// exits 1 when L or D is not 0, when a call ended later than its deadline
// plus -grace, when a call ended OK over a wrong answer, when a fetch caller
// got an event twice, or when the run proved nothing (no kill, no OK call of
// some kind, no event delivered). Details go to stderr.
//
// Definitions:
//
//   - N counts attempts: every gRPC call of the four kinds a caller made
//     (a retry and a repeat are calls of their own). F counts those that did
//     not end OK, by status code; a wrong answer counts as DataLoss (and
//     fails the run). Failures as such do not fail the run: a call that
//     waited for a killed worker's partitions may end DEADLINE_EXCEEDED.
//   - Lost: an attempt that ended OK at the caller while no worker journalled
//     an execution of its call that returned OK; or an event whose publish
//     Kafka acknowledged that a fetch caller, which stayed connected or
//     resumed from its last event id, never received (each fetch caller
//     reads the run's topic from its start, so it must receive every one).
//   - Duplicated: an execution of a keyed call (idempotency-key) that began
//     after a caller had received the call's OK answer: a repeat must be
//     answered from the stored outcome. When the process that ran it had
//     itself completed the call OK before, it is duplicated, always. When
//     another process had (the answering worker was killed, and the repeat
//     or the replay of its uncommitted request reached a different
//     process), it is duplicated too with -outcome-topic (the default),
//     which keeps outcomes in a Kafka topic; with -outcome-topic=false the
//     stored outcome lives in the process that answered, so these are
//     counted apart, in the summary's detail. Calls without a key may run again after a kill (at least once)
//     and are not counted.
//
// Times are compared across processes with the wall clock of one machine
// (the callers' ends and the journals' begins).
package main

import (
	"flag"
	"fmt"
	"os"
	"time"
)

// roleConfig is what a child process (-role gateway or worker) needs.
type roleConfig struct {
	brokers      string
	client       string
	prefix       string // topic prefix of the run
	group        string // the workers' consumer group
	journal      string // the worker's journal file
	outcomeTopic bool
}

// mapper returns the topic mapper of the run's prefix.
func (c roleConfig) mapper() func(string) string {
	return func(t string) string { return c.prefix + t }
}

func main() {
	var (
		role      = flag.String("role", "", "internal: run as the soak's gateway or worker process")
		cfg       roleConfig
		opts      soakOptions
		defClient = os.Getenv("KAFKA_CLIENT")
	)
	if defClient == "" {
		defClient = "confluent"
	}
	flag.StringVar(&cfg.brokers, "brokers", os.Getenv("KAFKA_BROKERS"), "Kafka bootstrap servers (default $KAFKA_BROKERS); required")
	flag.StringVar(&cfg.client, "client", defClient, "Kafka client library of every process: confluent or franz (default $KAFKA_CLIENT, else confluent)")
	flag.BoolVar(&cfg.outcomeTopic, "outcome-topic", true, "workers keep stored outcomes in a Kafka topic (runtime.WorkerOutcomeTopic); a keyed call re-executed on another worker process after its answer then counts as duplicated")
	flag.StringVar(&cfg.prefix, "prefix", "", "internal: the run's topic prefix")
	flag.StringVar(&cfg.group, "group", "", "internal: the workers' consumer group")
	flag.StringVar(&cfg.journal, "journal", "", "internal: the worker's journal file")
	flag.DurationVar(&opts.duration, "duration", 10*time.Minute, "how long the load runs")
	flag.DurationVar(&opts.killEvery, "kill-every", 30*time.Second, "SIGKILL worker 1 this long after its start (the first time after half of it), and restart it at once")
	flag.DurationVar(&opts.deadline, "deadline", 20*time.Second, "the longest deadline of an attempt: each draws its own from a quarter of it to all of it, so some outlast the pause a kill causes (the group's 10 s session timeout) and some do not, and a keyed call is retried")
	flag.DurationVar(&opts.grace, "grace", time.Second, "how much later than its deadline an attempt may end before it fails the run, beyond the lateness of this process's own timers measured meanwhile (see lag.go)")
	flag.IntVar(&opts.rate, "rate", 100, "calls per second, all callers together (at most)")
	flag.IntVar(&opts.callers, "callers", 12, "concurrent callers through the gateway")
	flag.IntVar(&opts.connCallers, "conn-callers", 4, "concurrent callers through an in-process runtime.ClientConn")
	flag.IntVar(&opts.fetchCallers, "fetch-callers", 3, "fetch callers (one of them through the ClientConn when -conn-callers > 0)")
	flag.IntVar(&opts.eventRate, "event-rate", 20, "events published per second")
	flag.BoolVar(&opts.keep, "keep", false, "keep the run directory (journals and process logs) even when the soak passes")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "soak: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if cfg.brokers == "" {
		fmt.Fprintln(os.Stderr, "soak: -brokers (or KAFKA_BROKERS) is required: the soak runs against Apache Kafka (make kafka-up)")
		os.Exit(2)
	}
	var err error
	switch *role {
	case "gateway":
		err = runGateway(cfg)
	case "worker":
		err = runWorker(cfg)
	case "":
		os.Exit(soak(cfg, opts))
	default:
		err = fmt.Errorf("-role %q: want gateway or worker", *role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak %s: %v\n", *role, err)
		os.Exit(1)
	}
}
