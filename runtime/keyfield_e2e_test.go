package runtime_test

import (
	"context"
	"fmt"
	"io"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient/kafkaclienttest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
	keyedv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/keyed/v1"
)

// ledger serves testdata/keyed/v1's LedgerService: each reply lists the
// amounts the call carried; Record keeps the amounts of each account in the
// order it served them, and counts calls of one account that overlapped.
type ledger struct {
	keyedv1.UnimplementedLedgerServiceServer

	mu       sync.Mutex
	recorded map[string][]int64 // by account id
	running  map[string]int     // Record calls in flight, by account id
	overlaps int                // Record calls that started while one of the same account ran
	served   chan struct{}      // one per Record call served
}

func newLedger() *ledger {
	return &ledger{recorded: map[string][]int64{}, running: map[string]int{}, served: make(chan struct{}, 4096)}
}

func (l *ledger) Post(_ context.Context, e *keyedv1.Entry) (*keyedv1.Receipt, error) {
	return &keyedv1.Receipt{Amounts: []int64{e.GetAmount()}}, nil
}

func (l *ledger) History(e *keyedv1.Entry, s grpc.ServerStreamingServer[keyedv1.Receipt]) error {
	for i := range int64(2) {
		if err := s.Send(&keyedv1.Receipt{Amounts: []int64{e.GetAmount() + i}}); err != nil {
			return err
		}
	}
	return nil
}

func (l *ledger) Upload(s grpc.ClientStreamingServer[keyedv1.Entry, keyedv1.Receipt]) error {
	r := &keyedv1.Receipt{}
	for {
		e, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(r)
		}
		if err != nil {
			return err
		}
		r.Amounts = append(r.Amounts, e.GetAmount())
	}
}

func (l *ledger) Sync(s grpc.BidiStreamingServer[keyedv1.Entry, keyedv1.Receipt]) error {
	for {
		e, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&keyedv1.Receipt{Amounts: []int64{e.GetAmount()}}); err != nil {
			return err
		}
	}
}

func (l *ledger) Record(_ context.Context, e *keyedv1.Entry) (*emptypb.Empty, error) {
	id := e.GetAccount().GetId()
	l.mu.Lock()
	if l.running[id] > 0 {
		l.overlaps++
	}
	l.running[id]++
	l.mu.Unlock()
	// Give a later call of the same account the chance to overtake this
	// one, were the worker not to keep them in order.
	for range 3 {
		goruntime.Gosched()
	}
	l.mu.Lock()
	l.running[id]--
	l.recorded[id] = append(l.recorded[id], e.GetAmount())
	l.mu.Unlock()
	l.served <- struct{}{}
	return &emptypb.Empty{}, nil
}

// startLedger runs a worker serving l and a gateway on the test's client.
func startLedger(t *testing.T, l keyedv1.LedgerServiceServer, opts ...kafkarpctest.Option) *kafkarpctest.Env {
	t.Helper()
	return kafkarpctest.Start(t, kafkarpctest.Service{
		Spec:            keyedv1.LedgerServiceKafkaSpec,
		RegisterGateway: keyedv1.RegisterLedgerServiceKafkaGateway,
		RegisterWorker: func(w *runtime.Worker) error {
			return keyedv1.RegisterLedgerServiceKafkaWorker(w, l)
		},
	}, append([]kafkarpctest.Option{kafkarpctest.WithClient(func(brokers string) (kafkaclient.Client, error) {
		return kafkatest.Factory(kafkatest.ClientName()).New(brokers, kafkaclienttest.Config{Logger: kafkatest.Logger(t)})
	})}, opts...)...)
}

// keyedRecord is what TestKeyField checks of each request record.
type keyedRecord struct {
	method string
	key    string
	end    bool
}

func (r keyedRecord) String() string {
	if r.end {
		return fmt.Sprintf("%s key %q end", r.method, r.key)
	}
	return fmt.Sprintf("%s key %q", r.method, r.key)
}

