package runtime_test

import (
	"strings"
	"testing"
	"time"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestEnsureTopicsRefusesCompactedCallTopics: a request or reply topic
// created by hand with cleanup.policy=compact loses calls (the log cleaner
// keeps only each key's last record, and all of a call's records share a
// key): EnsureTopics, in both modes, names it; a compacted fetch topic
// (events, whose readers may want the latest per key) is accepted.
func TestEnsureTopicsRefusesCompactedCallTopics(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	ctx := ctxFor(t, 30*time.Second)
	prefix := kafkatest.Unique("cmp") + "."
	mapper := func(s string) string { return prefix + s }
	topics := echov1.EchoServiceKafkaSpec.Topics(mapper)
	var request, fetch string
	for _, tp := range topics {
		switch {
		case tp.Role&runtime.TopicRequest != 0 && request == "":
			request = tp.Name
		case tp.Role&runtime.TopicFetch != 0 && fetch == "":
			fetch = tp.Name
		}
	}
	if request == "" || fetch == "" {
		t.Fatalf("the echo spec's topics %v have no request or no fetch topic", topics)
	}
	if err := kc.CreateTopics(ctx, []kafkaclient.TopicSpec{
		{Name: request, Partitions: 3, Config: map[string]string{"cleanup.policy": "compact"}},
		{Name: fetch, Partitions: 3, Config: map[string]string{"cleanup.policy": "compact"}},
	}); err != nil {
		t.Fatal(err)
	}
	for _, verify := range []bool{true, false} {
		err := runtime.EnsureTopics(ctx, kc, topics, runtime.EnsureTopicsOptions{VerifyOnly: verify})
		if err == nil || !strings.Contains(err.Error(), request+" (request topic") || !strings.Contains(err.Error(), "cleanup.policy=compact") {
			t.Fatalf("EnsureTopics (VerifyOnly %v) with a compacted request topic: %v; want an error naming %s and its cleanup.policy", verify, err, request)
		}
		if strings.Contains(err.Error(), fetch) {
			t.Errorf("EnsureTopics named the compacted fetch topic %s: %v", fetch, err)
		}
	}
	// Nothing was created meanwhile: the reply topic is still missing.
	var reply string
	for _, tp := range topics {
		if tp.Role&runtime.TopicReply != 0 {
			reply = tp.Name
			break
		}
	}
	if _, err := kc.Partitions(ctx, reply); err == nil {
		t.Errorf("EnsureTopics created %s though it failed", reply)
	}
	// The request topic fixed (created again without compaction under
	// another prefix): everything else is created, the compacted fetch
	// topic accepted.
	prefix2 := kafkatest.Unique("cmp") + "."
	topics2 := echov1.EchoServiceKafkaSpec.Topics(func(s string) string { return prefix2 + s })
	var fetch2 string
	for _, tp := range topics2 {
		if tp.Role&runtime.TopicFetch != 0 {
			fetch2 = tp.Name
			break
		}
	}
	if err := kc.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: fetch2, Partitions: 3, Config: map[string]string{"cleanup.policy": "compact"}}}); err != nil {
		t.Fatal(err)
	}
	if err := runtime.EnsureTopics(ctx, kc, topics2, runtime.EnsureTopicsOptions{}); err != nil {
		t.Fatalf("EnsureTopics with only a compacted fetch topic: %v", err)
	}
}
