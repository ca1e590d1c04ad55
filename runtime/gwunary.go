package runtime

import (
	"context"
	"errors"
	"fmt"
	goruntime "runtime"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// ServiceDesc returns a copy of desc, the service descriptor protoc-gen-go-grpc
// generated for spec's service, whose unary methods that travel over Kafka
// relay their request and reply as bytes: the request is not decoded into its
// message type and encoded again before it is produced, nor the reply decoded
// and encoded again before it is sent. Generated Register...KafkaGateway
// functions register the copy; a gateway registered with the plain
// Register...Server function relays every message decoded, as before.
//
// A call takes the raw path when the server has no unary interceptor (an
// interceptor expects the typed request and response, so with one the call
// is relayed typed) and the caller's content-subtype is proto (none, or
// "proto"); other callers are relayed typed, through their codec. On the raw
// path, FetchServerCodec copies the request's bytes once and sends the reply
// record's value as it is; a server without it decodes the request as a
// message with no fields, keeping its bytes as unknown fields, and encodes
// the reply from such a message, so it works the same with a copy more each
// way. A stats handler sees these messages, not the method's typed ones. A
// codec forced on the server other than FetchServerCodec must encode and
// decode proto messages through their reflection, as gRPC's proto codec does
// (one that wants the generated types, say, does not: register the gateway
// with Register...Server on such a server).
// The request is checked to be well-formed protobuf (INTERNAL, as gRPC's
// decoding answers, when not); what decoding it would check beyond that
// (UTF-8 strings, required fields) the worker checks when it decodes it.
// Everything else is as on the typed path: routes, metadata, deadlines,
// key_field, oneway, idempotency, telemetry and errors.
//
// It returns an error when desc is not spec's service. The returned copy's
// handlers use g; the copy is not changed afterwards and may be registered
// on any number of servers. Safe for concurrent use.
func (g *Gateway) ServiceDesc(desc *grpc.ServiceDesc, spec *ServiceSpec) (*grpc.ServiceDesc, error) {
	if desc == nil || spec == nil {
		return nil, fmt.Errorf("kafkarpc: Gateway.ServiceDesc needs a service descriptor and a spec (got %v and %v)", desc != nil, spec != nil)
	}
	if desc.ServiceName != spec.Name {
		return nil, fmt.Errorf("kafkarpc: Gateway.ServiceDesc: descriptor of %q given with the spec of %q", desc.ServiceName, spec.Name)
	}
	d := *desc
	d.Methods = slices.Clone(desc.Methods)
	for i := range d.Methods {
		md := &d.Methods[i]
		m := spec.Method(md.MethodName)
		if m == nil || m.Kind != KindUnary || m.Fetch != nil || len(m.Routes) == 0 {
			continue
		}
		typed := md.Handler
		md.Handler = func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			if interceptor != nil {
				return typed(srv, ctx, dec, interceptor)
			}
			md, _ := metadata.FromIncomingContext(ctx)
			if !protoSubtype(md) {
				return typed(srv, ctx, dec, nil)
			}
			return g.unaryRaw(ctx, m, md, dec)
		}
	}
	return &d, nil
}

// protoSubtype reports whether the caller's content-type (in md, its
// incoming metadata) names the proto codec: application/grpc alone or with
// subtype proto, which gRPC decodes and encodes with the server's forced
// codec or the one registered for "proto". A missing content-type is
// refused by gRPC before a handler runs.
func protoSubtype(md metadata.MD) bool {
	ct := md["content-type"]
	if len(ct) == 0 {
		return false
	}
	const base = "application/grpc"
	v := ct[0]
	if len(v) < len(base) || !strings.EqualFold(v[:len(base)], base) {
		return false
	}
	sub := v[len(base):]
	if sub == "" {
		return true
	}
	if sub[0] != '+' && sub[0] != ';' {
		return false
	}
	sub = sub[1:]
	return sub == "" || strings.EqualFold(sub, "proto")
}

// unaryRaw relays a unary call whose request dec decodes as bytes, as
// Unary does with typed messages; the reply is sent as bytes.
func (g *Gateway) unaryRaw(ctx context.Context, m *MethodSpec, md metadata.MD, dec func(any) error) (any, error) {
	growStack()
	c := new(gwCall) // one allocation for the call and its request
	if err := dec(&c.in); err != nil {
		return nil, err
	}
	c, err := g.beginCall(c, ctx, m, md)
	if err != nil {
		return nil, err
	}
	err = c.unaryRaw(ctx, c.in.bytes())
	c.end(err)
	c.releaseSignal()
	if err != nil {
		return nil, err
	}
	return &c.out, nil
}

// rawRequest is a unary request as its encoded bytes. fetchCodec fills it
// with a copy of the bytes (in small, when they fit); any other proto codec
// decodes it as a message with no fields, which keeps the bytes as unknown
// fields. Either way the bytes are the unknown fields of e, so that what a
// stats handler sees encodes as the request.
type rawRequest struct {
	e     emptypb.Empty
	small [64]byte
}

func (r *rawRequest) ProtoReflect() protoreflect.Message { return r.e.ProtoReflect() }

// set takes data, the received message, unless it is not well-formed
// protobuf.
func (r *rawRequest) set(data mem.BufferSlice) error {
	var b []byte
	if n := data.Len(); n <= len(r.small) {
		b = r.small[:n]
		data.CopyTo(b)
	} else {
		b = data.Materialize()
	}
	if !wire.ValidWire(b) {
		// Say it as gRPC's decoding of the typed request would: in
		// protobuf's own words (whose spacing varies from build to build).
		if err := proto.Unmarshal(b, new(emptypb.Empty)); err != nil {
			return err
		}
		return errors.New("the request is not well-formed protobuf")
	}
	r.e.ProtoReflect().SetUnknown(b)
	return nil
}

// bytes returns the request's encoding. The producer only reads it.
func (r *rawRequest) bytes() []byte {
	b := r.e.ProtoReflect().GetUnknown()
	if b == nil {
		b = []byte{} // an empty message is not an end-of-stream
	}
	return b
}

// rawReply is a unary reply as its encoded bytes (a reply record's value,
// or empty): fetchCodec sends the value as it is; any other proto codec
// encodes e, a message with no fields whose unknown fields are the value.
type rawReply struct {
	value mem.SliceBuffer
	bufs  [1]mem.Buffer // what fetchCodec's Marshal returns
	e     emptypb.Empty
}

func (r *rawReply) ProtoReflect() protoreflect.Message { return r.e.ProtoReflect() }

// set makes b the reply; only read afterwards.
func (r *rawReply) set(b []byte) {
	r.value = b
	r.e.ProtoReflect().SetUnknown(b)
}

// growStackBytes is the frame growStack takes on the stack.
const growStackBytes = 4 << 10

// growStack grows the calling goroutine's stack now, while fewer frames are
// on it, as the call would grow it anyway. gRPC runs each call's handler on
// a goroutine of its own, which starts with the smallest stack; a raw unary
// call's stack doubled in dec, in gRPC's wait for the request message, with
// about twice as many frames on it as at the handler's start, and a copy's
// cost is mostly walking and adjusting each frame (rpc/franz/256: copying
// stacks there took 4.4% of the process's CPU, 3.0% here). On a stack large
// enough already (a server with grpc.NumStreamWorkers), it costs the zeroing
// of its frame.
//
//go:noinline
func growStack() {
	var frame [growStackBytes]byte
	frame[0] = 1
	goruntime.KeepAlive(&frame)
}
