package kafkaclienttest

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// member runs one GroupReader in a goroutine of its own: it polls, reports
// every record, commits each batch at once (unless commitInRevokeOnly), and
// commits again in OnRevoked. Its callbacks check that they run inside Poll
// or Close, never while a batch is being handled.
type member struct {
	name string
	t    *testing.T
	g    kafkaclient.GroupReader

	inPoll atomic.Bool // the member's goroutine is inside Poll or Close

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
	changed chan struct{}
	records chan *kafkaclient.Record
}

func newGroupObs() *groupObs {
	return &groupObs{changed: make(chan struct{}, 1), records: make(chan *kafkaclient.Record, 1000)}
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

type memberOpts struct {
	commitInRevokeOnly bool
	commitMayFail      bool // a commit that fails is logged, not a test error (its topic was deleted)
	startAtLatest      bool
	protocol           kafkaclient.GroupProtocol
}

func startMember(t *testing.T, e *env, obs *groupObs, name, group, topic string, mo memberOpts) *member {
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
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := g.Commit(ctx, offs); err != nil {
			if mo.commitMayFail {
				t.Logf("%s: commit in OnRevoked: %v", name, err)
			} else {
				t.Errorf("%s: commit in OnRevoked: %v", name, err)
			}
		}
	}
	var g kafkaclient.GroupReader
	g, err := e.client.NewGroupReader(kafkaclient.GroupConfig{
		GroupID:       group,
		Topics:        []string{topic},
		StartAtLatest: mo.startAtLatest,
		Protocol:      mo.protocol,
		OnAssigned: func(parts []kafkaclient.TopicPartition) {
			if !m.inPoll.Load() {
				t.Errorf("%s: OnAssigned(%v) called outside Poll and Close", name, parts)
			}
			m.mu.Lock()
			m.assigns++
			for _, p := range parts {
				if p.Topic != topic {
					t.Errorf("%s: assigned %v", name, p)
				}
				m.owned[p.Partition] = true
			}
			m.mu.Unlock()
			obs.notify()
		},
		OnRevoked: func(parts []kafkaclient.TopicPartition, lost bool) {
			if !m.inPoll.Load() {
				t.Errorf("%s: OnRevoked(%v) called outside Poll and Close", name, parts)
			}
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
			m.inPoll.Store(true)
			batch, err := g.Poll(ctx)
			m.inPoll.Store(false)
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
			if !mo.commitInRevokeOnly {
				if err := g.Commit(ctx, offs); err != nil && ctx.Err() == nil {
					if mo.commitMayFail {
						t.Logf("%s: commit: %v", name, err)
					} else {
						t.Errorf("%s: commit: %v", name, err)
					}
				}
			}
		}
		m.inPoll.Store(true)
		err := g.Close() // from the Poll goroutine, as required
		m.inPoll.Store(false)
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
	case <-time.After(60 * time.Second):
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

func testGroupReadersShareAndResume(t *testing.T, f Factory) {
	t.Run("cooperative", func(t *testing.T) { testGroupReaders(t, f, false, "") })
	t.Run("eager", func(t *testing.T) { testGroupReaders(t, f, true, "") })
	t.Run("consumer protocol", func(t *testing.T) { testGroupReaders(t, f, false, kafkaclient.GroupProtocolConsumer) })
	t.Run("unknown protocol", func(t *testing.T) {
		e := newEnv(t, f, Config{})
		g, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: e.name("g"), Topics: []string{e.name("t")}, Protocol: "next"})
		if err == nil {
			_ = g.Close()
			t.Fatal("NewGroupReader with protocol \"next\" succeeded")
		}
		if !strings.Contains(err.Error(), `"next"`) {
			t.Fatalf("NewGroupReader with protocol \"next\" = %v, want an error naming it", err)
		}
	})
}

// testGroupReaders runs two members that share a topic's partitions, then a
// third that resumes after their commits, with the given assignment
// strategy (eager or cooperative, for the classic protocol) and protocol.
func testGroupReaders(t *testing.T, f Factory, eager bool, protocol kafkaclient.GroupProtocol) {
	e := newEnv(t, f, Config{FastGroups: true, EagerGroups: eager})
	topic := e.createTopic(t, "work", 3)
	group := e.name("workers")
	obs := newGroupObs()
	mo := memberOpts{protocol: protocol}

	a := startMember(t, e, obs, "a", group, topic, mo)
	obs.waitUntil(t, "a to own all partitions", 60*time.Second, func() bool { return a.ownedCount() == 3 })
	b := startMember(t, e, obs, "b", group, topic, mo)
	obs.waitUntil(t, "a and b to share the partitions", 90*time.Second, func() bool {
		na, nb := a.ownedCount(), b.ownedCount()
		return na > 0 && nb > 0 && na+nb == 3
	})
	wantType := "classic"
	if protocol == kafkaclient.GroupProtocolConsumer {
		wantType = "consumer"
	}
	if got := groupType(t, e.brokers, group); got != wantType {
		t.Fatalf("the cluster lists group %s as a %q group, want %q", group, got, wantType)
	}

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
	c := startMember(t, e, obs, "c", group, topic, mo)
	defer c.stop(t)
	got2 := map[string]bool{}
	for len(got2) < m2 {
		select {
		case r := <-obs.records:
			if !strings.HasPrefix(string(r.Value), "second") {
				t.Fatalf("new member re-read %q at %d/%d: commits did not persist", r.Value, r.Partition, r.Offset)
			}
			got2[string(r.Value)] = true
		case <-time.After(30 * time.Second):
			t.Fatalf("new member received %d of %d records", len(got2), m2)
		}
	}
}

// A member that commits only in OnRevoked hands its partitions over with
// its progress: the member that takes them reads none of the records the
// first one read, so the commits landed before the partitions moved.
func testGroupRevokeCommitsBeforeMove(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{FastGroups: true})
	topic := e.createTopic(t, "handover", 3)
	group := e.name("handover")
	obs := newGroupObs()

	a := startMember(t, e, obs, "a", group, topic, memberOpts{commitInRevokeOnly: true})
	defer a.stop(t)
	obs.waitUntil(t, "a to own all partitions", 60*time.Second, func() bool { return a.ownedCount() == 3 })
	const n = 30
	for i := 0; i < n; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: key(i), Value: []byte(fmt.Sprint("first-", i))}, kafkaclient.AcksAll)
	}
	for i := 0; i < n; i++ {
		select {
		case <-obs.records:
		case <-time.After(30 * time.Second):
			t.Fatalf("a received %d of %d records", i, n)
		}
	}
	b := startMember(t, e, obs, "b", group, topic, memberOpts{commitInRevokeOnly: true})
	defer b.stop(t)
	obs.waitUntil(t, "a and b to share the partitions", 90*time.Second, func() bool {
		na, nb := a.ownedCount(), b.ownedCount()
		return na > 0 && nb > 0 && na+nb == 3
	})
	// b owns partitions now; anything it re-read would be on the channel
	// soon. A marker record per partition bounds the wait.
	for p := int32(0); p < 3; p++ {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: p, Value: []byte(fmt.Sprint("marker-", p))}, kafkaclient.AcksAll)
	}
	markers := 0
	for markers < 3 {
		select {
		case r := <-obs.records:
			if strings.HasPrefix(string(r.Value), "first-") {
				t.Fatalf("%q at %d/%d read again after the rebalance: OnRevoked's commit did not land before the partition moved", r.Value, r.Partition, r.Offset)
			}
			markers++
		case <-time.After(30 * time.Second):
			t.Fatalf("received %d of 3 markers", markers)
		}
	}
}

