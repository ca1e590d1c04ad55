package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPluginLinksNoKafkaClient keeps the plugin binary small and free of cgo:
// it needs protogen and the options, not the runtime or a Kafka client.
func TestPluginLinksNoKafkaClient(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{
			"github.com/confluentinc/", "github.com/twmb/",
			"github.com/kafkarpc/protoc-gen-go-kafka/runtime",
			"google.golang.org/grpc",
		} {
			if strings.HasPrefix(pkg, banned) {
				t.Errorf("the plugin links %s", pkg)
			}
		}
	}
}
