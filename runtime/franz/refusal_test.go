package franz

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestGroupReaderRefusalBesideRecords: a group member reading two topics,
// one of which the client's principal may not read, while the other has
// records. kgo reports the refusal at each fetch, but each fetch carried
// the busy topic's records, and Poll dropped a refusal beside records: a
// worker reading a busy request topic beside a refused one heard of the
// refusal only once the busy topic had nothing more to read (under
// steady load, never). The next Poll returns it.
func TestGroupReaderRefusalBesideRecords(t *testing.T) {
	cl, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// One record batch per fetch: each fetch carries one of the busy
	// topic's records, beside the refusal.
	c, err := New(WithSeedBrokers(cl.ListenAddrs()...), WithLogger(slog.New(slog.DiscardHandler)),
		WithConsumerOpts(kgo.FetchMaxPartitionBytes(1)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A bound that detects a Poll waiting for records forever.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const busy, refused = "busy", "refused"
	if err := c.CreateTopics(ctx, []kafkaclient.TopicSpec{{Name: busy, Partitions: 1}, {Name: refused, Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	for range n { // one batch each
		done := make(chan error, 1)
		c.Produce(&kafkaclient.Record{Topic: busy, Partition: 0, Value: []byte("x")}, kafkaclient.AcksAll,
			func(_ *kafkaclient.Record, err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	h := cl.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: refused, Err: kerr.TopicAuthorizationFailed, Count: -1})
	defer h.Remove()
	g, err := c.NewGroupReader(kafkaclient.GroupConfig{GroupID: "g", Topics: []string{busy, refused}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	read := 0
	for read < n {
		recs, err := g.Poll(ctx)
		if errors.Is(err, kafkaclient.ErrNotAuthorized) {
			if !strings.Contains(err.Error(), refused) {
				t.Errorf("the refusal does not name %s: %v", refused, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Poll after %d of %d records: %v", read, n, err)
		}
		read += len(recs)
	}
	t.Fatalf("the refusal to read %s was not returned while %s had records (%d read)", refused, busy, read)
}
