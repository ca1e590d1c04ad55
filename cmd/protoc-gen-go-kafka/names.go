package main

import "google.golang.org/protobuf/compiler/protogen"

// names computes, in one place, every identifier the generated code declares
// or refers to for one service: the Kafka names this plugin declares (each of
// them contains "Kafka", so nothing collides with the output of protoc-gen-go
// or protoc-gen-go-grpc in the same package) and the names protoc-gen-go-grpc
// declares that the generated code builds on.
//
// The unexported names follow protoc-gen-go-grpc's _EchoService_EchoUnary_Handler:
// the service and method joined by underscores, so that two of them coincide
// only where protoc-gen-go-grpc's own names would, and a suffix of ours.
type names struct {
	// Declared by protoc-gen-go-kafka.
	Spec            string // EchoServiceKafkaSpec, a copy of spec for callers
	spec            string // _EchoService_KafkaSpec, the one the generated code uses
	Gateway         string // EchoServiceKafkaGateway
	NewGateway      string // NewEchoServiceKafkaGateway
	RegisterGateway string // RegisterEchoServiceKafkaGateway
	RegisterWorker  string // RegisterEchoServiceKafkaWorker

	// Declared by protoc-gen-go-grpc in the same package.
	Server         string // EchoServiceServer
	Unimplemented  string // UnimplementedEchoServiceServer
	RegisterServer string // RegisterEchoServiceServer
	ServiceDesc    string // EchoService_ServiceDesc

	service string // the service's Go name, e.g. EchoService
}

func newNames(s *protogen.Service) names {
	base := s.GoName
	return names{
		Spec:            base + "KafkaSpec",
		spec:            "_" + base + "_KafkaSpec",
		Gateway:         base + "KafkaGateway",
		NewGateway:      "New" + base + "KafkaGateway",
		RegisterGateway: "Register" + base + "KafkaGateway",
		RegisterWorker:  "Register" + base + "KafkaWorker",
		Server:          base + "Server",
		Unimplemented:   "Unimplemented" + base + "Server",
		RegisterServer:  "Register" + base + "Server",
		ServiceDesc:     base + "_ServiceDesc",
		service:         base,
	}
}

// StreamServer is the name protoc-gen-go-grpc gives the server-side stream
// of a streaming method, e.g. EchoService_EchoServerStreamServer: an alias of
// grpc's generic stream types, or an interface in its non-generic mode.
func (n names) StreamServer(m *protogen.Method) string {
	return n.service + "_" + m.GoName + "Server"
}

// MethodSpec is the unexported variable holding the runtime.MethodSpec of m,
// e.g. _EchoService_EchoUnary_KafkaMethod.
func (n names) MethodSpec(m *protogen.Method) string {
	return "_" + n.service + "_" + m.GoName + "_KafkaMethod"
}

// FullMethodName is the exported constant holding the full gRPC method name
// of m, e.g. EchoService_EchoUnary_KafkaFullMethodName.
func (n names) FullMethodName(m *protogen.Method) string {
	return n.service + "_" + m.GoName + "_KafkaFullMethodName"
}

// GRPCFullMethodName is protoc-gen-go-grpc's constant of the same value,
// e.g. EchoService_EchoUnary_FullMethodName.
func (n names) GRPCFullMethodName(m *protogen.Method) string {
	return n.service + "_" + m.GoName + "_FullMethodName"
}

// Publisher is the exported constructor of the typed publisher of a fetch
// method m, e.g. NewEchoService_EchoEvents_KafkaPublisher.
func (n names) Publisher(m *protogen.Method) string {
	return "New" + n.service + "_" + m.GoName + "_KafkaPublisher"
}
