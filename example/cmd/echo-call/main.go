// Command echo-call calls the echo service over Kafka from Go, with no
// gateway: a runtime.ClientConn under the generated gRPC client writes the
// requests to the service's request topic and reads the replies from its
// reply topic, as a gateway would. A worker (echo-worker, or the all-in-one
// echo binary) serves the calls.
//
//	echo-call --brokers host:port [--client confluent|franz] [--method EchoUnary]
//	          [--message text]... [--repeat N] [--delay-ms N] [--fail-code N]
//	          [--timeout 10s] [--last-event-id ID] [--count N]
//
// --method is EchoUnary (the default), EchoServerStream, EchoClientStream,
// EchoBidiStream or EchoEvents. Each --message is one request: one call per
// message for EchoUnary and EchoServerStream, all of them on the one stream
// of EchoClientStream and EchoBidiStream (default: one message, "hello").
// --repeat, --delay-ms and --fail-code go in every request.
//
// It prints one line per response, "INDEX<TAB>MESSAGE", and exits 0. For
// EchoEvents it prints "EVENTID<TAB>MESSAGE", the event id base64url
// encoded (what --last-event-id takes to resume after that event), and stops
// after --count events (0: at --timeout or an interrupt, which then is no
// error). A failed call prints "error CODE_NAME: MESSAGE" (for example
// "error NOT_FOUND: x") and exits 1; bad flags exit 2, before connecting:
// a value out of range, a --last-event-id that is no event id, or a flag
// of EchoEvents (--last-event-id, --count)
// with another method, or of the requests (--message, --repeat,
// --delay-ms, --fail-code) with EchoEvents.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/example/internal/app"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

func main() {
	brokers := flag.String("brokers", "", "Kafka bootstrap servers (required)")
	method := flag.String("method", "EchoUnary", "EchoUnary, EchoServerStream, EchoClientStream, EchoBidiStream or EchoEvents")
	var messages []string
	flag.Func("message", "a request's message; repeatable, one request each (default: one, \"hello\")", func(s string) error {
		messages = append(messages, s)
		return nil
	})
	repeat := flag.Int("repeat", 0, "responses per request of EchoServerStream (0: one)")
	delay := flag.Int("delay-ms", 0, "milliseconds the worker waits before each response")
	failCode := flag.Int("fail-code", 0, "gRPC status code the worker fails the call with (0: none)")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of the whole run, sent to the worker with each call")
	lastEventID := flag.String("last-event-id", "", "EchoEvents: resume after the event of this id (base64url)")
	count := flag.Int("count", 0, "EchoEvents: stop after this many events (0: at --timeout)")
	// Every flag is checked before connecting: a bad value is a usage
	// error (exit 2), not a Kafka error after a dial, and no value is
	// wrapped into the requests' int32 fields.
	app.RegisterKafkaFlags()
	app.RegisterMetricsFlag()
	app.ParseFlags("echo-call", app.KafkaFlags(brokers, true), func() string {
		return checkFlags(*method, *repeat, *delay, *failCode, *timeout, *count, *lastEventID)
	})
	if len(messages) == 0 {
		messages = []string{"hello"}
	}
	logger := app.Logger()
	ctx, stop := app.Signals()
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	kc, err := app.NewClient(*brokers, logger)
	if err != nil {
		app.Fatal(logger, "connecting to Kafka", err)
	}
	defer kc.Close()
	var opts []runtime.ConnOption
	for _, o := range app.GatewayOptions(logger, runtime.GatewaySetupTimeout(*timeout)) {
		opts = append(opts, o)
	}
	conn := runtime.NewClientConn(kc, opts...)
	defer conn.Close()
	if err := conn.Register(echov1.EchoServiceKafkaSpec); err != nil {
		app.Fatal(logger, "preparing the connection", err)
	}
	c := echov1.NewEchoServiceClient(conn)

	req := func(m string) *echov1.EchoRequest {
		return &echov1.EchoRequest{Message: m, Repeat: int32(*repeat), DelayMs: int32(*delay), FailCode: int32(*failCode)}
	}
	switch *method {
	case "EchoUnary":
		err = unary(ctx, c, messages, req)
	case "EchoServerStream":
		err = serverStream(ctx, c, messages, req)
	case "EchoClientStream":
		err = clientStream(ctx, c, messages, req)
	case "EchoBidiStream":
		err = bidiStream(ctx, c, messages, req)
	case "EchoEvents":
		err = events(ctx, c, *lastEventID, *count)
	}
	if err != nil {
		st := status.Convert(err)
		fmt.Printf("error %s: %s\n", codeName(st.Code()), st.Message())
		_ = conn.Close()
		_ = kc.Close()
		os.Exit(1)
	}
}

