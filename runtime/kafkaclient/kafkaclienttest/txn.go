package kafkaclienttest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// testTransactions checks a client that implements kafkaclient.TxnClient:
// records of a transaction are visible to read_committed readers only once
// it commits, never when it aborts; offsets committed in a transaction (with
// records, or alone) are the group's committed offsets.
func testTransactions(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{FastGroups: true})
	tc := txnClient(t, e, f)
	in := e.createTopic(t, "txn-in", 1)
	out := e.createTopic(t, "txn-out", 1)
	group := e.name("txn")
	for _, v := range []string{"r1", "r2", "r3"} {
		e.produceSync(t, &kafkaclient.Record{Topic: in, Partition: 0, Value: []byte(v)}, kafkaclient.AcksAll)
	}

	// A group member reads the three requests.
	gr, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: group, Topics: []string{in}, ReadCommitted: true})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = gr.Close()
		}
	})
	ctx := ctxT(t, 60*time.Second)
	for n := 0; n < 3; {
		b, err := gr.Poll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n += len(b)
	}

	txn, rd := txnAndReader(t, e, tc, out)
	produce := func(v string) {
		t.Helper()
		ch := make(chan error, 1)
		txn.Produce(&kafkaclient.Record{Topic: out, Partition: kafkaclient.AnyPartition, Key: []byte("k"), Value: []byte(v)}, func(r *kafkaclient.Record, err error) {
			if err == nil && (r.Partition != 0 || r.Offset < 0) {
				err = errors.New("delivered without partition and offset")
			}
			ch <- err
		})
		if err := txn.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-ch; err != nil {
			t.Fatalf("transactional produce of %s: %v", v, err)
		}
	}

	// Not visible before the commit.
	produce("a")
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	if b, err := rd.Poll(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read_committed reader saw %d records of an open transaction (%v)", len(b), err)
	}
	cancel()
	if err := txn.Commit(ctx, gr, []kafkaclient.TopicPartitionOffset{{Topic: in, Partition: 0, Offset: 2}}); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if got := readN(t, rd, 1, 30*time.Second); string(got[0].Value) != "a" {
		t.Fatalf("after commit read %q, want a", got[0].Value)
	}

	// Aborted records are never seen; the next transaction's are.
	produce("b")
	if err := txn.Abort(ctx); err != nil {
		t.Fatalf("abort: %v", err)
	}
	produce("c")
	if err := txn.Commit(ctx, gr, nil); err != nil {
		t.Fatalf("commit without offsets: %v", err)
	}
	if got := readN(t, rd, 1, 30*time.Second); string(got[0].Value) != "c" {
		t.Fatalf("after abort and commit read %q, want c", got[0].Value)
	}

	// Offsets alone.
	if err := txn.Commit(ctx, gr, []kafkaclient.TopicPartitionOffset{{Topic: in, Partition: 0, Offset: 3}}); err != nil {
		t.Fatalf("commit of offsets alone: %v", err)
	}
	// Nothing at all.
	if err := txn.Commit(ctx, gr, nil); err != nil {
		t.Fatalf("empty commit: %v", err)
	}

	// A new member resumes after the offsets committed in transactions.
	closed = true
	if err := gr.Close(); err != nil {
		t.Fatal(err)
	}
	e.produceSync(t, &kafkaclient.Record{Topic: in, Partition: 0, Value: []byte("r4")}, kafkaclient.AcksAll)
	gr2, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: group, Topics: []string{in}, ReadCommitted: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gr2.Close() })
	b, err := gr2.Poll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[0].Value) != "r4" || b[0].Offset != 3 {
		t.Fatalf("new member read %q at offset %d first, want r4 at 3", b[0].Value, b[0].Offset)
	}
	if err := txn.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// txnClient returns e's client as a kafkaclient.TxnClient, or skips the
// test for a client without transactions.
func txnClient(t *testing.T, e *env, f Factory) kafkaclient.TxnClient {
	t.Helper()
	tc, ok := e.client.(kafkaclient.TxnClient)
	if !ok {
		t.Skipf("%s does not implement kafkaclient.TxnClient", f.Name)
	}
	return tc
}

