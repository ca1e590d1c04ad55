package kafkaclienttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Run runs the whole suite against f, one subtest per behaviour.
func Run(t *testing.T, f Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"CreateTopicsAndPartitions", testCreateTopicsAndPartitions},
		{"CreatePartitions", testCreatePartitions},
		{"Brokers", testBrokers},
		{"OffsetsEarliestLatest", testOffsetsEarliestLatest},
		{"KeyPartitioningMatchesJava", testKeyPartitioningMatchesJava},
		{"RecordShapesRoundTrip", testRecordShapesRoundTrip},
		{"ReaderAtLatestGetsFirstRecord", testReaderAtLatestGetsFirstRecord},
		{"ReaderReassignCancelAndClose", testReaderReassignCancelAndClose},
		{"ReaderReassignKeepsOtherPartitions", testReaderReassignKeepsOtherPartitions},
		{"ReaderBatches", testReaderBatches},
		{"ReadCommittedReadsPlainRecords", testReadCommittedReadsPlainRecords},
		{"LargeRecord", testLargeRecord},
		{"AcksLevels", testAcksLevels},
		{"FlushSendsLingeringRecords", testFlushSendsLingeringRecords},
		{"FlushWaitsForRefusedRecords", testFlushWaitsForRefusedRecords},
		{"CloseDeliversFirstRecords", testCloseDeliversFirstRecords},
		{"ProduceToClosedBrokerFails", testProduceToClosedBrokerFails},
		{"ProduceToMissingTopicFails", testProduceToMissingTopicFails},
		{"ProduceNotAuthorizedFails", testProduceNotAuthorizedFails},
		{"LookupNotAuthorizedFails", testLookupNotAuthorizedFails},
		{"ReaderNotAuthorizedFails", testReaderNotAuthorizedFails},
		{"GroupReaderNotAuthorizedFails", testGroupReaderNotAuthorizedFails},
		{"QueueFullAndCloseFailPending", testQueueFullAndCloseFailPending},
		{"DebugLogsReachSlog", testDebugLogsReachSlog},
		{"CallsAfterClose", testCallsAfterClose},
		{"GroupReadersShareAndResume", testGroupReadersShareAndResume},
		{"GroupRevokeCommitsBeforeMove", testGroupRevokeCommitsBeforeMove},
		{"GroupStartAtLatest", testGroupStartAtLatest},
		{"GroupPauseResume", testGroupPauseResume},
		{"GroupPauseManyPartitions", testGroupPauseManyPartitions},
		{"GroupMemberWithNothingLearnsItJoined", testGroupMemberWithNothingLearnsItJoined},
		{"Transactions", testTransactions},
		{"TxnCloseFailsPendingRecords", testTxnCloseFailsPendingRecords},
		{"TxnProduceAfterClose", testTxnProduceAfterClose},
		{"TxnCommitGroupMoved", testTxnCommitGroupMoved},
		{"TxnRefusedRecordLeftOut", testTxnRefusedRecordLeftOut},
		{"TxnRefusedRecordConcurrentProducers", testTxnRefusedRecordConcurrentProducers},
		{"TxnRefusedRecordCommitWithoutFlush", testTxnRefusedRecordCommitWithoutFlush},
		{"CallerTimestampsAndNullHeaders", testCallerTimestampsAndNullHeaders},
		{"RecordTooLargeFails", testRecordTooLargeFails},
		{"TopicMaxMessageBytes", testTopicMaxMessageBytes},
		{"TopicConfigInForce", testTopicConfigInForce},
		{"SmallRecordsToLimitedTopic", testSmallRecordsToLimitedTopic},
		{"TopicRecreated", testTopicRecreated},
		{"TopicIDChangesWhenRecreated", testTopicIDChangesWhenRecreated},
		{"GroupTopicRecreated", testGroupTopicRecreated},
		{"KcAdvProduceFaults", testKcAdvProduceFaults},
		{"KcAdvCommitRetriesTimedOut", testKcAdvCommitRetriesTimedOut},
		{"KcAdvTxnProducerWaitsForBroker", testKcAdvTxnProducerWaitsForBroker},
		{"KcAdvCommittedOffsetDeletedIsWarned", testKcAdvCommittedOffsetDeletedIsWarned},
		{"KcAdvFetchErrorNoHotLoop", testKcAdvFetchErrorNoHotLoop},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, f) })
	}
}

