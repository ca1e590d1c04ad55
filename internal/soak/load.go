package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/fetchclient"
)

// The four gRPC method kinds the callers use, in turn at random.
const (
	kindUnary = iota
	kindServerStream
	kindClientStream
	kindBidi
	numKinds
)

var kindNames = [numKinds]string{"unary", "server-stream", "client-stream", "bidi"}

// Shape of the calls.
const (
	streamLen       = 3                      // responses of a server stream, requests of a client or bidi stream
	maxDelayMs      = 30                     // each response waits 0..maxDelayMs ms in the handler, so kills find calls in flight
	keyedShare      = 0.5                    // calls made with an idempotency key
	repeatShare     = 0.3                    // keyed calls answered OK that are repeated later, with the same key and request
	repeatPick      = 0.25                   // chance that a caller takes a queued repeat instead of a new call
	maxAttempts     = 5                      // attempts of a keyed call, retried on a retryable code
	retryBackoff    = 200 * time.Millisecond // before retrying an attempt that failed early (not a timeout)
	repeatQueueSize = 1024                   // repeats waiting; more are dropped
)

// job is one logical call: a new call, or the repeat of a keyed one.
type job struct {
	id     string // the soak-call metadata; with keyed, also the idempotency key
	kind   int
	keyed  bool
	repeat bool
	delay  int32 // delay_ms of each request
}

// attempt is one gRPC call as the caller saw it.
type attempt struct {
	call     string
	kind     int
	keyed    bool
	repeat   bool
	via      string // "gateway" or "conn" (runtime.ClientConn)
	began    int64  // unix ns, taken before the call's context
	ended    int64  // unix ns, once its final status was known
	deadline time.Duration
	code     codes.Code
	wrong    string // an OK end over a wrong answer: what was wrong
}

// ledger collects every attempt. Safe for concurrent use.
type ledger struct {
	mu       sync.Mutex
	attempts []attempt
}

func (l *ledger) add(a attempt) {
	l.mu.Lock()
	l.attempts = append(l.attempts, a)
	l.mu.Unlock()
}

func (l *ledger) all() []attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]attempt(nil), l.attempts...)
}

// load runs the callers of the four kinds.
type load struct {
	run      string        // the run id, a prefix of every call id
	deadline time.Duration // the longest deadline of an attempt
	tick     <-chan time.Time
	repeats  chan job
	seq      atomic.Int64
	ledger   ledger
}

func newLoad(run string, deadline time.Duration, tick <-chan time.Time) *load {
	return &load{run: run, deadline: deadline, tick: tick, repeats: make(chan job, repeatQueueSize)}
}

// caller makes calls through c until ctx ends, one per tick of the shared
// rate limiter: a queued repeat sometimes, else a new call of a random kind,
// keyed or not. A call in flight when ctx ends runs to its own end; a keyed
// call is not retried after ctx ended.
func (l *load) caller(ctx context.Context, c echov1.EchoServiceClient, via string, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 18))
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.tick:
		}
		var j job
		took := false
		if rng.Float64() < repeatPick {
			select {
			case j = <-l.repeats:
				took = true
			default:
			}
		}
		if !took {
			j = job{
				id:    l.run + "-" + strconv.FormatInt(l.seq.Add(1), 10),
				kind:  rng.IntN(numKinds),
				keyed: rng.Float64() < keyedShare,
				delay: int32(rng.IntN(maxDelayMs + 1)),
			}
		}
		l.do(ctx, c, via, j, rng)
	}
}

// do makes the attempts of j: one for an unkeyed call, up to maxAttempts
// for a keyed one while its attempts fail with a retryable code.
func (l *load) do(ctx context.Context, c echov1.EchoServiceClient, via string, j job, rng *rand.Rand) {
	for n := 1; ; n++ {
		a := l.try(c, via, j, rng)
		l.ledger.add(a)
		if a.code == codes.OK && a.wrong == "" {
			if j.keyed && !j.repeat && rng.Float64() < repeatShare {
				r := j
				r.repeat = true
				select {
				case l.repeats <- r:
				default:
				}
			}
			return
		}
		if !j.keyed || !retryable(a.code) || n == maxAttempts || ctx.Err() != nil {
			return
		}
		if a.code != codes.DeadlineExceeded {
			t := time.NewTimer(retryBackoff) // back-off, not synchronisation
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}
}

// retryable reports the codes after which a keyed call is tried again (the
// codes a worker does not store).
func retryable(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted, codes.Canceled:
		return true
	}
	return false
}

