package runtime_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/fetchclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	routingv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/routing/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// fanoutEnv is a gateway serving the echo service's fetch method
// (EchoEvents, topic echo-events with 3 partitions) on a loopback gRPC
// server, on topics of its own.
type fanoutEnv struct {
	kc      kafkaclient.Client
	gw      *runtime.Gateway
	prefix  string
	topic   string // the mapped echo-events
	addr    string
	srv     *grpc.Server
	echo    echov1.EchoServiceClient
	brokers string

	mu       sync.Mutex
	produced int                                      // records produced so far, numbered from 0
	acked    map[int]kafkaclient.TopicPartitionOffset // where Kafka said each record went

	srvOpts []grpc.ServerOption
}

func setupFanout(t testing.TB, opts ...runtime.GatewayOption) *fanoutEnv {
	t.Helper()
	return setupFanoutServer(t, zeroCopyServer, opts...)
}

// zeroCopyServer is how setupFanout builds the gateway's gRPC server: with
// FetchServerCodec, so that fetch calls send records uncopied, and gRPC's
// defaults otherwise.
var zeroCopyServer = []grpc.ServerOption{runtime.FetchServerCodec()}

// setupFanoutServer is setupFanout with options for the gRPC server.
func setupFanoutServer(t testing.TB, srvOpts []grpc.ServerOption, opts ...runtime.GatewayOption) *fanoutEnv {
	t.Helper()
	return setupFanoutClient(t, srvOpts, nil, opts...)
}

// setupFanoutClient is setupFanoutServer whose gateway uses wrap(the
// client) when wrap is not nil (e.kc stays the client itself).
func setupFanoutClient(t testing.TB, srvOpts []grpc.ServerOption, wrap func(kafkaclient.Client) kafkaclient.Client, opts ...runtime.GatewayOption) *fanoutEnv {
	t.Helper()
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("f") + "."
	kafkatest.CreateTopics(t, kc, 3, prefix+"echo-requests", prefix+"echo-responses", prefix+"echo-events")
	opts = append([]runtime.GatewayOption{runtime.WithTopicMapper(func(s string) string { return prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t))}, opts...)
	gwc := kc
	if wrap != nil {
		gwc = wrap(kc)
	}
	gw := runtime.NewGateway(gwc, opts...)
	t.Cleanup(func() { _ = gw.Close() })
	e := &fanoutEnv{kc: kc, gw: gw, prefix: prefix, topic: prefix + "echo-events", brokers: brokers, srvOpts: srvOpts}
	e.serve(t, "127.0.0.1:0")
	e.echo = echov1.NewEchoServiceClient(dialFanout(t, e.addr))
	return e
}

// serve starts the gateway's gRPC server on addr.
func (e *fanoutEnv) serve(t testing.TB, addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(e.srvOpts...)
	echov1.RegisterEchoServiceServer(s, echov1.NewEchoServiceKafkaGateway(e.gw))
	routingv1.RegisterRoutingServiceServer(s, routingv1.NewRoutingServiceKafkaGateway(e.gw))
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	e.srv, e.addr = s, lis.Addr().String()
}

// stalled logs, for a stream that stopped delivering, what the caller got,
// what the gateway holds and what Kafka holds, so that a failure says where
// records stopped.
func (e *fanoutEnv) stalled(t testing.TB, tr *tracker) {
	t.Helper()
	t.Logf("caller: %d distinct records, next offsets by partition %v", len(tr.seen), tr.next)
	t.Logf("gateway: %+v", e.gw.FetchStats())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	parts, err := e.kc.Partitions(ctx, e.topic)
	if err != nil {
		t.Logf("partitions of %s: %v", e.topic, err)
		return
	}
	ends, err := e.kc.Offsets(ctx, e.topic, parts, kafkaclient.Latest)
	t.Logf("Kafka: end offsets of %s %v (%v); %d records produced", e.topic, ends, err, e.producedCount())
	// Records Kafka acknowledged at an offset it does not hold, or two at one
	// offset.
	e.mu.Lock()
	defer e.mu.Unlock()
	at := map[kafkaclient.TopicPartitionOffset]int{}
	for i, a := range e.acked {
		if a.Topic != e.topic {
			continue
		}
		if j, dup := at[a]; dup {
			t.Logf("records %d and %d were both acknowledged at %s[%d]@%d", j, i, a.Topic, a.Partition, a.Offset)
		}
		at[a] = i
		if err == nil && a.Offset >= ends[a.Partition] {
			t.Logf("record %d was acknowledged at %s[%d]@%d, at or beyond the end offset %d", i, a.Topic, a.Partition, a.Offset, ends[a.Partition])
		}
	}
}

