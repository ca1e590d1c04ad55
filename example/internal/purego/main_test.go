package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBuildsWithoutCgo checks the pure-Go claim: this program, which imports
// the runtime, runtime/franz and runtime/embedded, links no confluent-kafka-go
// (nor anything else needing cgo): it builds with CGO_ENABLED=0, and the
// binary so built serves a call through Kafka.
func TestBuildsWithoutCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the program without cgo: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	env := append(os.Environ(), "CGO_ENABLED=0")

	list := exec.CommandContext(ctx, "go", "list", "-deps", "-f", "{{.ImportPath}} {{if .CgoFiles}}cgo{{end}}", ".")
	list.Env = env
	out, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, cgo, _ := strings.Cut(line, " ")
		if strings.Contains(path, "confluent") || cgo != "" {
			t.Errorf("the pure-Go program depends on %s %s", path, cgo)
		}
	}

	bin := filepath.Join(t.TempDir(), "purego")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Env = env
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	run := exec.CommandContext(ctx, bin)
	out, err = run.Output()
	if err != nil {
		t.Fatalf("running the pure-Go binary: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "hello without cgo" {
		t.Fatalf("the pure-Go binary printed %q", got)
	}
}
