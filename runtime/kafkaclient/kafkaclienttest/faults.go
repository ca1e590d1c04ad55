package kafkaclienttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// testTxnCloseFailsPendingRecords: a transactional producer closed while
// a record of its open transaction is in flight (sent, never answered: the
// broker swallows produce requests, so the abort Close does cannot finish)
// calls that record's done, once, with an error, by the time Close has
// returned, as Client.Close does for its records.
func testTxnCloseFailsPendingRecords(t *testing.T, f Factory) {
	e, c := newFaultEnv(t, f, Config{CloseTimeout: 500 * time.Millisecond, DeliveryTimeout: time.Minute})
	tc := txnClient(t, e, f)
	topic := e.createTopic(t, "txn-close", 1)
	txn, err := tc.NewTxnProducer(unique("txn-close-"))
	if err != nil {
		t.Fatal(err)
	}
	// One record delivered, so that the partition is in the transaction.
	first := make(chan error, 1)
	txn.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("1")}, func(_ *kafkaclient.Record, err error) { first <- err })
	if err := txn.Flush(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// From now on the broker reads produce requests and never answers.
	swallowed := make(chan struct{}, 1)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		select {
		case swallowed <- struct{}{}:
		default:
		}
		return nil, nil, true
	})

	var calls atomic.Int32
	second := make(chan error, 2)
	txn.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("2")}, func(_ *kafkaclient.Record, err error) {
		calls.Add(1)
		second <- err
	})
	select {
	case <-swallowed:
	case <-time.After(30 * time.Second):
		t.Fatal("the record was not sent within 30 s")
	}
	start := time.Now()
	err = txn.Close()
	t.Logf("Close after %v: %v", time.Since(start).Round(time.Millisecond), err)
	select {
	case err := <-second:
		if err == nil {
			t.Fatal("a record of an aborted transaction, never answered by the broker, reported delivered")
		}
		t.Logf("pending record at Close: %v", err)
	default:
		select {
		case err := <-second:
			t.Fatalf("done of a pending record was called only after TxnProducer.Close returned (%v)", err)
		case <-time.After(10 * time.Second):
			t.Fatal("TxnProducer.Close returned and the pending record's done was never called")
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("done called %d times", n)
	}
}

// testTxnProduceAfterClose: Produce on a closed transactional producer
// reports kafkaclient.ErrClosed through done (as Client.Produce after Close
// does), once.
func testTxnProduceAfterClose(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	tc := txnClient(t, e, f)
	topic := e.createTopic(t, "txn-after", 1)
	txn, err := tc.NewTxnProducer(unique("txn-after-"))
	if err != nil {
		t.Fatal(err)
	}
	if err := txn.Close(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 2)
	txn.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("x")}, func(_ *kafkaclient.Record, err error) { ch <- err })
	select {
	case err := <-ch:
		if !errors.Is(err, kafkaclient.ErrClosed) {
			t.Fatalf("TxnProducer.Produce after Close: %v, want an error wrapping kafkaclient.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("TxnProducer.Produce after Close: done not called within 10 s")
	}
}

// testCallerTimestampsAndNullHeaders: records batched together keep each
// its caller-set Timestamp (also one earlier than the batch's first), in
// the delivered record and in the log; a nil header value is read back nil,
// an empty one empty.
func testCallerTimestampsAndNullHeaders(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{Linger: 50 * time.Second})
	topic := e.createTopic(t, "stamps", 1)
	rd := e.readerFrom(t, topic, kafkaclient.Latest)
	base := time.UnixMilli(1_700_000_000_000)
	stamps := []time.Time{base.Add(5 * time.Second), base, base.Add(time.Millisecond), time.Now().Add(-time.Hour).Truncate(time.Millisecond)}
	type res struct {
		r   *kafkaclient.Record
		err error
	}
	ch := make(chan res, len(stamps))
	for i, ts := range stamps {
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Key: key(i), Value: []byte("v"), Timestamp: ts,
			Headers: []kafkaclient.Header{{Key: "null", Value: nil}, {Key: "empty", Value: []byte{}}}},
			kafkaclient.AcksAll, func(r *kafkaclient.Record, err error) { ch <- res{r, err} })
	}
	if err := e.client.Flush(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	for range stamps {
		res := <-ch
		if res.err != nil {
			t.Fatal(res.err)
		}
		i := int(res.r.Key[len(res.r.Key)-1] - '0')
		if !res.r.Timestamp.Equal(stamps[i]) {
			t.Errorf("delivered record %d: Timestamp %v, want the caller's %v", i, res.r.Timestamp, stamps[i])
		}
	}
	for i, r := range readN(t, rd, len(stamps), 30*time.Second) {
		if !r.Timestamp.Equal(stamps[i]) {
			t.Errorf("record %d read with timestamp %v, want the caller's %v", i, r.Timestamp, stamps[i])
		}
		if len(r.Headers) != 2 || r.Headers[0].Value != nil || r.Headers[1].Value == nil || len(r.Headers[1].Value) != 0 {
			t.Errorf("record %d headers %#v, want null then empty", i, r.Headers)
		}
	}
}

