package runtime

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
	"google.golang.org/grpc/metadata"
)

// TestResumeFromMetadata covers every form a resume id may take: both
// base64 alphabets, padded or not, raw "-bin" bytes, the synonym, a method's
// own name, and the refusals.
func TestResumeFromMetadata(t *testing.T) {
	// An id whose base64 has '-' and '_' in the URL alphabet ('+' and '/'
	// in the standard one) and needs padding: partitions 0..2 at large
	// offsets.
	id := wire.EventID{{Partition: 0, Offset: 1 << 34}, {Partition: 1, Offset: 0xfbff}, {Partition: 2, Offset: 0x3ffff}}
	raw := id.Encode()
	url := base64.URLEncoding.EncodeToString(raw)
	std := base64.StdEncoding.EncodeToString(raw)
	if !strings.ContainsAny(url, "-_") || !strings.ContainsAny(std, "+/") || !strings.HasSuffix(url, "=") {
		t.Fatalf("test id does not exercise the alphabets or padding: %q %q", url, std)
	}
	def := resumeNames("")
	custom := resumeNames("x-resume")
	for _, tc := range []struct {
		name  string
		names []string
		md    metadata.MD
		want  bool   // an id is found
		err   string // expected error substring
	}{
		{"none", def, metadata.MD{}, false, ""},
		{"empty value", def, metadata.Pairs("last-message-id", ""), false, ""},
		{"url padded", def, metadata.Pairs("last-message-id", url), true, ""},
		{"url unpadded", def, metadata.Pairs("last-message-id", strings.TrimRight(url, "=")), true, ""},
		{"std padded", def, metadata.Pairs("last-message-id", std), true, ""},
		{"std unpadded", def, metadata.Pairs("last-message-id", strings.TrimRight(std, "=")), true, ""},
		{"bin", def, metadata.Pairs("last-message-id-bin", string(raw)), true, ""},
		{"synonym", def, metadata.Pairs("last-event-id", url), true, ""},
		{"synonym bin", def, metadata.Pairs("last-event-id-bin", string(raw)), true, ""},
		{"custom name", custom, metadata.Pairs("x-resume", url), true, ""},
		{"custom name bin", custom, metadata.Pairs("x-resume-bin", string(raw)), true, ""},
		{"default name on a custom method", custom, metadata.Pairs("last-message-id", url), true, ""},
		{"same id twice", def, metadata.Pairs("last-message-id", url, "last-event-id", std), true, ""},
		{"garbage text", def, metadata.Pairs("last-message-id", "not base64!"), false, "not base64"},
		{"mixed alphabets", def, metadata.Pairs("last-message-id", "AQ-+"), false, "not base64"},
		{"base64 of garbage", def, metadata.Pairs("last-message-id", base64.RawURLEncoding.EncodeToString([]byte("hello"))), false, "version 104"},
		{"bin garbage", def, metadata.Pairs("last-message-id-bin", "\x01\x02"), false, "last-message-id-bin"},
		{"conflict", def, metadata.Pairs("last-message-id", url, "last-event-id", base64.RawURLEncoding.EncodeToString(wireID)), false, "different event ids"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resumeFromMetadata(tc.md, tc.names)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got != nil) != tc.want {
				t.Fatalf("id = %v, want found=%v", got, tc.want)
			}
			if tc.want && got.String() != id.String() {
				t.Fatalf("id = %v, want %v", got, id)
			}
		})
	}
	if n := resumeNames("last-event-id"); len(n) != 2 || n[0] != "last-event-id" || n[1] != "last-message-id" {
		t.Fatalf("resumeNames(last-event-id) = %v", n)
	}
}
