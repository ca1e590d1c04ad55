package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

// readmeBlock returns the first code block of README.md opened by fence
// (e.g. "```proto") after the line starting with after.
func readmeBlock(t *testing.T, readme, after, fence string) string {
	t.Helper()
	i := strings.Index(readme, "\n"+after)
	if i < 0 {
		t.Fatalf("README.md has no line starting with %q", after)
	}
	rest := readme[i:]
	j := strings.Index(rest, "\n"+fence+"\n")
	if j < 0 {
		t.Fatalf("README.md has no %s block after %q", fence, after)
	}
	rest = rest[j+len(fence)+2:]
	k := strings.Index(rest, "\n```\n")
	if k < 0 {
		t.Fatalf("README.md: the %s block after %q is not closed", fence, after)
	}
	return rest[:k+1]
}

// TestREADMEOwnProto runs the plugin on the hello.proto of README's "Your
// own service, step by step" as a newcomer's buf.gen.yaml does
// (paths=source_relative): it must generate the names the README's main.go
// swaps in. The README's example of a mistake ("Tenant" for "tenant") must
// fail with the very error the README quotes, after buf's "Failure: plugin
// ...: " prefix.
func TestREADMEOwnProto(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	src := readmeBlock(t, readme, "`proto/hello/v1/hello.proto`", "```proto")
	const file = "hello/v1/hello.proto"
	generate := func(src string) (errMsg string, content string) {
		req := compileRequest(t, map[string]string{file: src}, file)
		req.Parameter = proto.String("paths=source_relative")
		resp := runPlugin(t, req)
		if resp.Error != nil {
			return resp.GetError(), ""
		}
		if len(resp.File) != 1 || resp.File[0].GetName() != "hello/v1/hello_kafka.pb.go" {
			t.Fatalf("generated %d files, want hello/v1/hello_kafka.pb.go", len(resp.File))
		}
		return "", resp.File[0].GetContent()
	}

	errMsg, content := generate(src)
	if errMsg != "" {
		t.Fatalf("README's hello.proto refused: %s", errMsg)
	}
	for _, name := range []string{
		"package hellov1",
		"var GreeterServiceKafkaSpec =",
		"func RegisterGreeterServiceKafkaWorker(",
		"func RegisterGreeterServiceKafkaGateway(",
		"func NewGreeterService_Greetings_KafkaPublisher(",
	} {
		if !strings.Contains(content, name) {
			t.Errorf("generated code lacks %q, which the README's step 3 uses", name)
		}
	}

	// The mistake the README shows, and its error.
	const quoted = "Failure: plugin go tool protoc-gen-go-kafka: "
	i := strings.Index(readme, quoted)
	if i < 0 {
		t.Fatalf("README.md no longer quotes a plugin failure %q", quoted)
	}
	want, _, _ := strings.Cut(readme[i+len(quoted):], "\n")
	bad := strings.Replace(src, `name: "tenant"`, `name: "Tenant"`, 1)
	if bad == src {
		t.Fatal(`README's hello.proto has no name: "tenant" to misspell`)
	}
	// The column aside: buf's compiler puts an option's source location at
	// its name, "(kafkarpc...", the one in these tests at "option".
	column := regexp.MustCompile(`^([^:]+:\d+):\d+:`)
	got, _ := generate(bad)
	if column.ReplaceAllString(got, "$1:") != column.ReplaceAllString(want, "$1:") {
		t.Errorf("with \"Tenant\":\n got: %s\nwant (README): %s", got, want)
	}
}
