package wire

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// DefaultEventIDField is the number of the unknown field that carries the
// event id in every message a fetch delivers, when the method's options do
// not set one (WIRE.md). Its tag bytes are FA FF 0F.
const DefaultEventIDField = 32767

// DefaultResumeMetadata is the request metadata name carrying the last event
// id a resuming fetch caller received, in base64url, when the method's
// options do not set one. The same name with "-bin" carries the raw bytes.
const DefaultResumeMetadata = "last-message-id"

// ResumeMetadataSynonym is accepted as a resume metadata name on every fetch
// method, beside the method's own name: the seed documents' spelling.
const ResumeMetadataSynonym = "last-event-id"

// FetchRestartedReason and ErrorDomain are the reason and domain of the
// google.rpc.ErrorInfo detail of the UNAVAILABLE status that ends a fetch
// whose topic's log restarted (deleted and created again, or its records
// deleted): the caller's event ids name records that no longer exist, so it
// starts again without one rather than resuming with its last id.
const (
	FetchRestartedReason = "FETCH_TOPIC_RESTARTED"
	ErrorDomain          = "kafkarpc"
)

// eventIDVersion is the first byte of every event id.
const eventIDVersion = 0x01

// ErrBadEventID is wrapped by the errors of DecodeEventID and ParseEventID.
var ErrBadEventID = errors.New("bad event id")

// PartitionOffset is one entry of an event id: a partition of the fetched
// topic and the next offset to read from it.
type PartitionOffset struct {
	Partition int32
	Offset    int64
}

// EventID is a decoded event id: the progress of one fetch stream, as the
// next offset to read of every partition it has seen, sorted by partition.
// Resuming with it delivers every remaining record once: the records of the
// listed partitions from their offsets, those of other partitions from the
// earliest retained one.
type EventID []PartitionOffset

// Encode returns the id's bytes as WIRE.md lays them out: 0x01, the
// zigzag-varint partition count, then per partition the zigzag-varint
// partition id and next offset. {0: 2, 1: 1} encodes as 01 04 00 04 02 02.
func (id EventID) Encode() []byte { return id.AppendEncoded(nil) }

// AppendEncoded appends the id's bytes (see Encode) to dst.
func (id EventID) AppendEncoded(dst []byte) []byte {
	dst = AppendEventIDStart(dst, len(id))
	for _, p := range id {
		dst = AppendEventIDPartition(dst, p.Partition, p.Offset)
	}
	return dst
}

// AppendEventIDStart appends the start of an event id of count partitions:
// the version byte and the count. AppendEventIDPartition then appends each
// partition, in partition order; a fetch writes its callers' ids this way
// without building an EventID.
func AppendEventIDStart(dst []byte, count int) []byte {
	dst = append(dst, eventIDVersion)
	return protowire.AppendVarint(dst, protowire.EncodeZigZag(int64(count)))
}

// AppendEventIDPartition appends one partition of an event id: its id and
// the next offset to read from it.
func AppendEventIDPartition(dst []byte, partition int32, next int64) []byte {
	dst = protowire.AppendVarint(dst, protowire.EncodeZigZag(int64(partition)))
	return protowire.AppendVarint(dst, protowire.EncodeZigZag(next))
}

// String returns the id as the resume metadata carries it: base64url
// without padding.
func (id EventID) String() string { return base64.RawURLEncoding.EncodeToString(id.Encode()) }

// Offset returns the next offset of partition p, and whether the id lists p.
func (id EventID) Offset(p int32) (int64, bool) {
	i, ok := slices.BinarySearchFunc(id, p, func(e PartitionOffset, p int32) int { return int(e.Partition) - int(p) })
	if !ok {
		return 0, false
	}
	return id[i].Offset, true
}

// DecodeEventID decodes the bytes of an event id. An id whose version is not
// 1, that is truncated, has bytes past its last partition, lists a partition
// twice, or has a negative partition or offset is an error wrapping
// ErrBadEventID that says which.
func DecodeEventID(b []byte) (EventID, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadEventID)
	}
	if b[0] != eventIDVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadEventID, b[0], eventIDVersion)
	}
	rest := b[1:]
	next := func(what string) (int64, error) {
		v, n := protowire.ConsumeVarint(rest)
		if n < 0 {
			return 0, fmt.Errorf("%w: %s: truncated or malformed varint", ErrBadEventID, what)
		}
		rest = rest[n:]
		return protowire.DecodeZigZag(v), nil
	}
	count, err := next("partition count")
	if err != nil {
		return nil, err
	}
	// Each partition takes at least two bytes: a larger count cannot be real.
	if count < 0 || count > int64(len(rest)/2) {
		return nil, fmt.Errorf("%w: partition count %d does not fit its %d remaining bytes", ErrBadEventID, count, len(rest))
	}
	id := make(EventID, 0, count)
	for i := range count {
		p, err := next(fmt.Sprintf("partition %d of %d: id", i+1, count))
		if err != nil {
			return nil, err
		}
		if p < 0 || p > math.MaxInt32 {
			return nil, fmt.Errorf("%w: partition id %d out of range", ErrBadEventID, p)
		}
		off, err := next(fmt.Sprintf("partition %d: next offset", p))
		if err != nil {
			return nil, err
		}
		if off < 0 {
			return nil, fmt.Errorf("%w: partition %d: negative offset %d", ErrBadEventID, p, off)
		}
		id = append(id, PartitionOffset{Partition: int32(p), Offset: off})
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last partition", ErrBadEventID, len(rest))
	}
	slices.SortFunc(id, func(a, b PartitionOffset) int { return int(a.Partition) - int(b.Partition) })
	for i := 1; i < len(id); i++ {
		if id[i].Partition == id[i-1].Partition {
			return nil, fmt.Errorf("%w: partition %d listed twice", ErrBadEventID, id[i].Partition)
		}
	}
	return id, nil
}

// ParseEventID decodes an event id from its text form: base64 in either
// alphabet (URL-safe or standard), with or without padding.
func ParseEventID(s string) (EventID, error) {
	b, err := DecodeBase64(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64: %v", ErrBadEventID, err)
	}
	return DecodeEventID(b)
}

// AppendEventIDField appends the event id as field number field, wire type
// 2: tag, length, id bytes.
func AppendEventIDField(dst []byte, field protowire.Number, id []byte) []byte {
	dst = protowire.AppendTag(dst, field, protowire.BytesType)
	return protowire.AppendBytes(dst, id)
}

// EventIDFromMessage returns the event id a fetch delivered in m, as the raw
// bytes of unknown field number field (DefaultEventIDField unless the method
// sets another), and whether m has one. When the field occurs more than once
// the last occurrence is the id, as protobuf reads a repeated scalar field.
// The bytes are a copy.
func EventIDFromMessage(m proto.Message, field int32) ([]byte, bool) {
	if m == nil {
		return nil, false
	}
	return eventIDFromUnknown(m.ProtoReflect().GetUnknown(), protowire.Number(field))
}

func eventIDFromUnknown(b []byte, field protowire.Number) ([]byte, bool) {
	var found []byte
	ok := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == field && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				break
			}
			found, ok = v, true
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			break
		}
		b = b[n:]
	}
	if !ok {
		return nil, false
	}
	return slices.Clone(found), true
}

// ValidWire reports whether b is a well-formed sequence of protobuf fields
// at its top level (tags, lengths and varints consistent, groups closed). It
// does not look inside length-delimited fields: it is the cheap check that
// keeps a record a caller could never decode off the stream.
func ValidWire(b []byte) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return false
		}
		b = b[n:]
	}
	return true
}