func key(i int) []byte { return []byte(fmt.Sprintf("key-%d", i)) }

func testCreateTopicsAndPartitions(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	ctx := ctxT(t, 30*time.Second)
	t3, tcfg, missing := e.name("t3"), e.name("tcfg"), e.name("missing")
	specs := []kafkaclient.TopicSpec{
		{Name: t3, Partitions: 3},
		{Name: tcfg, Partitions: 1, ReplicationFactor: -1, Config: map[string]string{"max.message.bytes": "4194304"}},
	}
	// An unknown topic first, so that a client caching metadata has it
	// cached as unknown.
	if _, err := e.client.Partitions(ctx, missing); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Partitions(missing) = %v, want ErrUnknownTopic", err)
	}
	if _, err := e.client.Offsets(ctx, t3, []int32{0}, kafkaclient.Latest); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Offsets(t3) before creation = %v, want ErrUnknownTopic", err)
	}
	for i := 0; i < 2; i++ { // the second time every topic exists already
		if err := e.client.CreateTopics(ctx, specs); err != nil {
			t.Fatalf("CreateTopics #%d: %v", i+1, err)
		}
	}
	parts, err := e.client.Partitions(ctx, t3)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(parts, []int32{0, 1, 2}) {
		t.Fatalf("partitions = %v", parts)
	}
	// Known now, whatever was cached.
	if offs, err := e.client.Offsets(ctx, t3, []int32{0, 1, 2}, kafkaclient.Latest); err != nil || len(offs) != 3 {
		t.Fatalf("Offsets(t3) = %v, %v", offs, err)
	}
	if _, err := e.client.Partitions(ctx, missing); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Partitions(missing) = %v, want ErrUnknownTopic", err)
	}
	if _, err := e.client.Offsets(ctx, missing, []int32{0}, kafkaclient.Latest); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Offsets(missing) = %v, want ErrUnknownTopic", err)
	}
	if _, err := e.client.Offsets(ctx, t3, []int32{7}, kafkaclient.Latest); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Offsets(t3, partition 7) = %v, want ErrUnknownTopic", err)
	}
	// The missing topic was not auto-created by the lookups.
	if _, err := e.client.Partitions(ctx, missing); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("Partitions(missing) again = %v", err)
	}
	if err := e.client.CreateTopics(ctx, nil); err != nil {
		t.Fatalf("CreateTopics(nil) = %v", err)
	}
}

// testCreatePartitions grows a topic, produces to a new partition at once
// and reads the record back; raising a topic to fewer partitions than it has
// changes nothing and is no error; an unknown topic is ErrUnknownTopic.
func testCreatePartitions(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	ctx := ctxT(t, 60*time.Second)
	topic := e.createTopic(t, "grow", 1)
	// Known to the client's metadata as it was, before it grows.
	e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("before")}, kafkaclient.AcksAll)
	if err := e.client.CreatePartitions(ctx, topic, 3); err != nil {
		t.Fatalf("CreatePartitions(3): %v", err)
	}
	if parts, err := e.client.Partitions(ctx, topic); err != nil || !slices.Equal(parts, []int32{0, 1, 2}) {
		t.Fatalf("partitions after CreatePartitions(3) = %v, %v; want [0 1 2]", parts, err)
	}
	got := e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 2, Value: []byte("new")}, kafkaclient.AcksAll)
	if got.Partition != 2 || got.Offset != 0 {
		t.Fatalf("record produced to the new partition 2 delivered at %d/%d", got.Partition, got.Offset)
	}
	offs, err := e.client.Offsets(ctx, topic, []int32{1, 2}, kafkaclient.Latest)
	if err != nil || offs[1] != 0 || offs[2] != 1 {
		t.Fatalf("end offsets of the new partitions = %v, %v; want 1: 0, 2: 1", offs, err)
	}
	rd := e.readerFrom(t, topic, kafkaclient.Earliest)
	recs := readN(t, rd, 2, 30*time.Second)
	var newRec *kafkaclient.Record
	for _, r := range recs {
		if r.Partition == 2 {
			newRec = r
		}
	}
	if newRec == nil || string(newRec.Value) != "new" {
		t.Fatalf("read back %d records, none on partition 2 with value \"new\"", len(recs))
	}
	for _, total := range []int32{3, 2} {
		if err := e.client.CreatePartitions(ctx, topic, total); err != nil {
			t.Fatalf("CreatePartitions(%d) on a topic of 3: %v; want no error", total, err)
		}
	}
	if parts, err := e.client.Partitions(ctx, topic); err != nil || len(parts) != 3 {
		t.Fatalf("partitions = %v, %v; want 3 still", parts, err)
	}
	if err := e.client.CreatePartitions(ctx, e.name("missing"), 2); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("CreatePartitions(missing) = %v, want ErrUnknownTopic", err)
	}
}

