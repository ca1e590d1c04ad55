package runtime

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestFetchCodec: the codec of FetchServerCodec sends a fetch message's two
// slices as they are, and everything else as the proto codec does; a fetch
// message marshalled by the plain proto codec gives the same bytes.
func TestFetchCodec(t *testing.T) {
	c := fetchCodec{base: encoding.GetCodecV2("proto")}
	suffix := wireDelivered[len(wireMessage):]
	m := newFetchMessage(wireMessage, wire.DefaultEventIDField, wireID, carrierFor[wrapperspb.StringValue]())
	if !bytes.Equal(m.suffix, suffix) {
		t.Fatalf("suffix % x, want % x", m.suffix, suffix)
	}
	out, err := c.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || &out[0].ReadOnlyData()[0] != &wireMessage[0] {
		t.Fatalf("fetch message not sent as its own two slices: %d buffers", len(out))
	}
	if got := out.Materialize(); !bytes.Equal(got, wireDelivered) {
		t.Fatalf("codec sent % x\nwant      % x", got, wireDelivered)
	}
	plain, err := c.base.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if got := plain.Materialize(); !bytes.Equal(got, wireDelivered) {
		t.Fatalf("proto codec sent % x\nwant          % x", got, wireDelivered)
	}
	other, err := c.Marshal(wrapperspb.String("x"))
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := proto.Marshal(wrapperspb.String("x")); !bytes.Equal(other.Materialize(), want) {
		t.Fatal("other messages not marshalled as by the proto codec")
	}
	var back wrapperspb.StringValue
	if err := c.Unmarshal(out, &back); err != nil || back.GetValue() != "Hello World" {
		t.Fatalf("Unmarshal: %v, %v", back.GetValue(), err)
	}
	if c.Name() != "proto" {
		t.Fatalf("Name = %q", c.Name())
	}
}

// BenchmarkFetchEncode compares, per delivered message, the three ways of
// handing a record's bytes plus the event id field to gRPC, at three message
// sizes, as far as the codec's output (what the transport then writes):
//
//   - zerocopy: a server with FetchServerCodec, the two slices as they are;
//   - passthrough: a server without it (or forcing a codec of its own), the
//     bytes as the unknown fields of an empty response message, marshalled
//     by its (here gRPC's) proto codec: two copies;
//   - decode-reencode: what both avoid, unmarshalling into the response
//     type, appending the id as an unknown field and marshalling.
//
// Run: go test -run '^$' -bench FetchEncode ./runtime/
func BenchmarkFetchEncode(b *testing.B) {
	proto3 := encoding.GetCodecV2("proto")
	direct := fetchCodec{base: proto3}
	id := wire.EventID{{Partition: 0, Offset: 123456}, {Partition: 1, Offset: 234567}, {Partition: 2, Offset: 345678}}.Encode()
	carrier := carrierFor[wrapperspb.StringValue]()
	for _, size := range []int{100, 10 << 10, 100 << 10} {
		value, _ := proto.Marshal(wrapperspb.String(string(bytes.Repeat([]byte("x"), size))))
		b.Run(fmt.Sprintf("zerocopy/%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(value)))
			for range b.N {
				out, err := direct.Marshal(newFetchMessage(value, wire.DefaultEventIDField, id, carrier))
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
			}
		})
		b.Run(fmt.Sprintf("passthrough/%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(value)))
			for range b.N {
				raw := make([]byte, 0, len(value)+4+len(id))
				raw = wire.AppendEventIDField(append(raw, value...), wire.DefaultEventIDField, id)
				out, err := proto3.Marshal(carrier(raw))
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
			}
		})
		b.Run(fmt.Sprintf("decode-reencode/%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(value)))
			for range b.N {
				m := new(wrapperspb.StringValue)
				if err := proto.Unmarshal(value, m); err != nil {
					b.Fatal(err)
				}
				m.ProtoReflect().SetUnknown(wire.AppendEventIDField(m.ProtoReflect().GetUnknown(), wire.DefaultEventIDField, id))
				out, err := proto3.Marshal(m)
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
			}
		})
	}
}
