//go:build integration

package integration

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Shape of the fetch restart test.
const (
	fetchCallers      = 100
	fetchBefore       = 100 // records produced before the restart
	fetchDuring       = 100 // records produced while the gateway restarts
	fetchAfter        = 100 // records produced once it is back
	fetchTotal        = fetchBefore + fetchDuring + fetchAfter
	fetchEventIDField = 32767           // WIRE.md's default
	fetchBound        = 3 * time.Minute // the whole test, every caller's resumption included
)

// fetchCaller is one caller of EchoEvents: it reads the stream, remembers the
// last event id, and resumes with it after the stream breaks.
type fetchCaller struct {
	id       int
	run      string // the marker of this test's records
	mu       sync.Mutex
	seen     map[string]int // this run's messages, with how often each came
	dups     []string
	lastID   []byte
	resumes  int
	complete chan struct{} // closed once every record of the run arrived
	once     sync.Once
	err      error
}

// eventID returns the event id carried by ev as unknown field 32767.
func eventID(ev *echov1.EchoEvent) ([]byte, error) {
	b := ev.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		if num == fetchEventIDField && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			return v, nil
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil, errors.New("no event id (field 32767) in the delivered message")
}

// loop streams EchoEvents until the run is complete or ctx ends, resuming
// with the last event id each time the stream breaks.
func (f *fetchCaller) loop(ctx context.Context, c echov1.EchoServiceClient) {
	for ctx.Err() == nil {
		f.mu.Lock()
		last := f.lastID
		f.mu.Unlock()
		cctx := ctx
		if last != nil {
			cctx = metadata.AppendToOutgoingContext(ctx, "last-message-id", base64.RawURLEncoding.EncodeToString(last))
		}
		// WaitForReady: while the gateway restarts, the call waits for the
		// connection to come back (bounded by ctx) instead of failing.
		s, err := c.EchoEvents(cctx, &emptypb.Empty{}, grpc.WaitForReady(true))
		if err != nil {
			f.fail(fmt.Errorf("EchoEvents (resume %d): %w", f.resumes, err))
			return
		}
		err = f.read(s)
		select {
		case <-f.complete:
			return
		default:
		}
		if st := status.Convert(err); st.Code() != codes.Unavailable && st.Code() != codes.Canceled && st.Code() != codes.DeadlineExceeded {
			f.fail(fmt.Errorf("stream broke with %v; want UNAVAILABLE while the gateway restarts", err))
			return
		}
		f.mu.Lock()
		f.resumes++
		f.mu.Unlock()
	}
}

// read receives until the stream breaks or the run is complete.
func (f *fetchCaller) read(s grpc.ServerStreamingClient[echov1.EchoEvent]) error {
	for {
		ev, err := s.Recv()
		if err != nil {
			return err
		}
		id, err := eventID(ev)
		if err != nil {
			f.fail(err)
			return err
		}
		f.mu.Lock()
		f.lastID = id
		msg := ev.GetMessage()
		if len(msg) > len(f.run) && msg[:len(f.run)] == f.run {
			f.seen[msg]++
			if f.seen[msg] == 2 {
				f.dups = append(f.dups, msg)
			}
			if len(f.seen) == fetchTotal {
				f.once.Do(func() { close(f.complete) })
			}
		}
		f.mu.Unlock()
		select {
		case <-f.complete:
			return nil
		default:
		}
	}
}

func (f *fetchCaller) fail(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

// TestGatewayRestartFetchResume restarts echo-gateway while 100 callers
// stream EchoEvents (a fetch of topic echo-events): each caller resumes on the
// new gateway with the last event id it received (metadata last-message-id)
// and must receive every record of the test exactly once: none lost across
// the restart, none repeated.
func TestGatewayRestartFetchResume(t *testing.T) {
	needKafka(t)
	addr := freeAddr(t)
	g1 := startGateway(t, addr)
	c := dial(t, addr)

	kc, err := confluent.New(confluent.Config{"bootstrap.servers": brokers}, confluent.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatalf("Kafka client: %v", err)
	}
	t.Cleanup(func() { _ = kc.Close() })
	run := unique("fetch") + "/"
	var produced atomic.Int64
	produce := func(n int) {
		t.Helper()
		errc := make(chan error, n)
		for i := 0; i < n; i++ {
			k := produced.Add(1)
			v, err := proto.Marshal(&echov1.EchoEvent{Message: fmt.Sprintf("%s%04d", run, k)})
			if err != nil {
				t.Fatal(err)
			}
			kc.Produce(&kafkaclient.Record{Topic: "echo-events", Partition: kafkaclient.AnyPartition, Key: []byte(fmt.Sprintf("k%d", k%7)), Value: v},
				kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		}
		for i := 0; i < n; i++ {
			if err := <-errc; err != nil {
				t.Fatalf("producing to echo-events: %v", err)
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), fetchBound)
	defer cancel()
	callers := make([]*fetchCaller, fetchCallers)
	var wg sync.WaitGroup
	for i := range callers {
		f := &fetchCaller{id: i, run: run, seen: map[string]int{}, complete: make(chan struct{})}
		callers[i] = f
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.loop(ctx, c)
		}()
	}
	produce(fetchBefore)

	// Restart the gateway on the same address while records keep coming.
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		produce(fetchDuring / 2)
	}()
	g1.signal(t, syscall.SIGTERM)
	g1.wait(t, exitTimeout)
	<-restarted
	produce(fetchDuring - fetchDuring/2)
	startGateway(t, addr)
	produce(fetchAfter)

	all := make(chan struct{})
	go func() {
		defer close(all)
		wg.Wait()
	}()
	select {
	case <-all:
	case <-ctx.Done():
	}
	cancel()
	<-all
	resumed, bad := 0, 0
	report := func(format string, args ...any) {
		if bad++; bad <= 10 {
			t.Errorf(format, args...)
		}
	}
	for _, f := range callers {
		f.mu.Lock()
		if f.resumes > 0 {
			resumed++
		}
		if f.err != nil {
			report("caller %d: %v", f.id, f.err)
		}
		if len(f.seen) != fetchTotal {
			report("caller %d received %d of the %d records (resumed %d times)", f.id, len(f.seen), fetchTotal, f.resumes)
		}
		if len(f.dups) > 0 {
			report("caller %d received %d records more than once, e.g. %q", f.id, len(f.dups), f.dups[0])
		}
		f.mu.Unlock()
	}
	if bad > 10 {
		t.Errorf("... %d problems in all", bad)
	}
	t.Logf("%d callers, %d records each; %d resumed after the restart", fetchCallers, fetchTotal, resumed)
	if resumed == 0 {
		t.Errorf("no caller had to resume: the restart did not break any stream")
	}
}
