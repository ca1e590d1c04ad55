package runtime_test

// Adversarial faults of fetch methods: each test failed on the code before
// its fix, for the reason its comment gives.

import (
	"context"
	"encoding/base64"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestFetchAdvTopicDeleted: the fetched topic is deleted (and not created
// again) while a caller follows it.
func TestFetchAdvTopicDeleted(t *testing.T) {
	defer runtime.SetPartitionsRefresh(20 * time.Millisecond)()
	e := setupFanout(t)
	e.produce(t, e.topic, 3, 3, 0)
	ctx := ctxFor(t, 60*time.Second)
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 3)
	deleteTopic(t, e.brokers, e.topic)
	ev, err := a.s.Recv()
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), e.topic) {
		t.Fatalf("a caller following a topic that was deleted got %v, %v; want NOT_FOUND naming the topic", ev, err)
	}
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err = s.Recv()
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), e.topic) {
		t.Fatalf("a new caller of the deleted topic got %v, %v; want NOT_FOUND naming the topic", ev, err)
	}
}

// TestFetchAdvStalledCallerHoldsOneBatchOfBytes: a caller following the
// window that stops reading holds, while its send waits, the records it took
// from the window at once: up to 32, whatever their size, kept after the
// window dropped them (with 1 MiB records, 32 MiB per stalled caller beyond
// the window). README: a caller "holds no records of its own". Now a batch
// is at most 64 KiB of records, or one record when that is larger: here,
// with 100 KiB records, the one being sent. Once it reads again, it gets
// what it held, then UNAVAILABLE with the id to resume from, and resuming
// delivers the rest exactly once.
func TestFetchAdvStalledCallerHoldsOneBatchOfBytes(t *testing.T) {
	const size = 100 << 10
	gate := &sendGate{key: "x-stall", entered: make(chan struct{}, 1), release: make(chan struct{})}
	e := setupFanoutServer(t, []grpc.ServerOption{runtime.FetchServerCodec(), grpc.StreamInterceptor(gate.intercept)},
		runtime.GatewayFetchWindow(4<<20))
	ctx := ctxFor(t, 2*time.Minute)
	e.produce(t, e.topic, 30, 5, size) // in the window
	stalled := e.follower(t, ctx, nil, metadata.Pairs("x-stall", "1"))
	select {
	case <-gate.entered:
	case <-ctx.Done():
		t.Fatal("the caller's first message never reached SendMsg")
	}
	e.produce(t, e.topic, 60, 5, size) // the window drops the first 30 and more
	// Once another caller has them all, so has the window. (That caller,
	// started while the gateway still reads the 60 records of 100 KiB
	// into its 4 MiB window, may itself fall out of it on a loaded
	// machine: it resumes, as a caller told UNAVAILABLE does.)
	e.recvAllResuming(t, ctx, 90)
	// Each record the gateway held for the stalled caller reaches it once
	// it reads again, before its end.
	close(gate.release)
	held := 0
	var end error
	for {
		ev, err := stalled.s.Recv()
		if err != nil {
			end = err
			break
		}
		if err := stalled.tr.add(ev); err != nil {
			t.Fatal(err)
		}
		held++
	}
	if status.Code(end) != codes.Unavailable || !strings.Contains(status.Convert(end).Message(), "resume with metadata last-message-id=") {
		t.Fatalf("the stalled caller ended with %v after %d messages; want UNAVAILABLE telling it to resume", end, held)
	}
	if held > 1 {
		t.Errorf("the stalled caller received %d records of %d KiB from the gateway after the window dropped them: it held them while it did not read; want at most the one it was sent", held, size>>10)
	}
	r := e.follower(t, ctx, stalled.tr, nil)
	r.recvUpTo(t, 90)
}

// recvAllResuming reads the topic with a new caller until it has n
// distinct records, each once and in order, resuming with its last event
// id each time the gateway ends it UNAVAILABLE for falling behind (at
// most 20 times).
func (e *fanoutEnv) recvAllResuming(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	f := e.follower(t, ctx, nil, nil)
	for resumes := 0; len(f.tr.seen) < n; {
		ev, err := f.s.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable || resumes == 20 {
				t.Fatalf("after %d of %d records and %d resumes: %v", len(f.tr.seen), n, resumes, err)
			}
			resumes++
			from := f.tr
			if len(from.last) == 0 {
				from = nil // nothing read yet: from the start again
			}
			f = e.follower(t, ctx, from, nil)
			continue
		}
		if err := f.tr.add(ev); err != nil {
			t.Fatal(err)
		}
	}
}

// deleteRecordsBefore deletes the records of partition p of topic before
// offset, as retention does.
func deleteRecordsBefore(t *testing.T, brokers, topic string, p int32, offset int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var os kadm.Offsets
	os.Add(kadm.Offset{Topic: topic, Partition: p, At: offset})
	resp, err := kadm.NewClient(cl).DeleteRecords(ctxFor(t, 30*time.Second), os)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("deleting the records of %s[%d] before %d: %v", topic, p, offset, err)
	}
}

