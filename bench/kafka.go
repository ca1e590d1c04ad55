package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/confluent"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/franz"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// kafkaClients are the Kafka clients the runtime supports, each measured
// with its default settings (the ones a user gets). Adding a client to the
// benchmark is one line here.
var kafkaClients = []kafkaClientKind{
	{name: "confluent", module: "github.com/confluentinc/confluent-kafka-go/v2", new: newConfluent},
	{name: "franz", module: "github.com/twmb/franz-go", new: newFranz},
}

type kafkaClientKind struct {
	name   string
	module string // for the versions line of the report
	new    func(brokers string, log *slog.Logger) (kafkaclient.Client, error)
}

func newConfluent(brokers string, log *slog.Logger) (kafkaclient.Client, error) {
	return confluent.New(confluent.Config{"bootstrap.servers": brokers}, confluent.WithLogger(log))
}

func newFranz(brokers string, log *slog.Logger) (kafkaclient.Client, error) {
	return franz.New(franz.WithSeedBrokers(brokers), franz.WithLogger(log))
}

// createTopics creates topics with the given partitions each.
func createTopics(c kafkaclient.Client, partitions int32, topics ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	specs := make([]kafkaclient.TopicSpec, len(topics))
	for i, t := range topics {
		specs[i] = kafkaclient.TopicSpec{Name: t, Partitions: partitions}
	}
	return c.CreateTopics(ctx, specs)
}

// newReaderAtEnd returns a reader of every partition of topic, assigned at
// the end offsets looked up explicitly (never the logical end: that loses
// the first records).
func newReaderAtEnd(c kafkaclient.Client, topic string) (kafkaclient.Reader, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	parts, err := c.Partitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	ends, err := c.Offsets(ctx, topic, parts, kafkaclient.Latest)
	if err != nil {
		return nil, err
	}
	r, err := c.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		return nil, err
	}
	as := make([]kafkaclient.TopicPartitionOffset, 0, len(parts))
	for _, p := range parts {
		as = append(as, kafkaclient.TopicPartitionOffset{Topic: topic, Partition: p, Offset: ends[p]})
	}
	if err := r.Assign(as); err != nil {
		_ = r.Close()
		return nil, err
	}
	return r, nil
}

// twoHop is the floor of one call at a time: on one goroutine, a record
// produced (front client) to topic a, read (back client, as a worker
// would), produced (back client) to topic b, read (front client, as a
// gateway would). No gRPC, no correlation, no goroutine hand-off.
type twoHop struct {
	front, back kafkaclient.Client
	a, b        string
	ra, rb      kafkaclient.Reader
	value       []byte
	mu          sync.Mutex
	failed      atomic.Pointer[error] // a delivery error, reported by the next call
}

// delivered reports produce errors; as in the RPC, nobody waits for the
// delivery report: the record read is the proof.
func (h *twoHop) delivered(_ *kafkaclient.Record, err error) {
	if err != nil {
		h.failed.Store(&err)
	}
}

func newTwoHop(front, back kafkaclient.Client, a, b string, value []byte) (*twoHop, error) {
	ra, err := newReaderAtEnd(back, a)
	if err != nil {
		return nil, err
	}
	rb, err := newReaderAtEnd(front, b)
	if err != nil {
		_ = ra.Close()
		return nil, err
	}
	return &twoHop{front: front, back: back, a: a, b: b, ra: ra, rb: rb, value: value}, nil
}

func (h *twoHop) close() { _ = h.ra.Close(); _ = h.rb.Close() }