// txnAndReader returns a new transactional producer of tc and a
// read_committed reader of partition 0 of topic out from its start, both
// closed at the test's end.
func txnAndReader(t *testing.T, e *env, tc kafkaclient.TxnClient, out string) (kafkaclient.TxnProducer, kafkaclient.Reader) {
	t.Helper()
	txn, err := tc.NewTxnProducer(unique("txn-"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = txn.Close() })
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{ReadCommitted: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: out, Partition: 0, Offset: 0}}); err != nil {
		t.Fatal(err)
	}
	return txn, rd
}

// testTxnCommitGroupMoved: a transaction's commit that the group
// coordinator refuses because the group moved to a new generation since
// the member's metadata the commit carries (a rebalance completed while
// the commit was on its way) returns an error wrapping
// kafkaclient.ErrGroupMoved, whether the transaction holds records or
// only offsets; nothing of it is committed, Abort opens the next
// transaction, and that one commits.
func testTxnCommitGroupMoved(t *testing.T, f Factory) {
	e, c := newFaultEnv(t, f, Config{})
	tc := txnClient(t, e, f)
	in := e.createTopic(t, "moved-in", 1)
	out := e.createTopic(t, "moved-out", 1)
	e.produceSync(t, &kafkaclient.Record{Topic: in, Partition: 0, Value: []byte("r1")}, kafkaclient.AcksAll)
	gr, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: e.name("moved"), Topics: []string{in}, ReadCommitted: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gr.Close() })
	ctx := ctxT(t, 90*time.Second)
	if _, err := gr.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	txn, rd := txnAndReader(t, e, tc, out)
	offs := []kafkaclient.TopicPartitionOffset{{Topic: in, Partition: 0, Offset: 1}}
	for _, ke := range []*kerr.Error{kerr.IllegalGeneration, kerr.UnknownMemberID, kerr.RebalanceInProgress, kerr.FencedMemberEpoch, kerr.StaleMemberEpoch} {
		for _, records := range []bool{true, false} {
			if records {
				ch := make(chan error, 1)
				txn.Produce(&kafkaclient.Record{Topic: out, Partition: 0, Value: []byte("aborted")}, func(_ *kafkaclient.Record, err error) { ch <- err })
				if err := txn.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				if err := <-ch; err != nil {
					t.Fatal(err)
				}
			}
			h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.TxnOffsetCommit, kmsg.OffsetCommit}, Err: ke, Count: -1})
			err := txn.Commit(ctx, gr, offs)
			h.Remove()
			if !errors.Is(err, kafkaclient.ErrGroupMoved) {
				t.Fatalf("Commit (records: %v) refused %s: %v, want an error wrapping ErrGroupMoved", records, ke.Message, err)
			}
			if err := txn.Abort(ctx); err != nil {
				t.Fatalf("Abort after a commit refused %s: %v", ke.Message, err)
			}
		}
	}
	ch := make(chan error, 1)
	txn.Produce(&kafkaclient.Record{Topic: out, Partition: 0, Value: []byte("committed")}, func(_ *kafkaclient.Record, err error) { ch <- err })
	if err := txn.Commit(ctx, gr, offs); err != nil {
		t.Fatalf("the commit after the refused ones: %v", err)
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	if got := readN(t, rd, 1, 30*time.Second); string(got[0].Value) != "committed" {
		t.Fatalf("a read_committed reader read %q first, want only the record of the transaction committed", got[0].Value)
	}
}