// A group without committed offsets and StartAtLatest skips what is already
// in the topic.
func testGroupStartAtLatest(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{FastGroups: true})
	topic := e.createTopic(t, "fromend", 1)
	for i := 0; i < 3; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("old")}, kafkaclient.AcksAll)
	}
	obs := newGroupObs()
	a := startMember(t, e, obs, "a", e.name("fromend"), topic, memberOpts{startAtLatest: true})
	defer a.stop(t)
	obs.waitUntil(t, "a to own the partition", 60*time.Second, func() bool { return a.ownedCount() == 1 })
	// The start offset is resolved after the assignment: keep producing
	// until a new record arrives, and check no old one does.
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("new")}, kafkaclient.AcksAll, func(*kafkaclient.Record, error) {})
		select {
		case r := <-obs.records:
			if string(r.Value) != "new" {
				t.Fatalf("read %q at offset %d: StartAtLatest not honoured", r.Value, r.Offset)
			}
			return
		case <-tick.C:
		case <-deadline:
			t.Fatal("no record within 30s")
		}
	}
}

// testGroupMemberWithNothingLearnsItJoined: in a group with more members than
// partitions, the member left without a partition still gets OnAssigned (with
// an empty list), so that it can tell it joined.
func testGroupMemberWithNothingLearnsItJoined(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{FastGroups: true})
	topic := e.createTopic(t, "one", 1)
	obs := newGroupObs()
	group := e.name("crowded")
	a := startMember(t, e, obs, "a", group, topic, memberOpts{})
	defer a.stop(t)
	obs.waitUntil(t, "a to own the partition", 60*time.Second, func() bool { return a.ownedCount() == 1 })
	b := startMember(t, e, obs, "b", group, topic, memberOpts{})
	defer b.stop(t)
	obs.waitUntil(t, "b to be told its (empty) assignment", 60*time.Second, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.assigns > 0
	})
	if a.ownedCount()+b.ownedCount() != 1 {
		t.Fatalf("a owns %d, b owns %d partitions of 1", a.ownedCount(), b.ownedCount())
	}
}

