package runtime_test

// Small known faults, each confirmed by a test that failed on the code
// before its fix, for the reason its comment gives.

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestSmallAdvFetchKeyMetadataIsResumeName: GatewayFetchKeyMetadata naming
// metadata a fetch caller resumes with ("last-event-id", the method's
// "last-message-id", or either with "-bin") made the caller's resume id a
// record key filter: a resuming caller silently got no record at all. Now
// AddService and ClientConn.Register refuse it with an error naming both,
// and a call of the method ends with INTERNAL saying the same.
func TestSmallAdvFetchKeyMetadataIsResumeName(t *testing.T) {
	e := setupFanout(t)
	ctx := ctxFor(t, time.Minute)
	e.produceTo(t, 0, 3, 0)
	for _, name := range []string{"last-event-id", "Last-Message-Id", "last-event-id-bin"} {
		t.Run(name, func(t *testing.T) {
			lower := strings.ToLower(name)
			check := func(what string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), "GatewayFetchKeyMetadata") || !strings.Contains(err.Error(), `"`+lower+`"`) ||
					!strings.Contains(err.Error(), "EchoEvents") {
					t.Fatalf("%s with GatewayFetchKeyMetadata(%q) = %v; want an error naming the option, %q and the method", what, name, err, lower)
				}
			}
			gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
				runtime.GatewayFetchKeyMetadata(name))
			t.Cleanup(func() { _ = gw.Close() })
			check("AddService", gw.AddService(echov1.EchoServiceKafkaSpec))

			cc := runtime.NewClientConn(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
				runtime.GatewayFetchKeyMetadata(name))
			t.Cleanup(func() { _ = cc.Close() })
			check("ClientConn.Register", cc.Register(echov1.EchoServiceKafkaSpec))

			// A gateway served without AddService (NewEchoServiceKafkaGateway)
			// refuses the calls themselves.
			f := setupFanout(t, runtime.GatewayFetchKeyMetadata(name))
			f.produceTo(t, 0, 3, 0)
			s, err := f.echo.EchoEvents(metadata.NewOutgoingContext(ctx, metadata.Pairs("x-other", "1")), &emptypb.Empty{})
			if err != nil {
				t.Fatal(err)
			}
			ev, err := s.Recv()
			if status.Code(err) != codes.Internal {
				t.Fatalf("a fetch on a gateway with GatewayFetchKeyMetadata(%q) got %v, %v; want INTERNAL", name, ev, err)
			}
			check("a fetch call", err)
		})
	}
	// The default and other names still filter.
	s, err := e.echo.EchoEvents(metadata.NewOutgoingContext(ctx, metadata.Pairs("idempotency-key", "k1")), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Recv(); err != nil || ev.GetMessage() != "seq-000001" {
		t.Fatalf("a caller following key k1 got %v, %v; want seq-000001", ev, err)
	}
}

// failingReaderClient is a client whose readers' and group readers' Poll fails, without
// reading, while fail is set: failed counts those failures and is signalled
// (without blocking) at each.
type failingReaderClient struct {
	kafkaclient.Client
	fail     atomic.Bool
	failures atomic.Int64
	failed   chan struct{}
}

var errSmallAdvInjected = errors.New("injected: broker not available")

func (c *failingReaderClient) NewReader(cfg kafkaclient.ReaderConfig) (kafkaclient.Reader, error) {
	r, err := c.Client.NewReader(cfg)
	if err != nil {
		return nil, err
	}
	return &failingReader{Reader: r, c: c}, nil
}

type failingReader struct {
	kafkaclient.Reader
	c *failingReaderClient
}

func (r *failingReader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	return r.c.poll(ctx, r.Reader.Poll)
}

// poll fails, without reading, while c.fail is set; else it polls.
func (c *failingReaderClient) poll(ctx context.Context, poll func(context.Context) ([]*kafkaclient.Record, error)) ([]*kafkaclient.Record, error) {
	if c.fail.Load() {
		c.failures.Add(1)
		select {
		case c.failed <- struct{}{}:
		default:
		}
		return nil, errSmallAdvInjected
	}
	return poll(ctx)
}

