package runtime

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// replyRouter reads one reply topic and hands each record to the call in
// flight with the record's correlation id.
type replyRouter struct {
	g       *Gateway
	topic   string
	reader  kafkaclient.Reader
	mu      sync.RWMutex
	pending map[string]*gwCall
	dropped atomic.Uint64
}

// startReplyRouter assigns a reader to every partition of topic at the
// partition's current end offset, looked up explicitly: assigning at the
// logical end would race with the first request and lose its reply.
func startReplyRouter(ctx context.Context, g *Gateway, topic string) (*replyRouter, error) {
	parts, err := g.client.Partitions(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("reply topic %q: %w", topic, err)
	}
	ends, err := g.client.Offsets(ctx, topic, parts, kafkaclient.Latest)
	if err != nil {
		return nil, fmt.Errorf("reply topic %q: looking up end offsets: %w", topic, err)
	}
	reader, err := g.client.NewReader(kafkaclient.ReaderConfig{})
	if err != nil {
		return nil, fmt.Errorf("reply topic %q: %w", topic, err)
	}
	assign := make([]kafkaclient.TopicPartitionOffset, 0, len(parts))
	for _, p := range parts {
		assign = append(assign, kafkaclient.TopicPartitionOffset{Topic: topic, Partition: p, Offset: ends[p]})
	}
	if err := reader.Assign(assign); err != nil {
		_ = reader.Close()
		return nil, fmt.Errorf("reply topic %q: assigning partitions: %w", topic, err)
	}
	return &replyRouter{g: g, topic: topic, reader: reader, pending: map[string]*gwCall{}}, nil
}

// add registers c; false if a call with the same id is already in flight.
func (r *replyRouter) add(c *gwCall) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.pending[c.id]; dup {
		return false
	}
	r.pending[c.id] = c
	return true
}

func (r *replyRouter) remove(c *gwCall) {
	r.mu.Lock()
	if r.pending[c.id] == c {
		delete(r.pending, c.id)
	}
	r.mu.Unlock()
}

// run dispatches records until ctx ends.
func (r *replyRouter) run(ctx context.Context) {
	idHeader := r.g.cfg.names.CorrelationID
	backoff := 10 * time.Millisecond
	for {
		recs, err := r.reader.Poll(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.g.cfg.logger.Warn("kafkarpc: reading replies", "topic", r.topic, "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		r.mu.RLock()
		for _, rec := range recs {
			id, _ := headerValue(rec.Headers, idHeader)
			if c := r.pending[string(id)]; c != nil {
				c.deliver(rec)
			} else {
				r.dropped.Add(1)
			}
		}
		r.mu.RUnlock()
	}
}

func (r *replyRouter) close() error { return r.reader.Close() }
