// Package readme_test checks that the README runs as written: the complete
// main.go it gives a newcomer is built in a fresh module of its own (with a
// replace directive to this checkout, as a user's go.mod would require the
// published module), run, called over gRPC and stopped, so that the README
// cannot drift from the code.
package readme_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/proctest"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// marker precedes the README's main.go code block.
const marker = "<!-- main.go: built, run and called by internal/readme/readme_test.go -->"

// mainGo returns the code block after the marker.
func mainGo(t *testing.T, readme string) string {
	t.Helper()
	i := strings.Index(readme, marker)
	if i < 0 {
		t.Fatalf("README.md lacks the marker %q before its main.go", marker)
	}
	rest := readme[i+len(marker):]
	const open = "```go\n"
	j := strings.Index(rest, open)
	if j < 0 || strings.TrimSpace(rest[:j]) != "" {
		t.Fatalf("no ```go block right after the marker")
	}
	rest = rest[j+len(open):]
	k := strings.Index(rest, "```\n")
	if k < 0 {
		t.Fatalf("the main.go block is not closed")
	}
	return rest[:k]
}

func TestREADMEMain(t *testing.T) {
	root, err := proctest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	src := mainGo(t, string(readme))

	// A fresh module: go.mod requiring this project (replaced by this
	// checkout), its go.sum, and the README's main.go.
	dir := t.TempDir()
	gomod := "module example.com/hello\n\ngo 1.26\n\nrequire github.com/kafkarpc/protoc-gen-go-kafka v0.0.0\n\n" +
		"replace github.com/kafkarpc/protoc-gen-go-kafka => " + root + "\n"
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"go.mod": []byte(gomod), "go.sum": sum, "main.go": []byte(src)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "hello")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir = dir
	// -mod=mod completes go.mod from the module cache (or the Go module
	// proxy), as go mod tidy would in the user's module.
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build of the README's main.go: %v\n%s", err, out)
	}
	t.Logf("built the README's main.go in %s", time.Since(start).Round(time.Millisecond))

	// Port 0: the program listens where the kernel says and names the
	// address in its ready line (a port picked free beforehand could be
	// taken meanwhile, by the embedded broker itself).
	p := proctest.Start(t, bin, []string{"--listen", "127.0.0.1:0"}, 10*time.Second, func(p *proctest.Proc, _ bool) {
		if t.Failed() {
			t.Logf("main.go's output:\n%s", p.Output())
		}
	})
	line, err := p.WaitReady(60 * time.Second)
	if err != nil {
		t.Fatalf("main.go printed no ready line: %v", err)
	}
	m := regexp.MustCompile(`gRPC on (127\.0\.0\.1:[1-9][0-9]*)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("ready line %q names no gRPC address on 127.0.0.1", line)
	}
	addr := m[1]

	c := echov1.NewEchoServiceClient(proctest.Dial(t, addr))
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	resp, err := c.EchoUnary(cctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil || resp.GetMessage() != "hello" {
		t.Fatalf("EchoUnary: %v, %v", resp, err)
	}
	// The three events main.go published, each with an event id.
	s, err := c.EchoEvents(cctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 3 {
		ev, err := s.Recv()
		if err != nil {
			t.Fatalf("EchoEvents: %v", err)
		}
		if _, ok := wire.EventIDFromMessage(ev, wire.DefaultEventIDField); !ok {
			t.Errorf("event %q has no event id", ev.GetMessage())
		}
		got = append(got, ev.GetMessage())
	}
	slices.Sort(got) // partitions differ between runs, and so the order
	if want := []string{"hello 1", "hello 2", "hello 3"}; !slices.Equal(got, want) {
		t.Fatalf("EchoEvents: %q, want %q", got, want)
	}

	// SIGTERM with the fetch stream still open: main.go cuts it after 5 s.
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	took, exited := p.Wait(30 * time.Second)
	if !exited {
		t.Fatalf("main.go did not exit within 30 s of SIGTERM")
	}
	t.Logf("main.go exited %s after SIGTERM", took.Round(time.Millisecond))
	if err := p.Err(); err != nil {
		t.Fatalf("main.go did not exit cleanly: %v", err)
	}
}
