// Package cmd_test runs the example binaries as a user would: it builds them
// once, starts them as child processes, waits for their "ready" line on
// stdout, calls them over gRPC and stops them with SIGTERM.
package cmd_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/proctest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Bounds of every wait in this file.
const (
	readyTimeout = 90 * time.Second // start until the "ready" line
	stopTimeout  = 30 * time.Second // SIGTERM until exit
	callTimeout  = 30 * time.Second // one group of gRPC calls
	killTimeout  = 10 * time.Second // Kill until Wait returns, in cleanup
)

var binaries = []string{"echo", "echo-gateway", "echo-worker", "echo-server", "echo-call", "echo-publish"}

// binDir holds the binaries built by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "kafkarpc-example-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "creating the binaries' directory:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := proctest.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// One go build for the four packages (see proctest.BuildExamplesCmd).
	build := proctest.BuildExamplesCmd(root, dir, binaries...)
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go %s: %v\n%s", strings.Join(build.Args[1:], " "), err, out)
		return 1
	}
	for _, name := range binaries {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			fmt.Fprintf(os.Stderr, "binary %s was not built: %v\n", name, err)
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "built %v in %s\n", binaries, time.Since(start).Round(time.Millisecond))
	binDir = dir
	return m.Run()
}

// freeAddr returns 127.0.0.1:<port> of a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	return proctest.FreeAddr(t)
}

// proc is a running example binary.
type proc struct{ *proctest.Proc }

// output is what the process wrote so far, for failure messages.
func (p *proc) output() string {
	return fmt.Sprintf("--- %s stdout:\n%s--- %s stderr:\n%s", p.Name, p.Stdout(), p.Name, p.Stderr())
}

// start runs the named binary with args. The process is killed in cleanup if
// it is still running, and its output is logged when the test failed.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{}
	p.Proc = proctest.Start(t, filepath.Join(binDir, name), args, killTimeout, func(_ *proctest.Proc, gone bool) {
		if !gone {
			t.Errorf("%s (pid %d) did not exit %s after being killed", name, p.Pid(), killTimeout)
		}
		if t.Failed() {
			t.Logf("%s %s\n%s", name, strings.Join(args, " "), p.output())
		}
	})
	return p
}

// waitReady waits for the process's ready line and returns it.
func (p *proc) waitReady(t *testing.T) string {
	t.Helper()
	line, err := p.WaitReady(readyTimeout)
	switch err {
	case nil:
	case proctest.ErrExited:
		t.Fatalf("%s exited before printing a ready line: %v\n%s", p.Name, p.Err(), p.output())
	default:
		t.Fatalf("%s printed no ready line within %s\n%s", p.Name, readyTimeout, p.output())
	}
	return line
}

// terminate sends SIGTERM; see waitExit.
func (p *proc) terminate(t *testing.T) {
	t.Helper()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("sending SIGTERM to %s: %v\n%s", p.Name, err, p.output())
	}
}

// waitExit requires the process to exit with status 0 within stopTimeout.
func (p *proc) waitExit(t *testing.T) {
	t.Helper()
	if _, exited := p.Wait(stopTimeout); !exited {
		t.Fatalf("%s did not exit within %s of SIGTERM\n%s", p.Name, stopTimeout, p.output())
	}
	// Err is nil only for an exit with status 0.
	if err := p.Err(); err != nil {
		t.Fatalf("%s did not exit cleanly after SIGTERM: %v\n%s", p.Name, err, p.output())
	}
}

// stop sends SIGTERM and requires a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.terminate(t)
	p.waitExit(t)
}

// dial returns a client connection to addr, closed in cleanup.
func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	return proctest.Dial(t, addr)
}

func callContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// requireStatus requires err to be a gRPC status with code and message.
func requireStatus(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: error %v is not a gRPC status", what, err)
	}
	if st.Code() != code || (msg != "" && st.Message() != msg) {
		t.Fatalf("%s: got status %s %q, want %s %q", what, st.Code(), st.Message(), code, msg)
	}
}

// checkUnary checks EchoUnary's answer and its failure.
func checkUnary(t *testing.T, c echov1.EchoServiceClient) {
	ctx := callContext(t)
	resp, err := c.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil {
		t.Fatalf("EchoUnary: %v", err)
	}
	if resp.GetMessage() != "hello" || resp.GetIndex() != 0 {
		t.Fatalf("EchoUnary answered %q index %d, want %q index 0", resp.GetMessage(), resp.GetIndex(), "hello")
	}
	_, err = c.EchoUnary(ctx, &echov1.EchoRequest{Message: "no such thing", FailCode: int32(codes.NotFound)})
	requireStatus(t, "EchoUnary with fail_code", err, codes.NotFound, "no such thing")
}

