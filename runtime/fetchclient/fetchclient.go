// Package fetchclient is for gRPC callers of a fetch method: its Client
// reads the method's server stream and resumes it after each break from the
// event id of the last message it returned. It needs no Kafka client, only a
// gRPC connection to a gateway (or to Zilla).
package fetchclient

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// OpenFunc opens one stream of a fetch method: the generated client's
// method, e.g. echov1.EchoServiceClient.EchoEvents.
type OpenFunc[T any] func(ctx context.Context, in *emptypb.Empty, opts ...grpc.CallOption) (grpc.ServerStreamingClient[T], error)

// Client reads a fetch method's stream and keeps reading it across
// broken connections, gateway restarts and "too slow" endings: after a
// stream ends with a retryable status it opens a new one, after a back-off,
// resuming with the event id of the last message it returned, so that every
// record arrives once, in order within its partition. When the gateway says
// the topic was deleted and created again (its ids name records that no
// longer exist), the client starts again from the new topic's earliest
// record, and EventID returns nil until the next message.
//
//	sub := fetchclient.New(ctx, echoClient.EchoEvents)
//	for {
//		ev, err := sub.Recv()
//		if err != nil {
//			return err // ctx ended, or a status that is not retryable
//		}
//		process(ev)
//		save(sub.EventID()) // to resume from here after a restart
//	}
//
// Recv must be called from one goroutine at a time; EventID, Reconnects and
// Close are safe from any goroutine.
type Client[T any, PT interface {
	*T
	proto.Message
}] struct {
	ctx    context.Context
	cancel context.CancelFunc
	open   OpenFunc[T]
	cfg    config

	stream  grpc.ServerStreamingClient[T]
	stop    context.CancelFunc // ends stream
	failed  int                // consecutive failed attempts
	lastErr error

	mu         sync.Mutex
	last       []byte
	reconnects int
}

// Option configures a Client.
type Option interface{ apply(*config) }

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	resume     []byte
	field      int32
	metadata   string
	minBackoff time.Duration
	maxBackoff time.Duration
	retry      []codes.Code
	callOpts   []grpc.CallOption
	onRetry    func(attempt int, err error)
}

// WithResume starts the stream after the message whose event id is id
// (as EventID returned it, or as saved from a previous run). Default: no
// id, which starts at the topic's earliest retained record.
func WithResume(id []byte) Option {
	return optionFunc(func(c *config) { c.resume = slices.Clone(id) })
}

// WithEventIDField sets the unknown field number carrying the event id,
// as the method's options set it. Default wire.DefaultEventIDField (32767).
func WithEventIDField(n int32) Option {
	return optionFunc(func(c *config) { c.field = n })
}

// WithResumeMetadata sets the metadata name the id is sent in, as the
// method's options set it. Default wire.DefaultResumeMetadata
// ("last-message-id"); the id travels as base64url text, which Zilla
// accepts too.
func WithResumeMetadata(name string) Option {
	return optionFunc(func(c *config) { c.metadata = name })
}

// WithBackoff sets the wait before each new stream after a failure:
// first, then doubling up to max, each with random jitter of up to a half
// more; it starts again from first once a message arrives. Defaults 100 ms
// and 10 s.
func WithBackoff(first, max time.Duration) Option {
	return optionFunc(func(c *config) { c.minBackoff, c.maxBackoff = first, max })
}

// WithRetryCodes sets the status codes after which the client opens a
// new stream. Default UNAVAILABLE (a broken connection, a gateway shutting
// down, a caller too slow) and ABORTED. Not RESOURCE_EXHAUSTED: a fetch
// gateway never answers it, and gRPC does for a message larger than the
// caller's receive limit, which the new stream would meet again at once. A
// stream that ends without an error (a fetch never does on its own) is
// always resumed.
func WithRetryCodes(codes ...codes.Code) Option {
	return optionFunc(func(c *config) { c.retry = slices.Clone(codes) })
}

// WithCallOptions passes opts to every stream's call (for example
// grpc.WaitForReady(true)).
func WithCallOptions(opts ...grpc.CallOption) Option {
	return optionFunc(func(c *config) { c.callOpts = append(c.callOpts, opts...) })
}

// WithRetryHook calls fn (on the goroutine calling Recv) each time a
// stream failed or could not be opened and the client is about to try
// again, with the number of consecutive failures and the error. Default
// none.
func WithRetryHook(fn func(attempt int, err error)) Option {
	return optionFunc(func(c *config) { c.onRetry = fn })
}

