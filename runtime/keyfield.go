package runtime

import (
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// errMalformed reports a request message that is not valid protobuf.
var errMalformed = errors.New("the request is not a valid protobuf message")

// keyOf returns the record key k takes from the encoded request message b,
// and whether the field is set (see KeyField for what counts as unset).
// It reads b as protobuf's parser would: of a singular field encoded
// several times the last occurrence wins, occurrences of a message field
// merge, and an occurrence with another wire type than the field's is an
// unknown field. The key is appended to dst.
func (k *KeyField) keyOf(dst, b []byte) ([]byte, bool, error) {
	v, found, err := lastValue(b, k.Numbers, k.Kind)
	if err != nil || !found {
		return dst, false, err
	}
	if k.Kind == protoreflect.StringKind || k.Kind == protoreflect.BytesKind {
		if len(v.raw) == 0 && !k.ExplicitPresence {
			return dst, false, nil
		}
		return append(dst, v.raw...), true, nil
	}
	n := v.num
	if n == 0 && !k.ExplicitPresence {
		return dst, false, nil
	}
	switch k.Kind {
	case protoreflect.Int32Kind, protoreflect.EnumKind:
		return strconv.AppendInt(dst, int64(int32(n)), 10), true, nil
	case protoreflect.Int64Kind:
		return strconv.AppendInt(dst, int64(n), 10), true, nil
	case protoreflect.Sint32Kind:
		return strconv.AppendInt(dst, int64(int32(protowire.DecodeZigZag(n&0xffffffff))), 10), true, nil
	case protoreflect.Sint64Kind:
		return strconv.AppendInt(dst, protowire.DecodeZigZag(n), 10), true, nil
	case protoreflect.Sfixed32Kind:
		return strconv.AppendInt(dst, int64(int32(uint32(n))), 10), true, nil
	case protoreflect.Sfixed64Kind:
		return strconv.AppendInt(dst, int64(n), 10), true, nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return strconv.AppendUint(dst, uint64(uint32(n)), 10), true, nil
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return strconv.AppendUint(dst, n, 10), true, nil
	}
	return dst, false, fmt.Errorf("field kind %v cannot be a key", k.Kind)
}

// fieldValue is the value of a scalar field: raw for string and bytes, num
// for the numeric kinds.
type fieldValue struct {
	raw []byte
	num uint64
}

// wireType is the wire type a field of kind k is encoded with.
func wireType(k protoreflect.Kind) protowire.Type {
	switch k {
	case protoreflect.StringKind, protoreflect.BytesKind, protoreflect.MessageKind:
		return protowire.BytesType
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind:
		return protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind:
		return protowire.Fixed64Type
	}
	return protowire.VarintType
}

// lastValue finds the value of the field at path (field numbers, the last
// of kind kind, the others messages) in the encoded message b.
func lastValue(b []byte, path []int32, kind protoreflect.Kind) (fieldValue, bool, error) {
	var (
		last  fieldValue
		found bool
	)
	want := protowire.Number(path[0])
	nested := len(path) > 1
	typ := wireType(kind)
	if nested {
		typ = protowire.BytesType
	}
	for len(b) > 0 {
		num, t, n := protowire.ConsumeTag(b)
		if n < 0 {
			return last, false, errMalformed
		}
		b = b[n:]
		if num != want || t != typ {
			n = protowire.ConsumeFieldValue(num, t, b)
			if n < 0 {
				return last, false, errMalformed
			}
			b = b[n:]
			continue
		}
		var v fieldValue
		switch t {
		case protowire.BytesType:
			v.raw, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			v.num, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x uint32
			x, n = protowire.ConsumeFixed32(b)
			v.num = uint64(x)
		case protowire.Fixed64Type:
			v.num, n = protowire.ConsumeFixed64(b)
		}
		if n < 0 {
			return last, false, errMalformed
		}
		b = b[n:]
		if !nested {
			last, found = v, true
			continue
		}
		// Occurrences of a message field merge: a later one that sets the
		// field overrides an earlier one, one that does not keeps it.
		inner, ok, err := lastValue(v.raw, path[1:], kind)
		if err != nil {
			return last, false, err
		}
		if ok {
			last, found = inner, true
		}
	}
	return last, found, nil
}
