package runtime

import (
	"context"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// blockingAdmin answers Partitions with what the test sends on answers,
// after reporting the call on asked.
type blockingAdmin struct {
	asked   chan string
	answers chan error
}

func (a *blockingAdmin) CreateTopics(context.Context, []kafkaclient.TopicSpec) error { return nil }

func (a *blockingAdmin) Partitions(ctx context.Context, topic string) ([]int32, error) {
	a.asked <- topic
	select {
	case err := <-a.answers:
		return []int32{0}, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestTopicGuardNeverWaitsForKnownTopic: a call to a topic known to exist
// does not wait for the lookup that refreshes that knowledge (it runs in
// the background), while a topic never looked up is looked up by the call;
// the background lookup's "missing" fails the next call at once.
func TestTopicGuardNeverWaitsForKnownTopic(t *testing.T) {
	present, missing := topicPresentFresh, topicMissingFresh
	topicPresentFresh, topicMissingFresh = 0, time.Hour // every call finds "present" stale
	t.Cleanup(func() { topicPresentFresh, topicMissingFresh = present, missing })
	admin := &blockingAdmin{asked: make(chan string, 1), answers: make(chan error)}
	m := &MethodSpec{Service: "s.S", Method: "M"}
	var tg topicGuard
	checked := func() <-chan error {
		done := make(chan error, 1)
		go func() { done <- tg.check(context.Background(), admin, "t", time.Minute, m) }()
		return done
	}
	bound := time.After(30 * time.Second)

	// Never looked up: the call waits for the lookup.
	first := checked()
	select {
	case <-admin.asked:
	case <-bound:
		t.Fatal("the first call did not look the topic up within 30 s")
	}
	select {
	case err := <-first:
		t.Fatalf("the first call returned (%v) before the lookup answered", err)
	default:
	}
	admin.answers <- nil
	if err := <-first; err != nil {
		t.Fatalf("first call: %v", err)
	}

	// Known to exist, stale: the call goes on while the lookup waits.
	select {
	case err := <-checked():
		if err != nil {
			t.Fatalf("second call: %v", err)
		}
	case <-bound:
		t.Fatal("a call to a topic known to exist waited for its lookup (30 s)")
	}
	select {
	case <-admin.asked:
	case <-bound:
		t.Fatal("the stale topic was not looked up again within 30 s")
	}
	admin.answers <- kafkaclient.ErrUnknownTopic // deleted meanwhile

	// The background lookup's answer is recorded (it marks the topic
	// missing before it lets another lookup start, so no call looks it up
	// meanwhile): from then on calls fail at once, naming the topic.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := tg.check(context.Background(), admin, "t", time.Minute, m)
		if err != nil {
			if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), `"t"`) {
				t.Fatalf("after the topic was deleted: %v, want NOT_FOUND naming it", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background lookup's answer was not recorded within 30 s")
		}
		goruntime.Gosched()
	}
}
