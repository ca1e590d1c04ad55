package main

import (
	"bytes"
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/pluginpb"
)

var update = flag.Bool("update", false, "rewrite the generated _kafka.pb.go files under example/ and testdata/")

// runMainEnv makes the test binary run the plugin's main instead of the
// tests, so that the tests can drive the real binary through stdin/stdout.
const runMainEnv = "PROTOC_GEN_GO_KAFKA_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// goldenInputs are the protos whose generated code is checked in: the
// example and the testdata module, as buf.yaml lists them.
func goldenInputs(t testing.TB) []string {
	return append(protoFiles(t, "example"), protoFiles(t, "testdata", "testdata/bad")...)
}

// goldenFiles reads the checked-in _kafka.pb.go files, by name relative to
// the repository root.
func goldenFiles(t testing.TB) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, dir := range []string{"example", "testdata"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, "_kafka.pb.go") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(repoRoot, path)
			files[filepath.ToSlash(rel)] = string(b)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// TestGolden generates the example and the testdata protos in-process and
// compares the output with the checked-in files, which buf generate writes
// too. Run with -update to rewrite them.
func TestGolden(t *testing.T) {
	inputs := goldenInputs(t)
	resp := runPlugin(t, compileRequest(t, nil, inputs...))
	if resp.Error != nil {
		t.Fatalf("plugin error: %s", resp.GetError())
	}
	got := map[string]string{}
	for _, f := range resp.File {
		if !strings.HasSuffix(f.GetName(), "_kafka.pb.go") {
			t.Errorf("unexpected output file %s", f.GetName())
		}
		got[f.GetName()] = f.GetContent()
	}
	want := goldenFiles(t)

	if *update {
		for name, content := range got {
			if err := os.WriteFile(filepath.Join(repoRoot, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for name := range want {
			if _, ok := got[name]; !ok {
				if err := os.Remove(filepath.Join(repoRoot, name)); err != nil {
					t.Fatal(err)
				}
			}
		}
		return
	}

	for _, name := range sortedKeys(got) {
		w, ok := want[name]
		switch {
		case !ok:
			t.Errorf("%s: generated but not checked in (run go test -update)", name)
		case w != got[name]:
			t.Errorf("%s: differs from the generated code (run go test -update):\n%s", name, firstDifference(w, got[name]))
		}
	}
	for _, name := range sortedKeys(want) {
		if _, ok := got[name]; !ok {
			t.Errorf("%s: checked in but no longer generated", name)
		}
	}
}

// TestNoOutputWithoutKafkaServices checks that a proto without Kafka options
// gets no file, and that an unannotated service in an annotated file gets no
// code.
func TestNoOutputWithoutKafkaServices(t *testing.T) {
	resp := runPlugin(t, compileRequest(t, nil, "testdata/plain/v1/plain.proto"))
	if resp.Error != nil || len(resp.File) != 0 {
		t.Fatalf("plain.proto: got error %q and %d files, want neither", resp.GetError(), len(resp.File))
	}

	resp = runPlugin(t, compileRequest(t, nil, "testdata/kinds/v1/kinds.proto"))
	if resp.Error != nil || len(resp.File) != 1 {
		t.Fatalf("kinds.proto: got error %q and %d files, want 1 file", resp.GetError(), len(resp.File))
	}
	if content := resp.File[0].GetContent(); strings.Contains(content, "PlainServiceKafka") {
		t.Errorf("kinds.proto: code generated for PlainService, which has no Kafka option")
	}
}

// TestGeneratedNames parses the generated code and checks every name it
// declares at package level: an exported one contains "Kafka" and has a doc
// comment of its own; an unexported one starts with "_" and contains "Kafka",
// in the shape of protoc-gen-go-grpc's _Service_Method_Handler, so that
// neither collides with protoc-gen-go or protoc-gen-go-grpc output.
func TestGeneratedNames(t *testing.T) {
	for _, name := range sortedKeys(goldenFiles(t)) {
		for _, d := range topLevelDecls(t, name, goldenFiles(t)[name]) {
			switch {
			case d.name == "_": // the handshake
			case ast.IsExported(d.name):
				if !strings.Contains(d.name, "Kafka") {
					t.Errorf("%s: exported %s does not contain Kafka", name, d.name)
				}
				if !strings.HasPrefix(d.doc, d.name+" ") {
					t.Errorf("%s: exported %s has no doc comment of its own (%q)", name, d.name, d.doc)
				}
			case !strings.HasPrefix(d.name, "_") || !strings.Contains(d.name, "Kafka"):
				t.Errorf("%s: unexported %s does not start with _ and contain Kafka", name, d.name)
			}
		}
	}
}

// TestFullMethodNamesMatchGRPC checks that every generated
// <Service>_<Method>_KafkaFullMethodName equals protoc-gen-go-grpc's
// <Service>_<Method>_FullMethodName beside it, and that every method spec has
// one.
func TestFullMethodNamesMatchGRPC(t *testing.T) {
	for name, content := range goldenFiles(t) {
		grpcName := strings.TrimSuffix(name, "_kafka.pb.go") + "_grpc.pb.go"
		b, err := os.ReadFile(filepath.Join(repoRoot, grpcName))
		if err != nil {
			t.Fatal(err)
		}
		grpcConsts := map[string]string{}
		for _, d := range topLevelDecls(t, grpcName, string(b)) {
			grpcConsts[d.name] = d.value
		}
		consts := map[string]string{}
		for _, d := range topLevelDecls(t, name, content) {
			if base, ok := strings.CutSuffix(d.name, "_KafkaFullMethodName"); ok {
				consts[base] = d.value
				if want, ok := grpcConsts[base+"_FullMethodName"]; !ok || d.value != want {
					t.Errorf("%s: %s = %s, but %s has %s_FullMethodName = %s", name, d.name, d.value, grpcName, base, want)
				}
			}
		}
		for _, d := range topLevelDecls(t, name, content) {
			if base, ok := strings.CutSuffix(d.name, "_KafkaMethod"); ok {
				if _, ok := consts[strings.TrimPrefix(base, "_")]; !ok {
					t.Errorf("%s: %s has no %s_KafkaFullMethodName", name, d.name, strings.TrimPrefix(base, "_"))
				}
			}
		}
		if len(consts) == 0 {
			t.Errorf("%s: no full method name constants", name)
		}
	}
}

// decl is a name declared at package level.
type decl struct {
	name  string
	doc   string // its doc comment, or the doc of its declaration when it is alone in it
	value string // a constant's value, as written
}

// topLevelDecls parses a Go file and lists the names it declares at package
// level, methods aside.
func topLevelDecls(t *testing.T, name, content string) []decl {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), name, content, parser.ParseComments)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var decls []decl
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil {
				decls = append(decls, decl{name: d.Name.Name, doc: d.Doc.Text()})
			}
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				doc := ""
				if !d.Lparen.IsValid() {
					doc = d.Doc.Text()
				}
				switch spec := spec.(type) {
				case *ast.TypeSpec:
					if spec.Doc != nil {
						doc = spec.Doc.Text()
					}
					decls = append(decls, decl{name: spec.Name.Name, doc: doc})
				case *ast.ValueSpec:
					if spec.Doc != nil {
						doc = spec.Doc.Text()
					}
					for i, id := range spec.Names {
						var value string
						if i < len(spec.Values) {
							if lit, ok := spec.Values[i].(*ast.BasicLit); ok {
								value = lit.Value
							}
						}
						decls = append(decls, decl{name: id.Name, doc: doc, value: value})
					}
				}
			}
		}
	}
	return decls
}

