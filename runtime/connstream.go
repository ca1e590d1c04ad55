package runtime

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// connStream is a streaming call of a ClientConn, as the caller's
// grpc.ClientStream: the caller's side of a gwCall, or of a fetch, whose
// other side a goroutine of its own runs as a gateway's handler would.
// Replies cross from that goroutine to RecvMsg on an unbuffered channel, so
// that once done is closed no reply is left in flight.
type connStream struct {
	cc     *ClientConn
	m      *MethodSpec
	ctx    context.Context // the caller's, cancelled when the call ends
	cancel context.CancelFunc
	co     callOptions

	c       *gwCall                  // request/reply methods
	recs    chan *kafkaclient.Record // server-streamed replies, and the one response of a call that does not stream them (handHeld)
	verdict chan error               // RecvMsg's decoding of that one response (capacity 1)

	fetchMD   metadata.MD // fetch methods: the caller's metadata
	fetchErr  error       // a fetched record RecvMsg could not decode: the fetch's status (under mu)
	raw       chan []byte // fetched messages, value and event id field
	prevRaw   []byte      // the last fetched message RecvMsg decoded, to name the next one that fails (RecvMsg's own)
	fetchOnce sync.Once
	// unwatch (under mu) ends watchUnstarted's wait for the ClientConn's
	// Close, once the fetch ran; fetchLate: the fetch was started by the
	// end of the caller's context or by Close, not by the caller.
	unwatch   func() bool
	fetchLate atomic.Bool

	sendMu sync.Mutex
	closed bool // CloseSend was called, or the one request of oneRequest sent

	// oneRequest: the method, or the caller's grpc.StreamDesc, takes one
	// request: as in grpc-go, the first SendMsg also half-closes.
	oneRequest bool

	mu           sync.Mutex
	header       metadata.MD
	headerSet    bool
	headerClosed bool
	headerReady  chan struct{} // closed when the header arrived or the call ended
	trailer      metadata.MD
	held         *kafkaclient.Record // the one response of a call that does not stream them
	st           error               // the call's final status, set before done closes
	ended        bool                // finish began: the trailer is complete
	done         chan struct{}
	over         chan struct{} // closed when the worker's end (or the call's failure) is in, before done (request/reply methods)
	ask          chan struct{} // RecvMsg asks run to end the call once its replies are all taken (request/reply methods)

	// RecvMsg's own (one goroutine at a time, as grpc.ClientStream says)
	taken   bool
	recvErr error
}

var _ grpc.ClientStream = (*connStream)(nil)

// run waits for the call's replies and ends it. A reply RecvMsg could not
// decode (decoded) is the call's status, as in grpc-go, rather than the
// cancel with which decoded stops the wait.
//
// As in grpc-go, the call ends (grpc.OnFinish runs, Trailer() is complete,
// the call's metrics and span end) inside the RecvMsg that returns its end,
// not as soon as the worker's end arrived: run waits for that RecvMsg
// (awaitRecvEnd), so that OnFinish never runs while the caller still
// handles the last message.
func (s *connStream) run() {
	err := s.await()
	if failed := s.c.failure(); failed != nil {
		err = failed
	}
	if err == nil && s.held != nil {
		err = s.handHeld()
	} else {
		err = s.awaitRecvEnd(err)
	}
	if failed := s.c.failure(); failed != nil {
		err = failed // RecvMsg could not decode a reply (decoded), or SendMsg failed (sendFailed)
	}
	s.c.end(err)
	s.finish(err)
}

// awaitRecvEnd waits, once the call's replies are all in (err its status),
// for the RecvMsg that returns the end. Header() returns meanwhile, and
// SendMsg returns io.EOF. A caller that gives up first ends the call with
// its context's error, a connection closed meanwhile with CANCELLED, as
// grpc-go's streams end.
func (s *connStream) awaitRecvEnd(err error) error {
	s.repliesIn()
	select {
	case <-s.ask:
		return err
	case <-s.ctx.Done():
		return status.FromContextError(s.ctx.Err()).Err()
	case <-s.c.g.ctx.Done():
		return status.Error(s.c.g.closedCode(), s.c.g.closingMessage())
	}
}

