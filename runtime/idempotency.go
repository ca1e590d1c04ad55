package runtime

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// storedReply is what a worker remembers of a finished call made with an
// idempotency key: its reply records, to answer a duplicate without running
// the handler again.
type storedReply struct {
	id      string
	at      time.Time
	records []kafkaclient.Record // values and headers; topic and key are the duplicate's
	size    int
}

// replyStore holds the replies of recent calls, bounded by age and bytes.
// Guarded by Worker.mu.
type replyStore struct {
	window   time.Duration
	maxBytes int
	byID     map[string]*storedReply
	order    []*storedReply // oldest first
	bytes    int
}

func newReplyStore(window time.Duration, maxBytes int) *replyStore {
	return &replyStore{window: window, maxBytes: maxBytes, byID: map[string]*storedReply{}}
}

// remembered reports whether the outcome st is final enough to be replayed
// to a duplicate: transient failures and cancellations are not.
func remembered(st *status.Status) bool {
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Aborted, codes.ResourceExhausted:
		return false
	}
	return true
}

func (s *replyStore) put(r *storedReply, now time.Time) {
	if s.window <= 0 || r.size > s.maxBytes {
		return
	}
	if old := s.byID[r.id]; old != nil {
		return // the first outcome stays
	}
	s.byID[r.id] = r
	s.order = append(s.order, r)
	s.bytes += r.size
	s.expire(now)
}

// get returns the stored replies of id, if still within the window.
func (s *replyStore) get(id string, now time.Time) *storedReply {
	s.expire(now)
	return s.byID[id]
}

// expire forgets what is past the window or over the byte bound.
func (s *replyStore) expire(now time.Time) {
	n := 0
	for n < len(s.order) && (now.Sub(s.order[n].at) > s.window || s.bytes > s.maxBytes) {
		r := s.order[n]
		s.order[n] = nil
		delete(s.byID, r.id)
		s.bytes -= r.size
		n++
	}
	s.order = s.order[n:]
}
