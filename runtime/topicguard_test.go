package runtime

import (
	"context"
	"fmt"
	goruntime "runtime"
	"strings"
	"sync/atomic"
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
		go func() { done <- tg.check(context.Background(), admin, "t", time.Minute, m, detached) }()
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
		err := tg.check(context.Background(), admin, "t", time.Minute, m, detached)
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

// detached runs a background lookup on a goroutine of its own, as a
// gateway that is not closing does.
func detached(f func(context.Context)) bool {
	go f(context.Background())
	return true
}

// closeWatchAdmin is a gateway's Kafka client whose first lookup of a topic
// finds it and whose later ones wait until their context ends, recording
// that they ended. Only Partitions is used.
type closeWatchAdmin struct {
	kafkaclient.Client
	lookups atomic.Int32
	waiting chan struct{}
	ended   atomic.Bool
}

func (a *closeWatchAdmin) Partitions(ctx context.Context, _ string) ([]int32, error) {
	if a.lookups.Add(1) == 1 {
		return []int32{0}, nil
	}
	close(a.waiting)
	<-ctx.Done()
	a.ended.Store(true)
	return nil, ctx.Err()
}

// TestGatewayCloseEndsBackgroundTopicLookup: the lookup that refreshes a
// known topic in the background is the gateway's: Close ends it and waits
// for it, as for its other goroutines (a lookup left running held the
// Kafka client, whose Close then waited up to the setup timeout, 30 s).
func TestGatewayCloseEndsBackgroundTopicLookup(t *testing.T) {
	present := topicPresentFresh
	topicPresentFresh = 0 // every call finds "present" stale
	t.Cleanup(func() { topicPresentFresh = present })
	admin := &closeWatchAdmin{waiting: make(chan struct{})}
	g := NewGateway(admin)
	m := &MethodSpec{Service: "s.S", Method: "M"}
	for i := range 2 { // looked up by the call, then in the background
		if err := g.checkTopic(context.Background(), m, "t"); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	select {
	case <-admin.waiting:
	case <-time.After(30 * time.Second):
		t.Fatal("the known topic was not looked up again in the background within 30 s")
	}
	closed := make(chan error, 1)
	go func() { closed <- g.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return within 30 s")
	}
	if !admin.ended.Load() {
		t.Fatal("Close returned while the background lookup was still running")
	}
	if err := g.checkTopic(context.Background(), m, "t"); err != nil {
		t.Fatalf("a call after Close: %v (the topic is still known to exist)", err)
	}
	if n := admin.lookups.Load(); n != 2 {
		t.Fatalf("%d lookups, want 2: a closed gateway starts no background lookup", n)
	}
}

// deniedAdmin answers every Partitions as a client whose principal may not
// describe the topic.
type deniedAdmin struct{}

func (deniedAdmin) CreateTopics(context.Context, []kafkaclient.TopicSpec) error { return nil }

func (deniedAdmin) Partitions(_ context.Context, topic string) ([]int32, error) {
	return nil, fmt.Errorf("metadata of %s: %w", topic, kafkaclient.ErrNotAuthorized)
}

// TestTopicGuardNotAuthorized: a produce failure confirmed by a lookup the
// cluster refuses as not authorized was answered UNAVAILABLE (the lookup
// said neither "missing" nor "present"); confirmMissing reports it denied,
// and the next calls' check answers PERMISSION_DENIED naming the topic.
func TestTopicGuardNotAuthorized(t *testing.T) {
	var tg topicGuard
	m := &MethodSpec{Service: "s.S", Method: "M"}
	missing, denied := tg.confirmMissing(context.Background(), deniedAdmin{}, "t", time.Minute)
	if missing || !denied {
		t.Fatalf("confirmMissing = missing %v, denied %v; want denied only", missing, denied)
	}
	err := tg.check(context.Background(), deniedAdmin{}, "t", time.Minute, m, detached)
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), `"t"`) {
		t.Fatalf("check after: %v, want PERMISSION_DENIED naming the topic", err)
	}
}
