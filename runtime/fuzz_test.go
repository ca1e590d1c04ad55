package runtime

import (
	"strconv"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// headersFromBytes splits data into headers: each header is a name and a
// value separated by 0x00, headers separated by 0x01. It lets the fuzzer
// build arbitrary header lists from one byte string.
func headersFromBytes(data []byte) []kafkaclient.Header {
	var hs []kafkaclient.Header
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
		hs = append(hs, kafkaclient.Header{Key: string(name), Value: value})
	}
	return hs
}

// FuzzRequestHeaders feeds arbitrary request headers to the worker's decoders:
// they must return an error or metadata, never panic, and a decoded timeout
// must not be negative.
func FuzzRequestHeaders(f *testing.F) {
	f.Add([]byte("meta:x-tenant\x00acme\x01meta:grpc-timeout\x001500m"))
	f.Add([]byte("meta:trace-bin\x00AP8=\x01meta:trace-bin\x00-_8"))
	f.Add([]byte("meta:x-bin\x00%%%\x01zilla:service\x00example.echo.v1.EchoService"))
	f.Add([]byte("meta:grpc-timeout\x0099999999H"))
	f.Add([]byte("meta:\x00\x01meta:grpc-timeout\x00-1S"))
	names := DefaultHeaderNames()
	f.Fuzz(func(t *testing.T, data []byte) {
		rec := &kafkaclient.Record{Headers: headersFromBytes(data), Timestamp: time.Unix(1e9, 0)}
		md, deadline, err := requestMetadata(rec, &names)
		if err != nil {
			return
		}
		if !deadline.IsZero() && deadline.Before(rec.Timestamp) {
			t.Fatalf("deadline %v before the record's timestamp", deadline)
		}
		if _, ok := md[timeoutMetadata]; ok {
			t.Fatal("grpc-timeout left in the handler's metadata")
		}
	})
}

// FuzzReplyStatus feeds arbitrary reply headers to the gateway's status
// decoder: never a panic, and an OK status only for an absent or zero code.
func FuzzReplyStatus(f *testing.F) {
	f.Add([]byte("zilla:status\x000"))
	f.Add([]byte("zilla:status\x005\x01zilla:message\x00gone"))
	f.Add([]byte("zilla:status\x00abc"))
	f.Add([]byte("zilla:status\x009\x01zilla:status-details-bin\x00CAkSB25vdCB5ZXQ="))
	f.Add([]byte("zilla:status\x0018446744073709551616"))
	names := DefaultHeaderNames()
	f.Fuzz(func(t *testing.T, data []byte) {
		hs := headersFromBytes(data)
		st := statusFromHeaders(hs, &names)
		raw, present := headerValue(hs, names.Status)
		if st == nil && present {
			if n, err := strconv.ParseUint(string(raw), 10, 32); err != nil || n != 0 {
				t.Fatalf("status %q decoded as OK", raw)
			}
		}
		_, _ = metadataFromHeaders(hs, names.TrailerPrefix)
	})
}

// FuzzTimeout checks that decodeTimeout never panics and that what
// encodeTimeout writes decodes to at most the duration encoded.
func FuzzTimeout(f *testing.F) {
	for _, s := range []string{"1500m", "1S", "99999999H", "0n", "12x", ""} {
		f.Add(s, int64(1500*time.Millisecond))
	}
	f.Fuzz(func(t *testing.T, s string, d int64) {
		_, _ = decodeTimeout(s)
		if d <= 0 {
			return
		}
		enc := encodeTimeout(time.Duration(d))
		back, err := decodeTimeout(enc)
		if err != nil {
			t.Fatalf("decodeTimeout(encodeTimeout(%d) = %q): %v", d, enc, err)
		}
		if back > time.Duration(d) {
			t.Fatalf("encodeTimeout(%v) = %q gives back more time: %v", time.Duration(d), enc, back)
		}
	})
}
