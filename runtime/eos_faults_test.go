package runtime_test

// Faults of the worker's exactly-once and stored-outcome features found by
// review: each test shows one defect (see its comment), failed for that
// reason before its fix, and checks what the caller or Kafka gets.

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// eosEnv is setupWith plus a gateway reading committed replies only, as
// WorkerExactlyOnce wants.
func eosEnv(t *testing.T, impl echov1.EchoServiceServer, eos bool, wopts ...runtime.WorkerOption) (*env, echov1.EchoServiceClient) {
	t.Helper()
	if eos {
		wopts = append(wopts, runtime.WorkerExactlyOnce(kafkatest.Unique("txn-")))
	}
	e := setup(t, impl, wopts...)
	gw := runtime.NewGateway(e.kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t)), runtime.GatewayReadCommitted())
	t.Cleanup(func() { _ = gw.Close() })
	return e, echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
}

// hugeMiddle answers a server stream with "a", a response larger than any
// record Kafka takes, and "c".
type hugeMiddle struct{ echoserver.Server }

func (hugeMiddle) EchoServerStream(_ *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	for i, m := range []string{"a", strings.Repeat("x", kafkaclient.MaxMessageBytes+1), "c"} {
		if err := s.Send(&echov1.EchoResponse{Message: m, Index: int32(i)}); err != nil {
			return err
		}
	}
	return nil
}

// TestExactlyOnceRefusedStreamReplyIsNoOKEnd: a server stream one of whose
// responses Kafka can never take (larger than the record limit) must not
// end OK over the gap, with or without WorkerExactlyOnce. Without it the
// stream's end waits for its responses and says RESOURCE_EXHAUSTED (a
// retry cannot get the response through; lostStatus); with it, the
// records were kept for the transaction and produced all at once at the
// end, so the OK end went into the transaction, was committed with the
// request's offset, and the caller got "a", "c" and a clean end.
func TestExactlyOnceRefusedStreamReplyIsNoOKEnd(t *testing.T) {
	for _, eos := range []bool{false, true} {
		t.Run(fmt.Sprintf("exactly-once=%v", eos), func(t *testing.T) {
			_, client := eosEnv(t, hugeMiddle{}, eos)
			stream, err := client.EchoServerStream(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "m"})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for {
				r, err := stream.Recv()
				if err == io.EOF {
					t.Fatalf("the stream ended OK after %q, with its second response missing: want RESOURCE_EXHAUSTED", got)
				}
				if err != nil {
					if status.Code(err) != codes.ResourceExhausted {
						t.Fatalf("after %q: %v, want RESOURCE_EXHAUSTED saying a reply is larger than Kafka takes", got, err)
					}
					return
				}
				got = append(got, r.GetMessage())
			}
		})
	}
}

// TestExactlyOnceRevokeCommitsOffsetsWithReplies: with WorkerExactlyOnce a
// call's replies and its request's offset are to be committed in one
// transaction. A cooperative rebalance that takes another partition away
// commits the open transaction early (onRevoked), and that commit carried
// the offsets of the revoked partitions only: the replies of a call of a
// partition the worker keeps became visible without its offset, so a
// worker dying before its next commit has its partition's next owner serve
// the call again and answer it a second time.
func TestExactlyOnceRevokeCommitsOffsetsWithReplies(t *testing.T) {
	e, client := eosEnv(t, echoserver.Server{}, true, runtime.WorkerCommitInterval(time.Hour))
	ctx := ctxFor(t, 60*time.Second)
	// The first commit is at once; the committer then waits an hour.
	if _, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "warm-up"}); err != nil {
		t.Fatal(err)
	}
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	replies := watchReplies(t, e.kc, e.topic("echo-responses")) // read_uncommitted: sees the open transaction
	answered := make(chan error, 1)
	go func() {
		_, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
		answered <- err
	}()
	req := <-requests.recs
	id := header(req, "zilla:correlation-id")
	for { // its end-of-stream record is in the open transaction
		rec := awaitKey(t, replies, id)
		if rec.Value == nil {
			break
		}
	}
	other := kafkaclient.TopicPartition{Topic: req.Topic, Partition: (req.Partition + 1) % 3}
	runtime.RevokeForTest(e.worker, other)
	select {
	case err := <-answered: // the revocation committed the transaction holding the reply
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the call was not answered within 60 s")
	}
	adm := kadm.NewClient(newKgo(t, e.brokers))
	offs, err := adm.FetchOffsets(ctx, e.prefix+"workers")
	if err != nil {
		t.Fatal(err)
	}
	o, ok := offs.Lookup(req.Topic, req.Partition)
	if !ok || o.Err != nil || o.At <= req.Offset {
		t.Fatalf("the call's reply is committed, and partition %d's committed offset is %+v (found %v), want past the request at %d: "+
			"a crash now serves the call again", req.Partition, o, ok, req.Offset)
	}
}