// testRecordTooLargeFails: a record larger than its topic's
// max.message.bytes, or than kafkaclient.MaxMessageBytes, fails through
// done (once, at once rather than at a delivery timeout), and the client
// goes on delivering records.
func testRecordTooLargeFails(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{DeliveryTimeout: time.Minute})
	small := e.name("small")
	ctx := ctxT(t, 30*time.Second)
	if err := e.client.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: small, Partitions: 1, Config: map[string]string{"max.message.bytes": "100000"}}}); err != nil {
		t.Fatal(err)
	}
	big := e.createTopic(t, "big", 1)
	for _, c := range []struct {
		name  string
		topic string
		size  int
	}{
		{"over the topic's max.message.bytes", small, 200_000},
		{"over MaxMessageBytes", big, kafkaclient.MaxMessageBytes + 1<<20},
	} {
		var calls atomic.Int32
		errc := make(chan error, 2)
		start := time.Now()
		e.client.Produce(&kafkaclient.Record{Topic: c.topic, Partition: 0, Value: make([]byte, c.size)}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) {
			calls.Add(1)
			errc <- err
		})
		select {
		case err := <-errc:
			if err == nil {
				t.Errorf("%s: a %d-byte record was delivered", c.name, c.size)
			} else if !errors.Is(err, kafkaclient.ErrRecordTooLarge) {
				t.Errorf("%s: %v, want an error wrapping kafkaclient.ErrRecordTooLarge", c.name, err)
			} else {
				t.Logf("%s: failed after %v: %v", c.name, time.Since(start).Round(time.Millisecond), err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: no delivery report within 20 s", c.name)
		}
		e.produceSync(t, &kafkaclient.Record{Topic: c.topic, Partition: 0, Value: []byte("small")}, kafkaclient.AcksAll)
		if n := calls.Load(); n != 1 {
			t.Errorf("%s: done called %d times", c.name, n)
		}
	}
}

