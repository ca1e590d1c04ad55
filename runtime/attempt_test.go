package runtime_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestKeyedCallIgnoresRepliesOfAnotherAttempt writes the replies of a keyed
// server stream itself: an earlier attempt's late replies, which share the
// call's correlation id but carry another attempt id, must neither feed nor
// end the call; the replies of its own attempt do.
func TestKeyedCallIgnoresRepliesOfAnotherAttempt(t *testing.T) {
	e := setup(t, silent{})
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "attempts")
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 2})
	if err != nil {
		t.Fatal(err)
	}
	id := wire.CorrelationID(wire.DefaultNames(), "attempts", "example.echo.v1.EchoService", "EchoServerStream", e.topic("echo-responses"))
	recs := requests.await(t, id)
	attempt := header(recs[0], "meta:"+wire.AttemptMetadata)
	if attempt == "" {
		t.Fatalf("the keyed call's request carries no %s header: %v", wire.AttemptMetadata, recs[0].Headers)
	}
	reply := func(index int32, attempt string, end bool) {
		hs := hdrs{"zilla:correlation-id", id, "meta:" + wire.AttemptMetadata, attempt}
		rec := &kafkaclient.Record{Topic: e.topic("echo-responses"), Key: []byte(id)}
		if end {
			hs = append(hs, "zilla:status", "0")
		} else {
			rec.Value, _ = proto.Marshal(&echov1.EchoResponse{Message: "m", Index: index})
		}
		rec.Headers = hs.headers()
		produce(t, e.kc, rec)
	}
	reply(1, "an-earlier-attempt", false) // the tail of an earlier attempt ...
	reply(0, "an-earlier-attempt", true)  // ... and its OK end
	reply(0, attempt, false)
	reply(1, attempt, false)
	reply(0, attempt, true)
	got, err := indexes(stream)
	if err != nil {
		t.Fatalf("after %v: %v", got, err)
	}
	if len(got) != 2 || got[0] != 0 || got[1] != 1 {
		t.Fatalf("the call received indexes %v, want [0 1] (its own attempt's replies only)", got)
	}
}

// TestKeyedRetryJoiningRunningAttemptGetsWholeOutcome writes the first
// attempt of a keyed server stream as a gateway would, then retries it with
// the same key through the gateway once the first attempt answered its
// first message. The retry shares the first attempt's correlation id: it
// must get the whole outcome of one execution (every message and the end),
// never the first attempt's remaining replies as its own.
func TestKeyedRetryJoiningRunningAttemptGetsWholeOutcome(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "joined"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoServerStream", e.topic("echo-responses"))
	req, _ := proto.Marshal(&echov1.EchoRequest{Message: "m", Repeat: 3, DelayMs: 400})
	hs := append(requestHeaders(e, echoService, "EchoServerStream", id),
		"meta:"+wire.AttemptMetadata, "first", "meta:idempotency-key", key)
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Value: req, Headers: hs.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Headers: hs.headers()})
	bound := time.After(30 * time.Second)
	for first := false; !first; {
		select {
		case rec := <-replies.recs:
			first = header(rec, "zilla:correlation-id") == id && rec.Value != nil
		case <-bound:
			t.Fatal("the first attempt answered nothing within 30 s")
		}
	}
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", key)
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 3, DelayMs: 400})
	if err != nil {
		t.Fatal(err)
	}
	got, err := indexes(stream)
	if err != nil {
		t.Fatalf("the retry failed after %v: %v", got, err)
	}
	if len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 2 {
		t.Fatalf("the retry received indexes %v, want [0 1 2]: the whole outcome of one execution", got)
	}
	if n := e.worker.Stats().Calls; n != 1 {
		t.Fatalf("the handler ran %d times, want once (the retry is answered from the first attempt's outcome)", n)
	}
}

// TestRetriesWaitingForFailedAttemptShareOneRerun has two more attempts of
// a keyed call wait for a first attempt that ends DEADLINE_EXCEEDED (an
// outcome not stored): one of them runs again, and the other gets the
// outcome of that run, not ABORTED.
func TestRetriesWaitingForFailedAttemptShareOneRerun(t *testing.T) {
	e := setup(t, echoserver.Server{})
	const key = "rerun"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoServerStream", e.topic("echo-responses"))
	write := func(attempt, timeout string) {
		req, _ := proto.Marshal(&echov1.EchoRequest{Message: "m", Repeat: 1, DelayMs: 3000})
		hs := append(requestHeaders(e, echoService, "EchoServerStream", id),
			"meta:"+wire.AttemptMetadata, attempt, "meta:idempotency-key", key)
		if timeout != "" {
			hs = append(hs, "meta:grpc-timeout", timeout)
		}
		produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Value: req, Headers: hs.headers()})
		produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Headers: hs.headers()})
	}
	write("first", "1500m") // ends DEADLINE_EXCEEDED after 1.5 s of its 3 s pause
	write("second", "")     // waits for it, then runs again
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", key)
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 1, DelayMs: 3000})
	if err != nil {
		t.Fatal(err)
	}
	got, err := indexes(stream)
	if err != nil {
		t.Fatalf("the third attempt failed after %v: %v", got, err)
	}
	if len(got) != 1 || got[0] != 0 {
		t.Fatalf("the third attempt received %v, want [0]", got)
	}
	if n := e.worker.Stats().Calls; n != 2 {
		t.Fatalf("the handler ran %d times, want twice (the first attempt, and one re-run for both retries)", n)
	}
}