func newKgo(t *testing.T, brokers string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// bigTrailer answers EchoUnary with a trailer of 32 KiB.
type bigTrailer struct{ counting }

func (b *bigTrailer) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	b.run(req.GetMessage())
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-big", strings.Repeat("t", 32<<10)))
	return &echov1.EchoResponse{Message: req.GetMessage()}, nil
}

// TestStoredOutcomesBoundCountsHeaders: WorkerIdempotencyWindow's byte
// bound is to bound the memory the stored outcomes take. An outcome's
// headers (trailers, status details, response metadata) were not counted,
// only its values: three outcomes of 32 KiB trailers each were all kept
// under a bound of 64 KiB (and any number of them would be), so the oldest
// was answered from memory instead of being forgotten.
func TestStoredOutcomesBoundCountsHeaders(t *testing.T) {
	impl := &bigTrailer{}
	e := setup(t, impl, runtime.WorkerIdempotencyWindow(time.Hour, 64<<10))
	call := func(key string) {
		ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", key)
		var tr metadata.MD
		if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: key}, grpc.Trailer(&tr)); err != nil || r.GetMessage() != key {
			t.Fatalf("call %s: %v, %v", key, r, err)
		}
		if got := tr.Get("x-big"); len(got) != 1 || len(got[0]) != 32<<10 {
			t.Fatalf("call %s: trailer of %d values, want one of 32 KiB", key, len(got))
		}
	}
	for _, k := range []string{"k1", "k2", "k3"} {
		call(k)
	}
	call("k1") // 96 KiB of outcomes do not fit 64 KiB: k1's, the oldest, was forgotten
	if n := impl.count("k1"); n != 2 {
		t.Fatalf("k1 ran %d times, want 2: its outcome was still held with two more under a bound smaller than the three", n)
	}
}

// TestExactlyOnceMissingReplyTopicKeepsWorker: with WorkerExactlyOnce, a
// request naming a reply topic that does not exist (anyone who can write
// the request topic can send one) loses its reply, as without it; the
// worker goes on serving the requests after it and its transactions go on
// committing.
func TestExactlyOnceMissingReplyTopicKeepsWorker(t *testing.T) {
	e, _ := eosEnv(t, echoserver.Server{}, true)
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	good, _ := proto.Marshal(&echov1.EchoRequest{Message: "good"})
	reqTopic := e.topic("echo-requests")
	key := []byte("same-partition")
	h := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:reply-to", e.topic("no-such-replies"), "zilla:correlation-id", "missing-reply-topic"}
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: h.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: h.headers()})
	ok := requestHeaders(e, echoService, "EchoUnary", "after-missing-reply-topic")
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: ok.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: ok.headers()})
	got := replies.await(t, "after-missing-reply-topic")
	if st := header(got[len(got)-1], "zilla:status"); st != "0" {
		t.Fatalf("the request after it ended with status %q", st)
	}
	if err := e.worker.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
}

