package runtime_test

// Adversarial probes of fetch filters: keys and headers (empty, binary,
// repeated, long), several filters and conditions, tombstones, several
// callers with different filters, resuming after filtered records, and the
// ClientConn's fetch beside the gateway's.

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
	keyedv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/keyed/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// filterRec is one record a filter test writes to Statements' topic: its
// partition, key (nil: none), headers, and whether it is a tombstone. Its
// amount is its index in the test's list.
type filterRec struct {
	part      int32
	key       []byte
	headers   []kafkaclient.Header
	tombstone bool
}

// hdrs builds headers from name, value pairs.
func fhdrs(kv ...string) []kafkaclient.Header {
	var hs []kafkaclient.Header
	for i := 0; i < len(kv); i += 2 {
		hs = append(hs, kafkaclient.Header{Key: kv[i], Value: []byte(kv[i+1])})
	}
	return hs
}

// statementsWants says whether a caller with metadata md receives r under
// Statements' filters (testdata/keyed/v1): its key is one of x-account's
// values, or it carries kind=summary and, when the caller sends x-tenant,
// a tenant header with one of its values. Written from the proto's and the
// README's words, not from the runtime's code.
func statementsWants(r filterRec, md metadata.MD) bool {
	if r.tombstone {
		return false
	}
	has := func(name string, values []string) bool {
		for _, h := range r.headers {
			if h.Key == name && slices.Contains(values, string(h.Value)) {
				return true
			}
		}
		return false
	}
	if slices.Contains(md.Get("x-account"), string(r.key)) {
		return true
	}
	if !has("kind", []string{"summary"}) {
		return false
	}
	if ts := md.Get("x-tenant"); len(ts) > 0 {
		return has("tenant", ts)
	}
	return true
}

// produceFilterRecs writes recs in order (each acknowledged before the
// next) with amounts from first on.
func produceFilterRecs(t *testing.T, env *kafkarpctest.Env, first int, recs []filterRec) {
	t.Helper()
	topic := env.Topic("ledger-statements")
	for i, r := range recs {
		var v []byte
		if !r.tombstone {
			var err error
			v, err = proto.Marshal(&keyedv1.Receipt{Key: fmt.Sprintf("%q", r.key), Amounts: []int64{int64(first + i)}})
			if err != nil {
				t.Fatal(err)
			}
		}
		errc := make(chan error, 1)
		env.Client.Produce(&kafkaclient.Record{Topic: topic, Partition: r.part, Key: r.key, Value: v, Headers: r.headers},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no acknowledgement within 30 s")
		}
	}
}

// filterEvent is one message a fetch caller received: its amount and the
// event id it carried.
type filterEvent struct {
	amount int64
	id     []byte
}

// readStatements reads Statements with md (and a resume id, if any) until
// it received want messages, and returns them.
func readStatements(ctx context.Context, c keyedv1.LedgerServiceClient, md metadata.MD, resume []byte, want int) ([]filterEvent, error) {
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, md.Copy()))
	defer cancel()
	if resume != nil {
		ctx = metadata.AppendToOutgoingContext(ctx, "last-message-id", base64.RawURLEncoding.EncodeToString(resume))
	}
	s, err := c.Statements(ctx, &emptypb.Empty{})
	if err != nil {
		return nil, err
	}
	var got []filterEvent
	for len(got) < want {
		r, err := s.Recv()
		if err != nil {
			return got, fmt.Errorf("after %d messages: %w", len(got), err)
		}
		id, ok := wire.EventIDFromMessage(r, wire.DefaultEventIDField)
		if !ok {
			return got, fmt.Errorf("message %d has no event id", r.GetAmounts()[0])
		}
		got = append(got, filterEvent{amount: r.GetAmounts()[0], id: id})
	}
	return got, nil
}

func amountsOf(evs []filterEvent) []int64 {
	out := make([]int64, len(evs))
	for i, e := range evs {
		out[i] = e.amount
	}
	return out
}

// checkFilteredStream checks that got holds exactly the amounts of want
// (as a set) with each partition's records in the order written.
func checkFilteredStream(got []filterEvent, want []int64, partOf func(int64) int32) error {
	g := amountsOf(got)
	gs, ws := slices.Clone(g), slices.Clone(want)
	slices.Sort(gs)
	slices.Sort(ws)
	if !slices.Equal(gs, ws) {
		return fmt.Errorf("got amounts %v, want %v", g, want)
	}
	last := map[int32]int64{}
	for _, a := range g {
		p := partOf(a)
		if prev, ok := last[p]; ok && prev > a {
			return fmt.Errorf("partition %d: amount %d after %d: out of order (%v)", p, a, prev, g)
		}
		last[p] = a
	}
	return nil
}