// testTxnRefusedRecordLeftOut: a record of a transaction that Kafka
// refuses (INVALID_RECORD: a null key for a compacted topic, say) fails
// with an error wrapping kafkaclient.ErrRecordRefused, and only it: the
// records produced with it, before and after, are acknowledged, Commit
// commits them, and a read_committed reader reads every one of them once,
// in order. librdkafka fails the transaction for the one record and
// purges the records still queued (ERR__PURGE_QUEUE) or fails those
// produced after it (ERR__STATE): the exactly-once worker took those for
// lost replies and told callers UNAVAILABLE.
func testTxnRefusedRecordLeftOut(t *testing.T, f Factory) {
	txn, rd, refused, out := refusingTxnEnv(t, f)
	ctx := ctxT(t, 90*time.Second)
	const before, after = 5, 400
	errs := make(chan error, before+after)
	produce := func(i int) {
		txn.Produce(&kafkaclient.Record{Topic: out, Partition: 0, Value: fmt.Appendf(nil, "%d", i)}, func(_ *kafkaclient.Record, err error) {
			if err != nil {
				err = fmt.Errorf("record %d: %w", i, err)
			}
			errs <- err
		})
	}
	for i := range before {
		produce(i)
	}
	refusal := make(chan error, 1)
	txn.Produce(&kafkaclient.Record{Topic: refused, Partition: 0, Value: []byte("refused")}, func(_ *kafkaclient.Record, err error) { refusal <- err })
	// Many, without waiting: some are still queued when the refusal
	// comes back.
	for i := before; i < before+after; i++ {
		produce(i)
	}
	if err := txn.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-refusal; !errors.Is(err, kafkaclient.ErrRecordRefused) {
		t.Fatalf("the refused record's delivery: %v, want an error wrapping ErrRecordRefused", err)
	}
	for range before + after {
		if err := <-errs; err != nil {
			t.Fatalf("a record produced with the refused one failed: %v", err)
		}
	}
	if err := txn.Commit(ctx, nil, nil); err != nil {
		t.Fatalf("commit of the records kept: %v", err)
	}
	got := readN(t, rd, before+after, 60*time.Second)
	for i, r := range got {
		if string(r.Value) != fmt.Sprint(i) {
			t.Fatalf("a read_committed reader read %q at position %d, want %d: every kept record once, in order", r.Value, i, i)
		}
	}
	// The next transaction commits as usual.
	produce(before + after)
	if err := txn.Commit(ctx, nil, nil); err != nil {
		t.Fatalf("the next commit: %v", err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if r := readN(t, rd, 1, 30*time.Second); string(r[0].Value) != fmt.Sprint(before+after) {
		t.Fatalf("after the commit read %q, want %d", r[0].Value, before+after)
	}
}

// testTxnRefusedRecordConcurrentProducers is testTxnRefusedRecordLeftOut
// with the records produced by several goroutines at once while the
// refusal comes back, as the exactly-once worker's calls produce their
// replies: no record is held back (librdkafka let a record produced just
// as the transaction failed sit unsent in its queue until
// message.timeout.ms, and Flush waited for it), every kept record is
// acknowledged, and Commit commits each once, in each producer's order.
func testTxnRefusedRecordConcurrentProducers(t *testing.T, f Factory) {
	txn, rd, refused, out := refusingTxnEnv(t, f)
	ctx := ctxT(t, 90*time.Second)
	const producers, each = 4, 250
	errs := make(chan error, producers*each)
	refusal := make(chan error, 1)
	var wg sync.WaitGroup
	for g := range producers {
		wg.Go(func() {
			for i := range each {
				if g == 0 && i == each/10 {
					txn.Produce(&kafkaclient.Record{Topic: refused, Partition: 0, Value: []byte("refused")}, func(_ *kafkaclient.Record, err error) { refusal <- err })
				}
				txn.Produce(&kafkaclient.Record{Topic: out, Partition: 0, Value: fmt.Appendf(nil, "%d-%d", g, i)}, func(r *kafkaclient.Record, err error) {
					if err != nil {
						err = fmt.Errorf("record %s: %w", r.Value, err)
					}
					errs <- err
				})
			}
		})
	}
	wg.Wait()
	if err := txn.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v (a record held back by the client?)", err)
	}
	if err := <-refusal; !errors.Is(err, kafkaclient.ErrRecordRefused) {
		t.Fatalf("the refused record's delivery: %v, want an error wrapping ErrRecordRefused", err)
	}
	for range producers * each {
		if err := <-errs; err != nil {
			t.Fatalf("a record produced with the refused one failed: %v", err)
		}
	}
	if err := txn.Commit(ctx, nil, nil); err != nil {
		t.Fatalf("commit of the records kept: %v", err)
	}
	// A marker committed next: reading up to it reads all the first
	// transaction committed, and nothing of it twice.
	commitMarker(t, ctx, txn, out)
	next := make([]int, producers)
	got := readN(t, rd, producers*each+1, 60*time.Second)
	if len(got) != producers*each+1 || string(got[len(got)-1].Value) != "marker" {
		t.Fatalf("a read_committed reader read %d records, the last %q: want the %d kept, then the marker", len(got), got[len(got)-1].Value, producers*each)
	}
	for _, r := range got[:len(got)-1] {
		var g, i int
		if _, err := fmt.Sscanf(string(r.Value), "%d-%d", &g, &i); err != nil || g < 0 || g >= producers {
			t.Fatalf("a read_committed reader read %q, not a record produced", r.Value)
		}
		if i != next[g] {
			t.Fatalf("a read_committed reader read %q after %d of producer %d's records: want every kept record once, in its producer's order", r.Value, next[g], g)
		}
		next[g]++
	}
}

// testTxnRefusedRecordCommitWithoutFlush: Commit called at once after the
// records of a transaction with a refused one, with no Flush between,
// commits every record whose done reported it acknowledged (done may run
// before or after Commit returns) and none that failed: a record whose
// delivery report came after the commit had begun must not be told
// acknowledged while left out of the transaction committed.
func testTxnRefusedRecordCommitWithoutFlush(t *testing.T, f Factory) {
	txn, rd, refused, out := refusingTxnEnv(t, f)
	ctx := ctxT(t, 90*time.Second)
	const n = 300
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for i := range n {
		if i == 20 {
			wg.Add(1)
			txn.Produce(&kafkaclient.Record{Topic: refused, Partition: 0, Value: []byte("refused")}, func(_ *kafkaclient.Record, err error) {
				defer wg.Done()
				if !errors.Is(err, kafkaclient.ErrRecordRefused) {
					t.Errorf("the refused record's delivery: %v, want an error wrapping ErrRecordRefused", err)
				}
			})
		}
		wg.Add(1)
		txn.Produce(&kafkaclient.Record{Topic: out, Partition: 0, Value: fmt.Appendf(nil, "%d", i)}, func(r *kafkaclient.Record, err error) {
			defer wg.Done()
			if err == nil {
				mu.Lock()
				acked[string(r.Value)] = true
				mu.Unlock()
			}
		})
	}
	if err := txn.Commit(ctx, nil, nil); err != nil {
		t.Fatalf("commit of the records kept: %v", err)
	}
	wg.Wait()
	// A marker committed next: reading up to it reads all the first
	// transaction committed.
	commitMarker(t, ctx, txn, out)
	read := map[string]bool{}
	for marked := false; !marked; {
		for _, r := range readN(t, rd, 1, 60*time.Second) {
			v := string(r.Value)
			if v == "marker" {
				marked = true
				break
			}
			if read[v] {
				t.Fatalf("a read_committed reader read %q twice", v)
			}
			read[v] = true
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for v := range acked {
		if !read[v] {
			t.Errorf("record %s was reported acknowledged, but the transaction committed does not hold it", v)
		}
	}
	for v := range read {
		if !acked[v] {
			t.Errorf("the transaction committed holds record %s, reported failed", v)
		}
	}
	if len(acked) == 0 {
		t.Error("no record was acknowledged")
	}
}

// refusingTxnEnv returns a transactional producer on a fault-injecting
// embedded broker that refuses every record produced to topic refused
// (INVALID_RECORD), and a read_committed reader of partition 0 of topic
// out, where the records kept go.
func refusingTxnEnv(t *testing.T, f Factory) (txn kafkaclient.TxnProducer, rd kafkaclient.Reader, refused, out string) {
	t.Helper()
	e, c := newFaultEnv(t, f, Config{})
	tc := txnClient(t, e, f)
	refused = e.createTopic(t, "refused", 1)
	out = e.createTopic(t, "kept", 1)
	txn, rd = txnAndReader(t, e, tc, out)
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: refused, Err: kerr.InvalidRecord, Count: -1})
	t.Cleanup(h.Remove)
	return txn, rd, refused, out
}

// commitMarker produces a record "marker" to partition 0 of topic out in
// txn's open transaction and commits it.
func commitMarker(t *testing.T, ctx context.Context, txn kafkaclient.TxnProducer, out string) {
	t.Helper()
	marker := make(chan error, 1)
	txn.Produce(&kafkaclient.Record{Topic: out, Partition: 0, Value: []byte("marker")}, func(_ *kafkaclient.Record, err error) { marker <- err })
	if err := txn.Commit(ctx, nil, nil); err != nil {
		t.Fatalf("the commit of a marker: %v", err)
	}
	if err := <-marker; err != nil {
		t.Fatal(err)
	}
}
