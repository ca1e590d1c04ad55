package main

import (
	"context"
	"fmt"
	goruntime "runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// A contender is one thing measured: a closed loop of calls, run by
// inflight goroutines at a time, each issuing its next call as soon as the
// previous one returned.
type contender struct {
	kind     string // row group: "rpc", "floor", "floor-2hop", "grpc", "watermill", ...
	client   string // Kafka client ("confluent", "franz", "sarama") or "-"
	inflight int
	// call makes one call. slot (0..inflight-1) names the goroutine making
	// it; a contender may keep per-slot state.
	call func(ctx context.Context, slot int) error
	// extraCPU, when set, is CPU time spent for the contender outside this
	// process so far (a relay child's), added to its CPU figures.
	extraCPU func() time.Duration

	lat    []time.Duration // every call measured
	calls  int
	busy   time.Duration // summed wall time of the measured slices
	errs   int
	first  error
	cpu    time.Duration // process CPU time during the measured slices
	allocs uint64        // Go heap allocations (whole process) during them
	// per round (for -benchout): calls and wall time, latencies
	rounds []roundStat
}

type roundStat struct {
	calls  int
	busy   time.Duration
	p50    time.Duration
	cpu    time.Duration
	allocs uint64
}

// cpuNow is this process's CPU time so far plus the contender's extraCPU.
func (c *contender) cpuNow() time.Duration {
	t := cpuTime()
	if c.extraCPU != nil {
		t += c.extraCPU()
	}
	return t
}

func (c *contender) label() string {
	return fmt.Sprintf("%s/%s/inflight=%d", c.kind, c.client, c.inflight)
}

// limits bound every load loop in count and in time.
type limits struct {
	slice       time.Duration // how long one contender runs before the next takes over
	maxPerSlice int           // calls per slice, all goroutines together
	callTimeout time.Duration // one call
}

// runSlice runs c for one slice: inflight goroutines call in a closed loop
// until the slice's time or count is used up; calls already started are
// let finish (a call cut short would leave records in Kafka that disturb the
// next contender). Returns the latencies, the number of calls, the wall time
// from start to the last call's end, and the errors.
func runSlice(ctx context.Context, c *contender, lim limits) (lat []time.Duration, n int, wall time.Duration, errs int, first error) {
	var (
		issued  atomic.Int64
		mu      sync.Mutex
		wg      sync.WaitGroup
		errN    atomic.Int64
		firstMu sync.Mutex
	)
	start := time.Now()
	stop := start.Add(lim.slice)
	perSlot := make([][]time.Duration, c.inflight)
	for s := range c.inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each goroutine derives its calls' contexts from a parent of its
			// own: deriving all from ctx would make every call contend for
			// ctx's lock (measured: a visible share of the mutex profile).
			slotCtx, cancelSlot := context.WithCancel(ctx)
			defer cancelSlot()
			local := make([]time.Duration, 0, 256)
			for time.Now().Before(stop) && ctx.Err() == nil {
				if issued.Add(1) > int64(lim.maxPerSlice) {
					break
				}
				cctx, cancel := context.WithTimeout(slotCtx, lim.callTimeout)
				t0 := time.Now()
				err := c.call(cctx, s)
				d := time.Since(t0)
				cancel()
				if err != nil {
					errN.Add(1)
					firstMu.Lock()
					if first == nil {
						first = err
					}
					firstMu.Unlock()
					continue
				}
				local = append(local, d)
			}
			mu.Lock()
			perSlot[s] = local
			mu.Unlock()
		}()
	}
	wg.Wait() // every call is bounded by callTimeout
	wall = time.Since(start)
	for _, l := range perSlot {
		lat = append(lat, l...)
	}
	return lat, len(lat), wall, int(errN.Load()), first
}

// runInterleaved runs every contender for one slice per round, rounds times,
// rotating the order each round so that no contender always follows
// another; a first unrecorded round warms everything up. Machine noise thus
// falls on all contenders alike.
func runInterleaved(ctx context.Context, cs []*contender, rounds int, warm time.Duration, lim limits, progress func(string)) error {
	if warm > 0 {
		wl := lim
		wl.slice = warm
		for _, c := range cs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			_, _, _, errs, first := runSlice(ctx, c, wl)
			if errs > 0 {
				progress(fmt.Sprintf("warm-up %s: %d errors, first: %v", c.label(), errs, first))
			}
		}
	}
	for r := range rounds {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t0 := time.Now()
		for i := range cs {
			c := cs[(i+r)%len(cs)]
			var ms0, ms1 goruntime.MemStats
			goruntime.ReadMemStats(&ms0)
			cpu0 := c.cpuNow()
			lat, n, wall, errs, first := runSlice(ctx, c, lim)
			cpu := c.cpuNow() - cpu0
			goruntime.ReadMemStats(&ms1)
			c.cpu += cpu
			c.allocs += ms1.Mallocs - ms0.Mallocs
			c.lat = append(c.lat, lat...)
			c.calls += n
			c.busy += wall
			c.errs += errs
			if c.first == nil {
				c.first = first
			}
			c.rounds = append(c.rounds, roundStat{calls: n, busy: wall, p50: percentile(lat, 50), cpu: cpu, allocs: ms1.Mallocs - ms0.Mallocs})
		}
		progress(fmt.Sprintf("round %d/%d: %d contenders in %v", r+1, rounds, len(cs), time.Since(t0).Round(time.Millisecond)))
	}
	return nil
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	i = max(0, min(i, len(s)-1))
	return s[i]
}

func (c *contender) p(p float64) time.Duration { return percentile(c.lat, p) }

func (c *contender) rate() float64 {
	if c.busy <= 0 {
		return 0
	}
	return float64(c.calls) / c.busy.Seconds()
}
