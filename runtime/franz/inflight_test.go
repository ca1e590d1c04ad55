package franz

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// The inflight of a produced record is recycled once its promise ran
// (producer.go). These tests look for what a recycling bug would show: a
// delivery report or a stored record carrying another record's topic, key,
// value, headers or partition, a done called twice, and inflights
// allocated per record after all.

// startClient starts an embedded broker and a client with the given
// topics, closed at the end of the test.
func startClient(t testing.TB, topics ...kafkaclient.TopicSpec) *Client {
	t.Helper()
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	c, err := New(WithSeedBrokers(b.Addr()), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.CreateTopics(ctx, topics); err != nil {
		t.Fatal(err)
	}
	return c
}

var mixTopics = []kafkaclient.TopicSpec{{Name: "mix-a", Partitions: 4}, {Name: "mix-b", Partitions: 3}}

// mixRecord returns record i of producer g, and the acks it is produced
// with: every record differs from every other in key, value and headers;
// topics, partition choice (chosen, keyed, unkeyed), value kinds (null,
// empty, 1 to 300 bytes), header counts (0 to 11: more than an inflight
// holds without an allocation of its own) and acks levels vary.
func mixRecord(g, i int) (*kafkaclient.Record, kafkaclient.Acks) {
	spec := mixTopics[i%2]
	r := &kafkaclient.Record{Topic: spec.Name, Partition: kafkaclient.AnyPartition}
	id := fmt.Sprintf("g%d-i%d", g, i)
	if i%7 != 0 {
		r.Key = []byte("key-" + id)
	}
	if i%5 == 0 {
		r.Partition = int32(i/2) % spec.Partitions
	}
	switch {
	case i%11 == 0:
		// null value
	case i%13 == 0:
		r.Value = []byte{}
	default:
		r.Value = []byte(strings.Repeat(id+";", 1+i%20))
	}
	for j := range i % 12 {
		r.Headers = append(r.Headers, kafkaclient.Header{Key: fmt.Sprintf("h%d", j), Value: []byte(fmt.Sprintf("%s-h%d", id, j))})
	}
	return r, []kafkaclient.Acks{kafkaclient.AcksAll, kafkaclient.AcksLeader, kafkaclient.AcksNone}[i%3]
}

// sameRecord reports how got differs from want in topic, key, value
// (telling null from empty) and headers, or "".
func sameRecord(got, want *kafkaclient.Record) string {
	switch {
	case got.Topic != want.Topic:
		return fmt.Sprintf("topic %q, want %q", got.Topic, want.Topic)
	case !bytes.Equal(got.Key, want.Key) || (got.Key == nil) != (want.Key == nil):
		return fmt.Sprintf("key %q, want %q", got.Key, want.Key)
	case !bytes.Equal(got.Value, want.Value) || (got.Value == nil) != (want.Value == nil):
		return fmt.Sprintf("value %.40q, want %.40q", got.Value, want.Value)
	case len(got.Headers) != len(want.Headers):
		return fmt.Sprintf("%d headers, want %d", len(got.Headers), len(want.Headers))
	}
	for j, h := range got.Headers {
		if h.Key != want.Headers[j].Key || !bytes.Equal(h.Value, want.Headers[j].Value) {
			return fmt.Sprintf("header %d %s=%q, want %s=%q", j, h.Key, h.Value, want.Headers[j].Key, want.Headers[j].Value)
		}
	}
	return ""
}

// Records produced concurrently, with recycled inflights, are each
// reported to their own done callback exactly once, intact, and are stored
// in the partition and at the offset the report names.
func TestConcurrentProduceRecordsIntact(t *testing.T) {
	const producers, perProducer = 8, 400
	c := startClient(t, mixTopics...)
	parts := map[string]int32{}
	for _, s := range mixTopics {
		parts[s.Name] = s.Partitions
	}

	type report struct {
		calls     atomic.Int32
		partition int32
		offset    int64
	}
	reports := make([]report, producers*perProducer)
	var wg sync.WaitGroup
	wg.Add(producers * perProducer)
	for g := range producers {
		go func() {
			for i := range perProducer {
				r, acks := mixRecord(g, i)
				want, _ := mixRecord(g, i)
				rep := &reports[g*perProducer+i]
				c.Produce(r, acks, func(got *kafkaclient.Record, err error) {
					if rep.calls.Add(1) != 1 {
						t.Errorf("record g%d-i%d: done called again", g, i)
						return
					}
					defer wg.Done()
					if err != nil {
						t.Errorf("record g%d-i%d: %v", g, i, err)
						return
					}
					if got != r {
						t.Errorf("record g%d-i%d: done got another record (%s)", g, i, sameRecord(got, want))
						return
					}
					if d := sameRecord(got, want); d != "" {
						t.Errorf("record g%d-i%d reported with %s", g, i, d)
					}
					n := parts[want.Topic]
					switch {
					case want.Partition >= 0 && got.Partition != want.Partition:
						t.Errorf("record g%d-i%d: partition %d, chosen %d", g, i, got.Partition, want.Partition)
					case want.Partition < 0 && want.Key != nil && got.Partition != kafkaclient.KeyPartition(want.Key, n):
						t.Errorf("record g%d-i%d: partition %d, its key's is %d", g, i, got.Partition, kafkaclient.KeyPartition(want.Key, n))
					case got.Partition < 0 || got.Partition >= n:
						t.Errorf("record g%d-i%d: partition %d of %d", g, i, got.Partition, n)
					}
					if (acks == kafkaclient.AcksNone) != (got.Offset == -1) || got.Offset < -1 {
						t.Errorf("record g%d-i%d: offset %d with acks %s", g, i, got.Offset, acks)
					}
					rep.partition, rep.offset = got.Partition, got.Offset
				})
			}
		}()
	}
	awaitReports(t, &wg)
	if t.Failed() {
		return
	}

	// Read the partitions back: the record at each reported offset is the
	// record reported there.
	type at struct {
		topic     string
		partition int32
		offset    int64
	}
	want := map[at]*kafkaclient.Record{}
	for k := range reports {
		if reports[k].offset >= 0 {
			r, _ := mixRecord(k/perProducer, k%perProducer)
			a := at{r.Topic, reports[k].partition, reports[k].offset}
			if want[a] != nil {
				t.Fatalf("two records reported at %v", a)
			}
			want[a] = r
		}
	}
	rd, err := c.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var assign []kafkaclient.TopicPartitionOffset
	for _, s := range mixTopics {
		for p := range s.Partitions {
			assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: s.Name, Partition: p, Offset: 0})
		}
	}
	if err := rd.Assign(assign); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for len(want) > 0 {
		recs, err := rd.Poll(ctx)
		if err != nil {
			t.Fatalf("%d reported records not read back: %v", len(want), err)
		}
		for _, got := range recs {
			a := at{got.Topic, got.Partition, got.Offset}
			if w := want[a]; w != nil {
				if d := sameRecord(got, w); d != "" {
					t.Errorf("stored at %v: %s", a, d)
				}
				delete(want, a)
			}
		}
	}
}