// TestPluginBinary drives main through stdin and stdout, as protoc does.
func TestPluginBinary(t *testing.T) {
	req := compileRequest(t, nil, "example/echo/v1/echo.proto")
	in, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := runMain(t, in)
	if stderr != "" {
		t.Errorf("stderr: %q, want nothing", stderr)
	}
	resp := &pluginpb.CodeGeneratorResponse{}
	if err := proto.Unmarshal([]byte(stdout), resp); err != nil {
		t.Fatalf("stdout is not a CodeGeneratorResponse: %v", err)
	}
	if resp.Error != nil || len(resp.File) != 1 {
		t.Fatalf("got error %q and %d files, want 1 file", resp.GetError(), len(resp.File))
	}
	if got, want := resp.File[0].GetContent(), goldenFiles(t)["example/echo/v1/echo_kafka.pb.go"]; got != want {
		t.Errorf("binary output differs from the golden:\n%s", firstDifference(want, got))
	}

	// An invalid option comes back as the response's error, not as a crash.
	req = compileRequest(t, nil, "testdata/bad/missing_request_topic.proto")
	in, _ = proto.Marshal(req)
	stdout, _ = runMain(t, in)
	resp = &pluginpb.CodeGeneratorResponse{}
	if err := proto.Unmarshal([]byte(stdout), resp); err != nil {
		t.Fatalf("stdout is not a CodeGeneratorResponse: %v", err)
	}
	if !strings.Contains(resp.GetError(), "request_topic is required") {
		t.Errorf("error %q, want the missing request_topic reported", resp.GetError())
	}
}

func TestVersionFlag(t *testing.T) {
	stdout, _ := runMain(t, nil, "--version")
	if want := "protoc-gen-go-kafka v" + version + "\n"; stdout != want {
		t.Errorf("--version printed %q, want %q", stdout, want)
	}
}

func TestUnknownParameter(t *testing.T) {
	req := compileRequest(t, nil, "example/echo/v1/echo.proto")
	req.Parameter = proto.String(moduleParam + ",bogus=1")
	if _, err := options().New(req); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("got error %v, want the unknown parameter named", err)
	}
}

// TestGoldensCompile type-checks the generated packages, _kafka.pb.go
// included, against the runtime and grpc.
func TestGoldensCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go vet")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not in PATH")
	}
	dirs := map[string]bool{}
	for name := range goldenFiles(t) {
		dirs["./"+filepath.ToSlash(filepath.Dir(name))] = true
	}
	cmd := exec.Command(goTool, append([]string{"vet"}, sortedKeys(dirs)...)...)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go vet %v: %v\n%s", sortedKeys(dirs), err, out)
	}
}

// runMain runs the test binary as the plugin, with stdin and args.
func runMain(t *testing.T, stdin []byte, args ...string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("plugin %v: %v\nstderr: %s", args, err, errOut.String())
	}
	return out.String(), errOut.String()
}

// firstDifference shows the first line where want and got differ.
func firstDifference(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return "line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl
		}
	}
	return "(no difference)"
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