func (e *fanoutEnv) producedCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.produced
}

func dialFanout(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// produce writes n EchoEvent records to topic, numbered on from the records
// produced before: message "seq-<number>", key "k<number mod keys>", with
// the message padded to size bytes when size is larger. It returns once
// Kafka acknowledged them all.
func (e *fanoutEnv) produce(t testing.TB, topic string, n, keys, size int) {
	t.Helper()
	e.mu.Lock()
	first := e.produced
	e.produced += n
	e.mu.Unlock()
	errc := make(chan error, n)
	for i := first; i < first+n; i++ {
		msg := fmt.Sprintf("seq-%06d", i)
		if len(msg) < size {
			msg += "-" + strings.Repeat("x", size-len(msg)-1)
		}
		v, _ := proto.Marshal(&echov1.EchoEvent{Message: msg})
		e.kc.Produce(&kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: []byte("k" + strconv.Itoa(i%keys)), Value: v},
			kafkaclient.AcksAll, func(r *kafkaclient.Record, err error) {
				if err == nil {
					e.mu.Lock()
					if e.acked == nil {
						e.acked = map[int]kafkaclient.TopicPartitionOffset{}
					}
					e.acked[i] = kafkaclient.TopicPartitionOffset{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}
					e.mu.Unlock()
				}
				errc <- err
			})
	}
	timeout := time.After(60 * time.Second)
	for range n {
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("producing to %s: %v", topic, err)
				return
			}
		case <-timeout:
			t.Errorf("producing %d records to %s: no acknowledgement within 60 s", n, topic)
			return
		}
	}
}

// seqOf returns the number of a message written by produce.
func seqOf(t testing.TB, msg string) int {
	n, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(msg, "seq-"), "-", 2)[0])
	if err != nil {
		t.Fatalf("message %q is not one of the test's", msg)
	}
	return n
}

// tracker checks one logical subscription across its streams: each message
// is placed at its partition and offset from the change between consecutive
// event ids (exactly one partition advances per message when nothing is
// filtered), and must be the next offset of that partition, so that every
// record arrives exactly once and in order within its partition.
type tracker struct {
	t    testing.TB
	next map[int32]int64 // from the last event id
	seen map[int]bool
	last []byte
}

func newTracker(t testing.TB) *tracker {
	return &tracker{t: t, next: map[int32]int64{}, seen: map[int]bool{}}
}

func (tr *tracker) add(ev *echov1.EchoEvent) error {
	raw, ok := wire.EventIDFromMessage(ev, wire.DefaultEventIDField)
	if !ok {
		return fmt.Errorf("message %q has no event id", ev.GetMessage())
	}
	id, err := wire.DecodeEventID(raw)
	if err != nil {
		return fmt.Errorf("message %q: %v", ev.GetMessage(), err)
	}
	moved := 0
	for _, po := range id {
		before := tr.next[po.Partition] // 0: a new topic starts at offset 0
		switch {
		case po.Offset == before:
		case po.Offset == before+1:
			moved++
		default:
			return fmt.Errorf("message %q: partition %d went from next offset %d to %d: a gap or a repeat", ev.GetMessage(), po.Partition, before, po.Offset)
		}
		tr.next[po.Partition] = po.Offset
	}
	if moved != 1 {
		return fmt.Errorf("message %q: %d partitions advanced, want exactly 1", ev.GetMessage(), moved)
	}
	n := seqOf(tr.t, ev.GetMessage())
	if tr.seen[n] {
		return fmt.Errorf("message %q received twice", ev.GetMessage())
	}
	tr.seen[n] = true
	tr.last = raw
	return nil
}