// testBrokers checks the broker count on the suite's cluster (at least one
// per address of its bootstrap list: the suite's clusters list every
// broker) and on an embedded cluster of three brokers, bootstrapped from
// one of them.
func testBrokers(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	ctx := ctxT(t, 30*time.Second)
	n, err := e.client.Brokers(ctx)
	if err != nil {
		t.Fatalf("Brokers: %v", err)
	}
	if listed := len(strings.Split(e.brokers, ",")); n < listed {
		t.Fatalf("Brokers = %d on %s, want at least %d", n, e.brokers, listed)
	}

	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatalf("starting a three-broker embedded cluster: %v", err)
	}
	t.Cleanup(c.Close)
	three := newEnvOn(t, f, c.ListenAddrs()[0], Config{})
	if n, err := three.client.Brokers(ctx); err != nil || n != 3 {
		t.Fatalf("Brokers on a three-broker cluster = %d, %v; want 3", n, err)
	}
}

func testOffsetsEarliestLatest(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "offs", 2)
	ctx := ctxT(t, 30*time.Second)
	for i := 0; i < 5; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 1, Value: []byte("x")}, kafkaclient.AcksAll)
	}
	first, err := e.client.Offsets(ctx, topic, []int32{0, 1}, kafkaclient.Earliest)
	if err != nil {
		t.Fatal(err)
	}
	last, err := e.client.Offsets(ctx, topic, []int32{0, 1}, kafkaclient.Latest)
	if err != nil {
		t.Fatal(err)
	}
	if first[0] != 0 || first[1] != 0 || last[0] != 0 || last[1] != 5 {
		t.Fatalf("earliest %v, latest %v; want {0:0 1:0}, {0:0 1:5}", first, last)
	}
	if got, err := e.client.Offsets(ctx, topic, nil, kafkaclient.Latest); err != nil || len(got) != 0 {
		t.Fatalf("Offsets of no partitions = %v, %v", got, err)
	}
}

