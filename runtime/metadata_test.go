package runtime

import (
	"slices"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

func TestMetadataFilterKeepsTransportAndCredentialsOut(t *testing.T) {
	md := metadata.MD{
		":authority":    {"x"},
		"content-type":  {"application/grpc"},
		"te":            {"trailers"},
		"user-agent":    {"grpc-go"},
		"grpc-timeout":  {"1S"},
		"grpc-encoding": {"gzip"},
		"authorization": {"Bearer secret"},
		"cookie":        {"session=secret"},
		"x-tenant":      {"acme"},
		"my-secret":     {"s"},
	}
	f := newMetadataFilter(append(slices.Clone(DefaultDeniedMetadata), "My-Secret"), nil, []string{"idempotency-key"})
	hs := wire.AppendMetadata(nil, "meta:", md, f.keep)
	if len(hs) != 1 || hs[0].Key != "meta:x-tenant" {
		t.Fatalf("headers = %v, want only meta:x-tenant", hs)
	}
	// An allow list lets through only what it names, never transport headers.
	// An allow list lets through the runtime's own names too.
	f = newMetadataFilter(nil, []string{"authorization", "te"}, []string{"idempotency-key"})
	hs = wire.AppendMetadata(nil, "meta:", md, f.keep)
	if len(hs) != 1 || hs[0].Key != "meta:authorization" {
		t.Fatalf("allow list: headers = %v, want only meta:authorization", hs)
	}
	md["idempotency-key"] = []string{"k"}
	hs = wire.AppendMetadata(nil, "meta:", md, f.keep)
	if len(hs) != 2 || hs[0].Key != "meta:authorization" || hs[1].Key != "meta:idempotency-key" {
		t.Fatalf("allow list: headers = %v, want meta:authorization and meta:idempotency-key", hs)
	}
}

func TestMatchRoute(t *testing.T) {
	md := metadata.MD{"tenant": {"a", "b"}, "beta": {""}}
	cases := []struct {
		when []MetadataMatch
		want bool
	}{
		{nil, true},
		{[]MetadataMatch{{Name: "tenant", Value: "b"}}, true},
		{[]MetadataMatch{{Name: "tenant", Value: "c"}}, false},
		{[]MetadataMatch{{Name: "beta"}}, true},
		{[]MetadataMatch{{Name: "beta"}, {Name: "tenant", Value: "a"}}, true},
		{[]MetadataMatch{{Name: "missing"}}, false},
	}
	for _, c := range cases {
		if got := matchRoute(c.when, md); got != c.want {
			t.Errorf("matchRoute(%v) = %v, want %v", c.when, got, c.want)
		}
	}
}
