package runtime

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestRequestQueueLetsReadRecordsGo: a client stream's request queue with
// nothing to read its records again (release) hands them out in order and
// keeps only those not read yet, also for a handler that is always behind
// its caller (the queue never drains): 1000 records unread while 20 000
// more come and are read, one in, one out.
func TestRequestQueueLetsReadRecordsGo(t *testing.T) {
	c := queueCall(true, 0)
	var env wire.Envelope
	const behind, total = 1000, 21000
	fed, read := 0, 0
	feed := func() {
		c.feed(&kafkaclient.Record{Offset: int64(fed), Value: []byte{1}}, &env)
		fed++
	}
	for range behind {
		feed()
	}
	for fed < total {
		feed()
		rec, err := c.recv(currentAttempt)
		if err != nil || rec.Offset != int64(read) {
			t.Fatalf("read %d: %v, %v; want the records in order", read, rec, err)
		}
		read++
	}
	held := 0
	for _, r := range c.in.all {
		if r != nil {
			held++
		}
	}
	if held != behind || len(c.in.all)-c.in.next != behind {
		t.Fatalf("the queue holds %d records (%d to read), want the %d not read yet", held, len(c.in.all)-c.in.next, behind)
	}
	if n := len(c.in.all); n > 2*behind+64 {
		t.Fatalf("the queue's slice is %d long for %d records to read: read ones are not let go", n, behind)
	}
}

// TestRequestQueueCountsUnread: what counts against WorkerRequestBufferBytes
// is the size of the records no attempt read yet, whichever way the queue
// is read: a retry's second reading (rewind) does not take them off again,
// a released queue's compaction does not change it, and an overflow lets
// every record go and fails the reader with RESOURCE_EXHAUSTED.
func TestRequestQueueCountsUnread(t *testing.T) {
	size := func(recs []*kafkaclient.Record) int {
		n := 0
		for _, r := range recs {
			if r != nil {
				n += recordSize(r.Value, r.Headers)
			}
		}
		return n
	}
	var env wire.Envelope
	feed := func(c *call, i int) {
		c.feed(&kafkaclient.Record{Offset: int64(i), Value: make([]byte, 10*i+1)}, &env)
	}
	recv := func(c *call, n int) {
		t.Helper()
		for range n {
			if _, err := c.recv(currentAttempt); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(c *call, want int, what string) {
		t.Helper()
		if c.in.unread != want {
			t.Fatalf("%s: unread %d, want %d", what, c.in.unread, want)
		}
	}

	c := queueCall(false, 1<<30) // kept for a retry
	for i := range 10 {
		feed(c, i)
	}
	recv(c, 4)
	check(c, size(c.in.all[4:]), "4 of 10 read")
	c.in.rewind()
	check(c, size(c.in.all[4:]), "rewound")
	recv(c, 6)
	check(c, size(c.in.all[6:]), "6 read again")
	recv(c, 4)
	check(c, 0, "all read")
	feed(c, 10)
	check(c, size(c.in.all[10:]), "one more")

	c = queueCall(true, 1<<30) // let go as read, compacted
	fed := 0
	for range 200 {
		feed(c, fed)
		fed++
	}
	for range 150 {
		recv(c, 1)
		feed(c, fed)
		fed++
		check(c, size(c.in.all[c.in.next:]), "released")
	}

	c = queueCall(true, 100)
	feed(c, 5) // 51 bytes and room
	feed(c, 6) // 61 more: past 100
	if c.in.overflow == nil || len(c.in.all) != 0 || c.in.unread != 0 {
		t.Fatalf("past the bound: overflow %v, %d records kept, unread %d; want every record let go", c.in.overflow, len(c.in.all), c.in.unread)
	}
	if _, err := c.recv(currentAttempt); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("recv after the overflow: %v, want RESOURCE_EXHAUSTED", err)
	}
	if !errors.Is(context.Cause(c.ctx), errRequestOverflow) {
		t.Fatalf("the call's context cause: %v, want the overflow", context.Cause(c.ctx))
	}
}

// queueCall is a call with only what its request queue uses: release and
// bound as newCall sets them (bound 0: none).
func queueCall(release bool, bound int) *call {
	c := &call{w: &Worker{}}
	c.w.cfg.logger = slog.New(slog.DiscardHandler)
	c.ctx, c.ctxCancel = context.WithCancelCause(context.Background())
	c.in.all, c.in.release, c.in.bound = c.in.one[:0], release, bound
	return c
}