// call is one round trip; only one runs at a time (inflight 1).
func (h *twoHop) call(ctx context.Context, _ int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, hop := range [2]struct {
		c     kafkaclient.Client
		topic string
		r     kafkaclient.Reader
	}{{h.front, h.a, h.ra}, {h.back, h.b, h.rb}} {
		hop.c.Produce(&kafkaclient.Record{Topic: hop.topic, Partition: kafkaclient.AnyPartition, Key: []byte("k"), Value: h.value},
			kafkaclient.AcksAll, h.delivered)
		recs, err := hop.r.Poll(ctx)
		if err != nil {
			return fmt.Errorf("two-hop %s: %w", hop.topic, err)
		}
		if len(recs) != 1 {
			return fmt.Errorf("two-hop %s: %d records, want 1", hop.topic, len(recs))
		}
	}
	if p := h.failed.Swap(nil); p != nil {
		return *p
	}
	return nil
}

// pipeline is the floor at any number of calls in flight: callers produce
// to topic a (front client); a relay goroutine reads a and produces each
// record to topic b (back client), as a worker would with no handler; a
// sink goroutine reads b (front client) and wakes the caller named in the
// key. The same records, acks and clients as the RPC, without gRPC, headers,
// correlation maps or one goroutine per call at the relay.
//
// With four, a call is the four records of the wire format (WIRE.md): each
// way a data record and a null end-of-stream record, the caller woken by the
// end-of-stream record: the floor of a call as our RPC writes it, where the
// plain pipeline is that of two records.
type pipeline struct {
	four bool
	// hdrs, with four: each record carries the headers our RPC's records
	// carry (WIRE.md; the bench's calls have a deadline), with values and
	// a key of the same lengths: the floor of the records as the wire
	// format writes them, headers included.
	hdrs        *wireHeaders
	front, back kafkaclient.Client
	a, b        string
	ra, rb      kafkaclient.Reader
	value       []byte
	slots       []chan uint64
	seq         []uint64
	ctx         context.Context
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	log         *slog.Logger
}