// indexes receives a server stream to its end and returns the indexes of
// its responses, and the error it ended with (nil when OK).
func indexes(stream grpc.ServerStreamingClient[echov1.EchoResponse]) ([]int32, error) {
	var got []int32
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, r.GetIndex())
	}
}

// lateCancelServer fails "first" with a status the worker does not remember
// (so that a retry runs the handler again), holds "second" until the worker
// has served "marker" or the call is cancelled, and serves "marker".
type lateCancelServer struct {
	echoserver.Server
	started, marker chan struct{}
}

func (s *lateCancelServer) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	switch req.Message {
	case "first":
		return nil, status.Error(codes.DeadlineExceeded, "the first attempt ran out of time")
	case "second":
		close(s.started)
		select {
		case <-s.marker:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	case "marker":
		close(s.marker)
	}
	return &echov1.EchoResponse{Message: req.Message}, nil
}

// TestLateCancelOfEarlierAttemptLeavesRetryAlone writes, as gateways would,
// a keyed call's first attempt, then its retry (another attempt id, the same
// correlation id), then the first attempt's cancel, late: a gateway writes
// the cancel once the gRPC caller's cancellation reaches it, which can be
// after the caller already retried. The cancel belongs to the first
// attempt and must not cancel the retry running under the same correlation
// id. A call keyed to the same partition after the cancel ("marker") tells
// when the worker has read it.
func TestLateCancelOfEarlierAttemptLeavesRetryAlone(t *testing.T) {
	srv := &lateCancelServer{started: make(chan struct{}), marker: make(chan struct{})}
	e := setup(t, srv)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "late-cancel"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoUnary", e.topic("echo-responses"))
	attempt := func(name string) hdrs {
		return append(requestHeaders(e, echoService, "EchoUnary", id), "meta:"+wire.AttemptMetadata, name, "meta:idempotency-key", key)
	}
	send := func(id string, hs hdrs, msg string) {
		t.Helper()
		var value []byte
		if msg != "" {
			value, _ = proto.Marshal(&echov1.EchoRequest{Message: msg})
		}
		produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Value: value, Headers: hs.headers()})
	}
	send(id, attempt("a1"), "first")
	send(id, attempt("a1"), "")
	if recs := replies.await(t, id); header(recs[len(recs)-1], "zilla:status") != "4" {
		t.Fatalf("first attempt ended with status %q, want 4", header(recs[len(recs)-1], "zilla:status"))
	}
	send(id, attempt("a2"), "second")
	select {
	case <-srv.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the retry's handler did not start within 30 s")
	}
	send(id, append(attempt("a1"), "zilla:status", wire.CancelStatus), "") // the first attempt's cancel, late
	markerID := "marker-" + id
	send(id, requestHeaders(e, echoService, "EchoUnary", markerID), "marker") // keyed like the call: read after the cancel
	send(id, requestHeaders(e, echoService, "EchoUnary", markerID), "")
	send(id, attempt("a2"), "")
	recs := replies.await(t, id)
	end := recs[len(recs)-1]
	if got := header(end, "meta:"+wire.AttemptMetadata); got != "a2" {
		t.Fatalf("reply end for attempt %q, want a2", got)
	}
	if st := header(end, "zilla:status"); st != "0" {
		t.Fatalf("the retry ended with status %s (%s), want 0: the first attempt's late cancel cancelled it", st, header(end, "zilla:message"))
	}
	if len(recs) != 2 {
		t.Fatalf("the retry's replies: %d records, want its response and its end", len(recs))
	}
}