func testKeyPartitioningMatchesJava(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "keyed", 3)
	rd := e.readerFrom(t, topic, kafkaclient.Latest)
	const n = 60
	want := map[string]int32{}
	for i := 0; i < n; i++ {
		k := key(i)
		r := e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: k, Value: []byte("v")}, kafkaclient.AcksAll)
		want[string(k)] = kafkaclient.KeyPartition(k, 3)
		if r.Partition != want[string(k)] {
			t.Errorf("key %s delivered to partition %d, Java's partitioner says %d", k, r.Partition, want[string(k)])
		}
		if r.Offset < 0 {
			t.Errorf("key %s delivered at offset %d", k, r.Offset)
		}
	}
	// The records are stored where the delivery reports say.
	seen := map[int32]bool{}
	for _, r := range readN(t, rd, n, 30*time.Second) {
		seen[r.Partition] = true
		if r.Partition != want[string(r.Key)] {
			t.Errorf("key %s read from partition %d, want %d", r.Key, r.Partition, want[string(r.Key)])
		}
	}
	if len(seen) != 3 {
		t.Errorf("60 keys used only partitions %v", seen)
	}
	// Unkeyed records go somewhere valid; an explicit partition is kept.
	r := e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Value: []byte("no key")}, kafkaclient.AcksAll)
	if r.Partition < 0 || r.Partition > 2 {
		t.Errorf("unkeyed record delivered to partition %d", r.Partition)
	}
	k := key(1)
	other := (kafkaclient.KeyPartition(k, 3) + 1) % 3
	if r := e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: other, Key: k, Value: []byte("v")}, kafkaclient.AcksAll); r.Partition != other {
		t.Errorf("record for partition %d delivered to %d", other, r.Partition)
	}
	// A partition that does not exist fails the record.
	ch := make(chan error, 1)
	e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 9, Value: []byte("v")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { ch <- err })
	select {
	case err := <-ch:
		if err == nil {
			t.Error("record for partition 9 of 3 delivered")
		}
	case <-time.After(30 * time.Second):
		t.Error("record for partition 9 of 3: no delivery report within 30s")
	}
}

func testRecordShapesRoundTrip(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "shapes", 1)
	rd := e.readerFrom(t, topic, kafkaclient.Latest)
	ts := time.UnixMilli(1_700_000_000_123)
	in := []*kafkaclient.Record{
		{Key: []byte("k"), Value: []byte("data"), Timestamp: ts, Headers: []kafkaclient.Header{
			{Key: "zilla:service", Value: []byte("example.Echo")},
			{Key: "b", Value: []byte("1")},
			{Key: "a", Value: []byte("2")},
			{Key: "b", Value: []byte("3")}, // repeated name, order kept
			{Key: "empty", Value: []byte{}},
		}},
		{Key: []byte("k"), Value: nil, Headers: []kafkaclient.Header{{Key: "zilla:status", Value: []byte("0")}}}, // tombstone
		{Key: []byte("k"), Value: []byte{}}, // empty value
		{Key: nil, Value: []byte("no key")},
		{Key: []byte{}, Value: []byte("empty key")}, // a key_field left unset
		{Key: []byte("k"), Value: []byte("8 headers"), Headers: manyHeaders(8)},
		{Key: []byte("k"), Value: []byte("9 headers"), Headers: manyHeaders(9)},
		{Key: []byte("k"), Value: []byte("20 headers"), Headers: manyHeaders(20)},
	}
	before := time.Now().Add(-time.Second)
	for _, r := range in {
		r.Topic = topic
		r.Partition = 0
		e.produceSync(t, r, kafkaclient.AcksAll)
	}
	out := readN(t, rd, len(in), 30*time.Second)
	for i, got := range out {
		want := in[i]
		if got.Topic != topic || got.Partition != 0 || got.Offset != int64(i) {
			t.Errorf("#%d at %s/%d@%d", i, got.Topic, got.Partition, got.Offset)
		}
		if !bytes.Equal(got.Key, want.Key) || (got.Key == nil) != (want.Key == nil) {
			t.Errorf("#%d key %q (nil %v), want %q (nil %v)", i, got.Key, got.Key == nil, want.Key, want.Key == nil)
		}
		if !bytes.Equal(got.Value, want.Value) || (got.Value == nil) != (want.Value == nil) {
			t.Errorf("#%d value %q (nil %v), want %q (nil %v)", i, got.Value, got.Value == nil, want.Value, want.Value == nil)
		}
		if len(got.Headers) != len(want.Headers) {
			t.Errorf("#%d headers %v, want %v", i, got.Headers, want.Headers)
		} else {
			for j := range got.Headers {
				if got.Headers[j].Key != want.Headers[j].Key || !bytes.Equal(got.Headers[j].Value, want.Headers[j].Value) {
					t.Errorf("#%d header %d = %v, want %v", i, j, got.Headers[j], want.Headers[j])
				}
			}
		}
	}
	// A record's headers are its own: appending to them leaves the next
	// record's as they were.
	for i := 0; i+1 < len(out); i++ {
		next := slices.Clone(out[i+1].Headers)
		out[i].Headers = append(out[i].Headers, kafkaclient.Header{Key: "appended"})
		if !slices.EqualFunc(out[i+1].Headers, next, func(a, b kafkaclient.Header) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
			t.Errorf("appending a header to record #%d changed record #%d's", i, i+1)
		}
	}
	if !out[0].Timestamp.Equal(ts) {
		t.Errorf("timestamp %v, want %v", out[0].Timestamp, ts)
	}
	if out[1].Timestamp.Before(before) || out[1].Timestamp.After(time.Now()) {
		t.Errorf("zero timestamp produced as %v, want about now", out[1].Timestamp)
	}
}