// recvAll reads a server stream to its end.
func recvAll(t *testing.T, what string, s grpc.ServerStreamingClient[echov1.EchoResponse]) []*echov1.EchoResponse {
	t.Helper()
	var got []*echov1.EchoResponse
	for {
		r, err := s.Recv()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatalf("%s: Recv after %d responses: %v", what, len(got), err)
		}
		got = append(got, r)
	}
}

// checkServerStream checks EchoServerStream's answers and its failure.
func checkServerStream(t *testing.T, c echov1.EchoServiceClient) {
	ctx := callContext(t)
	for _, tc := range []struct{ repeat, want int32 }{{0, 1}, {1, 1}, {3, 3}} {
		what := fmt.Sprintf("EchoServerStream repeat %d", tc.repeat)
		s, err := c.EchoServerStream(ctx, &echov1.EchoRequest{Message: "again", Repeat: tc.repeat})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got := recvAll(t, what, s)
		if int32(len(got)) != tc.want {
			t.Fatalf("%s: got %d responses, want %d: %v", what, len(got), tc.want, got)
		}
		for i, r := range got {
			if r.GetMessage() != "again" || r.GetIndex() != int32(i) {
				t.Fatalf("%s: response %d is %q index %d, want %q index %d", what, i, r.GetMessage(), r.GetIndex(), "again", i)
			}
		}
	}
	s, err := c.EchoServerStream(ctx, &echov1.EchoRequest{Message: "denied", Repeat: 2, FailCode: int32(codes.PermissionDenied)})
	if err == nil {
		_, err = s.Recv()
	}
	requireStatus(t, "EchoServerStream with fail_code", err, codes.PermissionDenied, "denied")
}

// checkClientStream checks EchoClientStream's answers and its failure.
func checkClientStream(t *testing.T, c echov1.EchoServiceClient) {
	ctx := callContext(t)
	for _, msgs := range [][]string{{"a", "b", "c"}, {"only"}} {
		what := fmt.Sprintf("EchoClientStream %q", msgs)
		s, err := c.EchoClientStream(ctx)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for _, m := range msgs {
			if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
				t.Fatalf("%s: Send %q: %v", what, m, err)
			}
		}
		resp, err := s.CloseAndRecv()
		if err != nil {
			t.Fatalf("%s: CloseAndRecv: %v", what, err)
		}
		want := strings.Join(msgs, ",")
		if resp.GetMessage() != want || resp.GetIndex() != int32(len(msgs)) {
			t.Fatalf("%s: answered %q index %d, want %q index %d", what, resp.GetMessage(), resp.GetIndex(), want, len(msgs))
		}
	}
	s, err := c.EchoClientStream(ctx)
	if err != nil {
		t.Fatalf("EchoClientStream with fail_code: %v", err)
	}
	// Send fails with io.EOF once the server has ended the call; the status
	// then comes from CloseAndRecv.
	for _, r := range []*echov1.EchoRequest{{Message: "fine"}, {Message: "bad input", FailCode: int32(codes.InvalidArgument)}} {
		if err := s.Send(r); err != nil {
			if err != io.EOF {
				t.Fatalf("EchoClientStream with fail_code: Send: %v", err)
			}
			break
		}
	}
	_, err = s.CloseAndRecv()
	requireStatus(t, "EchoClientStream with fail_code", err, codes.InvalidArgument, "bad input")
}

// emptyStreamTimeout bounds each call of checkEmptyStreams.
const emptyStreamTimeout = 30 * time.Second

// checkEmptyStreams checks the two client-streaming kinds with no request at
// all: EchoClientStream answers "" with index 0, EchoBidiStream ends with no
// response. Over Kafka the gateway then writes only the end-of-stream record,
// which the worker must take as a whole (empty) request. The two run in
// parallel.
func checkEmptyStreams(t *testing.T, c echov1.EchoServiceClient) {
	t.Run("ClientStream", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), emptyStreamTimeout)
		defer cancel()
		s, err := c.EchoClientStream(ctx)
		if err != nil {
			t.Fatalf("EchoClientStream with no request: %v", err)
		}
		resp, err := s.CloseAndRecv()
		if err != nil {
			t.Fatalf("EchoClientStream with no request: CloseAndRecv: %v", err)
		}
		if resp.GetMessage() != "" || resp.GetIndex() != 0 {
			t.Fatalf("EchoClientStream with no request answered %q index %d, want \"\" index 0", resp.GetMessage(), resp.GetIndex())
		}
	})
	t.Run("BidiStream", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), emptyStreamTimeout)
		defer cancel()
		s, err := c.EchoBidiStream(ctx)
		if err != nil {
			t.Fatalf("EchoBidiStream with no request: %v", err)
		}
		if err := s.CloseSend(); err != nil {
			t.Fatalf("EchoBidiStream with no request: CloseSend: %v", err)
		}
		r, err := s.Recv()
		if err != io.EOF {
			t.Fatalf("EchoBidiStream with no request: got %v, %v; want io.EOF", r, err)
		}
	})
}

