// Package echov1 is the code generated from echo.proto, the annotated echo
// service of the walk-through: its messages (echo.pb.go), its gRPC client and
// server (echo_grpc.pb.go) and its Kafka side (echo_kafka.pb.go):
// EchoServiceKafkaSpec (a copy of the routes the generated code uses),
// EchoService_EchoUnary_KafkaFullMethodName and the other full method names,
// EchoServiceKafkaGateway with RegisterEchoServiceKafkaGateway, and
// RegisterEchoServiceKafkaWorker.
// Regenerate it with `go tool -modfile=tools/go.mod buf generate` from the
// repository root.
package echov1
