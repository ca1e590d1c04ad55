package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// grpcServerOptions are given to every gRPC server of the run (the gateway's,
// plain gRPC's, Watermill's), and grpcDialOptions to every gRPC client, so
// that they stay comparable: by default the options the runtime recommends
// for a gateway and its callers (-grpc-defaults: gRPC's own).
var (
	grpcServerOptions []grpc.ServerOption
	grpcDialOptions   []grpc.DialOption
)

// grpcEnv is a gRPC server on 127.0.0.1 and one client connection to it.
type grpcEnv struct {
	srv  *grpc.Server
	cc   *grpc.ClientConn
	echo echov1.EchoServiceClient
}

func newGRPCEnv(register func(*grpc.Server) error, extra ...grpc.ServerOption) (*grpcEnv, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := grpc.NewServer(append(append([]grpc.ServerOption(nil), grpcServerOptions...), extra...)...)
	if err := register(s); err != nil {
		_ = lis.Close()
		return nil, err
	}
	go func() { _ = s.Serve(lis) }()
	cc, err := grpc.NewClient(lis.Addr().String(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, grpcDialOptions...)...)
	if err != nil {
		s.Stop()
		return nil, err
	}
	return &grpcEnv{srv: s, cc: cc, echo: echov1.NewEchoServiceClient(cc)}, nil
}

func (e *grpcEnv) close() {
	_ = e.cc.Close()
	e.srv.Stop()
}

// rpcEnv is our RPC path: a gRPC client on loopback → the generated gateway
// (front client) → Kafka → a worker serving echoserver.Server (back client)
// → Kafka → the gateway. Gateway and worker each have their own Kafka client,
// as two processes would.
//
// conn calls the same worker through a runtime.ClientConn on the front
// client: the gateway's call path in the caller's process, no gRPC hop.
type rpcEnv struct {
	prefix string
	worker *runtime.Worker
	gw     *runtime.Gateway
	cc     *runtime.ClientConn
	conn   echov1.EchoServiceClient
	*grpcEnv
}

// withConn makes the ClientConn too. It has a reply topic of its own
// (connReplies), as a caller's process would: on the gateway's, each of the
// two would read every reply of the other's calls too (a Gateway and a
// ClientConn do not share readers), and each row would pay for the other.
func newRPCEnv(front, back kafkaclient.Client, prefix string, log *slog.Logger, withConn bool, opts ...runtime.Option) (*rpcEnv, error) {
	topics := []string{prefix + "echo-requests", prefix + "echo-responses", prefix + "echo-events"}
	if withConn {
		topics = append(topics, prefix+connReplies)
	}
	if err := createTopics(front, 3, topics...); err != nil {
		return nil, err
	}
	mapper := runtime.WithTopicMapper(func(t string) string { return prefix + t })
	wopts := []runtime.WorkerOption{mapper, runtime.WithLogger(log), runtime.WorkerGroupID(prefix + "workers")}
	for _, o := range opts {
		wopts = append(wopts, o)
	}
	w := runtime.NewWorker(back, wopts...)
	if err := echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}); err != nil {
		return nil, err
	}
	if err := w.Start(); err != nil {
		return nil, err
	}
	gopts := []runtime.GatewayOption{mapper, runtime.WithLogger(log)}
	for _, o := range opts {
		gopts = append(gopts, o)
	}
	gw := runtime.NewGateway(front, gopts...)
	// FetchServerCodec even with -grpc-defaults: it is the gateway's, not a
	// gRPC tuning the contenders share.
	ge, err := newGRPCEnv(func(s *grpc.Server) error { return echov1.RegisterEchoServiceKafkaGateway(s, gw) }, runtime.FetchServerCodec())
	if err != nil {
		_ = w.Close()
		_ = gw.Close()
		return nil, err
	}
	var cc *runtime.ClientConn
	if withConn {
		connMapper := runtime.WithTopicMapper(func(t string) string {
			if t == "echo-responses" {
				return prefix + connReplies
			}
			return prefix + t
		})
		copts := []runtime.ConnOption{connMapper, runtime.WithLogger(log)}
		for _, o := range opts {
			copts = append(copts, o)
		}
		cc = runtime.NewClientConn(front, copts...)
		if err := cc.Register(echov1.EchoServiceKafkaSpec); err != nil {
			ge.close()
			_ = w.Close()
			_ = gw.Close()
			return nil, err
		}
	}
	select {
	case <-w.Ready():
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("worker of %s got no partitions within 60 s", prefix)
	}
	e := &rpcEnv{prefix: prefix, worker: w, gw: gw, cc: cc, grpcEnv: ge}
	if cc != nil {
		e.conn = echov1.NewEchoServiceClient(cc)
	}
	return e, nil
}