// checkBidiStream checks that EchoBidiStream answers each request as it
// arrives, then its failure.
func checkBidiStream(t *testing.T, c echov1.EchoServiceClient) {
	ctx := callContext(t)
	s, err := c.EchoBidiStream(ctx)
	if err != nil {
		t.Fatalf("EchoBidiStream: %v", err)
	}
	// Each answer is awaited before the next request is sent: the answers
	// must come while the stream is still open.
	for i, m := range []string{"one", "two", "three"} {
		if err := s.Send(&echov1.EchoRequest{Message: m}); err != nil {
			t.Fatalf("EchoBidiStream: Send %q: %v", m, err)
		}
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("EchoBidiStream: Recv answer to %q: %v", m, err)
		}
		if r.GetMessage() != m || r.GetIndex() != int32(i) {
			t.Fatalf("EchoBidiStream: answer to %q is %q index %d, want %q index %d", m, r.GetMessage(), r.GetIndex(), m, i)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatalf("EchoBidiStream: CloseSend: %v", err)
	}
	if r, err := s.Recv(); err != io.EOF {
		t.Fatalf("EchoBidiStream: after CloseSend got %v, %v; want io.EOF", r, err)
	}

	s, err = c.EchoBidiStream(ctx)
	if err != nil {
		t.Fatalf("EchoBidiStream with fail_code: %v", err)
	}
	if err := s.Send(&echov1.EchoRequest{Message: "fine"}); err != nil {
		t.Fatalf("EchoBidiStream with fail_code: Send: %v", err)
	}
	if r, err := s.Recv(); err != nil || r.GetMessage() != "fine" || r.GetIndex() != 0 {
		t.Fatalf("EchoBidiStream with fail_code: first answer %v, %v; want %q index 0", r, err, "fine")
	}
	if err := s.Send(&echov1.EchoRequest{Message: "try later", FailCode: int32(codes.Unavailable)}); err != nil && err != io.EOF {
		t.Fatalf("EchoBidiStream with fail_code: Send: %v", err)
	}
	_, err = s.Recv()
	requireStatus(t, "EchoBidiStream with fail_code", err, codes.Unavailable, "try later")
}

// checkEvents checks EchoEvents, the fetch of topic echo-events, on a
// gateway whose Kafka is brokers: three events produced with one key arrive
// in order, each carrying an event id (unknown field 32767), and resuming
// after the second with metadata last-message-id delivers the third next.
// Events of other runs (a shared KAFKA_BROKERS) are skipped.
func checkEvents(t *testing.T, c echov1.EchoServiceClient, brokers string) {
	ctx := callContext(t)
	kc := kafkatest.NewClient(t, brokers)
	run := strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
	for i := 1; i <= 3; i++ {
		v, _ := proto.Marshal(&echov1.EchoEvent{Message: run + strconv.Itoa(i)})
		errc := make(chan error, 1)
		kc.Produce(&kafkaclient.Record{Topic: "echo-events", Partition: kafkaclient.AnyPartition, Key: []byte(run), Value: v},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		if err := <-errc; err != nil {
			t.Fatalf("producing to echo-events: %v", err)
		}
	}
	// next returns the next event of this run on s, and its event id.
	next := func(what string, s grpc.ServerStreamingClient[echov1.EchoEvent]) (string, []byte) {
		t.Helper()
		for {
			ev, err := s.Recv()
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if !strings.HasPrefix(ev.GetMessage(), run) {
				continue
			}
			id, ok := wire.EventIDFromMessage(ev, wire.DefaultEventIDField)
			if !ok {
				t.Fatalf("%s: event %q carries no event id", what, ev.GetMessage())
			}
			return ev.GetMessage(), id
		}
	}
	s, err := c.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatalf("EchoEvents: %v", err)
	}
	var second []byte
	for i := 1; i <= 3; i++ {
		msg, id := next("EchoEvents", s)
		if want := run + strconv.Itoa(i); msg != want {
			t.Fatalf("EchoEvents: event %q, want %q", msg, want)
		}
		if i == 2 {
			second = id
		}
	}
	resumed := metadata.AppendToOutgoingContext(ctx, "last-message-id", base64.RawURLEncoding.EncodeToString(second))
	s, err = c.EchoEvents(resumed, &emptypb.Empty{})
	if err != nil {
		t.Fatalf("EchoEvents resumed: %v", err)
	}
	if msg, _ := next("EchoEvents resumed", s); msg != run+"3" {
		t.Fatalf("EchoEvents resumed after the second event: got %q, want %q", msg, run+"3")
	}
}

// brokerOf returns the embedded broker's address that echo printed.
func brokerOf(t *testing.T, p *proc) string {
	t.Helper()
	const prefix = "embedded Kafka broker listening on "
	out := p.Stdout()
	i := strings.Index(out, prefix)
	if i < 0 {
		t.Fatalf("echo did not print its broker's address:\n%s", p.output())
	}
	return strings.Fields(out[i+len(prefix):])[0]
}