func testReaderAtLatestGetsFirstRecord(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "latest", 3)
	// Some history, which must not be read.
	for i := 0; i < 6; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: key(i), Value: []byte("old")}, kafkaclient.AcksAll)
	}
	rd := e.readerFrom(t, topic, kafkaclient.Latest)
	// Produce at once after assigning: the very first record must arrive.
	e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Key: []byte("first"), Value: []byte("new")}, kafkaclient.AcksAll, func(*kafkaclient.Record, error) {})
	got := readN(t, rd, 1, 20*time.Second)
	if len(got) != 1 || string(got[0].Value) != "new" {
		t.Fatalf("got %d records, first %q", len(got), got[0].Value)
	}
}

func testReaderReassignCancelAndClose(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "re", 1)
	for i := 0; i < 5; i++ {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte{byte('0' + i)}}, kafkaclient.AcksAll)
	}
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 3}}); err != nil {
		t.Fatal(err)
	}
	got := readN(t, rd, 2, 20*time.Second)
	if got[0].Offset != 3 || got[1].Offset != 4 {
		t.Fatalf("offsets %d, %d", got[0].Offset, got[1].Offset)
	}
	// Assigning again moves the position.
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 1}}); err != nil {
		t.Fatal(err)
	}
	got = readN(t, rd, 4, 20*time.Second)
	if got[0].Offset != 1 || got[3].Offset != 4 {
		t.Fatalf("after reassign: offsets %d..%d", got[0].Offset, got[3].Offset)
	}
	// Nothing more: Poll ends with the context.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := rd.Poll(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Poll on an idle partition = %v, want DeadlineExceeded", err)
	}
	// Close while Poll waits.
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		_, err := rd.Poll(context.Background())
		errc <- err
	}()
	<-started
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, kafkaclient.ErrClosed) {
			t.Fatalf("Poll during Close = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Poll did not return after Close")
	}
	if err := rd.Assign(nil); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Fatalf("Assign after Close = %v", err)
	}
	if _, err := rd.Poll(context.Background()); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Fatalf("Poll after Close = %v", err)
	}
}

// Moving one partition of a reader leaves the others where they were.
func testReaderReassignKeepsOtherPartitions(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "keep", 2)
	for p := int32(0); p < 2; p++ {
		for i := 0; i < 3; i++ {
			e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: p, Value: []byte(fmt.Sprint(p, "-", i))}, kafkaclient.AcksAll)
		}
	}
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 0}, {Topic: topic, Partition: 1, Offset: 3}}); err != nil {
		t.Fatal(err)
	}
	got := readN(t, rd, 3, 20*time.Second)
	for _, r := range got {
		if r.Partition != 0 {
			t.Fatalf("read %d@%d before any record of partition 1 was produced", r.Partition, r.Offset)
		}
	}
	// Move partition 0 back; write to partition 1.
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 2}}); err != nil {
		t.Fatal(err)
	}
	e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 1, Value: []byte("1-3")}, kafkaclient.AcksAll)
	seen := map[string]int{}
	for _, r := range readN(t, rd, 2, 20*time.Second) {
		seen[fmt.Sprint(r.Partition, "@", r.Offset)]++
	}
	if seen["0@2"] != 1 || seen["1@3"] != 1 || len(seen) != 2 {
		t.Fatalf("after moving partition 0 to offset 2: read %v, want 0@2 and 1@3", seen)
	}
}