// TestFetchAdvResumeAfterRetentionDeleted: a caller resumes with an id
// whose records retention deleted since (its offset is before the
// partition's log start). The stream went on from the earliest retained
// record without a word to the caller: it lost the deleted records and could
// not know (only the gateway's log said so). Now the response headers name
// each partition and the offsets it skipped, through the gateway and a
// ClientConn alike.
func TestFetchAdvResumeAfterRetentionDeleted(t *testing.T) {
	// No preload, a small window: the id's position is not in memory.
	e := setupFanout(t, runtime.GatewayFetchPreload(0), runtime.GatewayFetchWindow(8<<10))
	ctx := ctxFor(t, time.Minute)
	e.produceTo(t, 0, 10, 0) // seq-0 to seq-9 at offsets 0 to 9 of partition 0
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 3) // its id: partition 0 next 3
	deleteRecordsBefore(t, e.brokers, e.topic, 0, 6)
	_, conn := connTo(t, e.kc, e.prefix, runtime.GatewayFetchPreload(0), runtime.GatewayFetchWindow(8<<10))
	for _, path := range []struct {
		name string
		echo echov1.EchoServiceClient
	}{{"gateway", e.echo}, {"clientconn", conn}} {
		t.Run(path.name, func(t *testing.T) {
			md := metadata.Pairs("last-message-id", base64.RawURLEncoding.EncodeToString(a.tr.last))
			s, err := path.echo.EchoEvents(metadata.NewOutgoingContext(ctx, md), &emptypb.Empty{})
			if err != nil {
				t.Fatal(err)
			}
			ev, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if ev.GetMessage() != "seq-000006" {
				t.Fatalf("first message %q, want seq-000006, the earliest retained", ev.GetMessage())
			}
			h, err := s.Header()
			if err != nil {
				t.Fatal(err)
			}
			got := h.Get(runtime.FetchRecordsDeletedMetadata)
			if want := []string{"partition 0 offsets 3 to 5"}; !slices.Equal(got, want) {
				t.Fatalf("header %s = %q, want %q: the caller is not told it lost seq-000003 to seq-000005", runtime.FetchRecordsDeletedMetadata, got, want)
			}
		})
	}
}

// TestFetchAdvKeyMetadataSeveralValues: a caller sends the key metadata
// (idempotency-key) twice, to follow two keys, as it may name several
// values of a filter's metadata (README: "matches any of them"). The
// gateway took the first value and dropped the others without a word: the
// caller missed every record of the second key. Now it receives the
// records of any of them, through the gateway and a ClientConn alike.
func TestFetchAdvKeyMetadataSeveralValues(t *testing.T) {
	e := setupFanout(t)
	ctx := ctxFor(t, time.Minute)
	e.produceTo(t, 0, 6, 0) // seq-00000i keyed ki, in order on partition 0
	_, conn := connTo(t, e.kc, e.prefix)
	for _, path := range []struct {
		name string
		echo echov1.EchoServiceClient
	}{{"gateway", e.echo}, {"clientconn", conn}} {
		t.Run(path.name, func(t *testing.T) {
			md := metadata.Pairs("idempotency-key", "k5", "idempotency-key", "k2")
			s, err := path.echo.EchoEvents(metadata.NewOutgoingContext(ctx, md), &emptypb.Empty{})
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"seq-000002", "seq-000005"}
			for i := range want {
				ev, err := s.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if ev.GetMessage() != want[i] {
					t.Fatalf("a caller following keys k5 and k2 got %q as message %d, want %q (all: %q)", ev.GetMessage(), i+1, want[i], want)
				}
			}
		})
	}
}