// groupType asks the cluster at brokers (ListGroups v5, with a client of its
// own) which protocol group speaks: "classic" or "consumer".
func groupType(t *testing.T, brokers, group string) string {
	t.Helper()
	kc, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatalf("a client to list the groups: %v", err)
	}
	defer kc.Close()
	req := kmsg.NewPtrListGroupsRequest()
	shards := kc.RequestSharded(ctxT(t, 30*time.Second), req)
	for _, sh := range shards {
		if sh.Err != nil {
			t.Fatalf("ListGroups: %v", sh.Err)
		}
		for _, g := range sh.Resp.(*kmsg.ListGroupsResponse).Groups {
			if g.Group == group {
				return g.GroupType
			}
		}
	}
	t.Fatalf("ListGroups does not list group %s", group)
	return ""
}

// testGroupPauseResume: a member paused (kafkaclient.Pauser) reads no
// record, whether paused before it joined or after, and across a
// rebalance that takes a partition from it and gives it back; it stays in
// the group meanwhile (the other member's arrival and departure move
// partitions to and from it); Resume reads on from the first record not
// read, each record once.
func testGroupPauseResume(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{FastGroups: true})
	topic := e.createTopic(t, "paused", 2)
	for p := range int32(2) {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: p, Value: fmt.Appendf(nil, "old-%d", p)}, kafkaclient.AcksAll)
	}
	obs := newGroupObs()
	group := e.name("paused")
	a := startMember(t, e, obs, "a", group, topic, memberOpts{})
	defer a.stop(t)
	pa, ok := a.g.(kafkaclient.Pauser)
	if !ok {
		t.Skipf("%s's group reader does not implement kafkaclient.Pauser", f.Name)
	}
	pa.Pause() // while it joins
	obs.waitUntil(t, "a to own both partitions", 60*time.Second, func() bool { return a.ownedCount() == 2 })
	expectNoRecord(t, obs, "a paused before it joined")
	pa.Resume()
	got := map[string]bool{}
	for range 2 {
		got[string(awaitRecord(t, obs).Value)] = true
	}
	if !got["old-0"] || !got["old-1"] {
		t.Fatalf("after Resume read %v, want old-0 and old-1", got)
	}

	pa.Pause()
	pa.Pause() // twice: harmless
	for p := range int32(2) {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: p, Value: fmt.Appendf(nil, "new-%d", p)}, kafkaclient.AcksAll)
	}
	b := startMember(t, e, obs, "b", group, topic, memberOpts{})
	obs.waitUntil(t, "a and b to own a partition each", 60*time.Second, func() bool { return a.ownedCount() == 1 && b.ownedCount() == 1 })
	a.mu.Lock()
	var kept int32
	for p := range a.owned {
		kept = p
	}
	a.mu.Unlock()
	if r := awaitRecord(t, obs); r.Partition == kept || string(r.Value) != fmt.Sprintf("new-%d", r.Partition) {
		t.Fatalf("read %q of partition %d while a, paused, owns partition %d; want only b's new record", r.Value, r.Partition, kept)
	}
	b.stop(t)
	obs.waitUntil(t, "a to own both partitions again", 60*time.Second, func() bool { return a.ownedCount() == 2 })
	expectNoRecord(t, obs, "a paused across a rebalance")
	pa.Resume()
	if r := awaitRecord(t, obs); r.Partition != kept || string(r.Value) != fmt.Sprintf("new-%d", kept) {
		t.Fatalf("after Resume read %q of partition %d, want new-%d", r.Value, r.Partition, kept)
	}
	expectNoRecord(t, obs, "a read every record")
}