// TestOtherAttemptsMessagesStayOutOfAStream writes a keyed client stream's
// first attempt, a message of a second attempt with the same correlation id
// (a retry while the first stream is still open: its caller gave up on the
// first), then the first attempt's end and the second's. The second
// supersedes the first, which ends ABORTED; each handler run sees its own
// attempt's messages only, and the second is answered with its own.
func TestOtherAttemptsMessagesStayOutOfAStream(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "two-streams"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoClientStream", e.topic("echo-responses"))
	send := func(attempt, msg string) {
		t.Helper()
		sendAttempt(t, e, "EchoClientStream", id, key, attempt, msg)
	}
	send("a1", "mine")
	send("a2", "theirs")
	send("a1", "")
	send("a2", "")
	recs := replies.await(t, id)
	if len(recs) != 1 || header(recs[0], "meta:"+wire.AttemptMetadata) != "a1" || header(recs[0], "zilla:status") != "10" {
		t.Fatalf("got %d reply records (the last for attempt %q, status %q), want only an ABORTED end for a1, superseded by a2",
			len(recs), header(recs[len(recs)-1], "meta:"+wire.AttemptMetadata), header(recs[len(recs)-1], "zilla:status"))
	}
	recs = replies.await(t, id)
	if len(recs) != 2 || header(recs[0], "meta:"+wire.AttemptMetadata) != "a2" || header(recs[1], "zilla:status") != "0" {
		t.Fatalf("got %d reply records (the first for attempt %q), want a response and an OK end for a2", len(recs), header(recs[0], "meta:"+wire.AttemptMetadata))
	}
	var resp echov1.EchoResponse
	if err := proto.Unmarshal(recs[0].Value, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Message != "theirs" {
		t.Fatalf("the second attempt's handler answered %q, want %q: it read another attempt's message", resp.Message, "theirs")
	}
}

// heldUntilCancelled holds "hold" until its context ends and reports why.
type heldUntilCancelled struct {
	echoserver.Server
	started chan struct{}
	cause   chan error
}

func (s *heldUntilCancelled) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if req.Message != "hold" {
		return s.Server.EchoUnary(ctx, req)
	}
	s.started <- struct{}{}
	<-ctx.Done()
	s.cause <- context.Cause(ctx)
	return nil, ctx.Err()
}

// TestOwnCancelReachesCallWhileRetryWaits writes, as gateways would, a keyed
// call's first attempt (its handler holds), the first message of a second
// attempt with the same correlation id (another caller with the same
// idempotency key: it waits for the first one's outcome, and the rest of
// its records are skipped), and then the first attempt's own cancel: the
// cancel belongs to the running call and must cancel its handler, though
// it comes while the second attempt's records are being skipped.
func TestOwnCancelReachesCallWhileRetryWaits(t *testing.T) {
	srv := &heldUntilCancelled{started: make(chan struct{}, 1), cause: make(chan error, 1)}
	e := setup(t, srv)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	const key = "own-cancel"
	id := wire.CorrelationID(wire.DefaultNames(), key, echoService, "EchoUnary", e.topic("echo-responses"))
	send := func(attempt, msg string, extra ...string) {
		t.Helper()
		sendAttempt(t, e, "EchoUnary", id, key, attempt, msg, extra...)
	}
	send("a1", "hold")
	send("a1", "")
	select {
	case <-srv.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the first attempt's handler did not start within 30 s")
	}
	send("a2", "again")                               // waits for a1's outcome
	send("a1", "", "zilla:status", wire.CancelStatus) // a1's own cancel
	select {
	case cause := <-srv.cause:
		if cause == nil || !strings.Contains(cause.Error(), "cancelled") {
			t.Fatalf("the handler's context ended with cause %v, want the caller's cancel", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first attempt's cancel did not reach its handler within 30 s (the calls have no deadline)")
	}
	send("a2", "")
	recs := replies.await(t, id)
	if end := recs[len(recs)-1]; header(end, "zilla:status") != "1" || header(end, "meta:"+wire.AttemptMetadata) != "a1" {
		t.Fatalf("first end: status %s of attempt %q, want 1 (CANCELLED) of a1", header(end, "zilla:status"), header(end, "meta:"+wire.AttemptMetadata))
	}
	// The second attempt did not get a cancelled outcome that was not
	// its own: it is served on its own.
	recs = replies.await(t, id)
	if end := recs[len(recs)-1]; header(end, "zilla:status") != "0" || header(end, "meta:"+wire.AttemptMetadata) != "a2" || len(recs) != 2 {
		t.Fatalf("second attempt: %d records ending with status %s of attempt %q, want a response and an OK end of a2",
			len(recs), header(end, "zilla:status"), header(end, "meta:"+wire.AttemptMetadata))
	}
}

// sendAttempt produces one request record of an echo method's call id, as
// attempt (meta:kafkarpc-attempt) of the idempotency key key: msg as an
// EchoRequest, or the end-of-stream record when msg is empty; extra are
// more header names and values.
func sendAttempt(t *testing.T, e *env, method, id, key, attempt, msg string, extra ...string) {
	t.Helper()
	hs := append(requestHeaders(e, echoService, method, id), keyedAttempt(key, attempt)...)
	hs = append(hs, extra...)
	var value []byte
	if msg != "" {
		value, _ = proto.Marshal(&echov1.EchoRequest{Message: msg})
	}
	produce(t, e.kc, &kafkaclient.Record{Topic: e.topic("echo-requests"), Key: []byte(id), Value: value, Headers: hs.headers()})
}

// keyedAttempt is the headers of attempt of a call made with idempotency
// key key, as a gateway of ours writes them.
func keyedAttempt(key, attempt string) []string {
	return []string{"meta:" + wire.AttemptMetadata, attempt, "meta:idempotency-key", key}
}
