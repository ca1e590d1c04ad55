package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Fanout (fetch): K callers of EchoEvents through the gateway each receive
// every record produced to the events topic, against K raw readers of the
// same topic (the floor) and against K callers of a plain gRPC server that
// broadcasts the same events from memory (broadcast.go). Measured only once
// runtime.GatewayFetch streams records; until then the report keeps the slot
// and says why it is empty.

type fetchSlot struct {
	client      string
	env         *rpcEnv
	front, back kafkaclient.Client
}

type fetchResult struct {
	client     string
	available  bool
	note       string
	callers    int
	events     int
	rounds     int
	rpcRate    float64 // deliveries (events × callers) per second
	floorRate  float64
	rpcP50     time.Duration // time for one batch of events to reach every caller
	floorP50   time.Duration
	bcastRate  float64 // the plain gRPC in-memory broadcast (0: not measured)
	bcastP50   time.Duration
	bcastNote  string // why the broadcast was not measured
	firstError error
}

// measure times batches of events reaching every fetch caller, every raw
// reader and, when bc is not nil, every caller of the plain gRPC broadcast,
// round by round in a rotated order.
func (s fetchSlot) measure(ctx context.Context, cfg config, lim limits, log *slog.Logger, bc *broadcast) *fetchResult {
	res := &fetchResult{client: s.client, callers: cfg.fanoutCallers, events: cfg.fanoutEvents}
	topic := s.env.prefix + "echo-events"
	ev, _ := proto.Marshal(&echov1.EchoEvent{Message: cfg.message})
	produced := 0
	produce := func(n int) error {
		fctx, cancel := context.WithTimeout(ctx, lim.callTimeout)
		defer cancel()
		for range n {
			s.back.Produce(&kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: []byte("ev"), Value: ev},
				kafkaclient.AcksAll, func(*kafkaclient.Record, error) {})
		}
		produced += n
		return s.back.Flush(fctx)
	}
	if err := produce(1); err != nil {
		res.note = "producing a probe event: " + err.Error()
		return res
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := s.env.echo.EchoEvents(pctx, &emptypb.Empty{})
	if err == nil {
		_, err = st.Recv()
	}
	cancel()
	if status.Code(err) == codes.Unimplemented {
		res.note = "not measured: runtime.GatewayFetch answers UNIMPLEMENTED in this build"
		return res
	}
	if err != nil {
		res.note = "not measured: probe call failed: " + err.Error()
		return res
	}
	res.available = true
	progress(fmt.Sprintf("fanout %s: %d callers × %d events", s.client, cfg.fanoutCallers, cfg.fanoutEvents))

	// K streaming callers, each counting what it received.
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	counts := make([]atomic.Int64, cfg.fanoutCallers)
	var firstErr atomic.Pointer[error]
	for i := range cfg.fanoutCallers {
		st, err := s.env.echo.EchoEvents(sctx, &emptypb.Empty{})
		if err != nil {
			res.firstError = err
			return res
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, err := st.Recv(); err != nil {
					if sctx.Err() == nil {
						firstErr.CompareAndSwap(nil, &err)
					}
					return
				}
				counts[i].Add(1)
			}
		}()
	}
	// K raw readers of the same topic, at its end.
	readers := make([]kafkaclient.Reader, cfg.fanoutCallers)
	readSoFar := make([]int, cfg.fanoutCallers) // events produced before each reader's position, plus those it read
	for i := range readers {
		readSoFar[i] = produced
		r, err := newReaderAtEnd(s.front, topic)
		if err != nil {
			res.firstError = err
			return res
		}
		readers[i] = r
		defer r.Close()
	}
	waitAll := func(target int64) error {
		deadline := time.Now().Add(lim.callTimeout)
		for i := range counts {
			for counts[i].Load() < target {
				if p := firstErr.Load(); p != nil {
					return *p
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("caller %d received %d of %d events (gateway: %+v)", i, counts[i].Load(), target, s.env.gw.FetchStats())
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
		return nil
	}
	if err := waitAll(int64(produced)); err != nil { // the history first
		res.firstError = err
		return res
	}
	var rpcT, floorT, bcastT []time.Duration
	for r := range cfg.rounds {
		if ctx.Err() != nil {
			break
		}
		runRPC := func() error {
			t0 := time.Now()
			if err := produce(cfg.fanoutEvents); err != nil {
				return err
			}
			if err := waitAll(int64(produced)); err != nil {
				return err
			}
			rpcT = append(rpcT, time.Since(t0))
			return nil
		}
		// readAll makes every raw reader read up to the last event produced.
		readAll := func() error {
			var g sync.WaitGroup
			errs := make([]error, len(readers))
			for i, rd := range readers {
				g.Add(1)
				go func() {
					defer g.Done()
					rctx, cancel := context.WithTimeout(ctx, lim.callTimeout)
					defer cancel()
					errs[i] = readN(rctx, rd, produced-readSoFar[i])
					readSoFar[i] = produced
				}()
			}
			g.Wait()
			for _, err := range errs {
				if err != nil {
					return err
				}
			}
			return nil
		}
		runFloor := func() error {
			if err := readAll(); err != nil { // the RPC's events, untimed
				return err
			}
			t0 := time.Now()
			if err := produce(cfg.fanoutEvents); err != nil {
				return err
			}
			if err := readAll(); err != nil {
				return err
			}
			floorT = append(floorT, time.Since(t0))
			return nil
		}
		runners := []func() error{runRPC, runFloor}
		if bc != nil {
			runners = append(runners, func() error {
				t0 := time.Now()
				if err := bc.publish(ctx, cfg.fanoutEvents, lim.callTimeout); err != nil {
					return err
				}
				bcastT = append(bcastT, time.Since(t0))
				return nil
			})
		}
		// The callers also receive the floor's events (same topic): wait
		// for them before timing the next batch.
		for i := range runners {
			f := runners[(i+r)%len(runners)]
			if err := f(); err != nil {
				res.firstError = err
				return res
			}
			if err := waitAll(int64(produced)); err != nil {
				res.firstError = err
				return res
			}
		}
		res.rounds++
	}
	deliveries := float64(cfg.fanoutCallers * cfg.fanoutEvents)
	res.rpcP50, res.floorP50 = percentile(rpcT, 50), percentile(floorT, 50)
	if res.rpcP50 > 0 {
		res.rpcRate = deliveries / res.rpcP50.Seconds()
	}
	if res.floorP50 > 0 {
		res.floorRate = deliveries / res.floorP50.Seconds()
	}
	if res.bcastP50 = percentile(bcastT, 50); res.bcastP50 > 0 {
		res.bcastRate = deliveries / res.bcastP50.Seconds()
	}
	return res
}