// checkHealth checks the overall health status.
func checkHealth(t *testing.T, cc *grpc.ClientConn) {
	ctx := callContext(t)
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		t.Fatalf("health Check: %v", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Check: status %s, want SERVING", resp.GetStatus())
	}
}

// checkReflection checks that reflection lists the echo service.
func checkReflection(t *testing.T, cc *grpc.ClientConn) {
	ctx := callContext(t)
	s, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("ServerReflectionInfo: %v", err)
	}
	req := &reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""},
	}
	if err := s.Send(req); err != nil {
		t.Fatalf("ServerReflectionInfo: Send: %v", err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("ServerReflectionInfo: Recv: %v", err)
	}
	if e := resp.GetErrorResponse(); e != nil {
		t.Fatalf("ServerReflectionInfo: error %d %q", e.GetErrorCode(), e.GetErrorMessage())
	}
	var names []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		names = append(names, svc.GetName())
	}
	want := echov1.EchoService_ServiceDesc.ServiceName
	if !slices.Contains(names, want) {
		t.Fatalf("reflection lists %v, want it to include %s", names, want)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatalf("ServerReflectionInfo: CloseSend: %v", err)
	}
}

// requireListening requires the ready line to name addr.
func requireListening(t *testing.T, line, addr string) {
	t.Helper()
	if !strings.Contains(line, addr) {
		t.Fatalf("ready line %q does not name the listen address %s", line, addr)
	}
}

// TestEcho runs the all-in-one binary on its embedded broker.
func TestEcho(t *testing.T) {
	addr := freeAddr(t)
	p := start(t, "echo", "--listen", addr)
	line := p.waitReady(t)
	requireListening(t, line, addr)
	if !strings.Contains(p.Stdout(), "embedded Kafka broker listening on 127.0.0.1:") {
		t.Errorf("echo did not report its embedded broker on 127.0.0.1:\n%s", p.output())
	}
	// What make run shows a newcomer: a call of each kind through itself.
	if _, err := p.WaitLine("until interrupted", readyTimeout); err != nil {
		t.Fatalf("echo's demo did not finish (%v):\n%s", err, p.output())
	}
	for _, want := range []string{
		`echo: demo EchoUnary {"message":"hello"} → "hello" (`,
		`echo: demo EchoServerStream {"message":"hi","repeat":3} → "hi"#0 "hi"#1 "hi"#2 (`,
		`echo: demo EchoClientStream {"message":"a"} {"message":"b"} → "a,b" (`,
		`echo: demo EchoBidiStream {"message":"x"} {"message":"y"} → "x"#0 "y"#1 (`,
		`echo: demo EchoUnary {"message":"x","fail_code":5} → status NotFound "x", from the worker (`,
	} {
		if !strings.Contains(p.Stdout(), want) {
			t.Errorf("echo's demo output lacks %q:\n%s", want, p.output())
		}
	}

	cc := dial(t, addr)
	c := echov1.NewEchoServiceClient(cc)
	t.Run("Unary", func(t *testing.T) { checkUnary(t, c) })
	t.Run("ServerStream", func(t *testing.T) { checkServerStream(t, c) })
	t.Run("ClientStream", func(t *testing.T) { checkClientStream(t, c) })
	t.Run("EmptyStreams", func(t *testing.T) { checkEmptyStreams(t, c) })
	t.Run("BidiStream", func(t *testing.T) { checkBidiStream(t, c) })
	t.Run("Events", func(t *testing.T) { checkEvents(t, c, brokerOf(t, p)) })
	t.Run("Health", func(t *testing.T) { checkHealth(t, cc) })
	t.Run("Reflection", func(t *testing.T) { checkReflection(t, cc) })

	p.stop(t)
}

// TestSplitDeployment runs echo-worker and echo-gateway as separate processes
// on a broker embedded in the test.
func TestSplitDeployment(t *testing.T) {
	// The embedded broker, or KAFKA_BROKERS; registered first, so that it
	// closes after the processes' cleanups.
	brokers := kafkatest.Brokers(t)

	group := "e2e-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	addr := freeAddr(t)
	worker := start(t, "echo-worker", "--brokers", brokers, "--group", group)
	gateway := start(t, "echo-gateway", "--brokers", brokers, "--listen", addr)
	if line := worker.waitReady(t); !strings.Contains(line, group) {
		t.Errorf("worker ready line %q does not name group %s", line, group)
	}
	requireListening(t, gateway.waitReady(t), addr)

	cc := dial(t, addr)
	c := echov1.NewEchoServiceClient(cc)
	t.Run("Unary", func(t *testing.T) { checkUnary(t, c) })
	t.Run("ServerStream", func(t *testing.T) { checkServerStream(t, c) })
	t.Run("Events", func(t *testing.T) { checkEvents(t, c, brokers) })
	t.Run("Publish", func(t *testing.T) { checkPublish(t, c, brokers) })
	t.Run("Health", func(t *testing.T) { checkHealth(t, cc) })

	// Both stop at once, as in a rolling shutdown.
	gateway.terminate(t)
	worker.terminate(t)
	gateway.waitExit(t)
	worker.waitExit(t)
}

