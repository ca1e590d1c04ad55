// Package kafkaoptions is the Go side of the protoc-gen-go-kafka options,
// kafkarpc/kafka/v1/options.proto: the ServiceRule (E_Service) and MethodRule
// (E_Method) extensions that say which Kafka topics the calls of a gRPC
// service travel over. The plugin reads them with proto.GetExtension; user
// code rarely needs this package, only the .proto it describes.
package kafkaoptions
