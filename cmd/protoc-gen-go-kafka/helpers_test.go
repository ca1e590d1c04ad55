package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

// moduleParam is the parameter buf.gen.yaml passes to every plugin.
const moduleParam = "module=github.com/kafkarpc/protoc-gen-go-kafka"

// compileRequest compiles files in-process, each named relative to the
// repository root (the options import from the options module), and returns
// the CodeGeneratorRequest buf would send for them. sources, when not nil,
// supplies file contents by name instead of the disk.
func compileRequest(t testing.TB, sources map[string]string, files ...string) *pluginpb.CodeGeneratorRequest {
	t.Helper()
	accessor := func(path string) (io.ReadCloser, error) {
		if src, ok := sources[path]; ok {
			return io.NopCloser(strings.NewReader(src)), nil
		}
		for _, dir := range []string{repoRoot, filepath.Join(repoRoot, "options")} {
			if f, err := os.Open(filepath.Join(dir, filepath.FromSlash(path))); err == nil {
				return f, nil
			}
		}
		return nil, os.ErrNotExist
	}
	c := protocompile.Compiler{
		Resolver:       protocompile.WithStandardImports(&protocompile.SourceResolver{Accessor: accessor}),
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	compiled, err := c.Compile(context.Background(), files...)
	if err != nil {
		t.Fatalf("compile %v: %v", files, err)
	}

	// Every file and its imports, imports first, as protoc and buf send them.
	var protos []*descriptorpb.FileDescriptorProto
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		protos = append(protos, protodesc.ToFileDescriptorProto(fd))
	}
	for _, fd := range compiled {
		add(fd)
	}
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate: files,
		Parameter:      proto.String(moduleParam),
		ProtoFile:      protos,
	}

	// The plugin reads its request from bytes, resolving the custom options
	// against the option types linked into it: do the same.
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	decoded := &pluginpb.CodeGeneratorRequest{}
	if err := proto.Unmarshal(b, decoded); err != nil {
		t.Fatal(err)
	}
	return decoded
}

// runPlugin runs the plugin's generation on req, as main does.
func runPlugin(t testing.TB, req *pluginpb.CodeGeneratorRequest) *pluginpb.CodeGeneratorResponse {
	t.Helper()
	gen, err := options().New(req)
	if err != nil {
		t.Fatalf("protogen: %v", err)
	}
	if err := generate(gen); err != nil {
		gen.Error(err)
	}
	return gen.Response()
}

// protoFiles lists the .proto files under dir (relative to the repository
// root, slash-separated), skipping the directories in skip.
func protoFiles(t testing.TB, dir string, skip ...string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repoRoot, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			for _, s := range skip {
				if rel == s {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if strings.HasSuffix(rel, ".proto") {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