// TestSmallAdvFetchReadFailureLogThrottled: a fetch topic whose reads keep
// failing was logged at warn level at every failed poll (up to once a
// second for as long as it lasts, per topic). Now it is logged at the
// first failure, then at most once a minute, and once at info level when
// the topic is read again; the caller following it gets the records
// written meanwhile.
func TestSmallAdvFetchReadFailureLogThrottled(t *testing.T) {
	logs := &logRecords{}
	fc := &failingReaderClient{failed: make(chan struct{}, 1)}
	e := setupFanoutClient(t, zeroCopyServer, func(kc kafkaclient.Client) kafkaclient.Client {
		fc.Client = kc
		return fc
	}, runtime.WithLogger(slog.New(logs)))
	ctx := ctxFor(t, 30*time.Second)
	e.produceTo(t, 0, 2, 0)
	a := e.follower(t, ctx, nil, nil)
	a.recvUpTo(t, 2)
	fc.fail.Store(true)
	e.produceTo(t, 0, 1, 0) // wakes the Poll waiting for records: the next ones fail
	const failures = 6
	for fc.failures.Load() < failures {
		select {
		case <-fc.failed:
		case <-ctx.Done():
			t.Fatalf("the fetch hub's reader failed %d times, want %d", fc.failures.Load(), failures)
		}
	}
	fc.fail.Store(false)
	e.produceTo(t, 0, 2, 0)
	a.recvUpTo(t, 5)
	if w := logs.matching(slog.LevelWarn, "reading fetch topic", e.topic); len(w) != 1 {
		t.Errorf("%d failed reads of the fetch topic logged %d warnings, want 1", fc.failures.Load(), len(w))
	}
	if i := logs.matching(slog.LevelInfo, "reading fetch topic again", e.topic); len(i) != 1 {
		t.Errorf("reading the fetch topic again after failures logged %d infos, want 1", len(i))
	}
}

// TestSmallAdvConnInvalidMetadata: outgoing metadata that grpc-go's client
// refuses (an empty or invalid name, a value that is not printable ASCII
// under a name without "-bin", through NewOutgoingContext or
// AppendToOutgoingContext)
// was sent over Kafka by the ClientConn. grpc-go fails such a call with
// INTERNAL before anything is sent: so does the ClientConn now, on unary
// and streaming calls alike.
func TestSmallAdvConnInvalidMetadata(t *testing.T) {
	e := newDiffEnv(t)
	ctx := ctxFor(t, 60*time.Second)
	cases := []struct {
		name string
		ctx  context.Context
	}{
		{"SpaceInName", metadata.NewOutgoingContext(ctx, metadata.MD{"x bad": {"1"}})},
		{"NonASCIIName", metadata.NewOutgoingContext(ctx, metadata.MD{"x-é": {"1"}})},
		{"EmptyName", metadata.NewOutgoingContext(ctx, metadata.MD{"": {"1"}})},
		{"NewlineInValue", metadata.NewOutgoingContext(ctx, metadata.Pairs("x-val", "a\nb"))},
		{"NonASCIIValue", metadata.NewOutgoingContext(ctx, metadata.Pairs("x-val", "héllo"))},
		{"AppendedBadName", metadata.AppendToOutgoingContext(ctx, "x-ok", "1", "x bad", "2")},
		{"AppendedBadValue", metadata.AppendToOutgoingContext(ctx, "x-val", "\x00")},
	}
	for _, c := range cases {
		e.run(t, c.name, func(t *testing.T, s diffSide, o *obs) {
			r, err := s.echo.EchoUnary(c.ctx, &echov1.EchoRequest{Message: "bad metadata"})
			o.resp("EchoUnary", r, err)
			ss, err := s.echo.EchoServerStream(c.ctx, &echov1.EchoRequest{Message: "bad metadata"})
			o.err("EchoServerStream", err)
			if err == nil {
				drain(o, ss.Recv)
			}
			bs, err := s.echo.EchoBidiStream(c.ctx)
			o.err("EchoBidiStream", err)
			if err == nil {
				_ = bs.CloseSend()
				drain(o, bs.Recv)
			}
		})
	}
	// What grpc-go accepts still passes: binary values under "-bin", printable
	// values, names that metadata.Pairs lowercased.
	e.run(t, "Valid", func(t *testing.T, s diffSide, o *obs) {
		vctx := metadata.AppendToOutgoingContext(metadata.NewOutgoingContext(ctx, metadata.Pairs("X-Mixed", "v ~!")), "x-raw-bin", "\xff\x00\n")
		r, err := s.echo.EchoUnary(vctx, &echov1.EchoRequest{Message: "good metadata"})
		o.resp("EchoUnary", r, err)
	})
}