// TestFilterAdvCallersConnAndGateway: several callers of Statements with
// different metadata, through the gateway and through a ClientConn at
// once, some joining while records flow, on records with empty, binary,
// repeated and long header values, tombstones, empty and binary keys: each
// caller receives exactly the records its filters select, each partition in
// order; resuming after any of its messages (on the other side) delivers
// exactly the rest.
func TestFilterAdvCallersConnAndGateway(t *testing.T) {
	t.Run("window", func(t *testing.T) { filterCallers(t) })
	// Nothing preloaded, a window smaller than what the callers read:
	// they catch up from Kafka with readers of their own first.
	t.Run("catch-up", func(t *testing.T) {
		filterCallers(t, kafkarpctest.WithGatewayOptions(runtime.GatewayFetchPreload(0), runtime.GatewayFetchWindow(32<<10)))
	})
}

func filterCallers(t *testing.T, opts ...kafkarpctest.Option) {
	env := startLedger(t, newLedger(), opts...)
	ctx := ctxFor(t, 2*time.Minute)
	long := strings.Repeat("L", 4000)
	var recs []filterRec
	add := func(key []byte, tomb bool, hs ...kafkaclient.Header) {
		recs = append(recs, filterRec{part: int32(len(recs) % 3), key: key, headers: hs, tombstone: tomb})
	}
	batch := func() {
		add([]byte("a1"), false)
		add([]byte("a2"), false)
		add([]byte("a3"), false)
		add([]byte("a1"), true)
		add([]byte("a2"), true, fhdrs("kind", "summary", "tenant", "t1")...) // a tombstone that would match
		add([]byte("z"), false, fhdrs("kind", "summary", "tenant", "t1")...)
		add([]byte("z"), false, fhdrs("kind", "summary", "tenant", "t2")...)
		add([]byte("z"), false, fhdrs("kind", "detail", "tenant", "t1")...)
		add([]byte("z"), false, fhdrs("kind", "summary", "tenant", "t1", "tenant", "t2")...)   // repeated
		add([]byte("z"), false, fhdrs("tenant", "t1", "kind", "detail", "kind", "summary")...) // repeated kind
		add([]byte("z"), false, fhdrs("kind", "summary", "tenant", "")...)
		add([]byte("z"), false, fhdrs("kind", "summary", "tenant", long)...)
		add([]byte("z"), false, kafkaclient.Header{Key: "kind", Value: []byte("summary")}, kafkaclient.Header{Key: "tenant", Value: []byte{0, 0xff, 't', '1'}})
		add([]byte("z"), false, kafkaclient.Header{Key: "kind", Value: []byte("summary")}, kafkaclient.Header{Key: "tenant"}) // null value
		add([]byte("z"), false, fhdrs("Kind", "summary", "tenant", "t1")...)                                                  // other case
		add(nil, false)
		add([]byte{}, false)
		add([]byte{0, 0xff}, false)
		add([]byte("a1"), false, fhdrs("kind", "summary", "tenant", "t3")...)
	}
	batch()
	produceFilterRecs(t, env, 0, recs)
	firstBatch := len(recs)
	callers := []metadata.MD{
		metadata.Pairs("x-account", "a1"),
		metadata.Pairs("x-account", "a2", "x-tenant", "t1"),
		metadata.Pairs("x-account", "", "x-tenant", ""),
		metadata.Pairs("x-account", "a3", "x-tenant", long),
		metadata.Pairs("x-account", "a1", "x-account", "a3", "x-tenant", "t2", "x-tenant", "t3"),
		metadata.Pairs("x-account", "nobody", "x-tenant", "nobody"),
	}
	batch()
	batch()
	// A last record per partition that every caller receives: a summary
	// of every tenant the callers name.
	sentinelHeaders := fhdrs("kind", "summary", "tenant", "t1", "tenant", "t2", "tenant", "t3", "tenant", "", "tenant", long, "tenant", "nobody")
	for range 3 {
		add([]byte("end"), false, sentinelHeaders...)
	}
	partOf := func(a int64) int32 { return recs[a].part }
	clients := []struct {
		name string
		c    keyedv1.LedgerServiceClient
	}{{"conn", keyedv1.NewLedgerServiceClient(env.ClientConn)}, {"gateway", keyedv1.NewLedgerServiceClient(env.Conn)}}
	type result struct {
		evs []filterEvent
		err error
	}
	results := make([][]result, len(clients))
	var wg sync.WaitGroup
	for ci, cl := range clients {
		results[ci] = make([]result, len(callers))
		for i, md := range callers {
			var want int
			for _, r := range recs {
				if statementsWants(r, md) {
					want++
				}
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				evs, err := readStatements(ctx, cl.c, md, nil, want)
				results[ci][i] = result{evs, err}
			}()
		}
	}
	// The rest while the callers read.
	produceFilterRecs(t, env, firstBatch, recs[firstBatch:])
	wg.Wait()
	t.Logf("gateway fetch stats %+v", env.Gateway.FetchStats())
	for ci, cl := range clients {
		for i, md := range callers {
			var want []int64
			for a, r := range recs {
				if statementsWants(r, md) {
					want = append(want, int64(a))
				}
			}
			res := results[ci][i]
			if res.err != nil {
				t.Fatalf("%s, caller %d (%v): %v (got %v; want %v)", cl.name, i, md, res.err, amountsOf(res.evs), want)
			}
			if err := checkFilteredStream(res.evs, want, partOf); err != nil {
				t.Fatalf("%s, caller %d (%v): %v", cl.name, i, md, err)
			}
			t.Logf("%s, caller %d: %d messages", cl.name, i, len(res.evs))
			// Resume after some of its messages on the other side:
			// exactly the rest.
			other := clients[1-ci]
			for _, k := range []int{0, len(res.evs) / 2, len(res.evs) - 2} {
				if k < 0 || k >= len(res.evs) {
					continue
				}
				rest := amountsOf(res.evs[k+1:])
				evs, err := readStatements(ctx, other.c, md, res.evs[k].id, len(rest))
				if err != nil {
					t.Fatalf("%s, caller %d, resumed on %s after message %d: %v", cl.name, i, other.name, res.evs[k].amount, err)
				}
				if err := checkFilteredStream(evs, rest, partOf); err != nil {
					t.Fatalf("%s, caller %d, resumed on %s after message %d: %v", cl.name, i, other.name, res.evs[k].amount, err)
				}
			}
		}
	}
}

