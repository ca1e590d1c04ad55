package runtime

import (
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// fetchCodec is the codec FetchServerCodec forces on a gateway's gRPC
// server: the proto codec (base) with fetch messages sent as they are, so
// that a fetch hands gRPC a record's value and the event id field side by
// side and the transport writes them out with no decode, no re-encode and
// no copy; the replies of streams and of unary calls relayed as bytes
// (rawReply, Gateway.ServiceDesc) likewise, and the requests of such unary
// calls (rawRequest) copied out as they are. Every other value is
// marshalled and unmarshalled by base, unchanged: the wrapper only adds a
// type switch.
//
// A fetch asks, per call, whether its server marshals with this codec (a
// server without FetchServerCodec, or with a codec of its own forced after
// it, does not). When not, it still never decodes a record: it wraps the
// value and the id as the unknown fields of an empty response message,
// which any proto codec copies out as they are: one copy more per message
// (see BenchmarkFetchEncode and BenchmarkFetchFanout for the cost).
//
// Nothing here touches gRPC's codec registry: importing the runtime (or a
// generated package) leaves the process's "proto" codec as it was.
type fetchCodec struct{ base encoding.CodecV2 }

func (c fetchCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *fetchMessage:
		// Pointers to the message's own fields: no allocation.
		if len(m.suffix) == 0 { // a stream's reply: the value alone
			m.bufs[0] = &m.value
			return m.bufs[:1], nil
		}
		m.bufs = [2]mem.Buffer{&m.value, &m.suffix}
		return m.bufs[:], nil
	case *rawReply: // a unary reply: the value alone, like a stream's
		m.bufs[0] = &m.value
		return m.bufs[:], nil
	case fetchCodecProbe:
		return nil, nil
	}
	return c.base.Marshal(v)
}

func (c fetchCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawRequest); ok { // a unary request relayed as bytes (gwunary.go)
		return r.set(data)
	}
	return c.base.Unmarshal(data, v)
}

func (c fetchCodec) Name() string { return c.base.Name() }

// fetchCodecProbe is marshalled by fetchCodec only: a fetch call encodes one
// (with grpc.PreparedMsg, which uses the stream's codec and sends nothing)
// to learn whether its server has fetchCodec.
type fetchCodecProbe struct{}

// zeroCopy reports whether stream's server marshals with fetchCodec. Another
// codec may fail on the probe or panic (a type assertion): either means no.
func zeroCopy(stream grpc.ServerStream) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	var p grpc.PreparedMsg
	return p.Encode(stream, fetchCodecProbe{}) == nil
}

// fetchMessage is a record's value and the event id field (none for the
// reply of a stream, relayRaw), as fetchCodec sends them. It is also a
// proto.Message, whose reflection (built on first use) is the carrier
// message, so that any other codec, interceptor or stats handler sees the
// same bytes.
type fetchMessage struct {
	value, suffix mem.SliceBuffer
	bufs          [2]mem.Buffer // what Marshal returns
	carrier       func([]byte) proto.Message
	built         proto.Message
	inline        [48]byte // holds suffix when it fits: one allocation per message
}

// newFetchMessage returns the message of value followed by the id as field.
func newFetchMessage(value []byte, field protowire.Number, id []byte, carrier func([]byte) proto.Message) *fetchMessage {
	m := &fetchMessage{value: value, carrier: carrier}
	n := protowire.SizeTag(field) + protowire.SizeBytes(len(id))
	buf := m.inline[:0]
	if n > len(m.inline) {
		buf = make([]byte, 0, n)
	}
	m.suffix = wire.AppendEventIDField(buf, field, id)
	return m
}

func (m *fetchMessage) ProtoReflect() protoreflect.Message {
	if m.built == nil {
		raw := make([]byte, 0, len(m.value)+len(m.suffix))
		m.built = m.carrier(append(append(raw, m.value...), m.suffix...))
	}
	return m.built.ProtoReflect()
}