// TestSmallAdvReplyReadFailureLogThrottled: a gateway whose reads of its
// reply topic keep failing logged a warning at every failed poll (up to
// once a second for as long as it lasts). Now it is logged at the first
// failure, then at most once a minute, and once when replies are read
// again; calls are answered again once reads succeed.
func TestSmallAdvReplyReadFailureLogThrottled(t *testing.T) {
	e := setup(t, echoserver.Server{})
	logs := &logRecords{}
	fc := &failingReaderClient{Client: e.kc, failed: make(chan struct{}, 1)}
	gw := runtime.NewGateway(fc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }), runtime.WithLogger(slog.New(logs)))
	t.Cleanup(func() { _ = gw.Close() })
	echo := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := ctxFor(t, 60*time.Second)
	if r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "before"}); err != nil || r.GetMessage() != "before" {
		t.Fatalf("first call: %v, %v", r, err)
	}
	fc.fail.Store(true)
	res := goUnary(ctx, echo, "during") // its reply ends the Poll waiting for records: the next ones fail
	const failures = 6
	for fc.failures.Load() < failures {
		select {
		case <-fc.failed:
		case <-ctx.Done():
			t.Fatalf("the gateway's reply reader failed %d times, want %d", fc.failures.Load(), failures)
		}
	}
	fc.fail.Store(false)
	if r := <-res; r.err != nil || r.r.GetMessage() != "during" {
		t.Fatalf("the call made as reads began to fail: %v, %v", r.r, r.err)
	}
	if r, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}); err != nil || r.GetMessage() != "after" {
		t.Fatalf("the call once replies are read again: %v, %v", r, err)
	}
	if w := logs.matching(slog.LevelWarn, "reading replies"); len(w) != 1 {
		t.Errorf("%d failed reads of the reply topic logged %d warnings, want 1", fc.failures.Load(), len(w))
	}
	if i := logs.matching(slog.LevelInfo, "reading replies again"); len(i) != 1 {
		t.Errorf("reading replies again after failures logged %d infos, want 1", len(i))
	}
}

// NewGroupReader wraps the client's group reader as NewReader wraps its
// readers.
func (c *failingReaderClient) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	r, err := c.Client.NewGroupReader(cfg)
	if err != nil {
		return nil, err
	}
	return &failingGroupReader{GroupReader: r, c: c}, nil
}

type failingGroupReader struct {
	kafkaclient.GroupReader
	c *failingReaderClient
}

func (r *failingGroupReader) Poll(ctx context.Context) ([]*kafkaclient.Record, error) {
	return r.c.poll(ctx, r.GroupReader.Poll)
}

// TestSmallAdvRequestReadFailureLogThrottled: a worker whose reads of its
// request topics keep failing logged a warning at every failed poll (up to
// once a second for as long as it lasts). Now it is logged at the first
// failure, then at most once a minute, and once when requests are read
// again; calls are served again once reads succeed.
func TestSmallAdvRequestReadFailureLogThrottled(t *testing.T) {
	logs := &logRecords{}
	fc := &failingReaderClient{failed: make(chan struct{}, 1)}
	e := setupWrapped(t, func(_ string, kc kafkaclient.Client) kafkaclient.Client { fc.Client = kc; return fc },
		func(w *runtime.Worker) error { return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{}) },
		runtime.WithLogger(slog.New(logs)))
	ctx := ctxFor(t, 60*time.Second)
	if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "before"}); err != nil || r.GetMessage() != "before" {
		t.Fatalf("first call: %v, %v", r, err)
	}
	fc.fail.Store(true)
	res := goUnary(ctx, e.echo, "during") // its request ends the Poll waiting for records: the next ones fail
	const failures = 6
	for fc.failures.Load() < failures {
		select {
		case <-fc.failed:
		case <-ctx.Done():
			t.Fatalf("the worker's group reader failed %d times, want %d", fc.failures.Load(), failures)
		}
	}
	fc.fail.Store(false)
	if r := <-res; r.err != nil || r.r.GetMessage() != "during" {
		t.Fatalf("the call made as reads began to fail: %v, %v", r.r, r.err)
	}
	if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}); err != nil || r.GetMessage() != "after" {
		t.Fatalf("the call once requests are read again: %v, %v", r, err)
	}
	if w := logs.matching(slog.LevelWarn, "reading requests"); len(w) != 1 {
		t.Errorf("%d failed reads of the request topic logged %d warnings, want 1", fc.failures.Load(), len(w))
	}
	if i := logs.matching(slog.LevelInfo, "reading requests again"); len(i) != 1 {
		t.Errorf("reading requests again after failures logged %d infos, want 1", len(i))
	}
}