// TestFilterAdvBigRecordEndsCaughtUpCallers: with GatewayFetchMaxLag
// below the size of one record, every caller that had read everything was
// ended UNAVAILABLE ("reads more slowly than records arrive: it fell 200
// KiB further behind") when such a record arrived: it measured the lag from
// the caller's cursor to the newest record against the least lag it ever
// had (0, waiting at the end), so one append larger than the bound made a
// laggard of a caller that had lost no ground, among them one whose filter
// skips that record. README: a caller is ended when it "stops reading, or
// reads more slowly than records arrive". Now what arrives while a caller
// waits at the end counts from its next look.
func TestFilterAdvBigRecordEndsCaughtUpCallers(t *testing.T) {
	e := setupFanout(t, runtime.GatewayFetchMaxLag(64<<10))
	ctx := ctxFor(t, 60*time.Second)
	e.produce(t, e.topic, 7, 7, 0) // seq 0..6, keys k0..k6
	all, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	k3, err := e.echo.EchoEvents(metadata.AppendToOutgoingContext(ctx, "idempotency-key", "k3"), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	recv := func(name string, s echov1.EchoService_EchoEventsClient, want ...int) {
		t.Helper()
		var got []int
		for len(got) < len(want) {
			ev, err := s.Recv()
			if err != nil {
				t.Fatalf("%s: after %v: %v; want %v (stats %+v)", name, got, err, want, e.gw.FetchStats())
			}
			got = append(got, seqOf(t, ev.GetMessage()))
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: got %v, want %v", name, got, want)
		}
	}
	recv("unfiltered", all, 0, 1, 2, 3, 4, 5, 6)
	recv("idempotency-key k3", k3, 3)
	// Both wait for records at the end of the topic.
	for e.gw.FetchStats().Waiting != 2 {
		select {
		case <-ctx.Done():
			t.Fatalf("stats %+v: want both callers waiting for records", e.gw.FetchStats())
		case <-time.After(time.Millisecond):
		}
	}
	e.produce(t, e.topic, 1, 7, 200<<10) // seq 7, key k0: 200 KiB
	e.produce(t, e.topic, 7, 7, 0)       // seq 8..14; 10 has key k3
	recv("unfiltered", all, 7, 8, 9, 10, 11, 12, 13, 14)
	recv("idempotency-key k3", k3, 10)
	if st := e.gw.FetchStats(); st.Laggards != 0 {
		t.Fatalf("stats %+v: want no laggard", st)
	}
}
