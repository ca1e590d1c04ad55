package wire

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// headersFromBytes splits data into headers: each header is a name and a
// value separated by 0x00, headers separated by 0x01. It lets the fuzzer
// build arbitrary header lists from one byte string.
func headersFromBytes(data []byte) []Header {
	var hs []Header
	start := 0
	for i := 0; i <= len(data); i++ {
		if i < len(data) && data[i] != 1 {
			continue
		}
		part := data[start:i]
		start = i + 1
		name, value := part, []byte(nil)
		for j, b := range part {
			if b == 0 {
				name, value = part[:j], part[j+1:]
				break
			}
		}
		hs = append(hs, Header{Key: string(name), Value: value})
	}
	return hs
}

// FuzzDecode feeds arbitrary headers to Decode, as a worker and a gateway
// read them: never a panic, never a negative timeout, no metadata outside
// Meta's prefix, and metadata that never holds the timeout or served-by
// headers.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("meta:x-tenant\x00acme\x01meta:grpc-timeout\x001500m"))
	f.Add([]byte("meta:trace-bin\x00AP8=\x01meta:trace-bin\x00-_8"))
	f.Add([]byte("meta:x-bin\x00%%%\x01zilla:service\x00example.echo.v1.EchoService"))
	f.Add([]byte("meta:grpc-timeout\x0099999999H"))
	f.Add([]byte("meta:\x00\x01meta:grpc-timeout\x00-1S"))
	f.Add([]byte("meta:a\x00b\x01zilla:correlation-id\x00x\x01meta:c\x00d\x01meta:kafkarpc-served-by\x00w"))
	names := DefaultNames()
	f.Fuzz(func(t *testing.T, data []byte) {
		e := Decode(&names, headersFromBytes(data), nil)
		if e.HasTimeout && e.Timeout < 0 {
			t.Fatalf("timeout %v", e.Timeout)
		}
		for _, h := range e.Meta {
			if !strings.HasPrefix(h.Key, names.MetaPrefix) {
				t.Fatalf("Meta holds %q", h.Key)
			}
		}
		md, err := e.Metadata()
		if err != nil {
			return
		}
		if _, ok := md[TimeoutMetadata]; ok {
			t.Fatal("grpc-timeout left in the metadata")
		}
		if _, ok := md[ServedByMetadata]; ok {
			t.Fatal("served-by left in the metadata")
		}
		if _, ok := md[AttemptMetadata]; ok {
			t.Fatal("the attempt id left in the metadata")
		}
	})
}

// FuzzReplyStatus feeds arbitrary reply headers to the status decoder:
// never a panic, and an OK status only for an absent or zero code.
func FuzzReplyStatus(f *testing.F) {
	f.Add([]byte("zilla:status\x000"))
	f.Add([]byte("zilla:status\x005\x01zilla:message\x00gone"))
	f.Add([]byte("zilla:status\x00abc"))
	f.Add([]byte("zilla:status\x009\x01zilla:status-details-bin\x00CAkSB25vdCB5ZXQ="))
	f.Add([]byte("zilla:status\x0018446744073709551616"))
	names := DefaultNames()
	f.Fuzz(func(t *testing.T, data []byte) {
		hs := headersFromBytes(data)
		e := Decode(&names, hs, nil)
		st := e.Status()
		raw, present := headerValue(hs, names.Status)
		if st == nil && present {
			if n, err := strconv.ParseUint(string(raw), 10, 32); err != nil || n != 0 {
				t.Fatalf("status %q decoded as OK", raw)
			}
		}
		_, _ = e.Trailer()
	})
}

// FuzzTimeout checks that DecodeTimeout never panics and that what
// EncodeTimeout writes decodes to at most the duration encoded.
func FuzzTimeout(f *testing.F) {
	for _, s := range []string{"1500m", "1S", "99999999H", "0n", "12x", ""} {
		f.Add(s, int64(1500*time.Millisecond))
	}
	f.Fuzz(func(t *testing.T, s string, d int64) {
		_, _ = DecodeTimeout(s)
		if d <= 0 {
			return
		}
		enc := EncodeTimeout(time.Duration(d))
		back, err := DecodeTimeout(enc)
		if err != nil {
			t.Fatalf("DecodeTimeout(EncodeTimeout(%d) = %q): %v", d, enc, err)
		}
		if back > time.Duration(d) {
			t.Fatalf("EncodeTimeout(%v) = %q gives back more time: %v", time.Duration(d), enc, back)
		}
	})
}

// headerValue returns the value of the first header named name.
func headerValue(hs []Header, name string) ([]byte, bool) {
	for i := range hs {
		if hs[i].Key == name {
			return hs[i].Value, true
		}
	}
	return nil, false
}
