package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// broadcast is the plain gRPC peer of the fanout (fetch): a gRPC server on
// 127.0.0.1 whose EchoEvents sends every event published in memory to every
// caller, and that many callers streaming it over one client connection, as
// the fetch's callers do through the gateway. The events are the fetch's:
// EchoEvent{message} with an event id of the topic's three partitions in
// unknown field 32767, as the gateway writes it. No Kafka: it is the most a
// gRPC server streaming the same events to the same callers carries here.
type broadcast struct {
	env       *grpcEnv
	srv       *broadcastServer
	message   string
	counts    []atomic.Int64
	firstErr  atomic.Pointer[error]
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	published int
	offset    int64
}

// broadcastServer keeps one buffered channel per caller; publish puts each
// event on every caller's channel, and each caller's handler sends what its
// channel holds.
type broadcastServer struct {
	echov1.UnimplementedEchoServiceServer
	mu         sync.Mutex
	subs       map[chan *echov1.EchoEvent]struct{}
	buffer     int
	registered chan struct{}
}

func (s *broadcastServer) EchoEvents(_ *emptypb.Empty, st grpc.ServerStreamingServer[echov1.EchoEvent]) error {
	ch := make(chan *echov1.EchoEvent, s.buffer)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}()
	s.registered <- struct{}{}
	ctx := st.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-ch:
			if err := st.Send(ev); err != nil {
				return err
			}
		}
	}
}

// newBroadcast starts the server and callers streaming from it, and waits
// (at most 30 s) until the server has every one of them.
func newBroadcast(callers, buffer int, message string) (*broadcast, error) {
	srv := &broadcastServer{subs: map[chan *echov1.EchoEvent]struct{}{}, buffer: buffer, registered: make(chan struct{}, callers)}
	env, err := newGRPCEnv(func(s *grpc.Server) error { echov1.RegisterEchoServiceServer(s, srv); return nil })
	if err != nil {
		return nil, err
	}
	b := &broadcast{env: env, srv: srv, message: message, counts: make([]atomic.Int64, callers)}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	for i := range callers {
		st, err := env.echo.EchoEvents(ctx, &emptypb.Empty{})
		if err != nil {
			b.close()
			return nil, fmt.Errorf("broadcast caller %d: %w", i, err)
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for {
				if _, err := st.Recv(); err != nil {
					if ctx.Err() == nil {
						b.firstErr.CompareAndSwap(nil, &err)
					}
					return
				}
				b.counts[i].Add(1)
			}
		}()
	}
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	for range callers {
		select {
		case <-srv.registered:
		case <-t.C:
			b.close()
			return nil, fmt.Errorf("broadcast: the server did not get all %d callers within 30 s", callers)
		}
	}
	return b, nil
}

func (b *broadcast) close() {
	b.cancel()
	b.env.close()
	b.wg.Wait()
}

// event is the n-th event published: the fetch's event with an id of three
// partitions, built as one would from a record.
func (b *broadcast) event() (*echov1.EchoEvent, error) {
	b.offset++
	id := wire.EventID{{Partition: 0, Offset: b.offset}, {Partition: 1, Offset: b.offset}, {Partition: 2, Offset: b.offset}}.Encode()
	raw, err := proto.Marshal(&echov1.EchoEvent{Message: b.message})
	if err != nil {
		return nil, err
	}
	raw = protowire.AppendTag(raw, 32767, protowire.BytesType)
	raw = protowire.AppendBytes(raw, id)
	ev := &echov1.EchoEvent{}
	return ev, proto.Unmarshal(raw, ev)
}

// publish puts n new events on every caller's channel, in order, and waits
// until every caller received them all, bounded by limit.
func (b *broadcast) publish(ctx context.Context, n int, limit time.Duration) error {
	b.srv.mu.Lock()
	subs := make([]chan *echov1.EchoEvent, 0, len(b.srv.subs))
	for ch := range b.srv.subs {
		subs = append(subs, ch)
	}
	b.srv.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for range n {
		ev, err := b.event()
		if err != nil {
			return err
		}
		for _, ch := range subs {
			select {
			case ch <- ev:
			case <-pctx.Done():
				return fmt.Errorf("broadcast: publishing: %w", pctx.Err())
			}
		}
	}
	b.published += n
	deadline := time.Now().Add(limit)
	for i := range b.counts {
		for b.counts[i].Load() < int64(b.published) {
			if p := b.firstErr.Load(); p != nil {
				return *p
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("broadcast caller %d received %d of %d events", i, b.counts[i].Load(), b.published)
			}
			time.Sleep(50 * time.Microsecond) // as the fetch's wait, so both pay the same polling
		}
	}
	return nil
}