// Poll returns what is buffered in one go, not a record at a time.
func testReaderBatches(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "batch", 1)
	const n = 200
	done := make(chan error, n)
	for i := 0; i < n; i++ {
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { done <- err })
	}
	for i := 0; i < n; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 0}}); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	polls, total := 0, 0
	for total < n {
		b, err := rd.Poll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range b {
			if r.Offset != int64(total+i) {
				t.Fatalf("record %d at offset %d", total+i, r.Offset)
			}
		}
		polls++
		total += len(b)
	}
	if polls > n/4 {
		t.Errorf("%d records took %d polls: Poll does not batch", n, polls)
	}
}

// A read-committed reader reads records that were not written in a
// transaction.
func testReadCommittedReadsPlainRecords(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "rc", 1)
	e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("plain")}, kafkaclient.AcksAll)
	rd, err := e.client.NewReader(kafkaclient.ReaderConfig{ReadCommitted: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	if err := rd.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 0}}); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, rd, 1, 20*time.Second); string(got[0].Value) != "plain" {
		t.Fatalf("read %q", got[0].Value)
	}
}

func testLargeRecord(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "big", 1)
	rd := e.readerFrom(t, topic, kafkaclient.Latest)
	val := make([]byte, 1<<20)
	for i := range val {
		val[i] = byte(i * 7)
	}
	e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Key: []byte("k"), Value: val}, kafkaclient.AcksAll)
	got := readN(t, rd, 1, 30*time.Second)
	if !bytes.Equal(got[0].Value, val) {
		t.Fatalf("1 MiB value corrupted (len %d)", len(got[0].Value))
	}
}

func testAcksLevels(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "acks", 1)
	rd := e.readerFrom(t, topic, kafkaclient.Latest)
	for _, a := range []kafkaclient.Acks{kafkaclient.AcksAll, kafkaclient.AcksLeader, kafkaclient.AcksNone} {
		r := e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte(a.String())}, a)
		if a != kafkaclient.AcksNone && r.Offset < 0 {
			t.Errorf("acks=%s: offset %d", a, r.Offset)
		}
		if a == kafkaclient.AcksNone && r.Offset != -1 {
			t.Errorf("acks=0: offset %d, want -1 (unknown)", r.Offset)
		}
	}
	if err := e.client.Flush(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	got := readN(t, rd, 3, 20*time.Second)
	for i, want := range []string{"all", "1", "0"} {
		if string(got[i].Value) != want {
			t.Errorf("#%d = %q, want %q", i, got[i].Value, want)
		}
	}
	ch := make(chan error, 1)
	e.client.Produce(&kafkaclient.Record{Topic: topic, Value: []byte("x")}, kafkaclient.Acks(42), func(_ *kafkaclient.Record, err error) { ch <- err })
	if err := <-ch; err == nil {
		t.Error("Produce with acks level 42 succeeded")
	}
}

