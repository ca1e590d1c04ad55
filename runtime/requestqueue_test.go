package runtime

import (
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestRequestQueueLetsReadRecordsGo: a client stream's request queue with
// nothing to read its records again (release) hands them out in order and
// keeps only those not read yet, also for a handler that is always behind
// its caller (the queue never drains): 1000 records unread while 20 000
// more come and are read, one in, one out.
func TestRequestQueueLetsReadRecordsGo(t *testing.T) {
	c := &call{w: &Worker{}}
	c.in.all = c.in.one[:0]
	c.in.release = true
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
