package runtime

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

func TestMetaHeadersRoundTrip(t *testing.T) {
	md := metadata.MD{
		"x-b":       {"2", "3"},
		"x-a":       {"1"},
		"trace-bin": {"\x00\xff binary"},
	}
	hs := appendMetaHeaders(nil, "meta:", md, nil)
	var keys []string
	for _, h := range hs {
		keys = append(keys, h.Key+"="+string(h.Value))
	}
	want := []string{"meta:trace-bin=AP8gYmluYXJ5", "meta:x-a=1", "meta:x-b=2", "meta:x-b=3"}
	if !slices.Equal(keys, want) {
		t.Fatalf("headers = %q, want %q", keys, want)
	}
	back, err := metadataFromHeaders(hs, "meta:")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range md {
		if !slices.Equal(back[k], v) {
			t.Errorf("%s = %q, want %q", k, back[k], v)
		}
	}
}

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
	hs := appendMetaHeaders(nil, "meta:", md, f.keep)
	if len(hs) != 1 || hs[0].Key != "meta:x-tenant" {
		t.Fatalf("headers = %v, want only meta:x-tenant", hs)
	}
	// An allow list lets through only what it names, never transport headers.
	// An allow list lets through the runtime's own names too.
	f = newMetadataFilter(nil, []string{"authorization", "te"}, []string{"idempotency-key"})
	hs = appendMetaHeaders(nil, "meta:", md, f.keep)
	if len(hs) != 1 || hs[0].Key != "meta:authorization" {
		t.Fatalf("allow list: headers = %v, want only meta:authorization", hs)
	}
	md["idempotency-key"] = []string{"k"}
	hs = appendMetaHeaders(nil, "meta:", md, f.keep)
	if len(hs) != 2 || hs[0].Key != "meta:authorization" || hs[1].Key != "meta:idempotency-key" {
		t.Fatalf("allow list: headers = %v, want meta:authorization and meta:idempotency-key", hs)
	}
}

func TestMetadataFromHeadersBadBinary(t *testing.T) {
	_, err := metadataFromHeaders([]kafkaclient.Header{{Key: "meta:x-bin", Value: []byte("not base64!")}}, "meta:")
	if err == nil || !strings.Contains(err.Error(), `"meta:x-bin"`) {
		t.Fatalf("err = %v, want one naming meta:x-bin", err)
	}
}

func TestMetadataFromHeadersAcceptsBothAlphabets(t *testing.T) {
	for _, v := range []string{"+/8=", "+/8", "-_8", "-_8="} {
		md, err := metadataFromHeaders([]kafkaclient.Header{{Key: "meta:x-bin", Value: []byte(v)}}, "meta:")
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if got := md["x-bin"][0]; got != "\xfb\xff" {
			t.Fatalf("%q decoded to %q", v, got)
		}
	}
}

func TestTimeoutEncoding(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want string
	}{
		{1500 * time.Millisecond, "1500m"},
		{1500*time.Millisecond + 999*time.Microsecond, "1500m"},
		{250 * time.Microsecond, "250u"},
		{200 * time.Hour, "720000S"},
		{0, "0n"},
	}
	for _, c := range cases {
		if got := encodeTimeout(c.d); got != c.want {
			t.Errorf("encodeTimeout(%v) = %q, want %q", c.d, got, c.want)
		}
		back, err := decodeTimeout(c.want)
		if err != nil {
			t.Errorf("decodeTimeout(%q): %v", c.want, err)
		}
		if back > c.d || c.d-back >= time.Millisecond {
			t.Errorf("decodeTimeout(%q) = %v, want within 1ms below %v", c.want, back, c.d)
		}
	}
	for _, bad := range []string{"", "1", "123456789m", "12x", "-1S", "m"} {
		if _, err := decodeTimeout(bad); err == nil {
			t.Errorf("decodeTimeout(%q) accepted", bad)
		}
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
