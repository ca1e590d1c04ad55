package wire

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
)

func TestMetaHeadersRoundTrip(t *testing.T) {
	md := metadata.MD{
		"x-b":       {"2", "3"},
		"x-a":       {"1"},
		"trace-bin": {"\x00\xff binary"},
	}
	hs := AppendMetadata(nil, "meta:", md, nil)
	var keys []string
	for _, h := range hs {
		keys = append(keys, h.Key+"="+string(h.Value))
	}
	want := []string{"meta:trace-bin=AP8gYmluYXJ5", "meta:x-a=1", "meta:x-b=2", "meta:x-b=3"}
	if !slices.Equal(keys, want) {
		t.Fatalf("headers = %q, want %q", keys, want)
	}
	back, err := DecodeMetadata(hs, "meta:", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range md {
		if !slices.Equal(back[k], v) {
			t.Errorf("%s = %q, want %q", k, back[k], v)
		}
	}
}

func TestMetadataFromHeadersBadBinary(t *testing.T) {
	_, err := DecodeMetadata([]Header{{Key: "meta:x-bin", Value: []byte("not base64!")}}, "meta:", nil)
	if err == nil || !strings.Contains(err.Error(), `"meta:x-bin"`) {
		t.Fatalf("err = %v, want one naming meta:x-bin", err)
	}
}

func TestMetadataFromHeadersAcceptsBothAlphabets(t *testing.T) {
	for _, v := range []string{"+/8=", "+/8", "-_8", "-_8="} {
		md, err := DecodeMetadata([]Header{{Key: "meta:x-bin", Value: []byte(v)}}, "meta:", nil)
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
		if got := EncodeTimeout(c.d); got != c.want {
			t.Errorf("EncodeTimeout(%v) = %q, want %q", c.d, got, c.want)
		}
		back, err := DecodeTimeout(c.want)
		if err != nil {
			t.Errorf("DecodeTimeout(%q): %v", c.want, err)
		}
		if back > c.d || c.d-back >= time.Millisecond {
			t.Errorf("DecodeTimeout(%q) = %v, want within 1ms below %v", c.want, back, c.d)
		}
	}
	for _, bad := range []string{"", "1", "123456789m", "12x", "-1S", "m"} {
		if _, err := DecodeTimeout(bad); err == nil {
			t.Errorf("DecodeTimeout(%q) accepted", bad)
		}
	}
}