// checkFlags returns what is wrong with echo-call's own flags, or "" (the
// check of app.ParseFlags, which checks arguments, --brokers and --client).
func checkFlags(method string, repeat, delay, failCode int, timeout time.Duration, count int, lastEventID string) string {
	switch {
	case timeout <= 0:
		return fmt.Sprintf("--timeout %s: want a positive duration", timeout)
	case repeat < 0 || repeat > math.MaxInt32:
		return fmt.Sprintf("--repeat %d: want 0 to %d", repeat, math.MaxInt32)
	case delay < 0 || delay > math.MaxInt32:
		return fmt.Sprintf("--delay-ms %d: want 0 to %d", delay, math.MaxInt32)
	case failCode < 0 || failCode >= len(codeNames):
		return fmt.Sprintf("--fail-code %d: want a gRPC status code, 0 (none) to %d", failCode, len(codeNames)-1)
	case count < 0:
		return fmt.Sprintf("--count %d: want 0 (until --timeout) or more", count)
	}
	switch method {
	case "EchoUnary", "EchoServerStream", "EchoClientStream", "EchoBidiStream":
		for _, f := range []string{"last-event-id", "count"} {
			if app.IsFlagSet(f) {
				return fmt.Sprintf("--%s applies to --method EchoEvents only, not %s", f, method)
			}
		}
	case "EchoEvents":
		for _, f := range []string{"message", "repeat", "delay-ms", "fail-code"} {
			if app.IsFlagSet(f) {
				return fmt.Sprintf("--%s does not apply to --method EchoEvents, which sends no request message", f)
			}
		}
		if lastEventID != "" { // empty: no resume, as if unset
			if _, err := wire.ParseEventID(lastEventID); err != nil {
				return fmt.Sprintf("--last-event-id %q: want an event id echo-call printed: %v", lastEventID, err)
			}
		}
	default:
		return fmt.Sprintf("--method %q: want EchoUnary, EchoServerStream, EchoClientStream, EchoBidiStream or EchoEvents", method)
	}
	return ""
}

func printResponse(r *echov1.EchoResponse) { fmt.Printf("%d\t%s\n", r.GetIndex(), r.GetMessage()) }

func unary(ctx context.Context, c echov1.EchoServiceClient, messages []string, req func(string) *echov1.EchoRequest) error {
	for _, m := range messages {
		r, err := c.EchoUnary(ctx, req(m))
		if err != nil {
			return err
		}
		printResponse(r)
	}
	return nil
}

func serverStream(ctx context.Context, c echov1.EchoServiceClient, messages []string, req func(string) *echov1.EchoRequest) error {
	for _, m := range messages {
		s, err := c.EchoServerStream(ctx, req(m))
		if err != nil {
			return err
		}
		for {
			r, err := s.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			printResponse(r)
		}
	}
	return nil
}

func clientStream(ctx context.Context, c echov1.EchoServiceClient, messages []string, req func(string) *echov1.EchoRequest) error {
	s, err := c.EchoClientStream(ctx)
	if err != nil {
		return err
	}
	for _, m := range messages {
		if err := s.Send(req(m)); err != nil {
			break // the call ended: CloseAndRecv reports how
		}
	}
	r, err := s.CloseAndRecv()
	if err != nil {
		return err
	}
	printResponse(r)
	return nil
}

// bidiStream sends every request, then reads the answers, so that a worker
// that answers each request at once and one that answers at the end both
// work.
func bidiStream(ctx context.Context, c echov1.EchoServiceClient, messages []string, req func(string) *echov1.EchoRequest) error {
	s, err := c.EchoBidiStream(ctx)
	if err != nil {
		return err
	}
	for _, m := range messages {
		if err := s.Send(req(m)); err != nil {
			break // the call ended: Recv reports how
		}
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		printResponse(r)
	}
}

func events(ctx context.Context, c echov1.EchoServiceClient, lastEventID string, count int) error {
	if lastEventID != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "last-event-id", lastEventID)
	}
	s, err := c.EchoEvents(ctx, &emptypb.Empty{})
	if err != nil {
		return err
	}
	for n := 0; count == 0 || n < count; n++ {
		ev, err := s.Recv()
		if err != nil {
			if count == 0 && ctx.Err() != nil {
				return nil // --timeout or an interrupt ends an open-ended fetch
			}
			return err
		}
		id, _ := wire.EventIDFromMessage(ev, wire.DefaultEventIDField)
		fmt.Printf("%s\t%s\n", base64.RawURLEncoding.EncodeToString(id), ev.GetMessage())
	}
	return nil
}

// codeNames are the canonical names of the gRPC status codes.
var codeNames = [...]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN", codes.InvalidArgument: "INVALID_ARGUMENT",
	codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED", codes.OutOfRange: "OUT_OF_RANGE",
	codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE",
	codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

// codeName returns code's canonical name, e.g. NOT_FOUND.
func codeName(code codes.Code) string {
	if int(code) < len(codeNames) {
		return codeNames[code]
	}
	return fmt.Sprintf("CODE_%d", code)
}