// repliesIn tells Header() and SendMsg that the call's replies are all
// in: no header comes later (a oneway call has none), so Header() does not
// wait for the RecvMsg that takes the end, and SendMsg returns io.EOF.
func (s *connStream) repliesIn() {
	s.mu.Lock()
	if !s.headerClosed {
		s.headerClosed = true
		close(s.headerReady)
	}
	s.mu.Unlock()
	close(s.over)
}

// handHeld gives the one response of a call that does not stream them to
// RecvMsg and returns the call's status once RecvMsg decoded it: INTERNAL
// when it could not, as in grpc-go, which decodes that response, and ends
// the call, inside the RecvMsg that returns it (OnFinish gets the INTERNAL
// RecvMsg returns). A caller that gives up before reading it ends the call
// with its context's error, a connection closed meanwhile with CANCELLED,
// as grpc-go's streams end.
func (s *connStream) handHeld() error {
	s.repliesIn()
	select {
	case s.recs <- s.held:
		return <-s.verdict
	case <-s.ctx.Done():
		return status.FromContextError(s.ctx.Err()).Err()
	case <-s.c.g.ctx.Done():
		return status.Error(s.c.g.closedCode(), s.c.g.closingMessage())
	}
}

func (s *connStream) await() error {
	c := s.c
	if c.rp.route.Oneway {
		if err := c.awaitRequestEnd(s.ctx); err != nil {
			return err
		}
		if err := c.awaitAcks(s.ctx); err != nil {
			return err
		}
		s.held = &kafkaclient.Record{} // an empty response, as through a gateway
		return nil
	}
	serverStreams := s.m.Kind.serverStreams()
	first := true
	st := c.awaitReplies(s.ctx, s.setHeader, func(rec *kafkaclient.Record) error {
		if first {
			// The worker's response headers came with its first reply
			// (openReply set them, before this); a reply without any still
			// means the headers are known, and empty: Header() returns, as
			// grpc-go's does once the server's header frame arrived.
			first = false
			s.setHeader(metadata.MD{})
		}
		if serverStreams {
			select {
			case s.recs <- rec:
				return nil
			case <-s.ctx.Done():
				return status.FromContextError(s.ctx.Err()).Err()
			case <-c.g.ctx.Done():
				// A caller that stopped reading, whose context never ends:
				// Close ends its call, as grpc-go's does.
				return status.Error(c.g.closedCode(), c.g.closingMessage())
			}
		}
		if s.held != nil {
			return status.Errorf(codes.Internal, "%s: worker sent more than one response to a %s call (%s)", s.m.FullMethod(), s.m.Kind, recordPlace(rec))
		}
		s.held = rec // delivered once the end-of-stream record confirmed it
		return nil
	}, s.setTrailer)
	if st != nil {
		return st
	}
	if !serverStreams && s.held == nil {
		return status.Errorf(codes.Internal, "%s: worker ended the call without a response", s.m.FullMethod())
	}
	return nil
}

// startFetch runs the fetch, with in as its request (nil when the caller
// sent none).
func (s *connStream) startFetch(in proto.Message) {
	go func() {
		err := s.cc.g.fanout.serveFetch(s.m, s.fetchMD, in, fetchPipe{s}, rawCarrier)
		s.mu.Lock()
		unwatch := s.unwatch
		s.mu.Unlock()
		unwatch()
		s.finish(err)
	}()
}

// watchUnstarted ends a fetch the caller has not started yet (no SendMsg,
// RecvMsg or CloseSend) when its context ends or the ClientConn closes, as
// grpc-go ends any stream then: Header returns, grpc.OnFinish runs, and the
// caller's next RecvMsg returns the status. Started then, the fetch ends at
// once (serveFetch sees the context or the Close).
func (s *connStream) watchUnstarted() {
	start := func() {
		s.fetchOnce.Do(func() {
			s.fetchLate.Store(true)
			s.startFetch(nil)
		})
	}
	// Both under mu: start may run at once (on a goroutine of its own), if
	// the context ended or Close began meanwhile, and its fetch reads
	// unwatch once it ended.
	s.mu.Lock()
	context.AfterFunc(s.ctx, start) // its registration goes with s.ctx, which finish cancels
	s.unwatch = context.AfterFunc(s.cc.g.ctx, start)
	s.mu.Unlock()
}

