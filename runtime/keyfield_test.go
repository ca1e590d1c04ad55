package runtime

import (
	"errors"
	"math"
	"strconv"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// msg builds an encoded message from its fields, in order.
type msg []byte

func (m msg) str(n protowire.Number, s string) msg {
	return protowire.AppendString(protowire.AppendTag(m, n, protowire.BytesType), s)
}
func (m msg) sub(n protowire.Number, inner msg) msg {
	return protowire.AppendBytes(protowire.AppendTag(m, n, protowire.BytesType), inner)
}
func (m msg) varint(n protowire.Number, v uint64) msg {
	return protowire.AppendVarint(protowire.AppendTag(m, n, protowire.VarintType), v)
}
func (m msg) fixed32(n protowire.Number, v uint32) msg {
	return protowire.AppendFixed32(protowire.AppendTag(m, n, protowire.Fixed32Type), v)
}
func (m msg) fixed64(n protowire.Number, v uint64) msg {
	return protowire.AppendFixed64(protowire.AppendTag(m, n, protowire.Fixed64Type), v)
}

func TestKeyOf(t *testing.T) {
	neg := int64(-7)
	minus7 := uint64(neg) // how int32 -7 is encoded: sign-extended to 64 bits
	path := func(kind protoreflect.Kind, presence bool, nums ...int32) *KeyField {
		return &KeyField{Path: "f", Numbers: nums, Kind: kind, ExplicitPresence: presence}
	}
	for _, tc := range []struct {
		name  string
		kf    *KeyField
		b     msg
		want  string
		isSet bool
	}{
		{"string", path(protoreflect.StringKind, false, 1), msg{}.str(1, "acme"), "acme", true},
		{"string absent", path(protoreflect.StringKind, false, 1), msg{}.str(2, "acme"), "", false},
		{"empty string without presence is unset", path(protoreflect.StringKind, false, 1), msg{}.str(1, ""), "", false},
		{"empty string with presence is set", path(protoreflect.StringKind, true, 1), msg{}.str(1, ""), "", true},
		{"bytes as they are", path(protoreflect.BytesKind, false, 1), msg{}.str(1, "\x00\xff"), "\x00\xff", true},
		{"last occurrence wins", path(protoreflect.StringKind, false, 1), msg{}.str(1, "a").str(1, "b"), "b", true},
		{"nested", path(protoreflect.StringKind, false, 1, 2), msg{}.varint(3, 9).sub(1, msg{}.str(1, "x").str(2, "order-7")), "order-7", true},
		{"nested parent absent", path(protoreflect.StringKind, false, 1, 2), msg{}.str(2, "order-7"), "", false},
		{"nested occurrences merge", path(protoreflect.StringKind, false, 1, 2), msg{}.sub(1, msg{}.str(2, "a")).sub(1, msg{}.str(3, "other")), "a", true},
		{"later occurrence overrides", path(protoreflect.StringKind, false, 1, 2), msg{}.sub(1, msg{}.str(2, "a")).sub(1, msg{}.str(2, "b")), "b", true},
		{"wrong wire type is an unknown field", path(protoreflect.StringKind, false, 1), msg{}.str(1, "a").varint(1, 5), "a", true},
		{"int64", path(protoreflect.Int64Kind, false, 2), msg{}.varint(2, 42), "42", true},
		{"int64 negative", path(protoreflect.Int64Kind, false, 2), msg{}.varint(2, uint64(math.MaxUint64-6)), "-7", true},
		{"int32 negative, sign-extended", path(protoreflect.Int32Kind, false, 2), msg{}.varint(2, minus7), "-7", true},
		{"int64 zero without presence is unset", path(protoreflect.Int64Kind, false, 2), msg{}.varint(2, 0), "", false},
		{"int64 zero with presence", path(protoreflect.Int64Kind, true, 2), msg{}.varint(2, 0), "0", true},
		{"uint64 max", path(protoreflect.Uint64Kind, false, 2), msg{}.varint(2, math.MaxUint64), "18446744073709551615", true},
		{"uint32", path(protoreflect.Uint32Kind, false, 2), msg{}.varint(2, math.MaxUint32), "4294967295", true},
		{"sint64", path(protoreflect.Sint64Kind, false, 2), msg{}.varint(2, protowire.EncodeZigZag(-3)), "-3", true},
		{"sint32", path(protoreflect.Sint32Kind, false, 2), msg{}.varint(2, protowire.EncodeZigZag(-2147483648)), "-2147483648", true},
		{"enum", path(protoreflect.EnumKind, false, 3), msg{}.varint(3, 2), "2", true},
		{"fixed32", path(protoreflect.Fixed32Kind, false, 4), msg{}.fixed32(4, math.MaxUint32), "4294967295", true},
		{"sfixed32", path(protoreflect.Sfixed32Kind, false, 4), msg{}.fixed32(4, uint32(1<<32-5)), "-5", true},
		{"fixed64", path(protoreflect.Fixed64Kind, false, 4), msg{}.fixed64(4, 1<<40), "1099511627776", true},
		{"sfixed64", path(protoreflect.Sfixed64Kind, false, 4), msg{}.fixed64(4, uint64(math.MaxUint64)), "-1", true},
		{"empty message", path(protoreflect.StringKind, false, 1), msg{}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, set, err := tc.kf.keyOf([]byte{}, tc.b)
			if err != nil || string(got) != tc.want || set != tc.isSet {
				t.Fatalf("keyOf = %q, %v, %v; want %q, %v", got, set, err, tc.want, tc.isSet)
			}
		})
	}
	for name, b := range map[string]msg{
		"truncated tag":          {0x0a},
		"truncated length":       msg{}.str(1, "abc")[:3],
		"truncated nested":       msg{}.sub(1, msg{}.str(2, "abc")[:3]),
		"truncated other field":  msg{}.varint(5, 300)[:2],
		"reserved field number0": {0x02, 0x00},
	} {
		_, _, err := path(protoreflect.StringKind, false, 1, 2).keyOf(nil, b)
		if !errors.Is(err, errMalformed) {
			t.Errorf("%s: err = %v, want errMalformed", name, err)
		}
	}
}