// TestFetchStreamsEveryRecordWithEventIDs runs one fetch on a gateway server
// built with GatewayServerOptions (records sent uncopied), on one built
// without any option (the server did not opt in: each record goes as the
// unknown fields of an empty message, one copy), and on one that forces a
// proto codec of its own after GatewayServerOptions (the same): the caller
// gets the same bytes from all three.
func TestFetchStreamsEveryRecordWithEventIDs(t *testing.T) {
	t.Run("zerocopy", func(t *testing.T) { testFetchStreams(t, runtime.GatewayServerOptions(), true) })
	t.Run("passthrough", func(t *testing.T) { testFetchStreams(t, nil, false) })
	t.Run("forced", func(t *testing.T) {
		testFetchStreams(t, append(runtime.GatewayServerOptions(), forcedCodec...), false)
	})
}

// forcedCodec makes a server marshal with a proto codec of its own, not
// FetchServerCodec's: fetch calls then send each record as the unknown
// fields of an empty message (passthrough), not uncopied.
var forcedCodec = []grpc.ServerOption{grpc.ForceServerCodecV2(plainProto{})}

type plainProto struct{}

func (plainProto) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

func (plainProto) Unmarshal(d mem.BufferSlice, v any) error {
	return proto.Unmarshal(d.Materialize(), v.(proto.Message))
}

func (plainProto) Name() string { return "proto" }

// testFetchStreams checks one stream of 310 records, on a server with
// srvOpts, sent uncopied or not; the other calls of the server work as
// usual.
func testFetchStreams(t *testing.T, srvOpts []grpc.ServerOption, uncopied bool) {
	e := setupFanoutServer(t, srvOpts)
	e.produce(t, e.topic, 300, 5, 0)
	ctx := ctxFor(t, 60*time.Second)
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTracker(t)
	for range 300 {
		ev, err := s.Recv()
		if err != nil {
			e.stalled(t, tr)
			t.Fatal(err)
		}
		if err := tr.add(ev); err != nil {
			t.Fatal(err)
		}
	}
	// Live records arrive as they are produced.
	e.produce(t, e.topic, 10, 5, 0)
	for range 10 {
		ev, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.add(ev); err != nil {
			t.Fatal(err)
		}
	}
	id, _ := wire.DecodeEventID(tr.last)
	if len(id) != 3 {
		t.Fatalf("event id %v: want all 3 partitions", id)
	}
	st := e.gw.FetchStats()
	if st.Topics != 1 || st.Callers != 1 || st.CatchUps != 0 || st.WindowRecords != 310 {
		t.Fatalf("stats %+v: want one topic, one caller, no catch-up, 310 records in the window", st)
	}
	if want := st.Delivered; uncopied && st.Uncopied != want || !uncopied && st.Uncopied != 0 {
		t.Fatalf("stats %+v: want every delivery uncopied: %v", st, uncopied)
	}
	// The server's other methods still marshal normally: EchoUnary reaches
	// the gateway, which answers UNAVAILABLE or similar without a worker;
	// what matters is that the call and its status travel.
	uctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := e.echo.EchoUnary(uctx, &echov1.EchoRequest{Message: "x"}); status.Code(err) == codes.Internal {
		t.Fatalf("EchoUnary on the same server: %v", err)
	}
}

// resumeForms are the ways a caller may send its resume id.
var resumeForms = []func(raw []byte) []string{
	func(raw []byte) []string {
		return []string{"last-message-id", base64.RawURLEncoding.EncodeToString(raw)}
	},
	func(raw []byte) []string { return []string{"last-message-id", base64.URLEncoding.EncodeToString(raw)} },
	func(raw []byte) []string { return []string{"last-message-id", base64.StdEncoding.EncodeToString(raw)} },
	func(raw []byte) []string {
		return []string{"last-message-id", base64.RawStdEncoding.EncodeToString(raw)}
	},
	func(raw []byte) []string { return []string{"last-message-id-bin", string(raw)} },
	func(raw []byte) []string { return []string{"last-event-id", base64.RawURLEncoding.EncodeToString(raw)} },
	func(raw []byte) []string { return []string{"last-event-id-bin", string(raw)} },
}