// TestEchoServer runs the plain gRPC server: the same implementation with no
// Kafka in between, so every kind answers as over Kafka (the reference for
// the Kafka paths above).
func TestEchoServer(t *testing.T) {
	addr := freeAddr(t)
	p := start(t, "echo-server", "--listen", addr)
	requireListening(t, p.waitReady(t), addr)

	cc := dial(t, addr)
	c := echov1.NewEchoServiceClient(cc)
	t.Run("Unary", func(t *testing.T) { checkUnary(t, c) })
	t.Run("ServerStream", func(t *testing.T) { checkServerStream(t, c) })
	t.Run("ClientStream", func(t *testing.T) { checkClientStream(t, c) })
	t.Run("EmptyStreams", func(t *testing.T) { checkEmptyStreams(t, c) })
	t.Run("BidiStream", func(t *testing.T) { checkBidiStream(t, c) })
	t.Run("Health", func(t *testing.T) { checkHealth(t, cc) })
	t.Run("Reflection", func(t *testing.T) { checkReflection(t, cc) })

	p.stop(t)
}

// checkPublish runs echo-publish (the generated typed publisher) and
// receives its events through the gateway's EchoEvents.
func checkPublish(t *testing.T, c echov1.EchoServiceClient, brokers string) {
	ctx := callContext(t)
	s, err := c.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatalf("EchoEvents: %v", err)
	}
	run := "published-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	p := start(t, "echo-publish", "--brokers", brokers, "--count", "2", "--message", run, "--key", run)
	if _, exited := p.Wait(stopTimeout); !exited || p.Err() != nil {
		t.Fatalf("echo-publish did not succeed within %s: %v\n%s", stopTimeout, p.Err(), p.output())
	}
	if n := strings.Count(p.Stdout(), "echo-publish: echo-events/"); n != 2 {
		t.Errorf("echo-publish printed %d delivery lines, want 2:\n%s", n, p.output())
	}
	for i := 1; i <= 2; i++ {
		want := run + " " + strconv.Itoa(i)
		for {
			ev, err := s.Recv()
			if err != nil {
				t.Fatalf("EchoEvents waiting for %q: %v", want, err)
			}
			if ev.GetMessage() == want {
				break
			}
			if strings.HasPrefix(ev.GetMessage(), run) {
				t.Fatalf("EchoEvents: got %q, want %q", ev.GetMessage(), want)
			}
		}
	}
}

// TestCreateTopicsFalse: with --create-topics=false and the topics missing,
// echo-gateway and echo-worker exit non-zero within 15 s naming each
// missing topic; with the default they create them and start. A broker of
// its own (never KAFKA_BROKERS, where the topics may exist).
func TestCreateTopicsFalse(t *testing.T) {
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	brokers := b.Addr()
	for _, name := range []string{"echo-gateway", "echo-worker", "echo-publish"} {
		t.Run(name, func(t *testing.T) {
			args := []string{"--brokers", brokers, "--create-topics=false"}
			if name == "echo-gateway" {
				args = append(args, "--listen", freeAddr(t))
			}
			p := start(t, name, args...)
			took, exited := p.Wait(15 * time.Second)
			if !exited {
				t.Fatalf("%s with --create-topics=false and no topics did not exit within 15 s\n%s", name, p.output())
			}
			if p.Err() == nil {
				t.Fatalf("%s exited with status 0, want non-zero\n%s", name, p.output())
			}
			for _, topic := range []string{"echo-requests (request topic", "echo-responses (reply topic", "echo-events (fetch topic"} {
				if !strings.Contains(p.Stderr(), topic) {
					t.Errorf("%s's error does not name %q\n%s", name, topic, p.output())
				}
			}
			t.Logf("%s exited after %s: %s", name, took.Round(time.Millisecond), strings.TrimSpace(p.Stderr()))
		})
	}
	// The default creates them; then --create-topics=false starts too.
	addr := freeAddr(t)
	gw := start(t, "echo-gateway", "--brokers", brokers, "--listen", addr)
	requireListening(t, gw.waitReady(t), addr)
	if !strings.Contains(gw.Stderr(), "created topic") {
		t.Errorf("echo-gateway did not log the topics it created\n%s", gw.output())
	}
	worker := start(t, "echo-worker", "--brokers", brokers, "--create-topics=false")
	worker.waitReady(t)
	checkUnary(t, echov1.NewEchoServiceClient(dial(t, addr)))
	gw.stop(t)
	worker.stop(t)
}