// TestFetchAdvUndecodableRecordNamed: amid good records, one whose value is
// well-formed protobuf that the method's type cannot hold (a string field
// that is not UTF-8). The gateway relays it (it never decodes), and a
// ClientConn's RecvMsg fails the call with INTERNAL, as a gRPC client does:
// but its message named only the topic, so the caller could neither tell
// which record it was nor get past it, each resume meeting it again. Now
// the message names the partition and offset and gives the id that resumes
// after it; resuming with it delivers the next record.
func TestFetchAdvUndecodableRecordNamed(t *testing.T) {
	e := setupFanout(t)
	ctx := ctxFor(t, time.Minute)
	e.produceTo(t, 0, 1, 0) // seq-000000 at offset 0
	errc := make(chan error, 1)
	e.kc.Produce(&kafkaclient.Record{Topic: e.topic, Partition: 0, Value: []byte{0x0a, 0x01, 0xff}}, kafkaclient.AcksAll,
		func(_ *kafkaclient.Record, err error) { errc <- err })
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.produced++ // offset 1: no seq-000001
	e.mu.Unlock()
	e.produceTo(t, 0, 1, 0) // seq-000002 at offset 2
	_, conn := connTo(t, e.kc, e.prefix)
	s, err := conn.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Recv(); err != nil || ev.GetMessage() != "seq-000000" {
		t.Fatalf("first message %v, %v; want seq-000000", ev, err)
	}
	_, err = s.Recv()
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.Internal || !strings.Contains(msg, "partition 0 offset 1 ") {
		t.Fatalf("the undecodable record: %v; want INTERNAL naming partition 0 offset 1", err)
	}
	i := strings.Index(msg, "last-message-id=")
	if i < 0 {
		t.Fatalf("the undecodable record: %v; want the id that resumes after it", err)
	}
	id := msg[i+len("last-message-id="):]
	s, err = conn.EchoEvents(metadata.AppendToOutgoingContext(ctx, "last-message-id", id), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Recv(); err != nil || ev.GetMessage() != "seq-000002" {
		t.Fatalf("resuming with the id the error gave: %v, %v; want seq-000002", ev, err)
	}
}

// TestFetchAdvRecordLargerThanRecvLimitNamed: through a ClientConn, a
// record larger than the caller's grpc.MaxCallRecvMsgSize ended the call
// with RESOURCE_EXHAUSTED "received message larger than max", naming
// neither the record nor the topic, so the caller could not get past it
// (fetchclient does not retry it: the same record would come again). Now
// the status names the record and gives the id that resumes after it. (A
// gRPC client of the gateway gets gRPC's own message: the gateway cannot
// know the caller's limit.)
func TestFetchAdvRecordLargerThanRecvLimitNamed(t *testing.T) {
	e := setupFanout(t)
	ctx := ctxFor(t, time.Minute)
	e.produceTo(t, 0, 1, 10)  // seq-000000 at offset 0: fits
	e.produceTo(t, 0, 1, 500) // seq-000001 at offset 1: does not
	e.produceTo(t, 0, 1, 10)  // seq-000002 at offset 2
	_, conn := connTo(t, e.kc, e.prefix)
	s, err := conn.EchoEvents(ctx, &emptypb.Empty{}, grpc.MaxCallRecvMsgSize(200))
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Recv(); err != nil || ev.GetMessage() != "seq-000000" {
		t.Fatalf("first message %v, %v; want seq-000000", ev, err)
	}
	_, err = s.Recv()
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(msg, "partition 0 offset 1 of "+e.topic) {
		t.Fatalf("a record larger than the receive limit: %v; want RESOURCE_EXHAUSTED naming partition 0 offset 1 of %s", err, e.topic)
	}
	i := strings.Index(msg, "last-message-id=")
	if i < 0 {
		t.Fatalf("a record larger than the receive limit: %v; want the id that resumes after it", err)
	}
	s, err = conn.EchoEvents(metadata.AppendToOutgoingContext(ctx, "last-message-id", msg[i+len("last-message-id="):]), &emptypb.Empty{}, grpc.MaxCallRecvMsgSize(200))
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Recv(); err != nil || !strings.HasPrefix(ev.GetMessage(), "seq-000002") {
		t.Fatalf("resuming with the id the error gave: %v, %v; want seq-000002", ev, err)
	}
}

// TestFetchAdvTopicRecreatedEmpty: the fetched topic is deleted and created
// again, and nothing is written to the new one yet. The hub noticed a
// restarted log only when a record of the new log arrived at an offset it
// had passed (checkRestart): until then a caller following it waited with
// ids naming records that no longer exist, and a new caller was served the
// deleted topic's records from the window. Now the hub also compares its
// partitions' end offsets with where it read at each look for new
// partitions, and ends as for a restarted log at the second look in a row
// that finds one ending before: the follower is told, and
// the next caller reads the new topic only.
func TestFetchAdvTopicRecreatedEmpty(t *testing.T) {
	// Longer than deleting and creating the topic takes: the hub's looks
	// find it there before and after.
	defer runtime.SetPartitionsRefresh(time.Second)()
	e := setupFanout(t)
	ctx := ctxFor(t, time.Minute)
	e.produce(t, e.topic, 6, 3, 0) // seq-000000 to seq-000005
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 6)
	deleteTopic(t, e.brokers, e.topic)
	kafkatest.CreateTopics(t, e.kc, 3, e.topic)
	ev, err := a.s.Recv()
	st := status.Convert(err)
	restartedEnd := st.Code() == codes.Unavailable && strings.Contains(st.Message(), "deleted and created again")
	deletedEnd := st.Code() == codes.NotFound // had the hub found it missing on two looks in a row
	if !restartedEnd && !deletedEnd {
		t.Fatalf("the caller following the topic deleted and created again got %v, %v; want UNAVAILABLE saying so", ev, err)
	}
	b := e.follower(t, ctx, nil, nil)
	v, _ := proto.Marshal(&echov1.EchoEvent{Message: "fresh"})
	produceUntilTaken(t, ctx, e.kc, &kafkaclient.Record{Topic: e.topic, Partition: 0, Value: v})
	if ev, err := b.s.Recv(); err != nil || ev.GetMessage() != "fresh" {
		t.Fatalf("a new caller after the topic was created again got %v, %v; want only the new topic's record", ev, err)
	}
}

