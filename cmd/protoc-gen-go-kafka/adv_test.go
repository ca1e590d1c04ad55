package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/pluginpb"
)

// compileGenerated generates the Go code of sources (by file name) with
// protoc-gen-go, protoc-gen-go-grpc and this plugin, as buf generate does,
// into a fresh directory under this package's testdata (inside the module,
// so that the runtime import resolves), and runs go vet on it. Every
// "GOPKG" in a source is replaced by that directory's import path. It
// returns go vet's output and whether it passed.
func compileGenerated(t *testing.T, sources map[string]string) (string, bool) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs go vet")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not in PATH")
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("testdata", "plugadv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		os.Remove("testdata") // only when empty
	})
	pkg := "github.com/kafkarpc/protoc-gen-go-kafka/cmd/protoc-gen-go-kafka/" + filepath.ToSlash(dir)

	srcs := map[string]string{}
	for name, src := range sources {
		srcs[name] = strings.ReplaceAll(src, "GOPKG", pkg)
	}
	req := compileRequest(t, srcs, sortedKeys(srcs)...)

	var resps []*pluginpb.CodeGeneratorResponse
	in, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"protoc-gen-go", "protoc-gen-go-grpc"} {
		cmd := exec.Command(goTool, "tool", tool)
		cmd.Dir = repoRoot
		cmd.Stdin = bytes.NewReader(in)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("go tool %s: %v\n%s", tool, err, errOut.String())
		}
		resp := &pluginpb.CodeGeneratorResponse{}
		if err := proto.Unmarshal(out.Bytes(), resp); err != nil {
			t.Fatal(err)
		}
		resps = append(resps, resp)
	}
	resps = append(resps, runPlugin(t, req))
	kafkaFiles := 0
	for _, resp := range resps {
		if resp.Error != nil {
			t.Fatalf("generation failed: %s", resp.GetError())
		}
		for _, f := range resp.File {
			if strings.HasSuffix(f.GetName(), "_kafka.pb.go") {
				kafkaFiles++
			}
			path := filepath.Join(repoRoot, filepath.FromSlash(f.GetName()))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(f.GetContent()), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if kafkaFiles == 0 {
		t.Fatal("no _kafka.pb.go generated")
	}
	cmd := exec.Command(goTool, "vet", "./"+filepath.ToSlash(dir)+"/...")
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// TestPlugAdvImportNamedLikeLocals: messages from a Go package whose import
// path ends in "x" or "p" (protogen names an import after the last element
// of its path) as requests, responses and fetched events. protoc-gen-go and
// protoc-gen-go-grpc output compiles; the gateway methods' receiver x and
// the publisher's parameter p must not hide the package in the code that
// names its types.
func TestPlugAdvImportNamedLikeLocals(t *testing.T) {
	sources := map[string]string{
		"adv/x/x.proto": `syntax = "proto3";
package adv.x;
option go_package = "GOPKG/x;xpb";
message Req { string id = 1; }
message Resp { string id = 1; }
`,
		"adv/p/p.proto": `syntax = "proto3";
package adv.p;
option go_package = "GOPKG/p;ppb";
message Event { string id = 1; }
`,
		"adv/svc/svc.proto": `syntax = "proto3";
package adv.svc;
import "google/protobuf/empty.proto";
import "kafkarpc/kafka/v1/options.proto";
import "adv/x/x.proto";
import "adv/p/p.proto";
option go_package = "GOPKG/svc;svc";
service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "adv-q" reply_topic: "adv-r"};
  rpc Unary(adv.x.Req) returns (adv.x.Resp);
  rpc ServerStream(adv.x.Req) returns (stream adv.x.Resp);
  rpc ClientStream(stream adv.x.Req) returns (adv.x.Resp);
  rpc BidiStream(stream adv.x.Req) returns (stream adv.x.Resp);
  rpc XEvents(google.protobuf.Empty) returns (stream adv.x.Resp) {
    option (kafkarpc.kafka.v1.method) = {fetch: {topic: "adv-xf"}};
  }
  rpc PEvents(google.protobuf.Empty) returns (stream adv.p.Event) {
    option (kafkarpc.kafka.v1.method) = {fetch: {topic: "adv-pf"}};
  }
}
`,
	}
	if out, ok := compileGenerated(t, sources); !ok {
		t.Errorf("the generated code does not compile:\n%s", out)
	}
}

// TestPlugAdvEventIDReserved: a fetch's event id travels as a field of the
// streamed message, so its number must be free in it. A number the message
// reserves was a field once, which callers built from an older proto still
// decode with that field's meaning: the plugin must refuse it, as it
// refuses a declared field or an extension range.
func TestPlugAdvEventIDReserved(t *testing.T) {
	const header = `syntax = "proto3";
package adv.v1;
import "google/protobuf/empty.proto";
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/adv/v1;advv1";
message Ev { reserved 5, 32767; reserved "old"; string id = 1; }
message Late { reserved 100 to max; string id = 1; }
`
	for name, c := range map[string]struct{ src, want string }{
		"default": {`service S { rpc E(google.protobuf.Empty) returns (stream Ev) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "f"}}; } }`,
			`:8:64: adv.v1.S.E: fetch.event_id_field 32767 (the default) is a reserved number of adv.v1.Ev: a field that had it may still be read by callers with its old meaning`},
		"explicit": {`service S { rpc E(google.protobuf.Empty) returns (stream Ev) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "f" event_id_field: 5}}; } }`,
			`:8:64: adv.v1.S.E: fetch.event_id_field 5 is a reserved number of adv.v1.Ev: a field that had it may still be read by callers with its old meaning`},
		"range to max": {`service S { rpc E(google.protobuf.Empty) returns (stream Late) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "f"}}; } }`,
			`:8:66: adv.v1.S.E: fetch.event_id_field 32767 (the default) is a reserved number of adv.v1.Late: a field that had it may still be read by callers with its old meaning`},
		"free": {`service S { rpc E(google.protobuf.Empty) returns (stream Late) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "f" event_id_field: 99}}; } }`, ``},
	} {
		t.Run(name, func(t *testing.T) {
			file := "adv/v1/" + strings.ReplaceAll(name, " ", "_") + ".proto"
			resp := runPlugin(t, compileRequest(t, map[string]string{file: header + c.src}, file))
			if c.want == "" {
				if resp.Error != nil || len(resp.File) != 1 {
					t.Errorf("got error %q and %d files, want 1 file", resp.GetError(), len(resp.File))
				}
				return
			}
			if got, want := resp.GetError(), file+c.want; got != want {
				t.Errorf("error:\n got: %s\nwant: %s", got, want)
			}
			if len(resp.File) != 0 {
				t.Errorf("%d files generated despite the error", len(resp.File))
			}
		})
	}
}