// try makes one attempt of j, with a deadline drawn from a quarter of
// l.deadline to all of it: an attempt that waits for a killed worker's
// partitions (the group's session timeout, 10 s, then a rebalance) may
// outlast the shorter ones, and a keyed call is then retried with its key.
func (l *load) try(c echov1.EchoServiceClient, via string, j job, rng *rand.Rand) attempt {
	d := l.deadline/4 + time.Duration(rng.Int64N(int64(l.deadline*3/4)+1))
	a := attempt{call: j.id, kind: j.kind, keyed: j.keyed, repeat: j.repeat, via: via, deadline: d}
	a.began = time.Now().UnixNano()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	md := []string{callMetadata, j.id}
	if j.keyed {
		md = append(md, "idempotency-key", j.id)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	var err error
	switch j.kind {
	case kindUnary:
		err = unary(ctx, c, j)
	case kindServerStream:
		err = serverStream(ctx, c, j)
	case kindClientStream:
		err = clientStream(ctx, c, j)
	case kindBidi:
		err = bidi(ctx, c, j)
	}
	a.ended = time.Now().UnixNano()
	if w, ok := err.(wrongAnswer); ok {
		a.wrong = string(w)
		return a
	}
	a.code = status.Code(err)
	return a
}

// wrongAnswer is an OK end over responses other than the echo of the
// request.
type wrongAnswer string

func (w wrongAnswer) Error() string { return string(w) }

func part(j job, i int) string { return j.id + "/" + strconv.Itoa(i) }

func unary(ctx context.Context, c echov1.EchoServiceClient, j job) error {
	resp, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: j.id, DelayMs: j.delay})
	if err != nil {
		return err
	}
	if resp.GetMessage() != j.id || resp.GetIndex() != 0 {
		return wrongAnswer(fmt.Sprintf("unary answered %q index %d", resp.GetMessage(), resp.GetIndex()))
	}
	return nil
}

func serverStream(ctx context.Context, c echov1.EchoServiceClient, j job) error {
	s, err := c.EchoServerStream(ctx, &echov1.EchoRequest{Message: j.id, Repeat: streamLen, DelayMs: j.delay})
	if err != nil {
		return err
	}
	var got []string
	for {
		r, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		got = append(got, fmt.Sprintf("%s#%d", r.GetMessage(), r.GetIndex()))
	}
	var want []string
	for i := range streamLen {
		want = append(want, fmt.Sprintf("%s#%d", j.id, i))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		return wrongAnswer(fmt.Sprintf("server stream ended OK with %v", got))
	}
	return nil
}

func clientStream(ctx context.Context, c echov1.EchoServiceClient, j job) error {
	s, err := c.EchoClientStream(ctx)
	if err != nil {
		return err
	}
	var want []string
	for i := range streamLen {
		want = append(want, part(j, i))
		if err := s.Send(&echov1.EchoRequest{Message: part(j, i), DelayMs: j.delay}); err != nil {
			break // the status comes with CloseAndRecv
		}
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.GetMessage() != strings.Join(want, ",") || resp.GetIndex() != streamLen {
		return wrongAnswer(fmt.Sprintf("client stream answered %q index %d", resp.GetMessage(), resp.GetIndex()))
	}
	return nil
}

func bidi(ctx context.Context, c echov1.EchoServiceClient, j job) error {
	s, err := c.EchoBidiStream(ctx)
	if err != nil {
		return err
	}
	sending := true
	for i := range streamLen {
		// A Send that fails means the stream is over (a repeat answered
		// from the stored outcome ends before its requests are all sent):
		// what it answered, and its status, come with Recv.
		if sending && s.Send(&echov1.EchoRequest{Message: part(j, i), DelayMs: j.delay}) != nil {
			sending = false
		}
		r, err := s.Recv()
		if err == io.EOF {
			return wrongAnswer(fmt.Sprintf("bidi stream ended OK after %d of %d responses", i, streamLen))
		}
		if err != nil {
			return err
		}
		if r.GetMessage() != part(j, i) || r.GetIndex() != int32(i) {
			return wrongAnswer(fmt.Sprintf("bidi answered %q index %d to request %d", r.GetMessage(), r.GetIndex(), i))
		}
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	r, err := s.Recv()
	switch {
	case err == io.EOF:
		return nil
	case err != nil:
		return err
	default:
		return wrongAnswer(fmt.Sprintf("bidi sent %q beyond its %d responses", r.GetMessage(), streamLen))
	}
}

// ---- fetch

// publisher publishes the run's events, "<run>-ev-<seq>", to the fetch
// topic, one per tick until ctx ends; acked lists the events Kafka
// acknowledged.
type publisher struct {
	run    string
	pub    *runtime.Publisher[*echov1.EchoEvent]
	mu     sync.Mutex
	acked  []int
	failed int
}

func (p *publisher) loop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := p.pub.Publish(pctx, &echov1.EchoEvent{Message: p.run + "-ev-" + strconv.Itoa(seq)})
		cancel()
		p.mu.Lock()
		if err != nil {
			p.failed++
		} else {
			p.acked = append(p.acked, seq)
		}
		p.mu.Unlock()
	}
}

