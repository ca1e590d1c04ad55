package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// compileGenerated runs buf generate on sources (.proto files by name), as
// a user's buf.gen.yaml would, with protoc-gen-go, protoc-gen-go-grpc and
// this plugin (the test binary, run as main), writing the Go code into a
// fresh directory under this package's testdata (inside the module, so
// that the runtime import resolves), and runs go vet on it. Every "GOPKG"
// in a source is replaced by that directory's import path. buf, not the
// in-process compiler, because only buf knows edition 2024. It returns go
// vet's output and whether it passed.
func compileGenerated(t *testing.T, sources map[string]string) (string, bool) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs buf and go vet")
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

	// A buf workspace of two modules: the options, which are not generated,
	// and the sources.
	ws := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		path := filepath.Join(ws, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	options, err := os.ReadFile(filepath.Join(repoRoot, "options/kafkarpc/kafka/v1/options.proto"))
	if err != nil {
		t.Fatal(err)
	}
	write("opts/kafkarpc/kafka/v1/options.proto", string(options))
	write("buf.yaml", "version: v2\nmodules:\n  - path: opts\n  - path: src\n")
	for name, src := range sources {
		write("src/"+name, strings.ReplaceAll(src, "GOPKG", pkg))
	}

	// The binaries go tool would run, so that buf runs them from ws.
	toolPath := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(goTool, append([]string{"tool", "-n"}, args...)...)
		cmd.Dir = repoRoot
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go tool -n %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	out, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const opt = `"opt":"module=github.com/kafkarpc/protoc-gen-go-kafka"`
	template := `{"version":"v2","plugins":[` +
		`{"local":` + strconv.Quote(toolPath("protoc-gen-go")) + `,"out":` + strconv.Quote(out) + `,` + opt + `},` +
		`{"local":` + strconv.Quote(toolPath("protoc-gen-go-grpc")) + `,"out":` + strconv.Quote(out) + `,` + opt + `},` +
		`{"local":` + strconv.Quote(self) + `,"out":` + strconv.Quote(out) + `,` + opt + `}]}`
	buf := exec.Command(toolPath("-modfile="+filepath.Join(out, "tools/go.mod"), "buf"), "generate", "src", "--template", template)
	buf.Dir = ws
	buf.Env = append(os.Environ(), runMainEnv+"=1")
	if b, err := buf.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, b)
	}
	kafkaFiles, _ := filepath.Glob(filepath.Join(dir, "*", "*_kafka.pb.go"))
	if len(kafkaFiles) == 0 {
		t.Fatal("no _kafka.pb.go generated")
	}
	vet := exec.Command(goTool, "vet", "./"+filepath.ToSlash(dir)+"/...")
	b, err := vet.CombinedOutput()
	return string(b), err == nil
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