// New returns a client of the fetch method that open opens,
// reading until ctx ends or Close is called. It opens no stream before the
// first Recv.
func New[T any, PT interface {
	*T
	proto.Message
}](ctx context.Context, open OpenFunc[T], opts ...Option) *Client[T, PT] {
	cfg := config{
		field:      wire.DefaultEventIDField,
		metadata:   wire.DefaultResumeMetadata,
		minBackoff: 100 * time.Millisecond,
		maxBackoff: 10 * time.Second,
		retry:      []codes.Code{codes.Unavailable, codes.Aborted},
	}
	for _, o := range opts {
		o.apply(&cfg)
	}
	cfg.minBackoff = max(cfg.minBackoff, time.Millisecond)
	cfg.maxBackoff = max(cfg.maxBackoff, cfg.minBackoff)
	c := &Client[T, PT]{open: open, cfg: cfg, last: cfg.resume}
	c.ctx, c.cancel = context.WithCancel(ctx)
	return c
}

// Recv returns the next message. It opens a stream when none is open and,
// when a stream fails with a retryable status, opens another after the
// back-off, resuming after the last message returned; those failures are
// not returned. It returns ctx's error once ctx ended or Close was called,
// and any other error as the stream reported it.
func (c *Client[T, PT]) Recv() (PT, error) {
	for {
		if err := c.ctx.Err(); err != nil {
			c.closeStream()
			return nil, err
		}
		if c.stream == nil {
			if c.failed > 0 {
				if err := c.wait(); err != nil {
					return nil, err
				}
			}
			if err := c.connect(); err != nil {
				if c.ctx.Err() != nil {
					return nil, c.ctx.Err()
				}
				if !c.retryable(err) {
					return nil, err
				}
				c.retrying(err)
				continue
			}
		}
		msg, err := c.stream.Recv()
		if err == nil {
			pm := PT(msg)
			id, ok := wire.EventIDFromMessage(pm, c.cfg.field)
			if !ok {
				c.closeStream()
				return nil, status.Errorf(codes.Internal, "fetch message carries no event id in field %d: is the event id field set as on the gateway?", c.cfg.field)
			}
			c.failed = 0
			c.mu.Lock()
			c.last = id
			c.mu.Unlock()
			return pm, nil
		}
		c.closeStream()
		if c.ctx.Err() != nil {
			return nil, c.ctx.Err()
		}
		if err != io.EOF && !c.retryable(err) {
			return nil, err
		}
		if err == io.EOF {
			err = status.Error(codes.Unavailable, "the stream ended without a status")
		}
		c.mu.Lock()
		c.reconnects++
		if restarted(err) {
			// The ids name records of a log that no longer exists: the
			// new log from its start, as the gateway says.
			c.last = nil
		}
		c.mu.Unlock()
		c.retrying(err)
	}
}

// connect opens a stream resuming after the last id.
func (c *Client[T, PT]) connect() error {
	ctx, stop := context.WithCancel(c.ctx)
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	if last != nil {
		ctx = metadata.AppendToOutgoingContext(ctx, c.cfg.metadata, base64.RawURLEncoding.EncodeToString(last))
	}
	s, err := c.open(ctx, &emptypb.Empty{}, c.cfg.callOpts...)
	if err != nil {
		stop()
		return err
	}
	c.stream, c.stop = s, stop
	return nil
}

func (c *Client[T, PT]) closeStream() {
	if c.stop != nil {
		c.stop()
	}
	c.stream, c.stop = nil, nil
}

// restarted reports whether err ends a stream because the topic's log
// restarted (deleted and created again): its ErrorInfo detail has
// wire.FetchRestartedReason.
func restarted(err error) bool {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == wire.FetchRestartedReason && info.GetDomain() == wire.ErrorDomain {
			return true
		}
	}
	return false
}

func (c *Client[T, PT]) retryable(err error) bool {
	return slices.Contains(c.cfg.retry, status.Code(err))
}

func (c *Client[T, PT]) retrying(err error) {
	c.failed++
	c.lastErr = err
	if c.cfg.onRetry != nil {
		c.cfg.onRetry(c.failed, err)
	}
}

// wait sleeps the back-off of the current failure count, or until ctx ends.
func (c *Client[T, PT]) wait() error {
	d := c.cfg.minBackoff
	for i := 1; i < c.failed && d < c.cfg.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.cfg.maxBackoff)
	d += time.Duration(rand.Int64N(int64(d)/2 + 1))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-c.ctx.Done():
		return fmt.Errorf("%w (while waiting to resume after: %v)", c.ctx.Err(), c.lastErr)
	}
}

// EventID returns the event id of the last message Recv returned (or the
// id given to WithResume before the first), nil before any. Saved, it
// resumes the stream there with WithResume, or as the base64url text
// of metadata "last-message-id" from any client.
func (c *Client[T, PT]) EventID() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.last)
}

// Reconnects returns how many times a stream that had been open failed and
// the client resumed.
func (c *Client[T, PT]) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects
}

// Close ends the stream; Recv then returns context.Canceled.
func (c *Client[T, PT]) Close() { c.cancel() }
