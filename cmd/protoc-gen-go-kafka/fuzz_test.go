package main

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/pluginpb"

	kafkaoptions "github.com/kafkarpc/protoc-gen-go-kafka/options"
)

// FuzzOptions feeds arbitrary rules to a service with one method of each kind
// and a fetch-shaped method: the plugin must never panic, and must either
// generate code or answer with option errors naming the file and element.
// `go test` runs the seeds; `go test -fuzz FuzzOptions` explores.
func FuzzOptions(f *testing.F) {
	seed := func(sr *kafkaoptions.ServiceRule, mr *kafkaoptions.MethodRule, method uint8) {
		var sb, mb []byte
		var err error
		if sr != nil {
			if sb, err = proto.Marshal(sr); err != nil {
				f.Fatal(err)
			}
		}
		if mr != nil {
			if mb, err = proto.Marshal(mr); err != nil {
				f.Fatal(err)
			}
		}
		f.Add(sb, sr != nil, mb, mr != nil, method)
	}
	topics := &kafkaoptions.ServiceRule{RequestTopic: "q", ReplyTopic: "r"}
	seed(topics, nil, 0)
	seed(nil, &kafkaoptions.MethodRule{Fetch: &kafkaoptions.FetchRule{Topic: "e"}}, 4)
	seed(topics, &kafkaoptions.MethodRule{Fetch: &kafkaoptions.FetchRule{
		Topic:          "e",
		Filters:        []*kafkaoptions.FetchFilter{{Key: proto.String("k\"\\\n")}, {Headers: []*kafkaoptions.Header{{Name: "h", Value: "\x00`"}}}},
		EventIdField:   7,
		ResumeMetadata: "r-bin",
	}}, 4)
	seed(&kafkaoptions.ServiceRule{Key: "k`\"", Overrides: []*kafkaoptions.Header{{Name: "n", Value: "v\u2028"}}, Acks: 9}, &kafkaoptions.MethodRule{
		RequestTopic: "q",
		Oneway:       true,
		Routes: []*kafkaoptions.Route{
			{When: []*kafkaoptions.MetadataMatch{{Name: "x", Value: "*/"}}, Oneway: proto.Bool(false), ReplyTopic: "r"},
			{Oneway: proto.Bool(true)},
		},
	}, 2)
	seed(nil, &kafkaoptions.MethodRule{RequestTopic: "q", ReplyTopic: "q", Oneway: true, Fetch: &kafkaoptions.FetchRule{}}, 3)

	f.Fuzz(func(t *testing.T, serviceRule []byte, hasService bool, methodRule []byte, hasMethod bool, method uint8) {
		var sr *kafkaoptions.ServiceRule
		var mr *kafkaoptions.MethodRule
		if hasService {
			sr = &kafkaoptions.ServiceRule{}
			if proto.Unmarshal(serviceRule, sr) != nil {
				t.Skip("not a ServiceRule")
			}
		}
		if hasMethod {
			mr = &kafkaoptions.MethodRule{}
			if proto.Unmarshal(methodRule, mr) != nil {
				t.Skip("not a MethodRule")
			}
		}
		resp := runPlugin(t, fuzzRequest(sr, mr, int(method)%5))
		if resp.Error == nil {
			if (sr != nil || mr != nil) != (len(resp.File) == 1) {
				t.Fatalf("%d files generated for service rule %v, method rule %v", len(resp.File), sr, mr)
			}
			return
		}
		for _, line := range strings.Split(resp.GetError(), "\n") {
			if !strings.HasPrefix(line, "fuzz/v1/fuzz.proto: fuzz.v1.FuzzService") {
				t.Fatalf("error not about an option: %s", resp.GetError())
			}
		}
	})
}

// fuzzRequest builds, without a compiler, the request for a file with one
// service of five methods (unary, server, client and bidi streaming, and a
// server stream of google.protobuf.Empty), sr on the service and mr on the
// method at index method; either rule may be nil.
func fuzzRequest(sr *kafkaoptions.ServiceRule, mr *kafkaoptions.MethodRule, method int) *pluginpb.CodeGeneratorRequest {
	field := func(name string, number int32, typ descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{
			Name:     proto.String(name),
			JsonName: proto.String(name),
			Number:   proto.Int32(number),
			Label:    descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
			Type:     typ.Enum(),
		}
	}
	rpc := func(name, in, out string, clientStreams, serverStreams bool) *descriptorpb.MethodDescriptorProto {
		return &descriptorpb.MethodDescriptorProto{
			Name:            proto.String(name),
			InputType:       proto.String(in),
			OutputType:      proto.String(out),
			ClientStreaming: proto.Bool(clientStreams),
			ServerStreaming: proto.Bool(serverStreams),
		}
	}
	svc := &descriptorpb.ServiceDescriptorProto{
		Name: proto.String("FuzzService"),
		Method: []*descriptorpb.MethodDescriptorProto{
			rpc("Unary", ".fuzz.v1.Req", ".fuzz.v1.Resp", false, false),
			rpc("Server", ".fuzz.v1.Req", ".fuzz.v1.Resp", false, true),
			rpc("Client", ".fuzz.v1.Req", ".fuzz.v1.Resp", true, false),
			rpc("Bidi", ".fuzz.v1.Req", ".fuzz.v1.Resp", true, true),
			rpc("Events", ".google.protobuf.Empty", ".fuzz.v1.Resp", false, true),
		},
	}
	if sr != nil {
		svc.Options = &descriptorpb.ServiceOptions{}
		proto.SetExtension(svc.Options, kafkaoptions.E_Service, sr)
	}
	if mr != nil {
		m := svc.Method[method]
		m.Options = &descriptorpb.MethodOptions{}
		proto.SetExtension(m.Options, kafkaoptions.E_Method, mr)
	}
	file := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("fuzz/v1/fuzz.proto"),
		Package:    proto.String("fuzz.v1"),
		Dependency: []string{"google/protobuf/empty.proto"},
		Syntax:     proto.String("proto3"),
		Options: &descriptorpb.FileOptions{
			GoPackage: proto.String("github.com/kafkarpc/protoc-gen-go-kafka/fuzz/v1;fuzzv1"),
		},
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("Req"), Field: []*descriptorpb.FieldDescriptorProto{
				field("text", 1, descriptorpb.FieldDescriptorProto_TYPE_STRING),
			}},
			{Name: proto.String("Resp"), Field: []*descriptorpb.FieldDescriptorProto{
				field("text", 1, descriptorpb.FieldDescriptorProto_TYPE_STRING),
				field("seq", 7, descriptorpb.FieldDescriptorProto_TYPE_INT64),
			}},
		},
		Service: []*descriptorpb.ServiceDescriptorProto{svc},
	}
	return &pluginpb.CodeGeneratorRequest{
		FileToGenerate: []string{file.GetName()},
		Parameter:      proto.String(moduleParam),
		ProtoFile: []*descriptorpb.FileDescriptorProto{
			protodesc.ToFileDescriptorProto(emptypb.File_google_protobuf_empty_proto),
			file,
		},
	}
}