// connReplies is the ClientConn's reply topic (after the prefix).
const connReplies = "conn-responses"

func (e *rpcEnv) close() {
	e.grpcEnv.close()
	if e.cc != nil {
		_ = e.cc.Close()
	}
	_ = e.gw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = e.worker.Shutdown(ctx)
}

// unary returns a call of EchoUnary on c.
func unary(c echov1.EchoServiceClient, req *echov1.EchoRequest) func(context.Context, int) error {
	return func(ctx context.Context, _ int) error {
		resp, err := c.EchoUnary(ctx, req)
		if err != nil {
			return err
		}
		if resp.GetMessage() != req.GetMessage() {
			return fmt.Errorf("echo: got %q, want %q", resp.GetMessage(), req.GetMessage())
		}
		return nil
	}
}

// serverStream returns a call of EchoServerStream that reads all n
// responses.
func serverStream(c echov1.EchoServiceClient, msg string, n int) func(context.Context, int) error {
	req := &echov1.EchoRequest{Message: msg, Repeat: int32(n)}
	return func(ctx context.Context, _ int) error {
		s, err := c.EchoServerStream(ctx, req)
		if err != nil {
			return err
		}
		for i := range n {
			r, err := s.Recv()
			if err != nil {
				return fmt.Errorf("response %d of %d: %w", i, n, err)
			}
			if r.GetIndex() != int32(i) {
				return fmt.Errorf("response %d has index %d", i, r.GetIndex())
			}
		}
		if _, err := s.Recv(); err != io.EOF {
			return fmt.Errorf("after %d responses: %v, want EOF", n, err)
		}
		return nil
	}
}

// streamFloor is the floor of a server stream of n messages: n records
// produced (back client, as the worker's handler does, each without waiting
// for the previous one's acknowledgement) with one key, so on one
// partition, and read by a raw reader (front client), as the gateway reads
// them. With hdrs (the stream-floor-w contender) the records are the
// wire's: a key as long as a correlation id, every data record with the
// reply data headers, and an end-of-stream record after them with the
// reply end's.
type streamFloor struct {
	prod  kafkaclient.Client
	topic string
	r     kafkaclient.Reader
	value []byte
	n     int
	hdrs  *wireHeaders
	log   *slog.Logger
}

func newStreamFloor(prod, cons kafkaclient.Client, topic string, value []byte, n int, hdrs *wireHeaders, log *slog.Logger) (*streamFloor, error) {
	r, err := newReaderAtEnd(cons, topic)
	if err != nil {
		return nil, err
	}
	return &streamFloor{prod: prod, topic: topic, r: r, value: value, n: n, hdrs: hdrs, log: log}, nil
}

func (f *streamFloor) close() { _ = f.r.Close() }

func (f *streamFloor) delivered(_ *kafkaclient.Record, err error) {
	if err != nil {
		f.log.Warn("stream floor produce", "error", err)
	}
}

func (f *streamFloor) call(ctx context.Context, _ int) error {
	if f.hdrs != nil {
		k := key(0, 0, f.hdrs.keyLen)
		go func() {
			for range f.n {
				f.prod.Produce(&kafkaclient.Record{Topic: f.topic, Partition: kafkaclient.AnyPartition, Key: k, Value: f.value, Headers: f.hdrs.replyData},
					kafkaclient.AcksAll, f.delivered)
			}
			f.prod.Produce(&kafkaclient.Record{Topic: f.topic, Partition: kafkaclient.AnyPartition, Key: k, Headers: f.hdrs.replyEnd},
				kafkaclient.AcksAll, f.delivered)
		}()
		return readN(ctx, f.r, f.n+1)
	}
	k := []byte("stream")
	go func() {
		for range f.n {
			f.prod.Produce(&kafkaclient.Record{Topic: f.topic, Partition: kafkaclient.AnyPartition, Key: k, Value: f.value},
				kafkaclient.AcksAll, f.delivered)
		}
	}()
	return readN(ctx, f.r, f.n)
}

func readN(ctx context.Context, r kafkaclient.Reader, n int) error {
	got := 0
	for got < n {
		recs, err := r.Poll(ctx)
		if err != nil {
			return fmt.Errorf("read %d of %d records: %w", got, n, err)
		}
		got += len(recs)
	}
	if got != n {
		return fmt.Errorf("read %d records, want %d", got, n)
	}
	return nil
}