// TestReplyOverReplyTopicLimit: a reply within the clients' record limit
// but over the reply topic's own max.message.bytes (a reply topic created
// with the broker's default of 1 MiB, say) is refused by the broker. The
// caller gets RESOURCE_EXHAUSTED, with or without WorkerExactlyOnce, and
// the worker goes on serving. A small reply (below the size the worker
// flushes before its end) over a small limit too: with exactly-once its
// end went into the transaction without it, and the caller got INTERNAL
// ("ended the call without a response"), or OK over the gap of a stream.
func TestReplyOverReplyTopicLimit(t *testing.T) {
	for _, size := range []struct {
		name         string
		limit, reply int
	}{{"large", 100_000, 200_000}, {"small", 1000, 2000}} {
		for _, eos := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/exactly-once=%v", size.name, eos), func(t *testing.T) {
				big := strings.Repeat("x", size.reply)
				e, client := eosEnv(t, overMiddle{big: big}, eos)
				ctx := ctxFor(t, 60*time.Second)
				adm := kadm.NewClient(newKgo(t, e.brokers))
				resp, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "max.message.bytes", Value: kmsgStr(strconv.Itoa(size.limit))}}, e.topic("echo-responses"))
				if err == nil {
					err = resp[0].Err
				}
				if err != nil {
					t.Fatal(err)
				}
				_, err = client.EchoUnary(ctx, &echov1.EchoRequest{Message: big})
				if status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("a reply over the reply topic's max.message.bytes: %v, want RESOURCE_EXHAUSTED", err)
				}
				stream, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "stream"})
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for {
					r, err := stream.Recv()
					if err != nil {
						if status.Code(err) != codes.ResourceExhausted {
							t.Fatalf("a server stream with a response over the limit ended %v after %q, want RESOURCE_EXHAUSTED", err, got)
						}
						break
					}
					got = append(got, r.GetMessage())
				}
				if r, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "small"}); err != nil || r.GetMessage() != "small" {
					t.Fatalf("the call after it: %v, %v", r, err)
				}
				if err := e.worker.Err(); err != nil {
					t.Fatalf("the worker stopped: %v", err)
				}
			})
		}
	}
}

// overMiddle echoes unary calls and answers a server stream with "a", big
// and "c".
type overMiddle struct {
	echoserver.Server
	big string
}

func (o overMiddle) EchoServerStream(_ *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	for i, m := range []string{"a", o.big, "c"} {
		if err := s.Send(&echov1.EchoResponse{Message: m, Index: int32(i)}); err != nil {
			return err
		}
	}
	return nil
}

func kmsgStr(s string) *string { return &s }

// TestExactlyOnceOutcomeOverTopicLimit: with WorkerExactlyOnce, a stored
// outcome larger than its outcome topic's max.message.bytes (a topic
// created with the broker's default of 1 MiB, say) is kept in memory only,
// as without exactly-once; with confluent it failed the transaction and
// stopped the worker, and the caller waited for its deadline.
func TestExactlyOnceOutcomeOverTopicLimit(t *testing.T) {
	e := newOutcomeEnv(t, true)
	ctx := ctxFor(t, 60*time.Second)
	if err := e.kc.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: e.topic("small-outcomes"), Partitions: 3,
		Config: map[string]string{"max.message.bytes": "100000", "cleanup.policy": "compact"}}}); err != nil {
		t.Fatal(err)
	}
	w := e.start(t, e.kc, echoserver.Server{}, runtime.WorkerOutcomeTopic("small-outcomes"))
	big := strings.Repeat("x", 200_000)
	kctx := metadata.AppendToOutgoingContext(ctx, "idempotency-key", "big")
	if r, err := e.echo.EchoUnary(kctx, &echov1.EchoRequest{Message: big}); err != nil || r.GetMessage() != big {
		t.Fatalf("a call whose outcome is over the outcome topic's limit: %v", err)
	}
	if r, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "small"}); err != nil || r.GetMessage() != "small" {
		t.Fatalf("the call after it: %v, %v", r, err)
	}
	if err := w.Err(); err != nil {
		t.Fatalf("the worker stopped: %v", err)
	}
}
