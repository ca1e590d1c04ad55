package wire

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// TestWireAuditHeaderEdges: what Decode makes of header lists WIRE.md does
// not spell out. Header names are Kafka's byte strings, compared exactly
// ("Zilla:Status" is not the status); a repeated zilla:* header counts once,
// the first; a meta:* name is gRPC metadata, so lower-cased; an empty -bin
// value is empty bytes; an empty zilla:status is no decimal code (UNKNOWN
// naming it) while "00" is 0.
func TestWireAuditHeaderEdges(t *testing.T) {
	names := DefaultNames()
	h := func(kv ...string) []Header {
		var hs []Header
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, Header{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	if st := Decode(&names, h("Zilla:Status", "5"), nil); st.Status() != nil {
		t.Errorf("Zilla:Status decoded as the status: %v", st.Status())
	}
	e := Decode(&names, h("zilla:status", "5", "zilla:status", "0", "zilla:message", "first", "zilla:message", "second"), nil)
	if st := e.Status(); st.Code() != codes.NotFound || st.Message() != "first" {
		t.Errorf("repeated status headers: %v, want the first of each (NOT_FOUND first)", st)
	}
	if st := decodeOf(&names, h("zilla:status", "00")).Status(); st != nil {
		t.Errorf("zilla:status 00: %v, want OK", st)
	}
	if st := decodeOf(&names, h("zilla:status", "")).Status(); st.Code() != codes.Unknown {
		t.Errorf("empty zilla:status: %v, want UNKNOWN", st)
	}
	e = Decode(&names, h("meta:X-Tenant", "acme", "meta:x-empty-bin", "", "meta:x-empty", ""), []byte{})
	md, err := e.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if got := md["x-tenant"]; len(got) != 1 || got[0] != "acme" {
		t.Errorf("meta:X-Tenant = %q, want x-tenant [acme]", got)
	}
	if got, ok := md["x-empty-bin"]; !ok || len(got) != 1 || got[0] != "" {
		t.Errorf("empty -bin value = %q (%v), want one empty value", got, ok)
	}
	if got, ok := md["x-empty"]; !ok || len(got) != 1 || got[0] != "" {
		t.Errorf("empty value = %q (%v), want one empty value", got, ok)
	}
	if e.EndOfStream {
		t.Error("an empty value decoded as the end of the stream")
	}
}

// TestWireAuditEventIDVarints: the zigzag varints of an event id past one
// byte: 64 partitions is the count 80 01; partition 300 at next offset
// 1<<40 is d8 04 80 80 80 80 80 40.
func TestWireAuditEventIDVarints(t *testing.T) {
	id := make(EventID, 64)
	for i := range id {
		id[i] = PartitionOffset{Partition: int32(i)}
	}
	if b := id.Encode(); !bytes.Equal(b[:3], []byte{0x01, 0x80, 0x01}) || len(b) != 3+64*2 {
		t.Errorf("64 partitions encode as % x..., want 01 80 01 and two bytes a partition", b[:3])
	}
	one := EventID{{Partition: 300, Offset: 1 << 40}}
	want := []byte{0x01, 0x02, 0xd8, 0x04, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40}
	if b := one.Encode(); !bytes.Equal(b, want) {
		t.Errorf("{300: 1<<40} = % x, want % x", b, want)
	}
	back, err := DecodeEventID(want)
	if err != nil || len(back) != 1 || back[0] != one[0] {
		t.Errorf("DecodeEventID(% x) = %v, %v", want, back, err)
	}
}

// TestWireAuditTimeoutUnits: every unit of gRPC's timeout syntax decodes.
func TestWireAuditTimeoutUnits(t *testing.T) {
	for s, want := range map[string]time.Duration{"2H": 2 * time.Hour, "3M": 3 * time.Minute, "4S": 4 * time.Second,
		"1500m": 1500 * time.Millisecond, "6u": 6 * time.Microsecond, "7n": 7, "99999999S": 99999999 * time.Second} {
		if got, err := DecodeTimeout(s); err != nil || got != want {
			t.Errorf("DecodeTimeout(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
}