// testSmallRecordsToLimitedTopic: a burst of small records to a topic
// whose max.message.bytes is the broker's default (1 MiB), such as a topic
// created by other tools, is delivered whole. Kafka refuses a whole record
// batch larger than the topic's limit: franz-go built batches up to its
// 8 MiB bound and a burst of 20 kB records failed, every one
// MESSAGE_TOO_LARGE. A record over the limit still fails.
func testSmallRecordsToLimitedTopic(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{DeliveryTimeout: time.Minute})
	for _, tc := range []struct {
		limit, n, size int
	}{
		{1048588, 300, 20_000}, // 6 MB in all, over the limit many times
		{20_000, 300, 2_000},   // a limit below librdkafka's batch.size (1000000)
	} {
		t.Run(fmt.Sprint("limit=", tc.limit), func(t *testing.T) {
			topic := e.name(fmt.Sprint("limit-", tc.limit))
			ctx := ctxT(t, 60*time.Second)
			if err := e.client.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: topic, Partitions: 1, Config: map[string]string{"max.message.bytes": fmt.Sprint(tc.limit)}}}); err != nil {
				t.Fatal(err)
			}
			for _, acks := range []kafkaclient.Acks{kafkaclient.AcksAll, kafkaclient.AcksLeader} {
				if failed := ProduceBurst(e.client, topic, acks, tc.n, tc.size); len(failed) > 0 {
					t.Errorf("acks=%s: %d records of %d bytes to a topic with max.message.bytes %d failed: %v", acks, tc.n, tc.size, tc.limit, failed)
				}
			}
			errc := make(chan error, 1)
			e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: make([]byte, 2*tc.limit)}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
			select {
			case err := <-errc:
				if err == nil {
					t.Errorf("a %d-byte record to a topic with max.message.bytes %d was delivered", 2*tc.limit, tc.limit)
				}
			case <-ctx.Done():
				t.Fatal("no delivery report for a record over the topic's limit")
			}
		})
	}
}

// testTopicRecreated: a topic deleted and created again while the client
// produces to it and a reader reads it (what a developer resetting a topic
// does). Records produced meanwhile may fail; then the client produces to
// the new topic again, and the reader reads the new topic's records from
// its start. franz-go keeps the topic's old id and failed every record and
// fetch with UNKNOWN_TOPIC_ID until the process restarted; librdkafka's
// idempotent producer stops with a fatal error, after which the adapter
// makes a new one.
func testTopicRecreated(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{DeliveryTimeout: 5 * time.Second})
	topic := e.createTopic(t, "recreated", 1)
	for _, v := range []string{"old-0", "old-1"} {
		e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte(v)}, kafkaclient.AcksAll)
	}
	rd := e.readerFrom(t, topic, kafkaclient.Earliest)
	readN(t, rd, 2, 15*time.Second)

	ctx := ctxT(t, 60*time.Second)
	e.recreateTopic(t, ctx, topic)
	e.produceUntilTaken(t, ctx, topic)
	// The reader reads the new topic: from its start, or, where the client
	// learnt of the new log only after some records, from a later one; a
	// record more every poll that finds nothing.
	for i := 0; ; i++ {
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		recs, err := rd.Poll(pctx)
		cancel()
		if ctx.Err() != nil {
			t.Fatalf("the reader of the topic created again read no new record within 60 s: %v", err)
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("poll: %v", err)
		}
		for _, r := range recs {
			if !strings.HasPrefix(string(r.Value), "new-") {
				t.Fatalf("the reader read %q at offset %d after the topic was created again", r.Value, r.Offset)
			}
		}
		if len(recs) > 0 {
			return
		}
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte(fmt.Sprintf("new-more-%d", i))}, kafkaclient.AcksAll, func(*kafkaclient.Record, error) {})
	}
}

// testTopicIDChangesWhenRecreated: a client that looks up topic ids
// (kafkaclient.TopicIdentifier) gives a topic the same non-zero id at each
// look, another once the topic was deleted and created again, and
// ErrUnknownTopic for a topic that does not exist.
func testTopicIDChangesWhenRecreated(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	ti, ok := e.client.(kafkaclient.TopicIdentifier)
	if !ok {
		t.Fatalf("%T does not look up topic ids (kafkaclient.TopicIdentifier)", e.client)
	}
	topic := e.createTopic(t, "topicid", 1)
	ctx := ctxT(t, 60*time.Second)
	first, err := ti.TopicID(ctx, topic)
	if err != nil || first == ([16]byte{}) {
		t.Fatalf("TopicID of a topic just created: %x, %v; want a non-zero id", first, err)
	}
	if again, err := ti.TopicID(ctx, topic); err != nil || again != first {
		t.Fatalf("TopicID again: %x, %v; want %x", again, err, first)
	}
	e.recreateTopic(t, ctx, topic)
	if next, err := ti.TopicID(ctx, topic); err != nil || next == first || next == ([16]byte{}) {
		t.Fatalf("TopicID after the topic was deleted and created again: %x, %v; want a non-zero id other than %x", next, err, first)
	}
	if _, err := ti.TopicID(ctx, unique("missing-")); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("TopicID of a missing topic: %v; want ErrUnknownTopic", err)
	}
}