// call runs echo-call with args to its end and returns its standard output
// and exit status.
func call(t *testing.T, brokers string, args ...string) (string, int) {
	t.Helper()
	p := start(t, "echo-call", append([]string{"--brokers", brokers}, args...)...)
	if _, exited := p.Wait(callTimeout); !exited {
		t.Fatalf("echo-call %s did not end within %s\n%s", strings.Join(args, " "), callTimeout, p.output())
	}
	code := 0
	if err := p.Err(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("echo-call %s: %v\n%s", strings.Join(args, " "), err, p.output())
		}
		code = exit.ExitCode()
	}
	return p.Stdout(), code
}

// TestEchoCall calls the echo service with echo-call, over Kafka through a
// runtime.ClientConn and no gateway, served by echo-worker.
func TestEchoCall(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	group := "call-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	worker := start(t, "echo-worker", "--brokers", brokers, "--group", group)
	worker.waitReady(t)
	for _, c := range []struct {
		args []string
		out  string
		code int
	}{
		{nil, "0\thello\n", 0},
		{[]string{"--message", "hi", "--message", "again"}, "0\thi\n0\tagain\n", 0},
		{[]string{"--method", "EchoServerStream", "--message", "m", "--repeat", "3"}, "0\tm\n1\tm\n2\tm\n", 0},
		{[]string{"--method", "EchoClientStream", "--message", "a", "--message", "b"}, "2\ta,b\n", 0},
		{[]string{"--method", "EchoBidiStream", "--message", "x", "--message", "y"}, "0\tx\n1\ty\n", 0},
		{[]string{"--message", "x", "--fail-code", "5"}, "error NOT_FOUND: x\n", 1},
		{[]string{"--method", "EchoServerStream", "--message", "gone", "--fail-code", "9"}, "error FAILED_PRECONDITION: gone\n", 1},
		{[]string{"--message", "slow", "--delay-ms", "5000", "--timeout", "500ms"}, "error DEADLINE_EXCEEDED: ", 1},
		{[]string{"--method", "EchoNothing"}, "", 2},
	} {
		out, code := call(t, brokers, c.args...)
		if code != c.code || !strings.HasPrefix(out, c.out) || (c.code == 0 && out != c.out) {
			t.Errorf("echo-call %s: exit %d, output %q; want exit %d, output %q", strings.Join(c.args, " "), code, out, c.code, c.out)
		}
	}

	// EchoEvents: every event with its id, then a resume after the second.
	kc := kafkatest.NewClient(t, brokers)
	run := strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
	for i := 1; i <= 3; i++ {
		v, _ := proto.Marshal(&echov1.EchoEvent{Message: run + strconv.Itoa(i)})
		errc := make(chan error, 1)
		kc.Produce(&kafkaclient.Record{Topic: "echo-events", Partition: kafkaclient.AnyPartition, Key: []byte(run), Value: v},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
		if err := <-errc; err != nil {
			t.Fatalf("producing to echo-events: %v", err)
		}
	}
	// ours returns the lines of this run's events: id and message.
	ours := func(out string) [][2]string {
		var got [][2]string
		for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			id, msg, ok := strings.Cut(line, "\t")
			if ok && strings.HasPrefix(msg, run) {
				got = append(got, [2]string{id, msg})
			}
		}
		return got
	}
	// Open-ended: it reads until --timeout, which is no error.
	out, code := call(t, brokers, "--method", "EchoEvents", "--timeout", "3s")
	got := ours(out)
	if code != 0 || len(got) != 3 || got[0][1] != run+"1" || got[2][1] != run+"3" {
		t.Fatalf("echo-call --method EchoEvents: exit %d, this run's events %q; want exit 0 and 3 events\n%s", code, got, out)
	}
	if _, err := wire.ParseEventID(got[1][0]); err != nil {
		t.Fatalf("event id %q: %v", got[1][0], err)
	}
	out, code = call(t, brokers, "--method", "EchoEvents", "--last-event-id", got[1][0], "--timeout", "3s")
	if resumed := ours(out); code != 0 || len(resumed) != 1 || resumed[0][1] != run+"3" {
		t.Fatalf("echo-call resumed after %s: exit %d, this run's events %q; want only %s3", got[1][1], code, resumed, run)
	}
	// --count stops after that many events.
	out, code = call(t, brokers, "--method", "EchoEvents", "--count", "1", "--timeout", "20s")
	if code != 0 || strings.Count(out, "\n") != 1 {
		t.Fatalf("echo-call --count 1: exit %d, output %q; want one line", code, out)
	}
	worker.stop(t)
}

