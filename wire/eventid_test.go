package wire

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// WIRE.md's worked example: partitions {0: next 2, 1: next 1}.
var (
	wireID        = []byte{0x01, 0x04, 0x00, 0x04, 0x02, 0x02}
	wireMessage   = append([]byte{0x0a, 0x0b}, "Hello World"...)
	wireDelivered = append(append(append([]byte{}, wireMessage...), 0xFA, 0xFF, 0x0F, 0x06), wireID...)
)

func TestEventIDWorkedExample(t *testing.T) {
	id := EventID{{Partition: 0, Offset: 2}, {Partition: 1, Offset: 1}}
	if got := id.Encode(); !bytes.Equal(got, wireID) {
		t.Fatalf("Encode = % x, want % x", got, wireID)
	}
	back, err := DecodeEventID(wireID)
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != 2 || back[0] != id[0] || back[1] != id[1] {
		t.Fatalf("DecodeEventID = %v, want %v", back, id)
	}
	if got := AppendEventIDField(append([]byte{}, wireMessage...), DefaultEventIDField, wireID); !bytes.Equal(got, wireDelivered) {
		t.Fatalf("delivered = % x\nwant        % x", got, wireDelivered)
	}
	if tag := protowire.AppendTag(nil, DefaultEventIDField, protowire.BytesType); !bytes.Equal(tag, []byte{0xFA, 0xFF, 0x0F}) {
		t.Fatalf("tag of field 32767 = % x, want fa ff 0f", tag)
	}
	if s := id.String(); s != base64.RawURLEncoding.EncodeToString(wireID) {
		t.Fatalf("String = %q", s)
	}
}

func TestEventIDFromMessageTakesLast(t *testing.T) {
	raw := AppendEventIDField(append([]byte{}, wireMessage...), DefaultEventIDField, []byte{1, 0})
	raw = AppendEventIDField(raw, DefaultEventIDField, wireID)
	var m wrapperspb.StringValue
	if err := proto.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if id, _ := EventIDFromMessage(&m, DefaultEventIDField); !bytes.Equal(id, wireID) {
		t.Fatalf("got % x, want the last id % x", id, wireID)
	}
}

func TestDecodeEventIDErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"version", []byte{0x02, 0x00}, "version 2"},
		{"no count", []byte{0x01}, "partition count"},
		{"count too large", []byte{0x01, 0x08, 0x00, 0x00}, "does not fit"},
		{"negative count", []byte{0x01, 0x01}, "does not fit"},
		{"truncated offset", []byte{0x01, 0x02, 0x00, 0x80}, "truncated"},
		{"negative partition", []byte{0x01, 0x02, 0x01, 0x00}, "out of range"},
		{"negative offset", []byte{0x01, 0x02, 0x00, 0x03}, "negative offset"},
		{"trailing", []byte{0x01, 0x02, 0x00, 0x00, 0x00}, "after the last partition"},
		{"duplicate", []byte{0x01, 0x04, 0x02, 0x00, 0x02, 0x04}, "listed twice"},
		{"partition too large", append([]byte{0x01, 0x02}, append(protowire.AppendVarint(nil, protowire.EncodeZigZag(1<<40)), 0x00)...), "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeEventID(tc.b)
			if !errors.Is(err, ErrBadEventID) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeEventID(% x) = %v; want ErrBadEventID saying %q", tc.b, err, tc.want)
			}
		})
	}
}

func TestEventIDRoundTrip(t *testing.T) {
	id := EventID{{0, 0}, {1, 1 << 40}, {5, 12345}, {1 << 30, 7}}
	back, err := ParseEventID(id.String())
	if err != nil {
		t.Fatal(err)
	}
	for i := range id {
		if back[i] != id[i] {
			t.Fatalf("round trip %v -> %v", id, back)
		}
	}
	if off, ok := back.Offset(5); !ok || off != 12345 {
		t.Fatalf("Offset(5) = %d, %v", off, ok)
	}
	if _, ok := back.Offset(2); ok {
		t.Fatal("Offset(2) found")
	}
	// Unsorted input decodes sorted.
	un := []byte{0x01, 0x04, 0x02, 0x02, 0x00, 0x04}
	got, err := DecodeEventID(un)
	if err != nil || got[0].Partition != 0 || got[1].Partition != 1 {
		t.Fatalf("DecodeEventID(unsorted) = %v, %v", got, err)
	}
}

func TestValidWire(t *testing.T) {
	for _, tc := range []struct {
		b    []byte
		want bool
	}{
		{nil, true},
		{wireMessage, true},
		{wireDelivered, true},
		{[]byte{0x0a, 0x0c, 'x'}, false}, // length past the end
		{[]byte{0xff}, false},            // truncated tag
		{[]byte{0x08, 0x80}, false},      // truncated varint
		{[]byte("not protobuf at all"), false},
	} {
		if got := ValidWire(tc.b); got != tc.want {
			t.Errorf("ValidWire(% x) = %v, want %v", tc.b, got, tc.want)
		}
	}
}

func FuzzDecodeEventID(f *testing.F) {
	f.Add(wireID)
	f.Add([]byte{0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := DecodeEventID(b)
		if err != nil {
			return
		}
		again, err := DecodeEventID(id.Encode())
		if err != nil || len(again) != len(id) {
			t.Fatalf("re-encoding %v: %v", id, err)
		}
	})
}
