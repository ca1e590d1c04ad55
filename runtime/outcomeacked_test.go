package runtime

import (
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// refusingOutcomes is a replyWriter whose Kafka client fails an outcome
// record at once, its delivery callback run inside sendOutcome (a client may
// run it on any goroutine, at any time after Produce).
type refusingOutcomes struct{ directWriter }

func (refusingOutcomes) sendOutcome(c *call, rec *kafkaclient.Record) {
	c.sent.unacked.Add(1)
	c.outcomeAcked(rec, errors.New("refused by the test"))
}

// TestOutcomeRefusedAtOnceStaysInMemory: an outcome record that Kafka
// refuses before outcomeLog.write returned is not counted as in the outcome
// topic. It was: write marked it sent after handing it over, over the
// callback's "not sent", so the reply store would have forgotten it when its
// partition moved (as the partition's next owner has it), and a repeat then
// ran the handler again. CI's race detector saw the two writes race.
func TestOutcomeRefusedAtOnceStaysInMemory(t *testing.T) {
	w := NewWorker(nil, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	w.writer = refusingOutcomes{}
	o := newOutcomeLog(w, "outcomes")
	o.parts[0] = true
	c := &call{w: w, tp: kafkaclient.TopicPartition{Topic: "requests", Partition: 0}, id: "k", idb: []byte("k"),
		stored: []kafkaclient.Record{{Value: []byte("reply")}}}
	o.write(c, status.New(codes.OK, ""), time.Now())
	c.sent.unacked.Wait()
	if c.outcomeSent {
		t.Fatal("an outcome Kafka refused is counted as in the outcome topic")
	}
	if n := w.stats.outcomesUnwritten.Load(); n != 1 {
		t.Fatalf("outcomes unwritten: %d, want 1", n)
	}
}