// recreateTopic deletes topic and creates it again (one partition).
func (e *env) recreateTopic(t *testing.T, ctx context.Context, topic string) {
	t.Helper()
	admin, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if resp, err := kadm.NewClient(admin).DeleteTopics(ctx, topic); err != nil || resp.Error() != nil {
		t.Fatalf("deleting %s: %v %v", topic, err, resp.Error())
	}
	for { // the broker deletes a topic after it answered: create it again once it may
		err := e.client.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: topic, Partitions: 1}})
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("creating %s again: %v", topic, err)
		}
	}
}

// produceUntilTaken produces records "new-<n>" to partition 0 of topic, one
// at a time, each awaited, until one is delivered (a client learning that
// the topic was created again may fail a few), or ctx ends.
func (e *env) produceUntilTaken(t *testing.T, ctx context.Context, topic string) {
	t.Helper()
	var last error
	for i := 0; ; i++ {
		if ctx.Err() != nil {
			t.Fatalf("no record delivered to the topic created again in time; the last failed with %v", last)
		}
		errc := make(chan error, 1)
		e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte(fmt.Sprintf("new-%d", i))}, kafkaclient.AcksAll,
			func(_ *kafkaclient.Record, err error) { errc <- err })
		select {
		case last = <-errc:
			if last == nil {
				return
			}
		case <-ctx.Done():
		}
	}
}

// testGroupTopicRecreated: testTopicRecreated for a group member (a worker
// reading its request topic): once the topic is deleted and created again,
// the member reads the new topic's records. franz-go's group consumer kept
// the old id and read nothing more until the process restarted. (A commit
// of the deleted topic's offsets fails meanwhile, as it must.)
func testGroupTopicRecreated(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{FastGroups: true, DeliveryTimeout: 5 * time.Second})
	topic := e.createTopic(t, "grecreated", 1)
	e.produceSync(t, &kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("old-0")}, kafkaclient.AcksAll)
	obs := newGroupObs()
	a := startMember(t, e, obs, "a", e.name("grec"), topic, memberOpts{commitMayFail: true})
	defer a.stop(t)
	select {
	case r := <-obs.records:
		if string(r.Value) != "old-0" {
			t.Fatalf("read %q, want old-0", r.Value)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the member read nothing within 60 s")
	}
	ctx := ctxT(t, 60*time.Second)
	e.recreateTopic(t, ctx, topic)
	e.produceUntilTaken(t, ctx, topic)
	// From the new log's start, or from a later record where the group's
	// offset of the deleted topic outlived it: a record more every 200 ms
	// without one.
	for i := 0; ; i++ {
		select {
		case r := <-obs.records:
			if !strings.HasPrefix(string(r.Value), "new-") {
				t.Fatalf("the member read %q at offset %d after the topic was created again", r.Value, r.Offset)
			}
			return
		case <-time.After(200 * time.Millisecond):
			e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte(fmt.Sprintf("new-more-%d", i))}, kafkaclient.AcksAll, func(*kafkaclient.Record, error) {})
		case <-ctx.Done():
			t.Fatal("the member read no record of the topic created again within 60 s")
		}
	}
}

