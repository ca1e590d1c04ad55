package runtime

import (
	"bytes"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// WIRE.md's worked example: partitions {0: next 2, 1: next 1}.
var (
	wireID        = []byte{0x01, 0x04, 0x00, 0x04, 0x02, 0x02}
	wireMessage   = append([]byte{0x0a, 0x0b}, "Hello World"...)
	wireDelivered = append(append(append([]byte{}, wireMessage...), 0xFA, 0xFF, 0x0F, 0x06), wireID...)
)

// TestFetchCallEventID checks the id a fetch call writes from its progress,
// with the hub's partitions and partitions carried from a resume id merged
// in partition order.
func TestFetchCallEventID(t *testing.T) {
	c := &fetchCall{parts: []int32{0, 1}, next: []int64{2, 1}}
	if got := c.appendID(nil); !bytes.Equal(got, wireID) {
		t.Fatalf("appendID = % x, want % x", got, wireID)
	}
	c = &fetchCall{parts: []int32{1, 3}, next: []int64{10, 30},
		foreign: wire.EventID{{Partition: 0, Offset: 5}, {Partition: 2, Offset: 20}, {Partition: 7, Offset: 70}}}
	id, err := wire.DecodeEventID(c.appendID(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := wire.EventID{{Partition: 0, Offset: 5}, {Partition: 1, Offset: 10}, {Partition: 2, Offset: 20}, {Partition: 3, Offset: 30}, {Partition: 7, Offset: 70}}
	if len(id) != len(want) {
		t.Fatalf("id = %v, want %v", id, want)
	}
	for i := range want {
		if id[i] != want[i] {
			t.Fatalf("id = %v, want %v", id, want)
		}
	}
}

// TestFetchCallTakesOnAddedPartitions checks how a caller takes on the
// partitions its hub added: from the offset the hub started reading each at
// (its earliest record then) when the caller's resume id does not name it,
// from the id's offset when it does (the partition was carried on as
// foreign until then), and its ids name them from then on.
func TestFetchCallTakesOnAddedPartitions(t *testing.T) {
	h := &fanoutHub{parts: []int32{0, 1, 2, 3}, index: map[int32]int{0: 0, 1: 1, 2: 2, 3: 3}, from: []int64{40, 50, 3, 0}}
	c := &fetchCall{hub: h, parts: h.parts[:2], index: map[int32]int{0: 0, 1: 1}, next: []int64{41, 52},
		foreign: wire.EventID{{Partition: 3, Offset: 7}, {Partition: 4, Offset: 9}}}
	c.syncPartsLocked()
	if want := []int64{41, 52, 3, 7}; !slices.Equal(c.next, want) || len(c.parts) != 4 || c.index[3] != 3 {
		t.Fatalf("after taking on partitions 2 and 3: next %v, parts %v; want next %v", c.next, c.parts, want)
	}
	id, err := wire.DecodeEventID(c.appendID(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := wire.EventID{{Partition: 0, Offset: 41}, {Partition: 1, Offset: 52}, {Partition: 2, Offset: 3}, {Partition: 3, Offset: 7}, {Partition: 4, Offset: 9}}
	if !slices.Equal(id, want) {
		t.Fatalf("id = %v, want %v", id, want)
	}
}

// TestCarrierPassesBytesThrough checks that the message a fetch sends
// marshals to exactly the record's bytes plus the id field, and that a
// client decoding it finds both the message and the id.
func TestCarrierPassesBytesThrough(t *testing.T) {
	carrier := carrierFor[wrapperspb.StringValue]()
	m := carrier(wireDelivered)
	if _, ok := m.(*wrapperspb.StringValue); !ok {
		t.Fatalf("carrier type %T, want the response type", m)
	}
	got, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wireDelivered) {
		t.Fatalf("marshalled % x\nwant        % x", got, wireDelivered)
	}
	var out wrapperspb.StringValue
	if err := proto.Unmarshal(got, &out); err != nil {
		t.Fatal(err)
	}
	if out.GetValue() != "Hello World" {
		t.Fatalf("decoded %q", out.GetValue())
	}
	id, ok := wire.EventIDFromMessage(&out, wire.DefaultEventIDField)
	if !ok || !bytes.Equal(id, wireID) {
		t.Fatalf("wire.EventIDFromMessage = % x, %v", id, ok)
	}
	if _, ok := wire.EventIDFromMessage(&out, 1000); ok {
		t.Fatal("found an id in field 1000")
	}
	// Empty carrier for types with required fields: same bytes.
	e := &emptypb.Empty{}
	e.ProtoReflect().SetUnknown(wireDelivered)
	if b, _ := proto.Marshal(e); !bytes.Equal(b, wireDelivered) {
		t.Fatalf("empty carrier marshalled % x", b)
	}
}