// FuzzKeyOf checks keyOf against protobuf's own parser: for any input that
// proto.Unmarshal accepts, keyOf finds the value the parsed message holds.
func FuzzKeyOf(f *testing.F) {
	outer := fuzzMessage(f)
	inner := outer.Fields().ByName("inner").Message()
	f.Add([]byte(msg{}.sub(1, msg{}.str(2, "order-7"))))
	f.Add([]byte(msg{}.varint(2, protowire.EncodeZigZag(-9)).varint(3, 42)))
	f.Add([]byte(msg{}.sub(1, msg{}.str(2, "a")).sub(1, msg{}.varint(2, 1)).sub(1, msg{}.str(9, "b"))))
	byID := &KeyField{Numbers: []int32{1, 2}, Kind: protoreflect.StringKind}
	byS := &KeyField{Numbers: []int32{2}, Kind: protoreflect.Sint32Kind}
	byN := &KeyField{Numbers: []int32{3}, Kind: protoreflect.Int64Kind}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := dynamicpb.NewMessage(outer)
		if err := proto.Unmarshal(b, m); err != nil {
			return
		}
		want := map[*KeyField]string{
			byS: strconv.FormatInt(m.Get(outer.Fields().ByName("s")).Int(), 10),
			byN: strconv.FormatInt(m.Get(outer.Fields().ByName("n")).Int(), 10),
		}
		if m.Has(outer.Fields().ByName("inner")) {
			want[byID] = m.Get(outer.Fields().ByName("inner")).Message().Get(inner.Fields().ByName("id")).String()
		}
		for _, kf := range []*KeyField{byID, byS, byN} {
			key, set, err := kf.keyOf(nil, b)
			if err != nil {
				t.Fatalf("%v: keyOf failed on a message protobuf parses: %v", kf.Numbers, err)
			}
			w := want[kf]
			if w == "0" && kf.Kind != protoreflect.StringKind {
				w = "" // a zero number without presence is unset
			}
			if string(key) != w || set != (w != "") {
				t.Fatalf("%v: keyOf = %q, %v; the parsed message holds %q", kf.Numbers, key, set, w)
			}
		}
	})
}

// fuzzMessage returns the descriptor of
//
//	message Outer { Inner inner = 1; sint32 s = 2; int64 n = 3; }
//	message Inner { string id = 2; }
//
// in proto3, built at run time (the runtime's tests cannot import
// generated code: it imports the runtime).
func fuzzMessage(tb testing.TB) protoreflect.MessageDescriptor {
	field := func(name string, n int32, typ descriptorpb.FieldDescriptorProto_Type, typeName string) *descriptorpb.FieldDescriptorProto {
		fd := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n), Type: typ.Enum(),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), JsonName: proto.String(name)}
		if typeName != "" {
			fd.TypeName = proto.String(typeName)
		}
		return fd
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name: proto.String("fuzz/keyof.proto"), Package: proto.String("fuzz"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("Outer"), Field: []*descriptorpb.FieldDescriptorProto{
				field("inner", 1, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".fuzz.Inner"),
				field("s", 2, descriptorpb.FieldDescriptorProto_TYPE_SINT32, ""),
				field("n", 3, descriptorpb.FieldDescriptorProto_TYPE_INT64, ""),
			}},
			{Name: proto.String("Inner"), Field: []*descriptorpb.FieldDescriptorProto{
				field("id", 2, descriptorpb.FieldDescriptorProto_TYPE_STRING, ""),
			}},
		},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return fd.Messages().ByName("Outer")
}