// TestFetchResumeFiftyTimes: while 10,000 records are being produced to a
// 3-partition topic, one caller disconnects 50 times at random points and
// resumes each time with its last event id (in every accepted form in
// turn); it receives every record exactly once, in order within each
// partition.
func TestFetchResumeFiftyTimes(t *testing.T) {
	const total, disconnects = 10000, 50
	e := setupFanout(t)
	ctx := ctxFor(t, 3*time.Minute)
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		for range total / 500 {
			e.produce(t, e.topic, 500, 7, 0)
		}
	}()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	tr := newTracker(t)
	streams := 0
	for len(tr.seen) < total {
		sctx, cancel := context.WithCancel(ctx)
		if tr.last != nil {
			sctx = metadata.AppendToOutgoingContext(sctx, resumeForms[streams%len(resumeForms)](tr.last)...)
		}
		streams++
		s, err := e.echo.EchoEvents(sctx, &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		stopAt := -1 // read to the end
		if streams <= disconnects {
			stopAt = 1 + rng.IntN(total/disconnects)
		}
		for n := 0; n != stopAt && len(tr.seen) < total; n++ {
			ev, err := s.Recv()
			if err != nil {
				e.stalled(t, tr)
				t.Fatalf("stream %d, message %d: %v", streams, n, err)
			}
			if err := tr.add(ev); err != nil {
				t.Fatalf("stream %d: %v", streams, err)
			}
		}
		cancel() // disconnect
	}
	<-produced
	if streams <= disconnects {
		t.Fatalf("only %d streams: the caller did not disconnect %d times", streams, disconnects)
	}
	t.Logf("%d records over %d streams; stats %+v", len(tr.seen), streams, e.gw.FetchStats())
}

// TestFetchThousandCallers: 1,000 concurrent callers of one gateway each
// receive every record, once, in order within each key (so within each
// partition), half of them produced before the callers came and half while
// they read; the topic is read once, by the shared reader.
func TestFetchThousandCallers(t *testing.T) {
	// 1,000 × 10,000 gRPC messages take about a minute and 1.3 GB on 2
	// cores (10 × that under the race detector): set FANOUT_TEST_RECORDS
	// to run with more records than the default 2,000 (300 under -race).
	callers, total := 1000, 2000
	if raceEnabled {
		total = 300
	}
	if v, err := strconv.Atoi(os.Getenv("FANOUT_TEST_RECORDS")); err == nil && v > 0 {
		total = v
	}
	const keys = 7
	e := setupFanout(t)
	ctx := ctxFor(t, 4*time.Minute)
	// 8 connections, as many callers would come from many clients.
	var conns []echov1.EchoServiceClient
	for range 8 {
		conns = append(conns, echov1.NewEchoServiceClient(dialFanout(t, e.addr)))
	}
	e.produce(t, e.topic, total/2, keys, 0) // half before the callers arrive
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	var subscribed sync.WaitGroup
	subscribed.Add(callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := conns[i%len(conns)].EchoEvents(ctx, &emptypb.Empty{})
			if err == nil {
				_, err = s.Header() // positioned
			}
			subscribed.Done()
			if err != nil {
				errs <- fmt.Errorf("caller %d: %v", i, err)
				return
			}
			var last [keys]int
			for k := range last {
				last[k] = -1
			}
			for n := 0; n < total; n++ {
				ev, err := s.Recv()
				if err != nil {
					errs <- fmt.Errorf("caller %d after %d messages: %v", i, n, err)
					return
				}
				seq := seqOf(t, ev.GetMessage())
				if seq <= last[seq%keys] || seq >= total {
					errs <- fmt.Errorf("caller %d: message %d after %d of the same key", i, seq, last[seq%keys])
					return
				}
				last[seq%keys] = seq
			}
		}()
	}
	subscribed.Wait()
	e.produce(t, e.topic, total-total/2, keys, 0) // the rest while they read
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := e.gw.FetchStats()
	if st.Delivered != uint64(callers*total) || st.CatchUps != 0 || st.Topics != 1 {
		t.Fatalf("stats %+v: want %d deliveries from one shared reader, no catch-up", st, callers*total)
	}
}