// idSwitchClient is a client whose TopicID answers another id once
// switched: a fetched topic deleted and created again whose new log the
// gateway's reader did not tell from the old one (written past where the
// reader had read before it noticed, its offsets go on as the old log's).
type idSwitchClient struct {
	kafkaclient.Client
	switched atomic.Bool
}

func (c *idSwitchClient) TopicID(ctx context.Context, topic string) ([16]byte, error) {
	id, err := c.Client.(kafkaclient.TopicIdentifier).TopicID(ctx, topic)
	if c.switched.Load() {
		id[0] ^= 0xff
	}
	return id, err
}

// TestFetchTopicIDChangeEndsCallers: a fetch hub compares its topic's id
// at each look; when it changed (the topic was deleted and created again),
// its callers end with UNAVAILABLE and the restarted reason, on which
// fetchclient starts again from the new topic's earliest record, though
// the reader itself saw nothing amiss. Before, they went on reading the
// new log from where the old one had been read, missing its first records.
func TestFetchTopicIDChangeEndsCallers(t *testing.T) {
	defer runtime.SetPartitionsRefresh(20 * time.Millisecond)()
	idc := &idSwitchClient{}
	e := setupFanoutClient(t, zeroCopyServer, func(kc kafkaclient.Client) kafkaclient.Client {
		idc.Client = kc
		return idc
	})
	ctx := ctxFor(t, time.Minute)
	e.produce(t, e.topic, 6, 3, 0)
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 6)
	idc.switched.Store(true)
	ev, err := a.s.Recv()
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "topic id changed") {
		t.Fatalf("the caller following a topic whose id changed got %v, %v; want UNAVAILABLE saying it was created again", ev, err)
	}
	restarted := false
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == wire.FetchRestartedReason {
			restarted = true
		}
	}
	if !restarted {
		t.Fatalf("the status %v has no ErrorInfo with reason %s", st, wire.FetchRestartedReason)
	}
}

// TestFetchTopicRecreatedAndRefilled: the fetched topic is deleted, created
// again and written past where the gateway had read, as fast as the test
// can. However the gateway's reader meets the new log, the caller that
// followed the old one ends (told the topic restarted, or that it was
// missing) instead of reading on from the old log's offsets, and a new
// caller reads every record of the new topic. Before the topic id check,
// a reader that met the new log only once it was past the old offsets
// went on there: the follower got the new topic's later records only and
// then waited (timing decides whether a run shows it).
func TestFetchTopicRecreatedAndRefilled(t *testing.T) {
	defer runtime.SetPartitionsRefresh(time.Second)()
	e := setupFanout(t)
	ctx := ctxFor(t, time.Minute)
	e.produce(t, e.topic, 6, 3, 0)
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 6)
	deleteTopic(t, e.brokers, e.topic)
	kafkatest.CreateTopics(t, e.kc, 3, e.topic)
	const fresh = 12 // 4 a partition, past the 2 the gateway had read of each
	for i := range fresh {
		v, _ := proto.Marshal(&echov1.EchoEvent{Message: "new-" + strconv.Itoa(i)})
		produceUntilTaken(t, ctx, e.kc, &kafkaclient.Record{Topic: e.topic, Partition: int32(i % 3), Value: v})
	}
	for {
		ev, err := a.s.Recv()
		if err == nil {
			continue // the new log's records, read before the gateway noticed
		}
		st := status.Convert(err)
		if st.Code() != codes.NotFound && !(st.Code() == codes.Unavailable && strings.Contains(st.Message(), "created again")) {
			t.Fatalf("the caller following the topic deleted, created again and refilled got %v, %v; want UNAVAILABLE saying it was created again, or NOT_FOUND", ev, err)
		}
		break
	}
	b := e.follower(t, ctx, nil, nil)
	got := map[string]bool{}
	for len(got) < fresh {
		ev, err := b.s.Recv()
		if err != nil {
			t.Fatalf("a new caller got %d of the new topic's %d records, then %v", len(got), fresh, err)
		}
		if !strings.HasPrefix(ev.GetMessage(), "new-") {
			t.Fatalf("a new caller got %q, a record of the deleted topic", ev.GetMessage())
		}
		got[ev.GetMessage()] = true
	}
}
