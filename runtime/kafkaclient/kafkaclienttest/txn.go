package kafkaclienttest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// testTransactions checks a client that implements kafkaclient.TxnClient:
// records of a transaction are visible to read_committed readers only once
// it commits, never when it aborts; offsets committed in a transaction (with
// records, or alone) are the group's committed offsets.
func testTransactions(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{FastGroups: true})
	tc, ok := e.client.(kafkaclient.TxnClient)
	if !ok {
		t.Skipf("%s does not implement kafkaclient.TxnClient", f.Name)
	}
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