// TestPlugAdvOddProtosCompile generates, with protoc-gen-go and
// protoc-gen-go-grpc beside it, protos none of the checked-in goldens is:
// editions 2023 (implicit presence by default, a delimited message field,
// a legacy-required key) and 2024 (symbol visibility, the opaque API),
// proto2 (required, defaults, groups, extensions), well-known types as
// requests and responses, key fields in a oneof and through an imported
// message, and names that look like the generated ones (snake_case, a
// leading underscore, Go keywords, services named Kafka and KafkaSpec,
// methods named Spec, Register and NewGateway, a service without options
// beside ones with). Every generated package must pass go vet.
func TestPlugAdvOddProtosCompile(t *testing.T) {
	sources := map[string]string{
		"adv/common/common.proto": `syntax = "proto3";
package adv.common;
option go_package = "GOPKG/common";
message Ref { string id = 1; int64 n = 2; }
`,
		"adv/ed23/ed23.proto": `edition = "2023";
package adv.ed23;
import "google/protobuf/empty.proto";
import "kafkarpc/kafka/v1/options.proto";
import "adv/common/common.proto";
option go_package = "GOPKG/ed23;ed23";
option features.field_presence = IMPLICIT;
message Inner { string id = 1 [features.field_presence = EXPLICIT]; int64 n = 2; }
enum E { option features.enum_type = CLOSED; E_ZERO = 0; E_ONE = 1; }
message Req {
  string id = 1;
  Inner inner = 2;
  Inner grp = 3 [features.message_encoding = DELIMITED];
  int32 req = 4 [features.field_presence = LEGACY_REQUIRED];
  E e = 5 [features.field_presence = EXPLICIT];
  oneof o { string oid = 6; Inner oinner = 7; }
  bytes b = 8;
  map<string, string> m = 9;
  adv.common.Ref ref = 10;
}
message Resp { string id = 1; }
service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "adv-ed23-q" reply_topic: "adv-ed23-r"};
  rpc A(Req) returns (Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "inner.id"}; }
  rpc B(Req) returns (Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "req" key_field_required: true}; }
  rpc C(stream Req) returns (Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "e"}; }
  rpc D(Req) returns (stream Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "oid"}; }
  rpc F(stream Req) returns (stream Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "oinner.n"}; }
  rpc G(Req) returns (Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "ref.n"}; }
  rpc Ev(google.protobuf.Empty) returns (stream Resp) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "adv-ed23-f"}}; }
}
`,
		"adv/ed24/ed24.proto": `edition = "2024";
package adv.ed24;
import "google/protobuf/empty.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/any.proto";
import "kafkarpc/kafka/v1/options.proto";
option go_package = "GOPKG/ed24";
option features.default_symbol_visibility = LOCAL_ALL;
export message Req { string id = 1; Inner inner = 2; oneof o { string a = 3; int32 b = 4; } }
local message Inner { string id = 1; }
message Resp { string id = 1; }
service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "adv-ed24-q" reply_topic: "adv-ed24-r" key_field: "inner.id"};
  rpc A(Req) returns (Resp);
  rpc T(Req) returns (stream google.protobuf.Timestamp);
  rpc Ev(google.protobuf.Empty) returns (stream Resp) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "adv-ed24-f"}}; }
}
service W {
  option (kafkarpc.kafka.v1.service) = {request_topic: "adv-ed24-q2" reply_topic: "adv-ed24-r2"};
  rpc E(google.protobuf.Empty) returns (google.protobuf.Empty);
  rpc X(stream google.protobuf.Any) returns (stream google.protobuf.Timestamp);
}
`,
		"adv/p2/p2.proto": `syntax = "proto2";
package adv.p2;
import "kafkarpc/kafka/v1/options.proto";
option go_package = "GOPKG/p2";
message Req {
  required string id = 1;
  optional int32 n = 2 [default = 7];
  optional group G = 3 { optional string gid = 4; }
  optional Sub sub = 5;
  extensions 100 to 200;
}
message Sub { optional sint64 v = 1; }
extend Req { optional string ext = 100; }
message Resp { optional string id = 1; }
service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "adv-p2-q" reply_topic: "adv-p2-r"};
  rpc A(Req) returns (Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "id"}; }
  rpc B(Req) returns (Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "n"}; }
  rpc C(Req) returns (Resp) { option (kafkarpc.kafka.v1.method) = {key_field: "sub.v" oneway: true}; }
}
`,
		"adv/odd/odd.proto": `syntax = "proto3";
package adv.odd;
import "kafkarpc/kafka/v1/options.proto";
option go_package = "GOPKG/odd";
message Req { string id = 1; message Nested { string id = 1; } }
// echo_service is snake_case.
service echo_service {
  option (kafkarpc.kafka.v1.service) = {request_topic: "adv-odd-q" reply_topic: "adv-odd-r"};
  // get_thing2 is deprecated.
  rpc get_thing2(Req) returns (Req.Nested) { option deprecated = true; }
  rpc _lead(Req.Nested) returns (Req);
  rpc type(Req) returns (stream Req);
  rpc Spec(stream Req) returns (Req);
  rpc Register(Req) returns (Req);
  rpc NewGateway(Req) returns (Req);
  rpc String(Req) returns (Req);
}
service Kafka { option (kafkarpc.kafka.v1.service) = {request_topic: "adv-odd-q" reply_topic: "adv-odd-r"}; rpc Kafka(Req) returns (Req); }
service KafkaSpec { option (kafkarpc.kafka.v1.service) = {request_topic: "adv-odd-q" reply_topic: "adv-odd-r"}; rpc Spec(Req) returns (Req); }
service Plain { rpc P(Req) returns (Req); }
service Part {
  rpc P(Req) returns (Req);
  rpc Q(Req) returns (Req) { option (kafkarpc.kafka.v1.method) = {request_topic: "adv-odd-q" reply_topic: "adv-odd-r"}; }
}
`,
	}
	if out, ok := compileGenerated(t, sources); !ok {
		t.Errorf("the generated code does not compile:\n%s", out)
	}
}

