package runtime_test

// Adversarial faults of generated code at run time: each test failed on
// the code before its fix, for the reason its comment gives.

import (
	"strings"
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	routingv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/routing/v1"
)

// TestPlugAdvWorkerFetchOnlyService: the plugin generates a
// Register...KafkaWorker for a service whose methods are all fetch methods
// (a gateway serves them from their topics; no worker is involved).
// Registered alone, the worker has no request topic and Start fails; it
// said "register a service first" to a user who just had. It must name
// the service and say why it gives the worker nothing to consume.
func TestPlugAdvWorkerFetchOnlyService(t *testing.T) {
	client := kafkatest.NewClient(t, kafkatest.Brokers(t))
	w := runtime.NewWorker(client)
	if err := routingv1.RegisterFetchOnlyServiceKafkaWorker(w, routingv1.UnimplementedFetchOnlyServiceServer{}); err != nil {
		t.Fatalf("register: %v", err)
	}
	err := w.Start()
	if err == nil {
		_ = w.Close()
		t.Fatal("Start of a worker with nothing to consume succeeded")
	}
	msg := err.Error()
	if strings.Contains(msg, "register a service first") || !strings.Contains(msg, "testdata.routing.v1.FetchOnlyService") || !strings.Contains(msg, "fetch") {
		t.Errorf("Start: %q; want it to name testdata.routing.v1.FetchOnlyService and say its methods are fetch methods", msg)
	}
}
