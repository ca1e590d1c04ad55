package runtime_test

import (
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// A worker speaks the group protocol WorkerGroupProtocol names (the cluster
// lists its group with that type) and serves calls with it.
func TestWorkerGroupProtocol(t *testing.T) {
	for _, p := range []kafkaclient.GroupProtocol{kafkaclient.GroupProtocolClassic, kafkaclient.GroupProtocolConsumer} {
		t.Run(string(p), func(t *testing.T) {
			e := setup(t, echoserver.Server{}, runtime.WorkerGroupProtocol(p))
			resp, err := e.echo.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "hi"})
			if err != nil || resp.GetMessage() != "hi" {
				t.Fatalf("EchoUnary = %v, %v", resp, err)
			}
			if got := listedGroupType(t, e.brokers, e.prefix+"workers"); got != string(p) {
				t.Fatalf("the cluster lists the worker's group as %q, want %q", got, p)
			}
		})
	}
}

// A protocol the clients do not know fails Start, naming it.
func TestWorkerGroupProtocolUnknown(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	w := runtime.NewWorker(kc, runtime.WorkerGroupProtocol("next"), runtime.WorkerGroupID(kafkatest.Unique("g")))
	if err := echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}); err != nil {
		t.Fatal(err)
	}
	err := w.Start()
	if err == nil {
		_ = w.Close()
		t.Fatal("Start with WorkerGroupProtocol(\"next\") succeeded")
	}
	if !strings.Contains(err.Error(), "WorkerGroupProtocol") || !strings.Contains(err.Error(), `"next"`) {
		t.Fatalf("Start = %v, want an error naming WorkerGroupProtocol and \"next\"", err)
	}
}

// listedGroupType asks the cluster (ListGroups v5, with a client of its
// own) which protocol group speaks.
func listedGroupType(t *testing.T, brokers, group string) string {
	t.Helper()
	kc, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	for _, sh := range kc.RequestSharded(ctxFor(t, 30*time.Second), kmsg.NewPtrListGroupsRequest()) {
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