// rawCarrier carries a fetched message's bytes to fetchPipe.SendMsg as
// unknown fields, never decoded.
func rawCarrier(raw []byte) proto.Message {
	m := new(emptypb.Empty)
	m.ProtoReflect().SetUnknown(raw)
	return m
}

func (s *connStream) setHeader(md metadata.MD) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.headerSet || s.headerClosed {
		return
	}
	s.header, s.headerSet, s.headerClosed = md, true, true
	close(s.headerReady)
	s.co.header(md)
}

func (s *connStream) setTrailer(md metadata.MD) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trailer = metadata.Join(s.trailer, md)
	s.co.trailer(s.trailer)
}

// finish records the call's final status and releases its waiters. The
// grpc.OnFinish callbacks run before RecvMsg can return the end, as in
// grpc-go, which runs them inside that RecvMsg: what they record is in
// place once the caller sees the end.
func (s *connStream) finish(err error) {
	s.mu.Lock()
	s.st, s.ended = err, true
	if d := statusDetailsTrailer(err); d != nil {
		s.trailer = metadata.Join(s.trailer, d)
		s.co.trailer(s.trailer)
	}
	if !s.headerClosed {
		s.headerClosed = true
		close(s.headerReady)
	}
	s.co.after()
	s.mu.Unlock()
	s.co.finish(err)
	// Cancelled before done is closed: a RecvMsg that returns the end
	// finds the stream's context done, as grpc-go's (it returned before
	// the cancel at times).
	s.cancel()
	close(s.done)
}

// Header returns the response metadata of the worker's first reply, waiting
// for it; nil, nil when the call ended without one, failed or cancelled, as
// grpc.ClientStream says and grpc-go does: the caller learns the call's
// status from RecvMsg.
func (s *connStream) Header() (metadata.MD, error) {
	select {
	case <-s.headerReady:
	case <-s.ctx.Done():
		// finish cancels ctx once headerReady is closed: when both are
		// ready, the headers are the answer.
		select {
		case <-s.headerReady:
		default:
			return nil, nil
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.headerSet {
		return s.header, nil
	}
	return nil, nil
}

// Trailer returns the worker's trailing metadata once the call ended
// (RecvMsg returned an error or io.EOF, or inside grpc.OnFinish); nil
// before.
func (s *connStream) Trailer() metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		return nil
	}
	return s.trailer
}

// CloseSend ends the request stream (the end-of-stream record).
func (s *connStream) CloseSend() error {
	if s.m.Fetch != nil {
		s.fetchOnce.Do(func() { s.startFetch(nil) })
		return nil
	}
	s.sendMu.Lock()
	s.closed = true
	s.sendMu.Unlock()
	s.sendEnd()
	return nil
}

// sendEnd produces the request's end-of-stream record (once; gwCall.sendEnd
// makes later ones no-ops). A caller that cancelled before it half-closed
// ends the stream with a cancel, not a normal end that could reach the
// worker before the cancel does: its handler must not take the messages it
// read for the whole stream. Not once the replies ended: the call is over.
func (s *connStream) sendEnd() {
	s.c.sendEnd(s.ctx.Err() != nil && !s.c.over())
}

// Context returns the call's context.
func (s *connStream) Context() context.Context { return s.ctx }