// TestFetchStuckCallerDoesNotDelayOthers: one caller that never reads does
// not hold the others back: they all receive every record while it is
// still not reading; it holds no window memory; once it reads again it gets
// what was already on its stream, then UNAVAILABLE with the id to resume
// from, and resuming with it delivers the rest exactly once.
func TestFetchStuckCallerDoesNotDelayOthers(t *testing.T) {
	const others, total, size = 10, 2000, 1000 // 2 MB of records
	e := setupFanout(t, runtime.GatewayFetchWindow(4<<20), runtime.GatewayFetchMaxLag(256<<10))
	ctx := ctxFor(t, 2*time.Minute)
	// A small fixed flow-control window, so that the stuck caller's
	// connection buffers 64 KiB rather than growing to megabytes.
	stuckConn := echov1.NewEchoServiceClient(dialFanout(t, e.addr, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10)))
	stuck, err := stuckConn.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stuck.Header(); err != nil {
		t.Fatal(err)
	}
	// The others read everything; the records come in chunks, each produced
	// once every other caller has received the previous one, so that only
	// the stuck caller falls behind.
	const chunk = 100
	var wg sync.WaitGroup
	errs := make(chan error, others)
	progress := make(chan struct{}, others*total/chunk)
	for i := range others {
		s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Header(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range total {
				if _, err := s.Recv(); err != nil {
					errs <- fmt.Errorf("caller %d after %d messages: %v", i, n, err)
					return
				}
				if (n+1)%chunk == 0 {
					progress <- struct{}{}
				}
			}
		}()
	}
	failed := make(chan struct{})
	go func() {
		wg.Wait()
		close(failed)
	}()
	for range total / chunk {
		e.produce(t, e.topic, chunk, 5, size)
		for range others {
			select {
			case <-progress:
			case <-failed: // all returned: only early on an error
			}
		}
	}
	wg.Wait() // the others finish while the stuck caller has read nothing
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Now the stuck caller reads: what its stream already carried, then
	// UNAVAILABLE telling it to resume.
	tr := newTracker(t)
	var end error
	for {
		ev, err := stuck.Recv()
		if err != nil {
			end = err
			break
		}
		if err := tr.add(ev); err != nil {
			t.Fatal(err)
		}
	}
	st := status.Convert(end)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "resume with metadata last-message-id=") {
		t.Fatalf("stuck caller ended with %v; want UNAVAILABLE telling it to resume", end)
	}
	beforeEnd := len(tr.seen)
	if beforeEnd >= total {
		t.Fatalf("stuck caller received all %d records before being ended", beforeEnd)
	}
	// The id in the message resumes exactly where the stream stopped.
	hint := st.Message()[strings.LastIndex(st.Message(), "=")+1:]
	if hint != base64.RawURLEncoding.EncodeToString(tr.last) && len(tr.seen) > 0 {
		t.Fatalf("status gives id %s; last received %s", hint, base64.RawURLEncoding.EncodeToString(tr.last))
	}
	s, err := e.echo.EchoEvents(metadata.AppendToOutgoingContext(ctx, "last-message-id", hint), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for len(tr.seen) < total {
		ev, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.add(ev); err != nil {
			t.Fatal(err)
		}
	}
	stats := e.gw.FetchStats()
	if stats.Laggards != 1 {
		t.Fatalf("stats %+v: want exactly one caller ended for lagging", stats)
	}
	t.Logf("stuck caller got %d records (what its stream carried) before UNAVAILABLE; stats %+v", beforeEnd, stats)
}