// TestEchoCallBadFlags: every bad flag value of echo-call is refused before
// it connects to Kafka, with exit status 2 (as its doc says of bad flags), a
// message naming the flag and nothing on stdout: not a Kafka error after a
// dial, not a silent exit 0 (--count -1 printed nothing), and not a value
// wrapped into int32 (--fail-code 4294967301 failed the call NOT_FOUND),
// not a bad --last-event-id sent to the worker (it connected, then failed
// "error INVALID_ARGUMENT: ... cannot resume", exit 1).
// Nothing listens on the brokers' address: no case may need a broker.
func TestEchoCallBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		flag string // what stderr must name
	}{
		{[]string{"--method", "EchoNothing"}, "--method"},
		{[]string{"--client", "kafka"}, "--client"},
		{[]string{"--timeout", "0s"}, "--timeout"},
		{[]string{"--timeout", "-1s"}, "--timeout"},
		{[]string{"--repeat", "-1", "--method", "EchoServerStream"}, "--repeat"},
		{[]string{"--repeat", "4294967298", "--method", "EchoServerStream"}, "--repeat"},
		{[]string{"--delay-ms", "-5"}, "--delay-ms"},
		{[]string{"--fail-code", "-1"}, "--fail-code"},
		{[]string{"--fail-code", "17"}, "--fail-code"},
		{[]string{"--fail-code", "4294967301"}, "--fail-code"},
		{[]string{"--method", "EchoEvents", "--count", "-1"}, "--count"},
		{[]string{"--count", "2"}, "--count"},                  // EchoUnary has no events
		{[]string{"--last-event-id", "AQ"}, "--last-event-id"}, // nor a resume
		{[]string{"--method", "EchoEvents", "--message", "m"}, "--message"},
		{[]string{"--method", "EchoEvents", "--last-event-id", "!!!"}, "--last-event-id"},  // not base64
		{[]string{"--method", "EchoEvents", "--last-event-id", "AAAA"}, "--last-event-id"}, // no event id
		{[]string{"hello"}, "hello"},                                                       // a message without --message
	} {
		badFlags(t, "echo-call", append([]string{"--brokers", "127.0.0.1:1", "--client", "franz"}, c.args...), c.flag)
	}
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// badFlags runs name with args, which hold a usage error, and requires
// what the flag package does for a flag it refuses: exit status 2 before
// anything starts (nothing listens on the brokers' address, so no case may
// need a broker), nothing on stdout, and stderr naming what is wrong.
func badFlags(t *testing.T, name string, args []string, names string) {
	t.Helper()
	p := start(t, name, args...)
	if _, exited := p.Wait(callTimeout); !exited {
		t.Fatalf("%s %s did not end within %s\n%s", name, strings.Join(args, " "), callTimeout, p.output())
	}
	code := 0
	var exit *exec.ExitError
	if errors.As(p.Err(), &exit) {
		code = exit.ExitCode()
	}
	if code != 2 || p.Stdout() != "" || !strings.Contains(p.Stderr(), names) {
		t.Errorf("%s %s: exit %d, stdout %q, stderr %q; want exit 2, no output and an error naming %s",
			name, strings.Join(args, " "), code, p.Stdout(), lastLine(p.Stderr()), names)
	}
}

// TestBinariesRefuseArguments: an argument that is not a flag (a message
// without --message, a broker without --brokers) is a usage error of every
// binary, as it is of echo-call. They ignored it: echo-publish published
// "event 1" for `echo-publish --brokers B hello`, and echo served on.
func TestBinariesRefuseArguments(t *testing.T) {
	for _, name := range []string{"echo", "echo-gateway", "echo-worker", "echo-server", "echo-publish"} {
		args := []string{"--listen", "127.0.0.1:0", "hello"}
		switch name {
		case "echo-worker", "echo-publish":
			args = []string{"--brokers", "127.0.0.1:1", "--client", "franz", "hello"}
		case "echo-gateway":
			args = append([]string{"--brokers", "127.0.0.1:1", "--client", "franz"}, args...)
		}
		t.Run(name, func(t *testing.T) { badFlags(t, name, args, `"hello"`) })
	}
}

// TestBinariesListOnlyFlagsTheyUse: each binary's -h lists the flags
// that do something in it, and a flag it does not list is refused. All of
// them accepted and listed every shared flag: echo-server (no Kafka) took
// --client, --create-topics and --metrics and ignored them; echo-call,
// echo-worker and echo-publish, which serve no gRPC, took --tls-cert and
// --tls-key; echo-publish took --metrics and exported nothing.
func TestBinariesListOnlyFlagsTheyUse(t *testing.T) {
	kafka := []string{"brokers", "client", "create-topics"}
	want := map[string][]string{
		"echo":         append([]string{"demo", "listen", "metrics", "tls-cert", "tls-key"}, kafka...),
		"echo-gateway": append([]string{"listen", "metrics", "tls-cert", "tls-key"}, kafka...),
		"echo-worker":  append([]string{"group", "group-protocol", "metrics", "outcome-topic", "target"}, kafka...),
		"echo-call": append([]string{"count", "delay-ms", "fail-code", "last-event-id", "message", "method",
			"metrics", "repeat", "timeout"}, kafka...),
		"echo-publish": append([]string{"count", "key", "message", "topic"}, kafka...),
		"echo-server":  {"listen", "tls-cert", "tls-key"},
	}
	flagLine := regexp.MustCompile(`(?m)^  -([a-z-]+)`)
	for _, name := range binaries {
		t.Run(name, func(t *testing.T) {
			p := start(t, name, "-h")
			if _, exited := p.Wait(callTimeout); !exited {
				t.Fatalf("%s -h did not end within %s", name, callTimeout)
			}
			var got []string
			for _, m := range flagLine.FindAllStringSubmatch(p.Stderr(), -1) {
				got = append(got, m[1])
			}
			sort.Strings(got)
			w := append([]string(nil), want[name]...)
			sort.Strings(w)
			if !slices.Equal(got, w) {
				t.Errorf("%s -h lists %v; want %v", name, got, w)
			}
		})
	}
	badFlags(t, "echo-server", []string{"--listen", "127.0.0.1:0", "--client", "franz"}, "-client")
	badFlags(t, "echo-publish", []string{"--brokers", "127.0.0.1:1", "--metrics", "127.0.0.1:0"}, "-metrics")
	badFlags(t, "echo-call", []string{"--brokers", "127.0.0.1:1", "--tls-cert", "c.pem"}, "-tls-cert")
}