// SendMsg produces one request message. Once the call ended it returns
// io.EOF, and RecvMsg the call's status. After CloseSend it returns
// INTERNAL and, as in grpc-go, ends the call with it (sendFailed).
func (s *connStream) SendMsg(m any) error {
	in, ok := m.(proto.Message)
	if !ok {
		err := status.Errorf(codes.Internal, "%s: request is a %T, not a proto message", s.m.FullMethod(), m)
		if s.c == nil {
			return s.failFetch(err) // as grpc-go, the call ends with it
		}
		return s.sendFailed(err)
	}
	if s.m.Fetch != nil {
		first := false
		s.fetchOnce.Do(func() { first = true; s.startFetch(in) })
		if !first && s.fetchLate.Load() {
			return io.EOF // ended before its request: RecvMsg returns why
		}
		if !first {
			// As grpc-go's second SendMsg of a method taking one request:
			// the call ends with it.
			return s.failFetch(status.Errorf(codes.Internal, "%s: a fetch takes one request, sent before it is read", s.m.FullMethod()))
		}
		return nil
	}
	s.sendMu.Lock()
	closed := s.closed
	s.closed = s.closed || s.oneRequest
	s.sendMu.Unlock()
	if closed {
		// Before looking at the call's end, as grpc-go does: after
		// CloseSend (CloseAndRecv) this is the caller's mistake, not the end.
		return s.sendFailed(status.Errorf(codes.Internal, "%s: SendMsg called after CloseSend", s.m.FullMethod()))
	}
	select {
	case <-s.over: // the call ended, or ends once RecvMsg takes its end
		return io.EOF
	default:
	}
	b, err := proto.Marshal(in)
	if err != nil {
		return s.sendFailed(status.Errorf(codes.Internal, "%s: encoding request: %v", s.m.FullMethod(), err))
	}
	if err := s.co.checkSend(len(b)); err != nil {
		return s.sendFailed(err)
	}
	s.c.sendData(b)
	if s.oneRequest {
		s.sendEnd()
	}
	return nil
}

// sendFailed ends the call with err, the error SendMsg returns, and returns
// err once the call ended: grpc-go ends a stream whose SendMsg fails other
// than with io.EOF (the caller's next RecvMsg returns err, the worker's
// handler is cancelled, grpc.OnFinish gets err). A call that ended already
// keeps its status; one whose worker ended but whose end RecvMsg has not
// returned yet ends with err, as in grpc-go.
func (s *connStream) sendFailed(err error) error {
	select {
	case <-s.done:
		return err
	default:
	}
	s.c.fail(err)
	s.cancel()
	<-s.done
	return err
}

// RecvMsg receives the next response into m: io.EOF after the last one of
// a call that ended OK, the call's status error if it failed.
func (s *connStream) RecvMsg(m any) error {
	if s.recvErr != nil {
		return s.recvErr
	}
	out, ok := m.(proto.Message)
	if !ok {
		err := status.Errorf(codes.Internal, "%s: reply is a %T, not a proto message", s.m.FullMethod(), m)
		return s.decoded(err) // the call ends with it, as in grpc-go
	}
	if s.m.Fetch != nil {
		s.fetchOnce.Do(func() { s.startFetch(nil) })
	}
	select {
	case rec := <-s.recs:
		if s.verdict == nil {
			return s.decoded(s.co.decode(s.m, rec, out))
		}
		// The one response (handHeld): the call ends with its decoding.
		s.taken = true
		err := s.co.decode(s.m, rec, out)
		s.verdict <- err
		<-s.done
		if err != nil {
			s.recvErr = err
		}
		return err
	case raw := <-s.raw:
		if err := s.co.checkRecv(len(raw)); err != nil {
			return s.decoded(status.Errorf(codes.ResourceExhausted, "%s: record %sof %s: %s%s",
				s.m.FullMethod(), s.fetchedPlace(raw), s.cc.g.cfg.topic(s.m.Fetch.Topic), status.Convert(err).Message(), s.skipHint(raw)))
		}
		if err := proto.Unmarshal(raw, out); err != nil {
			return s.decoded(status.Errorf(codes.Internal, "%s: record %sof %s is not a valid %s: %v%s",
				s.m.FullMethod(), s.fetchedPlace(raw), s.cc.g.cfg.topic(s.m.Fetch.Topic), out.ProtoReflect().Descriptor().FullName(), err, s.skipHint(raw)))
		}
		s.prevRaw = raw
		return nil
	case s.ask <- struct{}{}: // the replies are all taken: run ends the call
		<-s.done
	case <-s.done:
	}
	if s.st != nil {
		s.recvErr = s.st
		return s.st
	}
	if s.held != nil && !s.taken {
		s.taken = true
		return s.decoded(s.co.decode(s.m, s.held, out))
	}
	s.recvErr = io.EOF
	return io.EOF
}

