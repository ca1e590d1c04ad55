package runtime

import (
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
)

// Fixed HTTP/2 flow-control windows of GatewayServerOptions and
// CallerDialOptions. 16 MiB is also the most gRPC's dynamic window grows to.
const (
	streamWindow = 1 << 20  // bytes a peer may send on one stream before it must wait for a window update
	connWindow   = 16 << 20 // the same for all the streams of one connection together
)

// GatewayServerOptions returns the gRPC server options we recommend for the
// server a Gateway's services are registered on (pass them to
// grpc.NewServer, your own options after them: later options win).
//
// They are FetchServerCodec, so that fetch methods send each record without
// a copy; a limit on received messages of kafkaclient.MaxMessageBytes
// (8 MiB), the record limit of the topics this project creates, instead of
// gRPC's 4 MiB, so that every message a topic takes gets through and a larger
// one ends RESOURCE_EXHAUSTED naming both sizes at once, before it reaches
// Kafka (to change it, set the topics' max.message.bytes and pass
// grpc.MaxRecvMsgSize after these options, and grpc.MaxCallRecvMsgSize to
// the callers); and fixed HTTP/2 flow-control windows: 1 MiB per stream and 16 MiB
// per connection instead of gRPC's default dynamic window. The dynamic
// window is sized by bandwidth-delay-product estimation, which answers data
// that arrives with a PING (at most one outstanding per connection): on a
// gateway whose calls carry small messages that is one more write and read
// on each side for most calls, while the call itself waits on Kafka.
// Measured with the benchmark (BENCHMARKS.md): the unary p50 at one call in
// flight 10% lower with only the server's window fixed and 20% lower with
// both sides', and CPU per call lower by as much. The cost: one stream of a
// high-latency link carries at most 1 MiB per round trip (10 MiB/s at 100
// ms), where the dynamic window could have grown to 16 MiB.
//
// Without these options a gateway works the same, only slower. With them,
// every call of the server is marshalled with the proto codec, whatever
// content-subtype its caller names (see FetchServerCodec); a server with
// callers of another codec takes the windows alone:
//
//	grpc.NewServer(grpc.InitialWindowSize(1<<20), grpc.InitialConnWindowSize(16<<20))
//
// Each call returns a new slice; safe for concurrent use.
func GatewayServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{FetchServerCodec(), grpc.MaxRecvMsgSize(kafkaclient.MaxMessageBytes),
		grpc.InitialWindowSize(streamWindow), grpc.InitialConnWindowSize(connWindow)}
}

// FetchServerCodec returns the gRPC server option (grpc.ForceServerCodecV2)
// with which a gateway's server sends the messages of fetch methods (server
// streams of a topic's records), the replies of server-streaming and bidi
// methods and the replies of unary methods relayed as bytes
// (Gateway.ServiceDesc, which generated Register...KafkaGateway functions
// use) without a copy: a record's value (and a fetch's event id field) go
// to the transport as they are, never decoded; and with which it copies the
// request of such a unary method out as it is (checked to be well-formed
// protobuf), never decoded. Every other message is marshalled and
// unmarshalled by the codec registered for "proto" when FetchServerCodec is
// called (gRPC's own unless the program registered another before),
// unchanged. GatewayServerOptions includes it.
//
// Without it fetch methods work the same and still never decode a record,
// with one copy more per message, unary methods relay bytes with a copy
// more each way, and a stream's replies are decoded and encoded again
// (BenchmarkFetchEncode, 2 cores: about
// 0.1 µs per message of any size with it; without, about 0.3 µs for 100
// bytes and 50 to 170 µs for 100 KiB). Nothing changes process-wide: gRPC's
// codec registry is left as it is, and only the server built with this
// option is affected.
//
// Content-subtype: a forced codec replaces gRPC's lookup of the codec by the
// caller's content-subtype, for every method of the server. A caller that
// names another codec (for example application/grpc+json, with a "json"
// codec registered) has its messages unmarshalled and marshalled as proto
// all the same, and fails; the response's content-type still echoes the
// caller's. Build the server such callers use without this option (its
// fetch methods then copy), or serve them from a server of their own.
// A codec forced by a later option (grpc.ForceServerCodec or
// ForceServerCodecV2) replaces this one, and fetch methods then copy.
//
// Each call returns a new option; safe for concurrent use.
func FetchServerCodec() grpc.ServerOption {
	base := encoding.GetCodecV2(grpcproto.Name) // never nil: importing grpc registers its proto codec
	return grpc.ForceServerCodecV2(fetchCodec{base: base})
}

// CallerDialOptions returns the gRPC client options we recommend for the
// callers of a gateway (pass them to grpc.NewClient): the client side of
// GatewayServerOptions' message limit (responses up to
// kafkaclient.MaxMessageBytes, the largest a reply record can carry, instead
// of gRPC's 4 MiB) and of its fixed windows, so that the caller does not
// send a bandwidth-estimation PING after each response either. Each call
// returns a new slice; safe for concurrent use.
func CallerDialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(kafkaclient.MaxMessageBytes), grpc.MaxCallSendMsgSize(kafkaclient.MaxMessageBytes)),
		grpc.WithInitialWindowSize(streamWindow), grpc.WithInitialConnWindowSize(connWindow)}
}
