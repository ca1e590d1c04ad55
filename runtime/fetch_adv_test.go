package runtime_test

// Adversarial faults of fetch methods: each test failed on the code before
// its fix, for the reason its comment gives.

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// TestFetchAdvTopicDeleted: the fetched topic is deleted (and not created
// again) while a caller follows it.
func TestFetchAdvTopicDeleted(t *testing.T) {
	defer runtime.SetPartitionsRefresh(20 * time.Millisecond)()
	e := setupFanout(t)
	e.produce(t, e.topic, 3, 3, 0)
	ctx := ctxFor(t, 60*time.Second)
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 3)
	deleteTopic(t, e.brokers, e.topic)
	ev, err := a.s.Recv()
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), e.topic) {
		t.Fatalf("a caller following a topic that was deleted got %v, %v; want NOT_FOUND naming the topic", ev, err)
	}
	s, err := e.echo.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err = s.Recv()
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), e.topic) {
		t.Fatalf("a new caller of the deleted topic got %v, %v; want NOT_FOUND naming the topic", ev, err)
	}
}