// TestFetchCatchUpHandOver: a caller resuming from before the memory window
// reads Kafka with a catch-up reader and is handed over to the shared
// reader while records are still being produced, with no gap and no
// repeat, on a 3-partition topic of 10,000 records.
func TestFetchCatchUpHandOver(t *testing.T) {
	const total = 10000
	// A 64 KiB window holds about 400 of these records.
	e := setupFanout(t, runtime.GatewayFetchWindow(64<<10))
	ctx := ctxFor(t, 3*time.Minute)
	e.produce(t, e.topic, 4000, 7, 60)
	// A first stream reads a few records and goes away.
	tr := newTracker(t)
	sctx, cancel := context.WithCancel(ctx)
	s, err := e.echo.EchoEvents(sctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		ev, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.add(ev); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	before := e.gw.FetchStats()

	// Records keep coming while the caller resumes: 50 more each time the
	// gateway delivered 100 more (or there is nothing left to read), so
	// that they are produced during the catch-up, at the hand-over and
	// after it, and the caller gains on the head steadily.
	s, err = e.echo.EchoEvents(metadata.AppendToOutgoingContext(ctx, "last-message-id", base64.RawURLEncoding.EncodeToString(tr.last)), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	handedOverAt, lastAt := -1, -100
	for len(tr.seen) < total {
		e.mu.Lock()
		n := e.produced
		e.mu.Unlock()
		d := int(e.gw.FetchStats().Delivered - before.Delivered)
		if n < total && (len(tr.seen) >= n || d-lastAt >= 100) {
			lastAt = d
			e.produce(t, e.topic, min(50, total-n), 7, 60)
		}
		ev, err := s.Recv()
		if err != nil {
			t.Fatalf("after %d records: %v", len(tr.seen), err)
		}
		if err := tr.add(ev); err != nil {
			t.Fatal(err)
		}
		if handedOverAt < 0 && e.gw.FetchStats().HandOvers > before.HandOvers {
			e.mu.Lock()
			handedOverAt = e.produced
			e.mu.Unlock()
		}
	}
	st := e.gw.FetchStats()
	if st.CatchUps != before.CatchUps+1 || st.HandOvers != before.HandOvers+1 || st.Laggards != 0 {
		t.Fatalf("stats %+v (before %+v): want one more catch-up and hand-over, no laggard", st, before)
	}
	if handedOverAt <= 4000 || handedOverAt >= total {
		t.Fatalf("hand-over seen with %d records produced (4,000 before the resume, %d in all): records must be produced during the catch-up and after the hand-over", handedOverAt, total)
	}
	t.Logf("handed over with %d of %d records produced; stats %+v", handedOverAt, total, st)
}

func TestFetchRefusals(t *testing.T) {
	e := setupFanout(t)
	e.produce(t, e.topic, 3, 3, 0)
	ctx := ctxFor(t, 30*time.Second)
	first := func(ctx context.Context, in *emptypb.Empty) error {
		s, err := e.echo.EchoEvents(ctx, in)
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	nonEmpty := &emptypb.Empty{}
	nonEmpty.ProtoReflect().SetUnknown([]byte{0x08, 0x01})
	for _, tc := range []struct {
		name string
		ctx  context.Context
		in   *emptypb.Empty
		want string
	}{
		{"non-empty request", ctx, nonEmpty, "empty request"},
		{"garbage id", metadata.AppendToOutgoingContext(ctx, "last-message-id", "%%%"), &emptypb.Empty{}, "not base64"},
		{"bad version", metadata.AppendToOutgoingContext(ctx, "last-event-id", "Ag"), &emptypb.Empty{}, "version 2"},
		{"beyond the end", metadata.AppendToOutgoingContext(ctx, "last-message-id",
			wire.EventID{{Partition: 0, Offset: 1000}}.String()), &emptypb.Empty{}, "whose end is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := first(tc.ctx, tc.in)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Fatalf("got %v; want INVALID_ARGUMENT saying %q", err, tc.want)
			}
		})
	}
}

// TestFetchFilters runs testdata/routing/v1's Feed (filters, event id field
// 1000, resume metadata last-event-id) and the per-caller key filter.
func TestFetchFilters(t *testing.T) {
	e := setupFanout(t)
	feed := e.prefix + "feed"
	kafkatest.CreateTopics(t, e.kc, 3, feed)
	ctx := ctxFor(t, 60*time.Second)
	type rec struct {
		key     string
		nokey   bool
		headers []kafkaclient.Header
		want    bool
	}
	h := func(kv ...string) []kafkaclient.Header {
		var hs []kafkaclient.Header
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, kafkaclient.Header{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	recs := []rec{
		{key: "customer-42", want: true},
		{key: "customer-7"},
		{key: "x", headers: h("type", "created", "zilla:service", "orders"), want: true},
		{key: "x", headers: h("type", "created")},
		{nokey: true, headers: h("flag", ""), want: true},
		{key: "y", headers: h("flag", "")},
		{key: "customer-42", headers: h("type", "deleted"), want: true},
	}
	var want []string
	errc := make(chan error, len(recs))
	for i, r := range recs {
		v, _ := proto.Marshal(&routingv1.Receipt{Id: fmt.Sprint(i)})
		var key []byte
		if !r.nokey {
			key = []byte(r.key)
		}
		// One partition, so that the order of the wanted records is known.
		e.kc.Produce(&kafkaclient.Record{Topic: feed, Partition: 1, Key: key, Value: v, Headers: r.headers},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if r.want {
			want = append(want, fmt.Sprint(i))
		}
	}
	routing := routingv1.NewRoutingServiceClient(dialFanout(t, e.addr))
	s, err := routing.Feed(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	var ids [][]byte
	for _, w := range want {
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.GetId() != w {
			t.Fatalf("got receipt %q, want %q", r.GetId(), w)
		}
		id, ok := wire.EventIDFromMessage(r, 1000)
		if !ok {
			t.Fatalf("receipt %q has no event id in field 1000", r.GetId())
		}
		if _, ok := wire.EventIDFromMessage(r, wire.DefaultEventIDField); ok {
			t.Fatalf("receipt %q has an event id in field 32767 too", r.GetId())
		}
		ids = append(ids, id)
	}
	// Resume after the second wanted record with the method's own metadata
	// name: the next one is the third.
	s, err = routing.Feed(metadata.AppendToOutgoingContext(ctx, "last-event-id", base64.RawURLEncoding.EncodeToString(ids[1])), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.Recv(); err != nil || r.GetId() != want[2] {
		t.Fatalf("resumed: %v, %v; want receipt %q", r, err, want[2])
	}

	// Per-caller filter on EchoEvents: idempotency-key selects one key.
	e.produce(t, e.topic, 50, 5, 0)
	s2, err := e.echo.EchoEvents(metadata.AppendToOutgoingContext(ctx, "idempotency-key", "k3"), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{3, 8, 13, 18, 23, 28, 33, 38, 43, 48} {
		ev, err := s2.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := seqOf(t, ev.GetMessage()); got != n {
			t.Fatalf("with idempotency-key k3: got record %d, want %d", got, n)
		}
	}
}

// TestFetchSkipsRecordsCallersCannotDecode: tombstones and values that are
// not protobuf are skipped, and the stream goes on past them.
func TestFetchSkipsRecordsCallersCannotDecode(t *testing.T) {
	e := setupFanout(t)
	ctx := ctxFor(t, 30*time.Second)
	good, _ := proto.Marshal(&echov1.EchoEvent{Message: "seq-000001"})
	for _, v := range [][]byte{nil, []byte("\xff\xff not protobuf"), good} {
		errc := make(chan error, 1)
		e.kc.Produce(&kafkaclient.Record{Topic: e.topic, Partition: 0, Key: []byte("k"), Value: v},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.Recv()
	if err != nil || ev.GetMessage() != "seq-000001" {
		t.Fatalf("got %v, %v; want the one valid record", ev, err)
	}
	raw, _ := wire.EventIDFromMessage(ev, wire.DefaultEventIDField)
	id, _ := wire.DecodeEventID(raw)
	if off, _ := id.Offset(0); off != 3 {
		t.Fatalf("event id %v: want partition 0 past the two skipped records (next 3)", id)
	}
	if st := e.gw.FetchStats(); st.Invalid != 1 {
		t.Fatalf("stats %+v: want one invalid record", st)
	}
}

// TestFetchClientResumes: the Go helper keeps one subscription going across
// an UNAVAILABLE for lagging and a gateway whose gRPC server goes away and
// comes back on the same address, and delivers every record once, in order.
func TestFetchClientResumes(t *testing.T) {
	const part, size = 1000, 1000
	e := setupFanout(t, runtime.GatewayFetchWindow(4<<20), runtime.GatewayFetchMaxLag(256<<10))
	ctx := ctxFor(t, 2*time.Minute)
	// A fixed 64 KiB flow-control window, so that a client that stops
	// reading stops the gateway's sends soon.
	conn := echov1.NewEchoServiceClient(dialFanout(t, e.addr, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10)))
	var retries atomic.Int32
	sub := fetchclient.New(ctx, conn.EchoEvents,
		fetchclient.WithBackoff(5*time.Millisecond, 50*time.Millisecond),
		fetchclient.WithCallOptions(grpc.WaitForReady(true)),
		fetchclient.WithRetryHook(func(int, error) { retries.Add(1) }))
	defer sub.Close()
	tr := newTracker(t)
	recv := func(upTo int) {
		t.Helper()
		for len(tr.seen) < upTo {
			ev, err := sub.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if err := tr.add(ev); err != nil {
				t.Fatal(err)
			}
			if !equalBytes(sub.EventID(), tr.last) {
				t.Fatal("wire.EventID differs from the message's id")
			}
		}
	}
	e.produce(t, e.topic, 10, 7, size)
	recv(10)
	// Stop reading while 1 MB arrives (a witness stream tells when the
	// gateway has read it all): the gateway ends the helper's stream for
	// lagging, and the helper resumes where it was.
	witness, err := e.echo.EchoEvents(metadata.AppendToOutgoingContext(ctx, "last-message-id", base64.RawURLEncoding.EncodeToString(tr.last)), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for range part / 100 {
		e.produce(t, e.topic, 100, 7, size)
		for range 100 {
			if _, err := witness.Recv(); err != nil {
				t.Fatal(err)
			}
		}
	}
	recv(10 + part)
	if sub.Reconnects() != 1 || e.gw.FetchStats().Laggards != 1 {
		t.Fatalf("Reconnects = %d, stats %+v: want the stream ended once for lagging", sub.Reconnects(), e.gw.FetchStats())
	}
	// Break the connection: stop the server, start another on the address.
	e.srv.Stop()
	e.serve(t, e.addr)
	e.produce(t, e.topic, part, 7, size)
	recv(10 + 2*part)
	if sub.Reconnects() < 2 {
		t.Fatalf("Reconnects = %d; the server restart must have broken the stream", sub.Reconnects())
	}
	sub.Close()
	if _, err := sub.Recv(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Recv after Close = %v, want context.Canceled", err)
	}
	t.Logf("%d records, %d reconnects, %d retries; stats %+v", len(tr.seen), sub.Reconnects(), retries.Load(), e.gw.FetchStats())
}

// TestFetchClientStopsOnNonRetryable: INVALID_ARGUMENT ends Recv.
func TestFetchClientStopsOnNonRetryable(t *testing.T) {
	e := setupFanout(t)
	ctx := ctxFor(t, 30*time.Second)
	sub := fetchclient.New(ctx, e.echo.EchoEvents, fetchclient.WithResume([]byte{9, 9}))
	if _, err := sub.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Recv = %v, want INVALID_ARGUMENT", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	sub = fetchclient.New(cctx, e.echo.EchoEvents)
	done := make(chan error, 1)
	go func() {
		_, err := sub.Recv()
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Recv after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Recv did not return within 10 s of the context's end")
	}
}

// TestFetchGatewayClose: closing the gateway ends fetch calls with
// UNAVAILABLE and a resume hint.
func TestFetchGatewayClose(t *testing.T) {
	e := setupFanout(t)
	e.produce(t, e.topic, 5, 5, 0)
	ctx := ctxFor(t, 30*time.Second)
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	_ = e.gw.Close()
	_, err = s.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "resume with") {
		t.Fatalf("after Close: %v; want UNAVAILABLE with a resume hint", err)
	}
}

func equalBytes(a, b []byte) bool { return string(a) == string(b) }