// testTopicConfigInForce: TopicConfig answers a topic's own setting, and
// the default for one it does not set.
func testTopicConfigInForce(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	tc, ok := e.client.(kafkaclient.TopicConfigReader)
	if !ok {
		t.Fatalf("%T does not implement kafkaclient.TopicConfigReader", e.client)
	}
	ctx := ctxT(t, 30*time.Second)
	compacted, plain := e.name("compacted"), e.name("plain")
	if err := e.client.CreateTopics(ctx, []kafkaclient.TopicSpec{
		{Name: compacted, Partitions: 1, Config: map[string]string{"cleanup.policy": "compact"}},
		{Name: plain, Partitions: 1},
	}); err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]string{compacted: "compact", plain: "delete"} {
		if v, err := tc.TopicConfig(ctx, topic, "cleanup.policy"); err != nil || v != want {
			t.Errorf("TopicConfig(%s, cleanup.policy) = %q, %v; want %q", topic, v, err, want)
		}
	}
	if _, err := tc.TopicConfig(ctx, e.name("missing"), "cleanup.policy"); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Errorf("TopicConfig of a missing topic: %v; want ErrUnknownTopic", err)
	}
}

// testTopicMaxMessageBytes: the client looks up a topic's record size
// limit (kafkaclient.TopicLimiter), its own setting or the broker's, and
// says a missing topic is unknown. An exactly-once worker checks its
// replies against it: a record the broker refuses fails the transaction.
func testTopicMaxMessageBytes(t *testing.T, f Factory) {
	e := newEnv(t, f, Config{})
	tl, ok := e.client.(kafkaclient.TopicLimiter)
	if !ok {
		t.Fatalf("%T does not implement kafkaclient.TopicLimiter", e.client)
	}
	ctx := ctxT(t, 30*time.Second)
	small := e.name("limited")
	if err := e.client.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: small, Partitions: 1, Config: map[string]string{"max.message.bytes": "100000"}}}); err != nil {
		t.Fatal(err)
	}
	if n, err := tl.TopicMaxMessageBytes(ctx, small); err != nil || n != 100000 {
		t.Errorf("TopicMaxMessageBytes of a topic with max.message.bytes 100000 = %d, %v", n, err)
	}
	plain := e.name("plain")
	if err := e.client.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: plain, Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	n, err := tl.TopicMaxMessageBytes(ctx, plain)
	if err != nil || n <= 0 {
		t.Fatalf("TopicMaxMessageBytes of a topic with the broker's limit = %d, %v", n, err)
	}
	// The limit in force: a record a little below it is taken, one a
	// little above it refused (the embedded broker's 8 MiB was answered
	// as kfake's default, 1 MiB).
	for _, c := range []struct {
		size int
		ok   bool
	}{{n - 1000, true}, {n + 1000, false}} {
		errc := make(chan error, 1)
		e.client.Produce(&kafkaclient.Record{Topic: plain, Partition: 0, Value: make([]byte, c.size)}, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		select {
		case err := <-errc:
			if (err == nil) != c.ok {
				t.Errorf("TopicMaxMessageBytes %d: a %d-byte record to the topic: %v, want delivered %v", n, c.size, err, c.ok)
			}
		case <-ctx.Done():
			t.Fatalf("no delivery report for a %d-byte record", c.size)
		}
	}
	if _, err := tl.TopicMaxMessageBytes(ctx, e.name("never-created")); !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Errorf("TopicMaxMessageBytes of a missing topic: %v, want an error wrapping ErrUnknownTopic", err)
	}
}

