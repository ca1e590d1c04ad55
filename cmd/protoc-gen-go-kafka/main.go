// protoc-gen-go-kafka is a plugin for the Google protocol buffer compiler that
// generates the Kafka side of gRPC services in Go: for every service annotated
// with the kafkarpc.kafka.v1 options, a spec of the topics its methods travel
// over, a gateway implementing the gRPC server by relaying each call through
// Kafka, and the registration of a worker serving the user's own
// implementation from Kafka. Install it by building this program and making it
// accessible within your PATH with the name:
//
//	protoc-gen-go-kafka
//
// The 'go-kafka' suffix becomes part of the argument for the protocol compiler,
// such that it can be invoked, next to protoc-gen-go and protoc-gen-go-grpc,
// as:
//
//	protoc --go_out=. --go-grpc_out=. --go-kafka_out=. path/to/file.proto
//
// or from a buf.gen.yaml with `local: protoc-gen-go-kafka`. With that input,
// the output is written beside the others, in the same Go package:
//
//	path/to/file_kafka.pb.go
//
// No file is written for a proto without a service travelling over Kafka.
// Invalid options stop the generation with an error naming the file, the
// service or method and the option field, for every problem found.
//
// The plugin accepts the parameters every protogen plugin does (paths=,
// module=, M...) and none of its own yet. Run it with --version to print its
// version.
package main

import (
	"flag"
	"fmt"

	"google.golang.org/protobuf/compiler/protogen"
)

// version is the plugin's version, written into every generated file.
const version = "0.1.0"

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Printf("protoc-gen-go-kafka v%s\n", version)
		return
	}
	options().Run(generate)
}

// options returns the protogen options of the plugin: its parameters, parsed
// from the protoc parameter string, live on their own flag set.
func options() protogen.Options {
	var flags flag.FlagSet
	return protogen.Options{ParamFunc: flags.Set}
}