// TestKeyField: every record of a call (requests, end of stream) carries the
// key its key_field gives, through the gateway and through a ClientConn,
// for each method kind; a required field left unset fails the call with
// INVALID_ARGUMENT naming the field and produces nothing.
func TestKeyField(t *testing.T) {
	env := startLedger(t, newLedger())
	requests := watchReplies(t, env.Client, env.Topic("ledger-requests"))
	records := watchReplies(t, env.Client, env.Topic("ledger-records"))
	ctx := ctxFor(t, 60*time.Second)
	conn := keyedv1.NewLedgerServiceClient(env.ClientConn)
	gw := keyedv1.NewLedgerServiceClient(env.Conn)
	acct := func(id string) *keyedv1.Account { return &keyedv1.Account{Id: id} }

	// Refused first: had they produced anything, it would precede the
	// records of the calls below with the same (empty) key, on the same
	// partition.
	hs, err := conn.History(ctx, &keyedv1.Entry{Amount: 1})
	if err == nil {
		_, err = hs.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "account.id") {
		t.Fatalf("History without account.id = %v, want INVALID_ARGUMENT naming account.id", err)
	}
	bySeq := metadata.AppendToOutgoingContext(ctx, "x-by-seq", "1")
	if _, err := gw.Record(bySeq, &keyedv1.Entry{Account: acct("acct-r")}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "seq") {
		t.Fatalf("Record by seq without seq = %v, want INVALID_ARGUMENT naming seq", err)
	}
	up, err := conn.Upload(ctx)
	if err == nil {
		_, err = up.CloseAndRecv()
	}
	if err != nil {
		t.Fatalf("Upload with no entry (key_field not required: the empty key) = %v", err)
	}

	for _, c := range []struct {
		name   string
		client keyedv1.LedgerServiceClient
	}{{"conn", conn}, {"gateway", gw}} {
		r, err := c.client.Post(ctx, &keyedv1.Entry{Account: acct("acct-" + c.name), Amount: 5})
		if err != nil || !slices.Equal(r.GetAmounts(), []int64{5}) {
			t.Fatalf("%s: Post = %v, %v", c.name, r, err)
		}
	}
	if _, err := conn.Post(ctx, &keyedv1.Entry{Amount: 6}); err != nil {
		t.Fatalf("Post without account = %v (key_field not required: the empty key)", err)
	}
	hs, err = gw.History(ctx, &keyedv1.Entry{Account: acct("acct-h"), Amount: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int64(3) {
		r, err := hs.Recv()
		if i == 2 && err != io.EOF || i < 2 && (err != nil || r.GetAmounts()[0] != 10+i) {
			t.Fatalf("History response %d = %v, %v", i, r, err)
		}
	}
	// Upload's key is the first entry's account number; later entries do
	// not change it.
	up, err = conn.Upload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []int64{42, 43, 44} {
		if err := up.Send(&keyedv1.Entry{Account: &keyedv1.Account{Number: n}, Amount: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := up.CloseAndRecv(); err != nil || !slices.Equal(r.GetAmounts(), []int64{0, 1, 2}) {
		t.Fatalf("Upload = %v, %v", r, err)
	}
	sy, err := gw.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, region := range []keyedv1.Region{keyedv1.Region_REGION_US, keyedv1.Region_REGION_EU} {
		if err := sy.Send(&keyedv1.Entry{Region: region, Amount: int64(i)}); err != nil {
			t.Fatal(err)
		}
		if r, err := sy.Recv(); err != nil || r.GetAmounts()[0] != int64(i) {
			t.Fatalf("Sync response %d = %v, %v", i, r, err)
		}
	}
	if err := sy.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := sy.Recv(); err != io.EOF {
		t.Fatalf("Sync end = %v", err)
	}
	// Record: zero is a value of the explicit-presence seq; the static
	// route; the default route without an account (the empty key).
	if _, err := gw.Record(bySeq, &keyedv1.Entry{Seq: proto.Int64(0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Record(metadata.AppendToOutgoingContext(ctx, "x-static", "1"), &keyedv1.Entry{Account: acct("acct-s")}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Record(ctx, &keyedv1.Entry{}); err != nil {
		t.Fatal(err)
	}

	want := []keyedRecord{
		{"Upload", "", true}, // the empty upload: an end record alone
		{"Post", "acct-conn", false}, {"Post", "acct-conn", true},
		{"Post", "acct-gateway", false}, {"Post", "acct-gateway", true},
		{"Post", "", false}, {"Post", "", true},
		{"History", "acct-h", false}, {"History", "acct-h", true},
		{"Upload", "42", false}, {"Upload", "42", false}, {"Upload", "42", false}, {"Upload", "42", true},
		{"Sync", "2", false}, {"Sync", "2", false}, {"Sync", "2", true},
		{"Record", "0", false}, {"Record", "static", false}, {"Record", "", false}, // oneway: no end record
	}
	var got []keyedRecord
	timeout := time.After(30 * time.Second)
	for len(got) < len(want) {
		var rec *kafkaclient.Record
		select {
		case rec = <-requests.recs:
		case rec = <-records.recs:
		case <-timeout:
			t.Fatalf("after 30 s, %d request records of %d:\n%v", len(got), len(want), got)
		}
		got = append(got, keyedRecord{method: header(rec, "zilla:method"), key: string(rec.Key), end: rec.Value == nil})
	}
	sortRecords := func(rs []keyedRecord) []string {
		s := make([]string, len(rs))
		for i, r := range rs {
			s[i] = r.String()
		}
		sort.Strings(s)
		return s
	}
	if g, w := sortRecords(got), sortRecords(want); !slices.Equal(g, w) {
		t.Fatalf("request records:\n got %q\nwant %q", g, w)
	}
}

// TestKeyFieldOrder: calls with the same key_field value are served in the
// order they were sent, one at a time, while calls of many keys are in
// flight at once.
func TestKeyFieldOrder(t *testing.T) {
	l := newLedger()
	env := startLedger(t, l)
	ctx := ctxFor(t, 120*time.Second)
	client := keyedv1.NewLedgerServiceClient(env.ClientConn)
	const accounts, calls = 24, 25
	var wg sync.WaitGroup
	errs := make(chan error, accounts)
	for a := range accounts {
		wg.Go(func() {
			id := fmt.Sprint("acct-", a)
			// Record is oneway: it returns once Kafka has the request, so
			// each account's records are in the order of its calls.
			for n := range int64(calls) {
				if _, err := client.Record(ctx, &keyedv1.Entry{Account: &keyedv1.Account{Id: id}, Amount: n}); err != nil {
					errs <- fmt.Errorf("%s call %d: %w", id, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range accounts * calls {
		select {
		case <-l.served:
		case <-ctx.Done():
			t.Fatalf("the worker served %d calls of %d", i, accounts*calls)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	want := make([]int64, calls)
	for n := range want {
		want[n] = int64(n)
	}
	for a := range accounts {
		id := fmt.Sprint("acct-", a)
		if got := l.recorded[id]; !slices.Equal(got, want) {
			t.Errorf("%s served in the order %v, want %v", id, got, want)
		}
	}
	if l.overlaps != 0 {
		t.Errorf("%d calls started while a call of the same account was running", l.overlaps)
	}
}

// TestFetchFiltersFromMetadata: Statements delivers a caller the records
// keyed by the accounts it names in x-account (any of them), or the
// summaries of its tenant (x-tenant, optional: without it, every summary);
// a caller without x-account is refused, naming it. Through the gateway and
// through a ClientConn. The topic has one partition, so that every caller
// sees the statements in the order published, the last one a t2 summary
// that every caller below receives: what a caller got before it is all it
// gets.
func TestFetchFiltersFromMetadata(t *testing.T) {
	env := startLedger(t, newLedger(), kafkarpctest.WithPartitions(1))
	ctx := ctxFor(t, 60*time.Second)
	pub := keyedv1.NewLedgerService_Statements_KafkaPublisher(env.Client, runtime.PublisherTopicMapper(env.Topic))
	type statement struct {
		key, kind, tenant string
	}
	statements := []statement{
		{"a1", "", ""}, {"a2", "", ""}, {"a3", "", ""},
		{"z", "summary", "t1"}, {"z", "summary", "t2"}, {"z", "detail", "t1"},
		{"end", "summary", "t2"},
	}
	const last = 6 // the amount of the last statement
	for i, s := range statements {
		var opts []runtime.PublishOption
		opts = append(opts, runtime.PublishKey([]byte(s.key)))
		if s.kind != "" {
			opts = append(opts, runtime.PublishHeader("kind", []byte(s.kind)), runtime.PublishHeader("tenant", []byte(s.tenant)))
		}
		if _, err := pub.Publish(ctx, &keyedv1.Receipt{Key: s.key, Amounts: []int64{int64(i)}}, opts...); err != nil {
			t.Fatal(err)
		}
	}
	// received reads the amounts of the statements a caller gets, up to
	// the last one.
	received := func(c keyedv1.LedgerServiceClient, md metadata.MD) ([]int64, error) {
		ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, md))
		defer cancel()
		s, err := c.Statements(ctx, &emptypb.Empty{})
		if err != nil {
			return nil, err
		}
		var got []int64
		for {
			r, err := s.Recv()
			if err != nil {
				return got, err
			}
			got = append(got, r.GetAmounts()[0])
			if r.GetAmounts()[0] == last {
				return got, nil
			}
		}
	}
	for _, c := range []struct {
		name   string
		client keyedv1.LedgerServiceClient
	}{{"conn", keyedv1.NewLedgerServiceClient(env.ClientConn)}, {"gateway", keyedv1.NewLedgerServiceClient(env.Conn)}} {
		for _, tc := range []struct {
			md   metadata.MD
			want []int64
		}{
			{metadata.Pairs("x-account", "a2"), []int64{1, 3, 4, last}},                       // a2, and every summary
			{metadata.Pairs("x-account", "a1", "x-account", "a3"), []int64{0, 2, 3, 4, last}}, // a1 or a3
			{metadata.Pairs("x-account", "a3", "x-tenant", "t2"), []int64{2, 4, last}},        // a3, t2's summaries
		} {
			got, err := received(c.client, tc.md)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("%s, metadata %v: statements %v, %v; want %v", c.name, tc.md, got, err, tc.want)
			}
		}
		_, err := received(c.client, metadata.Pairs("x-tenant", "t1"))
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "x-account") {
			t.Fatalf("%s, without x-account: %v, want INVALID_ARGUMENT naming x-account", c.name, err)
		}
	}
}