// testProduceNotAuthorizedFails: a record to a topic the client's
// principal may not write (TOPIC_AUTHORIZATION_FAILED, from the produce
// request or already from the topic's metadata) fails with an error
// wrapping kafkaclient.ErrNotAuthorized that names the topic: the worker
// does not retry it until the call's deadline, and the gateway answers
// PERMISSION_DENIED rather than UNAVAILABLE.
func testProduceNotAuthorizedFails(t *testing.T, f Factory) {
	e, c := newFaultEnv(t, f, Config{DeliveryTimeout: time.Minute})
	topic := e.createTopic(t, "denied", 1)
	for _, keys := range [][]kmsg.Key{{kmsg.Produce}, {kmsg.Metadata, kmsg.Produce}} {
		h := c.Fault(kfake.Fault{Keys: keys, Topic: topic, Err: kerr.TopicAuthorizationFailed, Count: -1})
		for i := range 2 {
			errc := make(chan error, 1)
			e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: kafkaclient.AnyPartition, Value: []byte("x")},
				kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
			select {
			case err := <-errc:
				if !errors.Is(err, kafkaclient.ErrNotAuthorized) || !strings.Contains(err.Error(), topic) {
					t.Fatalf("produce %d refused by %v: %v, want an error wrapping ErrNotAuthorized naming %s", i+1, keys, err, topic)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("produce %d refused by %v did not fail within 20 s", i+1, keys)
			}
		}
		h.Remove()
	}
}

// testLookupNotAuthorizedFails: Partitions and Offsets of a topic the
// client's principal may not describe (TOPIC_AUTHORIZATION_FAILED in the
// Metadata answer, or only in the ListOffsets answer) fail with an error
// wrapping kafkaclient.ErrNotAuthorized that names the topic, at once
// rather than after the lookup's retries: a fetch of such a topic ends
// PERMISSION_DENIED, not UNAVAILABLE. Another topic is looked up as usual.
func testLookupNotAuthorizedFails(t *testing.T, f Factory) {
	e, c := newFaultEnv(t, f, Config{})
	topic := e.createTopic(t, "undescribable", 1)
	other := e.createTopic(t, "describable", 1)
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, kafkaclient.ErrNotAuthorized) || !strings.Contains(err.Error(), topic) {
			t.Fatalf("%s: %v, want an error wrapping ErrNotAuthorized naming %s", what, err, topic)
		}
	}
	for _, keys := range [][]kmsg.Key{{kmsg.ListOffsets}, {kmsg.Metadata, kmsg.ListOffsets}} {
		h := c.Fault(kfake.Fault{Keys: keys, Topic: topic, Err: kerr.TopicAuthorizationFailed, Count: -1})
		// A bound that detects a lookup retrying until its deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if slices.Contains(keys, kmsg.Metadata) {
			_, err := e.client.Partitions(ctx, topic)
			check(fmt.Sprintf("Partitions refused by %v", keys), err)
		}
		for _, which := range []kafkaclient.OffsetSpec{kafkaclient.Earliest, kafkaclient.Latest} {
			_, err := e.client.Offsets(ctx, topic, []int32{0}, which)
			check(fmt.Sprintf("Offsets (%v) refused by %v", which, keys), err)
		}
		if _, err := e.client.Partitions(ctx, other); err != nil {
			t.Fatalf("Partitions of another topic while %s is refused: %v", topic, err)
		}
		if _, err := e.client.Offsets(ctx, other, []int32{0}, kafkaclient.Latest); err != nil {
			t.Fatalf("Offsets of another topic while %s is refused: %v", topic, err)
		}
		cancel()
		h.Remove()
	}
}

// testReaderNotAuthorizedFails: a Reader assigned a partition of a topic
// the client's principal may not read (TOPIC_AUTHORIZATION_FAILED in the
// Fetch answer) has Poll return an error wrapping
// kafkaclient.ErrNotAuthorized naming the topic, rather than waiting for
// records forever: a fetch hub reading such a topic ends its callers
// PERMISSION_DENIED. Once access is granted, Poll returns the records.
func testReaderNotAuthorizedFails(t *testing.T, f Factory) {
	e, c := newFaultEnv(t, f, Config{})
	topic, grant := unreadableTopic(t, e, c, "unreadable")
	r, err := e.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Assign([]kafkaclient.TopicPartitionOffset{{Topic: topic, Partition: 0, Offset: 0}}); err != nil {
		t.Fatal(err)
	}
	refusedThenGranted(t, r.Poll, topic, grant, 20*time.Second)
}