// testGroupPauseManyPartitions: with each protocol, a member paused while
// it joins a topic of many partitions, each with records, reads none of
// them, and after Resume reads each once, in order; paused again while
// every partition gets records more, it reads none of them while a second
// member joins and takes some of its partitions (which reads those
// partitions' records) and leaves again; resumed, it reads the rest, and
// then every record that comes, on every partition (none left paused by
// the partitions' move away and back). Many partitions starting at once
// is where librdkafka drops a pause, or a partition's start, that races
// it: the confluent reader then read records while paused, or never read
// a partition again.
func testGroupPauseManyPartitions(t *testing.T, f Factory) {
	t.Run("cooperative", func(t *testing.T) { pauseMany(t, f, false, "") })
	t.Run("eager", func(t *testing.T) { pauseMany(t, f, true, "") })
	t.Run("consumer protocol", func(t *testing.T) { pauseMany(t, f, false, kafkaclient.GroupProtocolConsumer) })
}

func pauseMany(t *testing.T, f Factory, eager bool, protocol kafkaclient.GroupProtocol) {
	const parts, perRound = 24, 2
	e := newEnv(t, f, Config{FastGroups: true, EagerGroups: eager})
	topic := e.createTopic(t, "many", parts)
	group := e.name("many")
	mo := memberOpts{protocol: protocol}
	produceRound := func(round string) map[string]bool {
		want := map[string]bool{}
		for i := range perRound {
			for p := range int32(parts) {
				v := fmt.Sprintf("%s-%d-%d", round, p, i)
				e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: p, Value: []byte(v)}, kafkaclient.AcksAll)
				want[v] = true
			}
		}
		return want
	}
	o := newGroupObs()
	last := map[int32]int64{} // the offset last read, per partition
	// readN reads n records, each one of want (removed from it once read)
	// and each after the one read before it of its partition.
	readN := func(want map[string]bool, n int, when string) {
		t.Helper()
		for range n {
			r := awaitRecord(t, o)
			if !want[string(r.Value)] {
				t.Fatalf("%s: read %q of partition %d at offset %d: not expected, or read twice", when, r.Value, r.Partition, r.Offset)
			}
			if prev, ok := last[r.Partition]; ok && r.Offset <= prev {
				t.Fatalf("%s: read offset %d of partition %d after offset %d", when, r.Offset, r.Partition, prev)
			}
			last[r.Partition] = r.Offset
			delete(want, string(r.Value))
		}
	}

	want := produceRound("old")
	a := startMember(t, e, o, "a", group, topic, mo)
	defer a.stop(t)
	pa, ok := a.g.(kafkaclient.Pauser)
	if !ok {
		t.Skipf("%s's group reader does not implement kafkaclient.Pauser", f.Name)
	}
	pa.Pause() // while it joins
	o.waitUntil(t, "a to own every partition", 60*time.Second, func() bool { return a.ownedCount() == parts })
	expectNoRecord(t, o, "a paused before it joined")
	pa.Resume()
	readN(want, len(want), "after Resume")

	pa.Pause()
	want = produceRound("paused")
	expectNoRecord(t, o, "a paused again")
	b := startMember(t, e, o, "b", group, topic, mo)
	o.waitUntil(t, "a and b to share the partitions", 90*time.Second, func() bool {
		na, nb := a.ownedCount(), b.ownedCount()
		return na > 0 && nb > 0 && na+nb == parts
	})
	readN(want, perRound*b.ownedCount(), "b's share, a paused")
	b.stop(t)
	o.waitUntil(t, "a to own every partition again", 60*time.Second, func() bool { return a.ownedCount() == parts })
	expectNoRecord(t, o, "a paused across the rebalances")
	pa.Resume()
	readN(want, len(want), "a's share after Resume")

	want = produceRound("resumed")
	readN(want, len(want), "after the partitions came back")
	expectNoRecord(t, o, "a read every record")
}

// awaitRecord returns the next record a member of obs read (bounded).
func awaitRecord(t *testing.T, obs *groupObs) *kafkaclient.Record {
	t.Helper()
	select {
	case r := <-obs.records:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no record read within 30 s")
		return nil
	}
}

// expectNoRecord checks that no member of obs reads a record for a second:
// the most a test can show of reads that must not happen.
func expectNoRecord(t *testing.T, obs *groupObs, why string) {
	t.Helper()
	select {
	case r := <-obs.records:
		t.Fatalf("%s: read %q of partition %d at offset %d", why, r.Value, r.Partition, r.Offset)
	case <-time.After(time.Second):
	}
}