// producerAllocs returns how many objects were allocated so far by the
// package's non-test code, by the memory profile (exact at
// runtime.MemProfileRate 1).
func producerAllocs() int64 {
	runtime.GC()
	runtime.GC() // the profile is published a cycle late
	var recs []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(recs, true)
		if ok {
			recs = recs[:n]
			break
		}
		recs = make([]runtime.MemProfileRecord, n+50)
	}
	const pkg = "github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz."
	var total int64
	for _, r := range recs {
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if !strings.HasPrefix(f.Function, "runtime.") && !strings.HasPrefix(f.Function, "internal/") {
				// The allocating function.
				if strings.HasPrefix(f.Function, pkg) && !strings.HasSuffix(f.File, "_test.go") {
					total += r.AllocObjects
				}
				break
			}
			if !more {
				break
			}
		}
	}
	return total
}

// Producing does not allocate per record in this package: the inflight of
// a delivered record is reused. (A sync.Pool keeps its values across one
// garbage collection and, under the race detector, drops a quarter of them
// on purpose: some inflights are allocated all the same, but far fewer
// than records.)
func TestProduceReusesInflights(t *testing.T) {
	const records, window = 4000, 64
	c := startClient(t, kafkaclient.TopicSpec{Name: "allocs", Partitions: 2})
	produce := func(n int) {
		sem := make(chan struct{}, window)
		var wg sync.WaitGroup
		wg.Add(n)
		for i := range n {
			sem <- struct{}{}
			r := &kafkaclient.Record{Topic: "allocs", Partition: kafkaclient.AnyPartition, Key: []byte{byte(i)}, Value: []byte("v"),
				Headers: []kafkaclient.Header{{Key: "h", Value: []byte("x")}}}
			c.Produce(r, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) {
				if err != nil {
					t.Error(err)
				}
				<-sem
				wg.Done()
			})
		}
		awaitReports(t, &wg)
	}
	produce(window) // metadata, connections, first batches

	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1
	before := producerAllocs()
	produce(records)
	allocs := producerAllocs() - before
	t.Logf("%d objects allocated by package franz for %d records (%.3f per record)", allocs, records, float64(allocs)/records)
	if allocs >= records/2 {
		t.Errorf("%d objects allocated by package franz for %d records: inflights are not reused", allocs, records)
	}
}

// awaitReports waits until wg, one count per produced record, is done: every
// record's delivery was reported. It fails the test after 90s.
func awaitReports(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	select {
	case <-all:
	case <-time.After(90 * time.Second):
		t.Fatal("not every record was reported within 90s")
	}
}