// testGroupReaderNotAuthorizedFails: a group member assigned a partition of
// a topic the client's principal may not read (every Fetch refused with
// TOPIC_AUTHORIZATION_FAILED) logged the refusal and waited for records
// (franz logged it at each fetch, a hot loop); its Poll returns an error
// wrapping ErrNotAuthorized naming the topic, the member stays in the
// group, and a later Poll returns the records once access is granted.
func testGroupReaderNotAuthorizedFails(t *testing.T, f Factory) {
	e, c := newFaultEnv(t, f, Config{})
	topic, grant := unreadableTopic(t, e, c, "unreadable-group")
	g, err := e.client.NewGroupReader(kafkaclient.GroupConfig{GroupID: e.name("g"), Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	refusedThenGranted(t, g.Poll, topic, grant, 30*time.Second)
}

// newFaultEnv is newEnvOn a kfake cluster of one broker of the test's own,
// whose requests the test may fail (kfake.Cluster.Fault).
func newFaultEnv(t *testing.T, f Factory, cfg Config) (*env, *kfake.Cluster) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return newEnvOn(t, f, c.ListenAddrs()[0], cfg), c
}

// unreadableTopic creates topic name on c, of one partition holding one
// record "x", and refuses every Fetch of it (TOPIC_AUTHORIZATION_FAILED)
// until grant is called.
func unreadableTopic(t *testing.T, e *env, c *kfake.Cluster, name string) (topic string, grant func()) {
	t.Helper()
	topic = e.createTopic(t, name, 1)
	errc := make(chan error, 1)
	e.client.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll,
		func(_ *kafkaclient.Record, err error) { errc <- err })
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: topic, Err: kerr.TopicAuthorizationFailed, Count: -1})
	return topic, h.Remove
}

// refusedThenGranted checks that poll, reading topic whose one record "x"
// Kafka refuses to let the client read, returns an error wrapping
// ErrNotAuthorized naming topic, and the record once grant has lifted the
// refusal; bound detects a Poll waiting forever.
func refusedThenGranted(t *testing.T, poll func(context.Context) ([]*kafkaclient.Record, error), topic string, grant func(), bound time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	recs, err := poll(ctx)
	if !errors.Is(err, kafkaclient.ErrNotAuthorized) || !strings.Contains(err.Error(), topic) {
		t.Fatalf("Poll of a topic the client may not read: %d records, %v; want an error wrapping ErrNotAuthorized naming %s", len(recs), err, topic)
	}
	grant()
	for {
		recs, err := poll(ctx)
		if errors.Is(err, kafkaclient.ErrNotAuthorized) {
			continue // refused before the fault was removed
		}
		if err != nil {
			t.Fatalf("Poll once access is granted: %v", err)
		}
		if len(recs) != 1 || string(recs[0].Value) != "x" {
			t.Fatalf("Poll once access is granted: %d records, want the one produced", len(recs))
		}
		return
	}
}

// ProduceBurst produces n records of size bytes to topic's partition 0 at
// once, all with one key, and waits for every done; it returns the
// errors, counted by message.
func ProduceBurst(c kafkaclient.Client, topic string, acks kafkaclient.Acks, n, size int) map[string]int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := map[string]int{}
	wg.Add(n)
	for range n {
		c.Produce(&kafkaclient.Record{Topic: topic, Partition: 0, Key: []byte("k"), Value: make([]byte, size)}, acks,
			func(_ *kafkaclient.Record, err error) {
				if err != nil {
					mu.Lock()
					failed[err.Error()]++
					mu.Unlock()
				}
				wg.Done()
			})
	}
	wg.Wait()
	return failed
}