func (p *publisher) results() (acked []int, failed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.acked...), p.failed
}

// fetcher is one caller of the fetch method EchoEvents. It reads from the
// topic's start (the run's own topic, so only this run's events), through
// fetchclient, which resumes a broken stream from the last event id; and
// on its own schedule it closes its stream and opens a new one resuming
// from the last event id it received, as a caller that reconnects does.
type fetcher struct {
	name string
	run  string
	open fetchclient.OpenFunc[echov1.EchoEvent]

	mu       sync.Mutex
	seen     map[int]int // the run's events received, with how often
	expect   []int       // set once publishing stopped
	complete chan struct{}
	closed   bool
	reopens  int
	errs     map[codes.Code]int // streams ended by a status fetchclient does not retry
}

func newFetcher(name, run string, open fetchclient.OpenFunc[echov1.EchoEvent]) *fetcher {
	return &fetcher{name: name, run: run, open: open, seen: map[int]int{}, complete: make(chan struct{}), errs: map[codes.Code]int{}}
}

// loop reads until ctx ends.
func (f *fetcher) loop(ctx context.Context, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 4))
	var resume []byte
	prefix := f.run + "-ev-"
	for ctx.Err() == nil {
		sub := fetchclient.New(ctx, f.open, fetchclient.WithResume(resume), fetchclient.WithCallOptions(grpc.WaitForReady(true)))
		quota := 50 + rng.IntN(100) // events before this caller reconnects by itself
		for range quota {
			ev, err := sub.Recv()
			if err != nil {
				if ctx.Err() == nil {
					f.mu.Lock()
					f.errs[status.Code(err)]++
					f.mu.Unlock()
					t := time.NewTimer(retryBackoff) // back-off, not synchronisation
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
					}
				}
				break
			}
			resume = sub.EventID()
			seq, err := strconv.Atoi(strings.TrimPrefix(ev.GetMessage(), prefix))
			if err != nil || !strings.HasPrefix(ev.GetMessage(), prefix) {
				continue // not an event of this run (there are none: the topic is the run's)
			}
			f.deliver(seq)
		}
		sub.Close()
		f.mu.Lock()
		f.reopens++
		f.mu.Unlock()
	}
}

func (f *fetcher) deliver(seq int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen[seq]++
	f.checkLocked()
}

// expectAll tells the fetcher the acknowledged events it must receive;
// complete closes once it has them all.
func (f *fetcher) expectAll(acked []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expect = acked
	f.checkLocked()
}

func (f *fetcher) checkLocked() {
	if f.closed || f.expect == nil {
		return
	}
	for _, s := range f.expect {
		if f.seen[s] == 0 {
			return
		}
	}
	f.closed = true
	close(f.complete)
}

// fetchResult is what a fetcher received of the acknowledged events.
type fetchResult struct {
	name        string
	received    int // acknowledged events received
	missing     int // acknowledged events never received: lost
	redelivered int // deliveries of an event beyond its first
	reopens     int
	errs        map[codes.Code]int
}

func (f *fetcher) result(acked []int) fetchResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := fetchResult{name: f.name, reopens: f.reopens, errs: map[codes.Code]int{}}
	for c, n := range f.errs {
		r.errs[c] = n
	}
	for _, s := range acked {
		if f.seen[s] == 0 {
			r.missing++
		} else {
			r.received++
		}
	}
	for _, n := range f.seen {
		r.redelivered += n - 1
	}
	return r
}
