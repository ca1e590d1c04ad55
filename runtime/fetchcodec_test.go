package runtime_test

import (
	"context"
	"net"
	"reflect"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// TestImportLeavesProtoCodec: with the runtime and a generated package
// imported (and initialised: this test binary imports both), the codec
// gRPC uses for "proto" is still gRPC's own, from its encoding/proto
// package.
func TestImportLeavesProtoCodec(t *testing.T) {
	_ = echov1.EchoServiceKafkaSpec // the generated package is imported, not only the runtime
	c := encoding.GetCodecV2(grpcproto.Name)
	if c == nil {
		t.Fatal("no codec registered for proto")
	}
	typ := reflect.TypeOf(c)
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.PkgPath() != "google.golang.org/grpc/encoding/proto" {
		t.Fatalf("the codec registered for proto is %T from %q, want gRPC's own", c, typ.PkgPath())
	}
}

// testJSONName is a content-subtype whose codec is protojson, registered by
// this test binary only, to show what FetchServerCodec does to callers of a
// codec other than proto.
const testJSONName = "kafkarpc-test-json"

func init() { encoding.RegisterCodecV2(testJSON{}) }

type testJSON struct{}

func (testJSON) Marshal(v any) (mem.BufferSlice, error) {
	b, err := protojson.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

func (testJSON) Unmarshal(d mem.BufferSlice, v any) error {
	return protojson.Unmarshal(d.Materialize(), v.(proto.Message))
}

func (testJSON) Name() string { return testJSONName }

// TestFetchServerCodecContentSubtype shows what FetchServerCodec's doc says:
// a server without it picks the codec by the caller's content-subtype; with
// it, every call uses the proto codec, so proto callers work and a caller
// of another codec fails.
func TestFetchServerCodecContentSubtype(t *testing.T) {
	for _, tc := range []struct {
		name     string
		srv      []grpc.ServerOption
		jsonWork bool
	}{
		{"without", nil, true},
		{"FetchServerCodec", []grpc.ServerOption{runtime.FetchServerCodec()}, false},
		{"GatewayServerOptions", runtime.GatewayServerOptions(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			s := grpc.NewServer(tc.srv...)
			healthpb.RegisterHealthServer(s, health.NewServer())
			go func() { _ = s.Serve(lis) }()
			t.Cleanup(s.Stop)
			cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cc.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			hc := healthpb.NewHealthClient(cc)
			req := &healthpb.HealthCheckRequest{}
			if resp, err := hc.Check(ctx, req); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("proto caller: %v, %v", resp, err)
			}
			resp, err := hc.Check(ctx, req, grpc.CallContentSubtype(testJSONName))
			if tc.jsonWork && (err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING) {
				t.Fatalf("%s caller: %v, %v", testJSONName, resp, err)
			}
			if !tc.jsonWork && err == nil {
				t.Fatalf("%s caller answered %v; want an error: the server decodes its JSON as proto", testJSONName, resp)
			}
			t.Logf("%s caller: %v", testJSONName, err)
		})
	}
}