// decoded ends the call when a response could not be decoded, and returns
// once it ended (its OnFinish callbacks ran, as in grpc-go).
func (s *connStream) decoded(err error) error {
	if err == nil {
		return nil
	}
	s.recvErr = err
	if s.c == nil {
		return s.failFetch(err)
	}
	s.c.fail(err)
	s.cancel()
	<-s.done
	return err
}

// failFetch ends a fetch with err as its status (fetchFailure), unless it
// ended already, and returns err once it ended. A fetch not started yet
// starts on the cancel (watchUnstarted), and ends at once.
func (s *connStream) failFetch(err error) error {
	s.mu.Lock()
	if s.fetchErr == nil && !s.ended {
		s.fetchErr = err
	}
	s.mu.Unlock()
	s.cancel()
	<-s.done
	return err
}

// fetchPipe is the grpc.ServerStream a ClientConn's fetch is served on: what
// the gateway would send to its gRPC caller goes to the connStream.
type fetchPipe struct{ s *connStream }

func (p fetchPipe) SetHeader(md metadata.MD) error  { p.s.setHeader(md); return nil }
func (p fetchPipe) SendHeader(md metadata.MD) error { p.s.setHeader(md); return nil }
func (p fetchPipe) SetTrailer(md metadata.MD)       { p.s.setTrailer(md) }
func (p fetchPipe) Context() context.Context        { return p.s.ctx }
func (p fetchPipe) RecvMsg(any) error               { return io.EOF }

// fetchFailure is the status of a fetch RecvMsg stopped because it could
// not decode a record (decoded), or nil.
func (p fetchPipe) fetchFailure() error {
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	return p.s.fetchErr
}

// SendMsg hands a fetched message to the caller's RecvMsg, waiting for it;
// errFetchClosed once the ClientConn closes, so that a caller that stopped
// reading does not keep the fetch (its goroutine, its place in the hub)
// past Close.
func (p fetchPipe) SendMsg(m any) error {
	raw := m.(proto.Message).ProtoReflect().GetUnknown()
	select {
	case p.s.raw <- raw:
		return nil
	case <-p.s.ctx.Done():
		return p.s.ctx.Err()
	case <-p.s.cc.g.ctx.Done():
		return errFetchClosed
	}
}

// fetchedID returns the event id a fetched message carries, or nil.
func (s *connStream) fetchedID(raw []byte) wire.EventID {
	field := s.m.Fetch.EventIDField
	if field == 0 {
		field = wire.DefaultEventIDField
	}
	b, ok := wire.EventIDFromMessage(rawCarrier(raw), field)
	if !ok {
		return nil
	}
	id, err := wire.DecodeEventID(b)
	if err != nil {
		return nil
	}
	return id
}

// fetchedPlace names the partition and offset of the record of fetched
// message raw ("at partition P offset O "), found from how its event id
// moved on from the previous message's; "" for the stream's first message
// (the caller's resume id is not at hand) or when no single partition moved.
func (s *connStream) fetchedPlace(raw []byte) string {
	if s.prevRaw == nil {
		return ""
	}
	prev, cur := s.fetchedID(s.prevRaw), s.fetchedID(raw)
	place := ""
	for _, po := range cur {
		was, ok := prev.Offset(po.Partition)
		if ok && was == po.Offset {
			continue
		}
		if place != "" {
			return ""
		}
		place = fmt.Sprintf("at partition %d offset %d ", po.Partition, po.Offset-1)
	}
	return place
}

// skipHint tells the caller of a fetched message it cannot decode how to
// resume after it: with its event id.
func (s *connStream) skipHint(raw []byte) string {
	id := s.fetchedID(raw)
	if id == nil {
		return ""
	}
	return "; to skip it, resume with metadata " + resumeNames(s.m.Fetch.ResumeMetadata)[0] + "=" + id.String()
}
