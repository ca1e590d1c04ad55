package runtime

import (
	"testing"

	"google.golang.org/grpc/metadata"
)

// TestProtoSubtype: the raw unary path is taken for the content-types gRPC
// decodes with the proto codec, and for no other.
func TestProtoSubtype(t *testing.T) {
	for _, tc := range []struct {
		md   metadata.MD
		want bool
	}{
		{metadata.Pairs("content-type", "application/grpc"), true},
		{metadata.Pairs("content-type", "application/grpc+proto"), true},
		{metadata.Pairs("content-type", "Application/GRPC+Proto"), true},
		{metadata.Pairs("content-type", "application/grpc+"), true},
		{metadata.Pairs("content-type", "application/grpc;"), true},
		{metadata.Pairs("content-type", "application/grpc+json"), false},
		{metadata.Pairs("content-type", "application/grpc+protobuf"), false},
		{metadata.Pairs("content-type", "application/grpcx"), false},
		{metadata.Pairs("content-type", "application/json"), false},
		{metadata.Pairs("content-type", ""), false},
		{metadata.MD{}, false},
		{nil, false},
	} {
		if got := protoSubtype(tc.md); got != tc.want {
			t.Errorf("protoSubtype(%v) = %v, want %v", tc.md, got, tc.want)
		}
	}
}
