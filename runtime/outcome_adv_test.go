package runtime_test

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// Adversarial tests of stored outcomes (WorkerOutcomeTopic) and keyed
// retries across worker restarts and rebalances.

// advOutcomeRecord encodes an outcome record's value as README's "Record
// layout" describes it, as another program could write it.
func advOutcomeRecord(at time.Time, topic string, code codes.Code, recs []kafkaclient.Record) []byte {
	b := []byte{1, 'R'}
	b = binary.AppendUvarint(b, uint64(at.UnixMilli()))
	b = binary.AppendUvarint(b, uint64(len(topic)))
	b = append(b, topic...)
	b = binary.AppendUvarint(b, uint64(code))
	b = binary.AppendUvarint(b, uint64(len(recs)))
	nbytes := func(b, v []byte) []byte {
		if v == nil {
			return append(b, 0)
		}
		return append(binary.AppendUvarint(b, uint64(len(v))+1), v...)
	}
	for _, r := range recs {
		b = nbytes(b, r.Value)
		b = binary.AppendUvarint(b, uint64(len(r.Headers)))
		for _, h := range r.Headers {
			b = binary.AppendUvarint(b, uint64(len(h.Key)))
			b = append(b, h.Key...)
			b = nbytes(b, h.Value)
		}
	}
	return b
}

// advProduce writes rec and waits for Kafka's acknowledgement (bounded).
func advProduce(t *testing.T, kc kafkaclient.Client, rec *kafkaclient.Record) {
	t.Helper()
	errs := make(chan error, 1)
	kc.Produce(rec, kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errs <- err })
	select {
	case err := <-errs:
		if err != nil {
			t.Fatalf("writing a record to %s: %v", rec.Topic, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("a record to %s not acknowledged within 30 s", rec.Topic)
	}
}

// TestOutcomeAdvDecodableButBrokenOutcome: the outcome topic holds, as the
// latest record of a keyed call's correlation id, a record another program
// wrote that decodes but is no call's outcome: its replies lack the
// end-of-stream record, or have it before a data record. The worker that
// loads it must not replay it (its caller would wait for an end that never
// comes, or take a stray end for the call's): it is counted as malformed,
// and the retry gets a whole, correct answer.
func TestOutcomeAdvDecodableButBrokenOutcome(t *testing.T) {
	for _, tc := range []struct {
		name string
		recs func(data, end kafkaclient.Record) []kafkaclient.Record
	}{
		{"no end", func(data, _ kafkaclient.Record) []kafkaclient.Record { return []kafkaclient.Record{data} }},
		{"end before data", func(data, end kafkaclient.Record) []kafkaclient.Record { return []kafkaclient.Record{end, data} }},
		{"two ends", func(data, end kafkaclient.Record) []kafkaclient.Record { return []kafkaclient.Record{data, end, end} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newOutcomeEnv(t, false)
			opt := runtime.WorkerOutcomeTopic(outcomeTopic)
			requests := watchReplies(t, e.kc, e.topic("echo-requests"))
			implA, implB := &counting{}, &counting{}
			a := e.start(t, e.kc, implA, opt)
			ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "adv-broken")
			first, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
			if err != nil {
				t.Fatal(err)
			}
			req := <-requests.recs
			id := header(req, "zilla:correlation-id")
			_ = a.Close()

			// A newer record of the same id, written by another program.
			v, _ := proto.Marshal(&echov1.EchoResponse{Message: "forged"})
			data := kafkaclient.Record{Value: v, Headers: []kafkaclient.Header{{Key: "zilla:correlation-id", Value: []byte(id)}}}
			end := kafkaclient.Record{Headers: []kafkaclient.Header{{Key: "zilla:correlation-id", Value: []byte(id)}, {Key: "zilla:status", Value: []byte("0")}}}
			advProduce(t, e.kc, &kafkaclient.Record{Topic: e.topic(outcomeTopic), Partition: req.Partition, Key: []byte(id),
				Value: advOutcomeRecord(time.Now(), e.topic("echo-requests"), codes.OK, tc.recs(data, end))})

			b := e.start(t, e.kc, implB, opt)
			rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			again, err := e.echo.EchoUnary(rctx, &echov1.EchoRequest{Message: "charge"})
			if err != nil {
				t.Fatalf("the retry after the restart failed: %v (code %v); want the call's answer", err, status.Code(err))
			}
			if again.GetMessage() != "charge" {
				t.Fatalf("the retry got %v, want the call's answer %v (not the forged record's)", again, first)
			}
			if n := implB.count("charge"); n > 1 {
				t.Fatalf("worker B ran the retry %d times", n)
			}
			if got := b.Stats().OutcomesMalformed; got != 1 {
				t.Fatalf("worker B counted %d malformed outcome records, want the 1 forged", got)
			}
		})
	}
}

// noCommit is a worker's Kafka client that produces as usual but commits
// no offset: a process that dies after its replies and its stored outcome
// were acknowledged, before the request's offset was committed.
type noCommit struct{ kafkaclient.Client }

type noCommitGroup struct{ kafkaclient.GroupReader }

func (n *noCommit) NewGroupReader(cfg kafkaclient.GroupConfig) (kafkaclient.GroupReader, error) {
	gr, err := n.Client.NewGroupReader(cfg)
	if err != nil {
		return nil, err
	}
	return &noCommitGroup{gr}, nil
}

var errNoCommit = errors.New("injected by the test: the process died before committing")

func (g *noCommitGroup) Commit(context.Context, []kafkaclient.TopicPartitionOffset) error {
	return errNoCommit
}

// TestOutcomeAdvOutcomeWrittenOffsetNotCommitted: worker A answers a keyed
// call and its outcome is acknowledged, but the request's offset is never
// committed. Worker B (same group, a new process) reads the request again
// and then gets the caller's retry: both are answered from the stored
// outcome, the handler never runs again.
func TestOutcomeAdvOutcomeWrittenOffsetNotCommitted(t *testing.T) {
	e := newOutcomeEnv(t, false)
	opt := runtime.WorkerOutcomeTopic(outcomeTopic)
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	stored := watchReplies(t, e.kc, e.topic(outcomeTopic))
	implA, implB := &counting{}, &counting{}
	a := e.start(t, &noCommit{e.kc}, implA, opt)
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "idempotency-key", "adv-uncommitted")
	first, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	req := <-requests.recs
	awaitKey(t, stored, header(req, "zilla:correlation-id"))
	_ = a.Close()

	b := e.start(t, e.kc, implB, opt)
	// The request read again by B is answered from the outcome: a
	// duplicate, counted, without a run.
	deadline := time.Now().Add(30 * time.Second)
	for b.Stats().Duplicates < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("worker B answered no duplicate within 30 s (handler runs: %d)", implB.count("charge"))
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	again, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(first, again) {
		t.Fatalf("the retry got %v, want the stored %v", again, first)
	}
	if n := implB.count("charge"); n != 0 {
		t.Fatalf("worker B ran the call %d times, want 0: its outcome was stored", n)
	}
}
