package confluent

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// member runs one GroupReader in a goroutine of its own: it polls, reports
// every record, commits each batch at once, and commits again in OnRevoked.
type member struct {
	name string
	t    *testing.T
	g    kafkaclient.GroupReader

	mu       sync.Mutex
	owned    map[int32]bool
	assigns  int
	revokes  int
	next     map[int32]int64 // next offset to commit, per partition
	closeErr error

	cancel context.CancelFunc
	done   chan struct{}
}

type groupObs struct {
	mu      sync.Mutex
	changed chan struct{}
	records chan *kafkaclient.Record
}

func (o *groupObs) notify() {
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

// waitUntil waits for cond, re-checking it at every membership change.
func (o *groupObs) waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-o.changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

func startMember(t *testing.T, e *env, obs *groupObs, name, group, topic string) *member {
	m := &member{name: name, t: t, owned: map[int32]bool{}, next: map[int32]int64{}, done: make(chan struct{})}
	commitOwned := func(g kafkaclient.GroupReader, parts []kafkaclient.TopicPartition) {
		m.mu.Lock()
		var offs []kafkaclient.TopicPartitionOffset
		for _, p := range parts {
			if n, ok := m.next[p.Partition]; ok {
				offs = append(offs, kafkaclient.TopicPartitionOffset{Topic: p.Topic, Partition: p.Partition, Offset: n})
			}
		}
		m.mu.Unlock()
		if err := g.Commit(context.Background(), offs); err != nil {
			t.Errorf("%s: commit in OnRevoked: %v", name, err)
		}
	}
	var g kafkaclient.GroupReader
	g, err := e.client.NewGroupReader(kafkaclient.GroupConfig{
		GroupID: group,
		Topics:  []string{topic},
		OnAssigned: func(parts []kafkaclient.TopicPartition) {
			m.mu.Lock()
			m.assigns++
			for _, p := range parts {
				m.owned[p.Partition] = true
			}
			m.mu.Unlock()
			obs.notify()
		},
		OnRevoked: func(parts []kafkaclient.TopicPartition, lost bool) {
			if !lost {
				commitOwned(g, parts)
			}
			m.mu.Lock()
			m.revokes++
			for _, p := range parts {
				delete(m.owned, p.Partition)
			}
			m.mu.Unlock()
			obs.notify()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.g = g
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		defer close(m.done)
		for {
			batch, err := g.Poll(ctx)
			if err != nil {
				break
			}
			latest := map[int32]int64{}
			for _, r := range batch {
				latest[r.Partition] = r.Offset + 1
				obs.records <- r
			}
			var offs []kafkaclient.TopicPartitionOffset
			m.mu.Lock()
			for p, n := range latest {
				m.next[p] = n
				offs = append(offs, kafkaclient.TopicPartitionOffset{Topic: topic, Partition: p, Offset: n})
			}
			m.mu.Unlock()
			if err := g.Commit(ctx, offs); err != nil && ctx.Err() == nil {
				t.Errorf("%s: commit: %v", name, err)
			}
		}
		err := g.Close() // from the Poll goroutine, as required
		m.mu.Lock()
		m.closeErr = err
		m.mu.Unlock()
		obs.notify()
	}()
	return m
}

func (m *member) stop(t *testing.T) {
	m.cancel()
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("%s did not stop\n%s", m.name, buf[:runtime.Stack(buf, true)])
	}
	if m.closeErr != nil {
		t.Errorf("%s: close: %v", m.name, m.closeErr)
	}
}

func (m *member) ownedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.owned)
}

func TestGroupReadersShareAndResume(t *testing.T) {
	t.Run("cooperative", func(t *testing.T) { testGroupReaders(t, nil) })
	t.Run("eager", func(t *testing.T) { testGroupReaders(t, Config{"partition.assignment.strategy": "range"}) })
}

func testGroupReaders(t *testing.T, extra Config) {
	// A short heartbeat makes the first member notice the rebalance soon.
	cc := Config{"heartbeat.interval.ms": 200}
	for k, v := range extra {
		cc[k] = v
	}
	e := newEnv(t, nil, WithConsumerConfig(cc))
	const topic, group = "work", "workers"
	e.createTopic(t, topic, 3)
	obs := &groupObs{changed: make(chan struct{}, 1), records: make(chan *kafkaclient.Record, 1000)}

	a := startMember(t, e, obs, "a", group, topic)
	obs.waitUntil(t, "a to own all partitions", 30*time.Second, func() bool { return a.ownedCount() == 3 })
	b := startMember(t, e, obs, "b", group, topic)
	obs.waitUntil(t, "a and b to share the partitions", 60*time.Second, func() bool {
		na, nb := a.ownedCount(), b.ownedCount()
		return na > 0 && nb > 0 && na+nb == 3
	})

	const n = 30
	for i := 0; i < n; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: key(i), Value: []byte(fmt.Sprint("first-", i))}, kafkaclient.AcksAll)
	}
	got := map[string]int{}
	for len(got) < n {
		select {
		case r := <-obs.records:
			got[string(r.Value)]++
		case <-time.After(30 * time.Second):
			t.Fatalf("received %d of %d records", len(got), n)
		}
	}
	for v, c := range got {
		if c != 1 {
			t.Errorf("%s received %d times", v, c)
		}
	}

	a.stop(t)
	b.stop(t)
	for _, m := range []*member{a, b} {
		if m.assigns == 0 || m.revokes == 0 {
			t.Errorf("%s: OnAssigned called %d times, OnRevoked %d times", m.name, m.assigns, m.revokes)
		}
		if len(m.owned) != 0 {
			t.Errorf("%s still owns %v after Close", m.name, m.owned)
		}
	}
	select {
	case r := <-obs.records:
		t.Fatalf("unexpected record %q", r.Value)
	default:
	}

	// A new member of the same group resumes after the committed offsets:
	// it reads the new records and none of the first ones.
	const m2 = 9
	for i := 0; i < m2; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: key(i), Value: []byte(fmt.Sprint("second-", i))}, kafkaclient.AcksAll)
	}
	c := startMember(t, e, obs, "c", group, topic)
	defer c.stop(t)
	got2 := map[string]bool{}
	for len(got2) < m2 {
		select {
		case r := <-obs.records:
			if string(r.Value[:6]) != "second" {
				t.Fatalf("new member re-read %q at %d/%d: commits did not persist", r.Value, r.Partition, r.Offset)
			}
			got2[string(r.Value)] = true
		case <-time.After(30 * time.Second):
			t.Fatalf("new member received %d of %d records", len(got2), m2)
		}
	}
}