func newPipeline(front, back kafkaclient.Client, a, b string, value []byte, maxInflight int, four bool, hdrs *wireHeaders, log *slog.Logger) (*pipeline, error) {
	ra, err := newReaderAtEnd(back, a)
	if err != nil {
		return nil, err
	}
	rb, err := newReaderAtEnd(front, b)
	if err != nil {
		_ = ra.Close()
		return nil, err
	}
	p := &pipeline{four: four, hdrs: hdrs, front: front, back: back, a: a, b: b, ra: ra, rb: rb, value: value,
		slots: make([]chan uint64, maxInflight), seq: make([]uint64, maxInflight), log: log}
	for i := range p.slots {
		p.slots[i] = make(chan uint64, 4)
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(2)
	go p.relay()
	go p.sink()
	return p, nil
}

func (p *pipeline) close() {
	p.cancel()
	p.wg.Wait()
	_ = p.ra.Close()
	_ = p.rb.Close()
}

func (p *pipeline) relay() {
	defer p.wg.Done()
	for {
		recs, err := p.ra.Poll(p.ctx)
		if p.ctx.Err() != nil {
			return
		}
		if err != nil {
			p.log.Warn("floor relay", "error", err)
			continue
		}
		for _, r := range recs {
			var hs []kafkaclient.Header
			if p.hdrs != nil {
				hs = p.hdrs.replyData
				if r.Value == nil {
					hs = p.hdrs.replyEnd
				}
			}
			p.back.Produce(&kafkaclient.Record{Topic: p.b, Partition: kafkaclient.AnyPartition, Key: r.Key, Value: r.Value, Headers: hs},
				kafkaclient.AcksAll, p.delivered)
		}
	}
}

func (p *pipeline) delivered(_ *kafkaclient.Record, err error) {
	if err != nil {
		p.log.Warn("floor produce", "error", err)
	}
}

func (p *pipeline) sink() {
	defer p.wg.Done()
	for {
		recs, err := p.rb.Poll(p.ctx)
		if p.ctx.Err() != nil {
			return
		}
		if err != nil {
			p.log.Warn("floor sink", "error", err)
			continue
		}
		for _, r := range recs {
			if p.four && r.Value != nil {
				continue // the data record: the call ends with the end-of-stream record
			}
			slot, seq, ok := parseKey(r.Key)
			if !ok || slot >= len(p.slots) {
				continue
			}
			select {
			case p.slots[slot] <- seq:
			default: // a late record of a call that timed out
			}
		}
	}
}

// key is "slot:seq": the slot routes the record back at the sink, the
// sequence tells a late record of an earlier call apart. Slots spread over
// the partitions as the RPC's random correlation ids do.
// A key shorter than size is filled up to it with keyPad (a floor whose
// keys are as long as correlation ids).
func key(slot int, seq uint64, size int) []byte {
	b := make([]byte, 0, max(size, 24))
	b = strconv.AppendInt(b, int64(slot), 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, seq, 10)
	for len(b) < size {
		b = append(b, keyPad)
	}
	return b
}

func parseKey(k []byte) (int, uint64, bool) {
	if i := bytes.IndexByte(k, keyPad); i >= 0 {
		k = k[:i]
	}
	s, q, ok := strings.Cut(string(k), ":")
	if !ok {
		return 0, 0, false
	}
	slot, err1 := strconv.Atoi(s)
	seq, err2 := strconv.ParseUint(q, 10, 64)
	return slot, seq, err1 == nil && err2 == nil
}

// call is one round trip of slot (one goroutine per slot).
func (p *pipeline) call(ctx context.Context, slot int) error {
	p.seq[slot]++
	seq := p.seq[slot]
	errc := make(chan error, 2)
	var hs []kafkaclient.Header
	size := 0
	if p.hdrs != nil {
		hs, size = p.hdrs.request, p.hdrs.keyLen
	}
	k := key(slot, seq, size)
	p.front.Produce(&kafkaclient.Record{Topic: p.a, Partition: kafkaclient.AnyPartition, Key: k, Value: p.value, Headers: hs},
		kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
	acks := 1
	if p.four {
		acks = 2
		p.front.Produce(&kafkaclient.Record{Topic: p.a, Partition: kafkaclient.AnyPartition, Key: k, Headers: hs},
			kafkaclient.AcksAll, func(_ *kafkaclient.Record, err error) { errc <- err })
	}
	for {
		select {
		case got := <-p.slots[slot]:
			if got == seq {
				return nil
			}
		case err := <-errc:
			if err != nil {
				return err
			}
			if acks--; acks == 0 {
				errc = nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// keyPad fills a floor's key up to the length of a correlation id.
const keyPad = '#'

// wireHeaders are the headers of the four records of one unary call as our
// RPC writes them (WIRE.md): the request's data and end-of-stream records
// carry the route (service, method, reply topic), the correlation id and
// the caller's deadline; the reply's data record the correlation id and
// the serving worker's id; its end the correlation id and the status.
// Values are fixed (the per-call id travels in the key, as in the other
// floors) but of the lengths a real call's are.
type wireHeaders struct {
	request, replyData, replyEnd []kafkaclient.Header
	keyLen                       int
}

func newWireHeaders(replyTopic string) *wireHeaders {
	names := wire.DefaultNames()
	id := wire.CorrelationID(names, wire.NewUUID(), "example.echo.v1.EchoService", "EchoUnary", replyTopic)
	req := wire.AppendRequest(nil, &names, &wire.Request{
		Route:         wire.AppendRoute(nil, &names, nil, "example.echo.v1.EchoService", "EchoUnary", replyTopic),
		CorrelationID: []byte(id),
		Timeout:       29999 * time.Millisecond,
		HasTimeout:    true,
	})
	data := []kafkaclient.Header{{Key: names.CorrelationID, Value: []byte(id)}, {Key: names.MetaPrefix + wire.ServedByMetadata, Value: []byte(wire.NewUUID())}}
	end := wire.AppendStatus([]kafkaclient.Header{{Key: names.CorrelationID, Value: []byte(id)}}, &names, nil)
	return &wireHeaders{request: req, replyData: data, replyEnd: end, keyLen: len(id)}
}