// TestPlugAdvKeyFieldMap: a key_field naming a map field, or a path
// through one (as if to pick an entry by its key), is refused as a map,
// which is what the user declared, not as a "repeated" field.
func TestPlugAdvKeyFieldMap(t *testing.T) {
	const src = `syntax = "proto3";
package adv.v1;
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/adv/v1;advv1";
message Ping { map<string, string> labels = 1; }
service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "q" reply_topic: "r"};
  rpc A(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {key_field: "labels"}; }
  rpc B(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {key_field: "labels.value"}; }
}
`
	const file = "adv/v1/map.proto"
	resp := runPlugin(t, compileRequest(t, map[string]string{file: src}, file))
	want := file + `:8:32: adv.v1.S.A: key_field "labels": adv.v1.Ping.labels is a map; every field on the path must be singular` + "\n" +
		file + `:9:32: adv.v1.S.B: key_field "labels.value": adv.v1.Ping.labels is a map; every field on the path must be singular`
	if got := resp.GetError(); got != want {
		t.Errorf("error:\n got: %s\nwant: %s", got, want)
	}
	if len(resp.File) != 0 {
		t.Errorf("%d files generated despite the error", len(resp.File))
	}
}

// TestPlugAdvMethodNamedLikeEmbedded: the gateway type embeds
// protoc-gen-go-grpc's Unimplemented<Service>Server, so a method of that
// name gave "field and method with the same name" in the _kafka.pb.go
// (protoc-gen-go-grpc's own output compiles), or, for a method that does
// not travel over Kafka, a gateway whose promoted method the field hides,
// which gRPC refuses when it is registered. The plugin must refuse it.
func TestPlugAdvMethodNamedLikeEmbedded(t *testing.T) {
	const src = `syntax = "proto3";
package adv.v1;
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/adv/v1;advv1";
message Ping { string id = 1; }
service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "q" reply_topic: "r"};
  rpc UnimplementedSServer(Ping) returns (Ping);
}
service T {
  rpc UnimplementedTServer(Ping) returns (Ping);
  rpc M(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "q" reply_topic: "r"}; }
}
`
	const file = "adv/v1/embedded.proto"
	resp := runPlugin(t, compileRequest(t, map[string]string{file: src}, file))
	want := file + `:8:3: adv.v1.S.UnimplementedSServer: the generated gateway SKafkaGateway embeds UnimplementedSServer, protoc-gen-go-grpc's type, so a method of that Go name cannot be one of its methods: rename the method` + "\n" +
		file + `:11:3: adv.v1.T.UnimplementedTServer: the generated gateway TKafkaGateway embeds UnimplementedTServer, protoc-gen-go-grpc's type, so a method of that Go name cannot be one of its methods: rename the method`
	if got := resp.GetError(); got != want {
		t.Errorf("error:\n got: %s\nwant: %s", got, want)
	}
	if len(resp.File) != 0 {
		t.Errorf("%d files generated despite the error", len(resp.File))
	}
}

// TestPlugAdvFetchFilterResumeMetadata: the gateway reads a resuming fetch
// caller's event id from the method's resume_metadata and, on every fetch
// method, from "last-message-id" and "last-event-id", each also with
// "-bin". A filter whose key or header value comes from one of those names
// was accepted: a caller that does not resume was refused for lacking the
// metadata (INVALID_ARGUMENT), and one that resumes had its event id taken
// for the record key or header value, so it received nothing. The plugin
// must refuse the combination, naming the filter option.
func TestPlugAdvFetchFilterResumeMetadata(t *testing.T) {
	const header = `syntax = "proto3";
package adv.v1;
import "google/protobuf/empty.proto";
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/adv/v1;advv1";
message Ev { string id = 1; }
`
	const rpc = `service S { rpc E(google.protobuf.Empty) returns (stream Ev) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "f" `
	for name, c := range map[string]struct{ src, want string }{
		"default key": {rpc + `filters: {key_metadata: "last-message-id"}}}; } }`,
			`:7:64: adv.v1.S.E: fetch.filters[0].key_metadata "last-message-id" carries a resuming caller's event id: the gateway reads it from "last-message-id" and "last-event-id", each also with "-bin"; name other metadata`},
		"synonym bin key": {rpc + `filters: {key_metadata: "last-event-id-bin"}}}; } }`,
			`:7:64: adv.v1.S.E: fetch.filters[0].key_metadata "last-event-id-bin" carries a resuming caller's event id: the gateway reads it from "last-message-id" and "last-event-id", each also with "-bin"; name other metadata`},
		"own header": {rpc + `resume_metadata: "x-last" filters: {key: "k"} filters: {header_metadata: {name: "h" metadata: "x-last"}}}}; } }`,
			`:7:64: adv.v1.S.E: fetch.filters[1].header_metadata[0].metadata "x-last" carries a resuming caller's event id: the gateway reads it from "x-last" (resume_metadata), "last-message-id" and "last-event-id", each also with "-bin"; name other metadata`},
		"others": {rpc + `resume_metadata: "x-last" filters: {key_metadata: "x-customer" header_metadata: {name: "h" metadata: "x-tenant"}}}}; } }`, ``},
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