// TestBinariesBadFlagValues: a flag value no run can use is a usage error
// (exit 2, naming the flag) before the binary connects to Kafka or
// listens. They were found late: an empty --brokers waited 10 s and exited
// 1 saying "Broker transport failure", an unknown --client or
// --group-protocol exited 1 as a failure to connect or start, and
// --tls-key without --tls-cert failed opening "".
func TestBinariesBadFlagValues(t *testing.T) {
	kafka := []string{"--brokers", "127.0.0.1:1", "--client", "franz"}
	for _, c := range []struct {
		name  string
		args  []string
		names string
	}{
		{"echo-gateway", []string{"--brokers", "", "--listen", "127.0.0.1:0"}, "--brokers"},
		{"echo-worker", []string{"--brokers", ""}, "--brokers"},
		{"echo-publish", []string{"--brokers", ""}, "--brokers"},
		{"echo", []string{"--client", "kafka", "--listen", "127.0.0.1:0"}, "--client"},
		{"echo-gateway", []string{"--brokers", "127.0.0.1:1", "--client", "kafka", "--listen", "127.0.0.1:0"}, "--client"},
		{"echo-worker", []string{"--brokers", "127.0.0.1:1", "--client", "kafka"}, "--client"},
		{"echo-publish", []string{"--brokers", "127.0.0.1:1", "--client", "kafka"}, "--client"},
		{"echo-worker", append([]string{"--group-protocol", "kip848"}, kafka...), "--group-protocol"},
		{"echo-server", []string{"--listen", "127.0.0.1:0", "--tls-key", "key.pem"}, "--tls-cert"},
		{"echo-gateway", append([]string{"--listen", "127.0.0.1:0", "--tls-cert", "cert.pem"}, kafka...), "--tls-key"},
	} {
		t.Run(c.name+" "+c.names, func(t *testing.T) { badFlags(t, c.name, c.args, c.names) })
	}
}

// TestEchoPublishBadFlags: echo-publish refuses a --count that publishes
// nothing and an empty --topic, as usage errors (exit 2, naming the flag).
// --count 0 or -1 published nothing and exited 0, as if it had worked.
func TestEchoPublishBadFlags(t *testing.T) {
	kafka := []string{"--brokers", "127.0.0.1:1", "--client", "franz"}
	for _, c := range []struct {
		args  []string
		names string
	}{
		{[]string{"--count", "0"}, "--count"},
		{[]string{"--count", "-1"}, "--count"},
		{[]string{"--topic", ""}, "--topic"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) { badFlags(t, "echo-publish", append(c.args, kafka...), c.names) })
	}
}

// TestWorkerOutcomeTopicPartitions: echo-worker --outcome-topic creates
// the outcome topic with as many partitions as the request topic that
// exists, as the worker needs (an outcome goes to its request's partition
// number). It created it with 3 whatever the request topic had, and the
// worker logged that the outcome topic had fewer partitions. A broker of
// its own, where echo-requests has 6.
func TestWorkerOutcomeTopicPartitions(t *testing.T) {
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	kc := kafkatest.NewClient(t, b.Addr())
	kafkatest.CreateTopics(t, kc, 6, "echo-requests")
	worker := start(t, "echo-worker", "--brokers", b.Addr(), "--outcome-topic", "echo-outcomes")
	worker.waitReady(t)
	ctx := callContext(t)
	parts, err := kc.Partitions(ctx, "echo-outcomes")
	if err != nil || len(parts) != 6 {
		t.Errorf("echo-outcomes has partitions %v (%v), want 6 as echo-requests\n%s", parts, err, worker.output())
	}
	worker.stop(t)
	if strings.Contains(worker.Stderr(), "fewer partitions") {
		t.Errorf("echo-worker logged that the outcome topic has fewer partitions\n%s", worker.output())
	}
}