func testProduceToClosedBrokerFails(t *testing.T, f Factory) {
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	e := newEnvOn(t, f, b.Addr(), Config{DeliveryTimeout: 1500 * time.Millisecond})
	topic := e.createTopic(t, "gone", 1)
	e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll)
	b.Close()

	failed := make(chan error, 1)
	start := time.Now()
	e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("y")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { failed <- err })
	select {
	case err := <-failed:
		if err == nil {
			t.Fatal("produce to a closed broker succeeded")
		}
		t.Logf("failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("no delivery report within 30s")
	}
	// The client's complaints about the lost connection went to slog.
	e.logs.WaitFor(t, 15*time.Second, func(c LogRecord) bool {
		return c.Attrs["component"] == f.LogComponent && c.Level >= slog.LevelWarn
	})
	// After Close, Produce fails through done too.
	if err := e.client.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	after := make(chan error, 1)
	e.client.Produce(&kafkaclient.Record{Topic: topic, Value: []byte("z")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { after <- err })
	if err := <-after; !errors.Is(err, kafkaclient.ErrClosed) {
		t.Fatalf("Produce after Close: %v", err)
	}
}

func testQueueFullAndCloseFailPending(t *testing.T, f Factory) {
	// Nothing listens on port 1: records stay queued.
	c, err := f.New("127.0.0.1:1", Config{
		Logger:       slog.New(slog.DiscardHandler),
		MaxBuffered:  1,
		CloseTimeout: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	second := make(chan error, 1)
	c.Produce(&kafkaclient.Record{Topic: "t", Value: []byte("1")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { first <- err })
	c.Produce(&kafkaclient.Record{Topic: "t", Value: []byte("2")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { second <- err })
	select {
	case err := <-second:
		if !errors.Is(err, f.ErrQueueFull) {
			t.Fatalf("second produce: %v, want %v", err, f.ErrQueueFull)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a full queue did not fail the produce at once")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush = %v", err)
	}
	if err := c.Close(); err == nil {
		t.Error("Close reported no undelivered records")
	}
	select {
	case err := <-first:
		if err == nil {
			t.Fatal("undeliverable record reported delivered")
		}
		t.Logf("pending record at Close: %v", err)
	default:
		t.Fatal("Close returned before failing the pending record")
	}
	if err := c.Close(); err == nil {
		t.Error("second Close returned a different result")
	}
	if err := c.Flush(context.Background()); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Errorf("Flush after Close = %v", err)
	}
}

func testDebugLogsReachSlog(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{DebugLogs: true})
	e.createTopic(t, "logged", 1)
	c := e.logs.WaitFor(t, 15*time.Second, func(c LogRecord) bool {
		return c.Attrs["component"] == f.LogComponent && c.Level == slog.LevelDebug
	})
	if c.Msg == "" {
		t.Fatalf("empty debug log record %v", c)
	}
}

func testCallsAfterClose(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "after", 1)
	g, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: e.name("g"), Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Poll(ctxT(t, 5*time.Second)); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Errorf("GroupReader.Poll after Close = %v", err)
	}
	if err := g.Commit(ctxT(t, 5*time.Second), []kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 1}}); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Errorf("Commit after Close = %v", err)
	}
	if _, err := e.client.NewGroupReader(kafkaclient.GroupConfig{Topics: []string{topic}}); err == nil {
		t.Error("NewGroupReader without a group id succeeded")
	}
	if _, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: "g"}); err == nil {
		t.Error("NewGroupReader without topics succeeded")
	}
	if err := e.client.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.NewReader(kafkaclient.ReaderConfig{}); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Errorf("NewReader after Close = %v", err)
	}
	if _, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: "g", Topics: []string{topic}}); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Errorf("NewGroupReader after Close = %v", err)
	}
	if _, err := e.client.Partitions(ctxT(t, 5*time.Second), topic); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Errorf("Partitions after Close = %v", err)
	}
	if err := e.client.Flush(ctxT(t, 5*time.Second)); !errors.Is(err, kafkaclient.ErrClosed) {
		t.Errorf("Flush after Close = %v", err)
	}
}

