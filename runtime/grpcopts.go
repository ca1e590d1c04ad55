package runtime

import "google.golang.org/grpc"

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
// They fix the HTTP/2 flow-control window at 1 MiB per stream and 16 MiB per
// connection instead of gRPC's default dynamic window. The dynamic window is
// sized by bandwidth-delay-product estimation, which answers data that
// arrives with a PING (at most one outstanding per connection): on a gateway
// whose calls carry small messages that is one more write and read on each
// side for most calls, while the call itself waits on Kafka. Measured with
// the benchmark (BENCHMARKS.md): the unary p50 at one call in flight 10%
// lower with only the server's window fixed and 20% lower with both sides',
// and CPU per call lower by as much. The cost: one stream of a
// high-latency link carries at most 1 MiB per round trip (10 MiB/s at 100
// ms), where the dynamic window could have grown to 16 MiB.
//
// Without these options a gateway works the same, only slower. Each call
// returns a new slice; safe for concurrent use.
func GatewayServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.InitialWindowSize(streamWindow), grpc.InitialConnWindowSize(connWindow)}
}

// CallerDialOptions returns the gRPC client options we recommend for the
// callers of a gateway (pass them to grpc.NewClient): the client side of
// GatewayServerOptions' fixed windows, so that the caller does not send a
// bandwidth-estimation PING after each response either. Each call returns a
// new slice; safe for concurrent use.
func CallerDialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithInitialWindowSize(streamWindow), grpc.WithInitialConnWindowSize(connWindow)}
}