// testProduceToMissingTopicFails: a record for a topic the cluster does not
// have fails, without being waited on until a delivery timeout, with an
// error wrapping kafkaclient.ErrUnknownTopic that names the topic (the
// gateway answers NOT_FOUND from it). The broker does not create topics on
// use (the embedded one never does; on Apache Kafka, see scripts/kafka.sh).
func testProduceToMissingTopicFails(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	missing := e.name("never-created")
	// The second record is produced once the client knows the topic is
	// missing: librdkafka then fails it in Produce itself, not in a
	// delivery report, and it must be the same error.
	for i := range 2 {
		errc := make(chan error, 1)
		start := time.Now()
		e.client.Produce(&kafkaclient.Record{Topic: missing, Partition: kafkaclient.AnyPartition, Value: []byte("x")},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		select {
		case err := <-errc:
			if !errors.Is(err, kafkaclient.ErrUnknownTopic) {
				t.Fatalf("produce %d to a missing topic: %v, want an error wrapping ErrUnknownTopic", i+1, err)
			}
			if !strings.Contains(err.Error(), missing) {
				t.Fatalf("produce %d to a missing topic: %q does not name the topic %s", i+1, err, missing)
			}
			t.Logf("%s: produce %d failed after %s: %v", f.Name, i+1, time.Since(start).Round(time.Millisecond), err)
		case <-time.After(15 * time.Second):
			t.Fatalf("produce %d to a missing topic did not fail within 15 s", i+1)
		}
	}
}

// manyHeaders returns n headers with distinct names and values.
func manyHeaders(n int) []kafkaclient.Header {
	hs := make([]kafkaclient.Header, n)
	for i := range hs {
		hs[i] = kafkaclient.Header{Key: fmt.Sprint("h", i), Value: []byte(fmt.Sprint("v", i))}
	}
	return hs
}

// testCloseDeliversFirstRecords: records produced to a topic the client
// never produced to, right before Close, are delivered by Close (the
// confluent client holds a topic's first records until it looked up the
// topic's max.message.bytes).
func testCloseDeliversFirstRecords(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	topic := e.createTopic(t, "first", 1)
	c, err := f.New(e.brokers, Config{Logger: slog.New(NewLogCapture())})
	if err != nil {
		t.Fatal(err)
	}
	var delivered atomic.Int32
	for i := range 3 {
		c.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Key: key(i), Value: []byte("v")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) {
			if err != nil {
				t.Errorf("produce: %v", err)
			}
			delivered.Add(1)
		})
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := delivered.Load(); n != 3 {
		t.Fatalf("Close returned with %d of 3 records reported", n)
	}
	rd := e.readerFrom(t, topic, kafkaclient.Earliest)
	readN(t, rd, 3, 15*time.Second)
}

// testFlushSendsLingeringRecords checks that Flush does not wait for linger:
// with a producer that would hold records back for 50 seconds, Flush
// returns once they are delivered (their done called, without error), as
// does a transaction's Flush.
// testFlushWaitsForRefusedRecords: a record the client refuses before
// it reaches the Kafka library (nil, an unknown acks level) has its done
// called on a goroutine of the client's; Flush returns only after that
// done returned, as for a record that was sent.
func testFlushWaitsForRefusedRecords(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{FastGroups: true})
	topic := e.createTopic(t, "refused", 1)
	var refused atomic.Int32
	count := func(_ *kafkaclient.Record, err error) {
		if err == nil {
			t.Errorf("a refused record was reported delivered")
		}
		refused.Add(1)
	}
	for range 3 {
		e.client.Produce(nil, kafkaclient.AcksAll, count)
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("v")}, kafkaclient.Acks(99), count)
	}
	if err := e.client.Flush(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if n := refused.Load(); n != 6 {
		t.Fatalf("Flush returned with %d of 6 refused records reported", n)
	}
}

func testFlushSendsLingeringRecords(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{Linger: 50 * time.Second, FastGroups: true})
	topic := e.createTopic(t, "linger", 1)
	var delivered atomic.Int32
	for i := range 3 {
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Key: key(i), Value: []byte("v")}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) {
			if err != nil {
				t.Errorf("produce: %v", err)
			}
			delivered.Add(1)
		})
	}
	if err := e.client.Flush(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("Flush with linger 50 s: %v", err)
	}
	if n := delivered.Load(); n != 3 {
		t.Fatalf("Flush returned with %d of 3 records reported", n)
	}
	tc, ok := e.client.(kafkaclient.TxnClient)
	if !ok {
		return
	}
	txn, err := tc.NewTxnProducer(unique("linger-"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = txn.Close() })
	delivered.Store(0)
	for i := range 3 {
		txn.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Key: key(i), Value: []byte("t")}, func(_ *kafkaclient.Record, err error) {
			if err != nil {
				t.Errorf("transactional produce: %v", err)
			}
			delivered.Add(1)
		})
	}
	if err := txn.Flush(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("transaction's Flush with linger 50 s: %v", err)
	}
	if n := delivered.Load(); n != 3 {
		t.Fatalf("transaction's Flush returned with %d of 3 records reported", n)
	}
}
