package runtime_test

// The tests of this file check the records of WIRE.md byte for byte: what
// our gateway, ClientConn and worker write, read back from Kafka, and what
// they make of records written by hand the way WIRE.md says a Zilla peer
// writes them.

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	routingv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/routing/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// auditPartitions is the partition count of the audit's topics.
const auditPartitions = 3

// next returns the next record of w, failing after 30 s.
func (w *replyWatch) next(t *testing.T) *kafkaclient.Record {
	t.Helper()
	select {
	case rec := <-w.recs:
		return rec
	case <-time.After(30 * time.Second):
		t.Fatal("no record within 30 s")
		return nil
	}
}

func headerList(rec *kafkaclient.Record) []string {
	var out []string
	for _, h := range rec.Headers {
		out = append(out, h.Key+"="+string(h.Value))
	}
	return out
}

// headerValues returns every value of the header name, in record order.
func headerValues(rec *kafkaclient.Record, name string) []string {
	var out []string
	for _, h := range rec.Headers {
		if h.Key == name {
			out = append(out, string(h.Value))
		}
	}
	return out
}

var (
	uuidRE    = `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
	timeoutRE = regexp.MustCompile(`^[0-9]{1,8}[HMSmun]$`)
)

// TestWireAuditGatewayRequestRecords reads back the request records of a
// unary call and of a cancelled bidi call, through a gateway and through a
// ClientConn, and checks them against WIRE.md: a data record whose value is
// the bare protobuf encoding, then a null (tombstone) end-of-stream record
// with the same key and the same headers; headers zilla:service,
// zilla:method, zilla:reply-to, zilla:correlation-id in that order, then
// only meta:* headers, binary values in standard base64, no transport or
// credential metadata; the key is the correlation id (uuid "-" md5 of the
// route), on the partition Kafka's Java partitioner gives it.
func TestWireAuditGatewayRequestRecords(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("wa") + "."
	kafkatest.CreateTopics(t, kc, auditPartitions, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(rec *kafkaclient.Record, req *echov1.EchoRequest, reply func([]byte, hdrs)) {
		v, _ := proto.Marshal(&echov1.EchoResponse{Message: req.GetMessage()})
		reply(v, nil)
		if header(rec, "zilla:method") == "EchoUnary" {
			reply(nil, hdrs{"zilla:status", "0"})
		}
	})
	callers := auditCallers(t, kc, prefix, nil, nil)
	requests := watchReplies(t, kc, prefix+"echo-requests")
	replyTopic := prefix + "echo-responses"

	// checkCall checks the records of one call, data records first, and
	// returns the end-of-stream record.
	checkCall := func(t *testing.T, method string, values [][]byte) *kafkaclient.Record {
		t.Helper()
		var recs []*kafkaclient.Record
		for range len(values) + 1 {
			recs = append(recs, requests.next(t))
		}
		id := header(recs[0], "zilla:correlation-id")
		hash := wire.RouteHash(wire.DefaultNames(), echoService, method, replyTopic)
		if !regexp.MustCompile("^" + uuidRE + regexp.QuoteMeta(hash) + "$").MatchString(id) {
			t.Errorf("correlation id %q, want a lower-case UUID and %q", id, hash)
		}
		for i, rec := range recs {
			if i < len(values) {
				if rec.Value == nil || !bytes.Equal(rec.Value, values[i]) {
					t.Errorf("record %d: value % x, want the bare protobuf encoding % x", i, rec.Value, values[i])
				}
			} else if rec.Value != nil {
				t.Errorf("last record: value % x, want null (a tombstone)", rec.Value)
			}
			if string(rec.Key) != id {
				t.Errorf("record %d: key %q, want the correlation id %q", i, rec.Key, id)
			}
			if want := kafkaclient.KeyPartition(rec.Key, auditPartitions); rec.Partition != want {
				t.Errorf("record %d: partition %d, want %d (murmur2 of the key)", i, rec.Partition, want)
			}
			hs := rec.Headers
			wantFirst := []string{"zilla:service=" + echoService, "zilla:method=" + method, "zilla:reply-to=" + replyTopic, "zilla:correlation-id=" + id}
			if got := headerList(rec); len(got) < 4 || !slices.Equal(got[:4], wantFirst) {
				t.Fatalf("record %d: headers %q, want %q first", i, got, wantFirst)
			}
			for _, h := range hs[4:] {
				if h.Key == "zilla:status" && i == len(values) {
					continue // a cancel, checked by the caller
				}
				if !strings.HasPrefix(h.Key, "meta:") {
					t.Errorf("record %d: header %q after the correlation id, want only meta:*", i, h.Key)
					continue
				}
				name := strings.TrimPrefix(h.Key, "meta:")
				if name == "grpc-timeout" {
					if !timeoutRE.Match(h.Value) {
						t.Errorf("record %d: meta:grpc-timeout %q, not gRPC's timeout syntax", i, h.Value)
					}
					continue
				}
				switch {
				case strings.HasPrefix(name, "grpc-"), strings.HasPrefix(name, ":"),
					name == "content-type", name == "te", name == "user-agent", name == "authorization", name == "cookie":
					t.Errorf("record %d: header %q must never be written", i, h.Key)
				}
			}
		}
		if got, want := headerList(recs[len(values)]), headerList(recs[0]); !slices.Equal(got[:min(len(got), len(want))], want) {
			t.Errorf("end-of-stream headers %q, want the data records' %q repeated", got, want)
		}
		return recs[len(values)]
	}

	for _, c := range callers {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t, 30*time.Second)
			md := metadata.AppendToOutgoingContext(ctx, "x-tenant", "acme", "x-raw-bin", "\xfb\xff",
				"authorization", "Bearer secret", "cookie", "s=1", "x-multi", "a", "x-multi", "b")
			req := &echov1.EchoRequest{Message: "audit"}
			if _, err := c.client.EchoUnary(md, req); err != nil {
				t.Fatal(err)
			}
			value, _ := proto.MarshalOptions{Deterministic: true}.Marshal(req)
			end := checkCall(t, "EchoUnary", [][]byte{value})
			if got := headerValues(end, "meta:x-raw-bin"); !slices.Equal(got, []string{"+/8="}) {
				t.Errorf("meta:x-raw-bin = %q, want the standard base64 [+/8=]", got)
			}
			if got := headerValues(end, "meta:x-tenant"); !slices.Equal(got, []string{"acme"}) {
				t.Errorf("meta:x-tenant = %q, want [acme]", got)
			}
			if got := headerValues(end, "meta:x-multi"); !slices.Equal(got, []string{"a", "b"}) {
				t.Errorf("meta:x-multi = %q, want [a b]: one header per value, in order", got)
			}
			if got := headerValues(end, "zilla:status"); len(got) != 0 {
				t.Errorf("end of a call not cancelled carries zilla:status %q", got)
			}

			// A large message (100 KiB and more) is still one record.
			large := &echov1.EchoRequest{Message: strings.Repeat("x", 150<<10)}
			if r, err := c.client.EchoUnary(ctx, large); err != nil || r.GetMessage() != large.GetMessage() {
				t.Fatalf("150 KiB unary: %d bytes, %v", len(r.GetMessage()), err)
			}
			value, _ = proto.MarshalOptions{Deterministic: true}.Marshal(large)
			checkCall(t, "EchoUnary", [][]byte{value})

			// Cancel: the request's end-of-stream record, with the
			// data records' headers and zilla:status 1 (extension).
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			s, err := c.client.EchoBidiStream(cctx)
			if err != nil {
				t.Fatal(err)
			}
			first := &echov1.EchoRequest{Message: "first"}
			if err := s.Send(first); err != nil {
				t.Fatal(err)
			}
			if r, err := s.Recv(); err != nil || r.GetMessage() != "first" {
				t.Fatalf("first reply = %v, %v", r, err)
			}
			cancel()
			value, _ = proto.MarshalOptions{Deterministic: true}.Marshal(first)
			end = checkCall(t, "EchoBidiStream", [][]byte{value})
			if got := headerValues(end, "zilla:status"); !slices.Equal(got, []string{"1"}) {
				t.Errorf("cancel's end-of-stream zilla:status = %q, want [1]", got)
			}
		})
	}
}

// auditServer answers as the echo server, and besides: EchoUnary with
// message "md" answers with its request metadata, sorted, and EchoServerStream
// sets response headers (one binary) and a trailer.
type auditServer struct{ echoserver.Server }

func (auditServer) EchoUnary(ctx context.Context, req *echov1.EchoRequest) (*echov1.EchoResponse, error) {
	if req.GetMessage() != "md" {
		return echoserver.Server{}.EchoUnary(ctx, req)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	var parts []string
	for k, vs := range md {
		if strings.HasPrefix(k, "x-") {
			parts = append(parts, fmt.Sprintf("%s=%q", k, vs))
		}
	}
	sort.Strings(parts)
	return &echov1.EchoResponse{Message: strings.Join(parts, " ")}, nil
}

func (auditServer) EchoServerStream(req *echov1.EchoRequest, s grpc.ServerStreamingServer[echov1.EchoResponse]) error {
	if err := s.SetHeader(metadata.Pairs("x-h", "v", "x-hb-bin", "\xfb\xff")); err != nil {
		return err
	}
	s.SetTrailer(metadata.Pairs("x-t", "t"))
	for i := range req.GetRepeat() {
		if err := s.Send(&echov1.EchoResponse{Message: req.GetMessage(), Index: i}); err != nil {
			return err
		}
	}
	return nil
}

// TestWireAuditWorkerReplyRecords writes requests by hand as a Zilla
// grpc-kafka gateway does (WIRE.md), keyed by something other than the
// correlation id, and checks the worker's reply records byte for byte: on
// the zilla:reply-to topic, keyed by the correlation id on its murmur2
// partition; every data record starts with zilla:correlation-id, then the
// response headers as meta:* (repeated on each); the end-of-stream record is
// null and carries zilla:correlation-id, zilla:status in decimal and, only
// when there is one, zilla:message.
func TestWireAuditWorkerReplyRecords(t *testing.T) {
	e := setup(t, auditServer{})
	replyTopic := e.topic("echo-responses")
	replies := watchReplies(t, e.kc, replyTopic)
	reqTopic := e.topic("echo-requests")
	request := func(t *testing.T, method, id string, value []byte, extra ...string) {
		t.Helper()
		h := append(hdrs{"route", "static", "zilla:service", echoService, "zilla:method", method,
			"zilla:reply-to", replyTopic, "zilla:correlation-id", id}, extra...)
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: []byte("configured-key"), Value: value, Headers: h.headers()})
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: []byte("configured-key"), Value: nil, Headers: h.headers()})
	}
	checkRecord := func(t *testing.T, rec *kafkaclient.Record, id string) {
		t.Helper()
		if rec.Topic != replyTopic || string(rec.Key) != id {
			t.Errorf("reply on %s keyed %q, want %s keyed by the correlation id %q", rec.Topic, rec.Key, replyTopic, id)
		}
		if want := kafkaclient.KeyPartition(rec.Key, auditPartitions); rec.Partition != want {
			t.Errorf("reply on partition %d, want %d (murmur2 of the key)", rec.Partition, want)
		}
		if len(rec.Headers) == 0 || rec.Headers[0].Key != "zilla:correlation-id" || string(rec.Headers[0].Value) != id {
			t.Errorf("reply headers %q, want zilla:correlation-id=%s first", headerList(rec), id)
		}
	}

	t.Run("server stream", func(t *testing.T) {
		id := "wa-" + wire.NewUUID()
		in, _ := proto.Marshal(&echov1.EchoRequest{Message: "s", Repeat: 3})
		request(t, "EchoServerStream", id, in)
		recs := replies.await(t, id)
		if len(recs) != 4 {
			t.Fatalf("%d reply records, want 3 data and the end-of-stream", len(recs))
		}
		for i, rec := range recs[:3] {
			checkRecord(t, rec, id)
			want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&echov1.EchoResponse{Message: "s", Index: int32(i)})
			if !bytes.Equal(rec.Value, want) {
				t.Errorf("data record %d: value % x, want the bare protobuf encoding % x", i, rec.Value, want)
			}
			for _, h := range rec.Headers[1:] {
				if !strings.HasPrefix(h.Key, "meta:") {
					t.Errorf("data record %d: header %q after the correlation id, want only meta:*", i, h.Key)
				}
			}
			if got := headerValues(rec, "meta:x-h"); !slices.Equal(got, []string{"v"}) {
				t.Errorf("data record %d: meta:x-h = %q, want [v] on every data record", i, got)
			}
			if got := headerValues(rec, "meta:x-hb-bin"); !slices.Equal(got, []string{"+/8="}) {
				t.Errorf("data record %d: meta:x-hb-bin = %q, want the standard base64 [+/8=]", i, got)
			}
		}
		end := recs[3]
		checkRecord(t, end, id)
		if end.Value != nil {
			t.Errorf("end-of-stream value % x, want null", end.Value)
		}
		if got := headerValues(end, "zilla:status"); !slices.Equal(got, []string{"0"}) {
			t.Errorf("end-of-stream zilla:status = %q, want [0]", got)
		}
		if got := headerValues(end, "zilla:message"); len(got) != 0 {
			t.Errorf("end-of-stream of an OK call carries zilla:message %q", got)
		}
	})

	t.Run("empty message", func(t *testing.T) {
		id := "wa-" + wire.NewUUID()
		request(t, "EchoUnary", id, []byte{}) // an empty request: an empty value, not null
		recs := replies.await(t, id)
		if len(recs) != 2 || recs[0].Value == nil || len(recs[0].Value) != 0 || header(recs[1], "zilla:status") != "0" {
			t.Fatalf("%d reply records, first value %#v, status %q; want an empty (not null) data record and OK",
				len(recs), recs[0].Value, header(recs[len(recs)-1], "zilla:status"))
		}
	})

	t.Run("large message", func(t *testing.T) {
		id := "wa-" + wire.NewUUID()
		in, _ := proto.Marshal(&echov1.EchoRequest{Message: strings.Repeat("y", 150<<10)})
		request(t, "EchoUnary", id, in)
		recs := replies.await(t, id)
		want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&echov1.EchoResponse{Message: strings.Repeat("y", 150<<10)})
		if len(recs) != 2 || !bytes.Equal(recs[0].Value, want) {
			t.Fatalf("%d reply records, first %d bytes; want one data record of %d bytes and the end", len(recs), len(recs[0].Value), len(want))
		}
	})

	t.Run("error", func(t *testing.T) {
		id := "wa-" + wire.NewUUID()
		in, _ := proto.Marshal(&echov1.EchoRequest{Message: "no such thing: 100% ü", FailCode: int32(codes.NotFound)})
		request(t, "EchoUnary", id, in)
		recs := replies.await(t, id)
		end := recs[len(recs)-1]
		checkRecord(t, end, id)
		if len(recs) != 1 {
			t.Errorf("%d reply records, want only the end-of-stream", len(recs))
		}
		if got := headerValues(end, "zilla:status"); !slices.Equal(got, []string{"5"}) {
			t.Errorf("zilla:status = %q, want [5]", got)
		}
		if got := headerValues(end, "zilla:message"); !slices.Equal(got, []string{"no such thing: 100% ü"}) {
			t.Errorf("zilla:message = %q, want the status message as it is (UTF-8, not percent-encoded)", got)
		}
	})
}

// TestWireAuditWorkerAcceptsZillaRequests: what a Zilla gateway may write,
// the worker must take (WIRE.md): unknown headers (a route's overrides)
// ignored and not handed to the handler; a metadata entry with several
// values as several meta:* headers, in order; an empty value; a binary
// entry in standard padded base64; meta:* headers not contiguous; a client
// stream with no message (the end-of-stream record alone).
func TestWireAuditWorkerAcceptsZillaRequests(t *testing.T) {
	e := setup(t, auditServer{})
	replyTopic := e.topic("echo-responses")
	replies := watchReplies(t, e.kc, replyTopic)
	reqTopic := e.topic("echo-requests")
	send := func(t *testing.T, h hdrs, values ...[]byte) {
		t.Helper()
		for _, v := range values {
			produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: []byte("k"), Value: v, Headers: h.headers()})
		}
		produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: []byte("k"), Value: nil, Headers: h.headers()})
	}

	t.Run("metadata", func(t *testing.T) {
		id := "wa-" + wire.NewUUID()
		in, _ := proto.Marshal(&echov1.EchoRequest{Message: "md"})
		send(t, hdrs{"x-override", "static", "zilla:service", echoService, "zilla:method", "EchoUnary",
			"meta:x-multi", "a", "zilla:reply-to", replyTopic, "zilla:correlation-id", id,
			"meta:x-multi", "b", "meta:x-empty", "", "meta:x-raw-bin", "+/8=", "x-unknown", "u"}, in)
		recs := replies.await(t, id)
		if st := header(recs[len(recs)-1], "zilla:status"); st != "0" || len(recs) != 2 {
			t.Fatalf("%d replies, status %q (%s), want an answer and OK", len(recs), st, header(recs[len(recs)-1], "zilla:message"))
		}
		var out echov1.EchoResponse
		if err := proto.Unmarshal(recs[0].Value, &out); err != nil {
			t.Fatal(err)
		}
		want := `x-empty=[""] x-multi=["a" "b"] x-raw-bin=["\xfb\xff"]`
		if out.GetMessage() != want {
			t.Errorf("handler's metadata %s, want %s", out.GetMessage(), want)
		}
	})

	t.Run("empty client stream", func(t *testing.T) {
		id := "wa-" + wire.NewUUID()
		send(t, hdrs{"zilla:service", echoService, "zilla:method", "EchoClientStream", "zilla:reply-to", replyTopic, "zilla:correlation-id", id})
		recs := replies.await(t, id)
		if st := header(recs[len(recs)-1], "zilla:status"); st != "0" || len(recs) != 2 {
			t.Fatalf("%d replies, status %q (%s), want an answer and OK", len(recs), st, header(recs[len(recs)-1], "zilla:message"))
		}
	})
}

// TestWireAuditAcceptsZillaReplies answers a gateway's and a ClientConn's
// calls as a Zilla kafka-grpc worker may (WIRE.md): the response headers
// repeated on every data record (the caller gets them once: the first
// record's), unknown headers ignored, an end-of-stream record without
// zilla:status (OK), or with zilla:status 0 and a message (OK), or with an
// error code above gRPC's own (that code).
func TestWireAuditAcceptsZillaReplies(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("wz") + "."
	kafkatest.CreateTopics(t, kc, auditPartitions, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(rec *kafkaclient.Record, req *echov1.EchoRequest, reply func([]byte, hdrs)) {
		switch req.GetMessage() {
		case "stream":
			for i := range req.GetRepeat() {
				v, _ := proto.Marshal(&echov1.EchoResponse{Message: "z", Index: i})
				reply(v, hdrs{"meta:x-answer", "42", "x-unknown", "u", "meta:x-bin", "+/8="})
			}
			reply(nil, hdrs{"x-unknown", "u"})
		case "ok with message":
			v, _ := proto.Marshal(&echov1.EchoResponse{Message: "z"})
			reply(v, nil)
			reply(nil, hdrs{"zilla:status", "0", "zilla:message", "fine"})
		case "empty":
			reply([]byte{}, nil) // an empty message: an empty value, not null
			reply(nil, nil)
		case "code 99":
			reply(nil, hdrs{"zilla:status", "99", "zilla:message", "custom 100% ü\n"})
		}
	})
	callers := auditCallers(t, kc, prefix, nil, nil)
	for _, c := range callers {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t, 30*time.Second)
			s, err := c.client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "stream", Repeat: 3})
			if err != nil {
				t.Fatal(err)
			}
			for i := range int32(3) {
				if r, err := s.Recv(); err != nil || r.GetIndex() != i {
					t.Fatalf("response %d = %v, %v", i, r, err)
				}
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("end without zilla:status: %v, want OK", err)
			}
			h, err := s.Header()
			if err != nil {
				t.Fatal(err)
			}
			if got := h.Get("x-answer"); !slices.Equal(got, []string{"42"}) {
				t.Errorf("response header x-answer = %q, want [42] (the first record's)", got)
			}
			if got := h.Get("x-bin"); !slices.Equal(got, []string{"\xfb\xff"}) {
				t.Errorf("response header x-bin = %q, want [fb ff]", got)
			}
			if got := h.Get("x-unknown"); len(got) != 0 {
				t.Errorf("an unknown reply header became response header x-unknown %q", got)
			}

			if r, err := c.client.EchoUnary(ctx, &echov1.EchoRequest{Message: "ok with message"}); err != nil || r.GetMessage() != "z" {
				t.Errorf("zilla:status 0 with a message: %v, %v; want the answer and OK", r, err)
			}
			if r, err := c.client.EchoUnary(ctx, &echov1.EchoRequest{Message: "empty"}); err != nil || !proto.Equal(r, &echov1.EchoResponse{}) {
				t.Errorf("an empty (not null) reply value: %v, %v; want an empty message and OK", r, err)
			}
			_, err = c.client.EchoUnary(ctx, &echov1.EchoRequest{Message: "code 99"})
			if st := status.Convert(err); st.Code() != codes.Code(99) || st.Message() != "custom 100% ü\n" {
				t.Errorf("zilla:status 99: %v, want code 99 %q", err, "custom 100% ü\n")
			}
		})
	}
}

// TestWireAuditWorkerAfterReplyEnded: in a bidi call "the reply may finish
// before the request stream does" (WIRE.md). A Zilla gateway goes on
// writing the call's request records after the worker's end-of-stream
// reply; the worker must take them for the rest of the call that is over,
// not start another call with them (which would answer the caller twice).
func TestWireAuditWorkerAfterReplyEnded(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replyTopic := e.topic("echo-responses")
	replies := watchReplies(t, e.kc, replyTopic)
	reqTopic := e.topic("echo-requests")
	id := "wa-" + wire.NewUUID()
	h := hdrs{"zilla:service", echoService, "zilla:method", "EchoBidiStream", "zilla:reply-to", replyTopic, "zilla:correlation-id", id}
	key := []byte("bidi-key")
	stop, _ := proto.Marshal(&echov1.EchoRequest{Message: "stop", FailCode: int32(codes.FailedPrecondition)})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: stop, Headers: h.headers()})
	recs := replies.await(t, id)
	if got := header(recs[len(recs)-1], "zilla:status"); got != "9" {
		t.Fatalf("the call ended with status %q, want 9", got)
	}
	before := e.worker.Stats().Calls
	more, _ := proto.Marshal(&echov1.EchoRequest{Message: "more"})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: more, Headers: h.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: h.headers()})
	// A call after them on the same partition: once it is answered, the
	// records before it were read.
	marker := "wa-" + wire.NewUUID()
	good, _ := proto.Marshal(&echov1.EchoRequest{Message: "marker"})
	mh := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:reply-to", replyTopic, "zilla:correlation-id", marker}
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: mh.headers()})
	produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: mh.headers()})
	replies.await(t, marker)
	if n := e.worker.Stats().Calls - before; n != 1 {
		t.Fatalf("the worker started %d calls, want 1 (the marker): the records after the call's end started another", n)
	}
}

// TestWireAuditFetchEventIDBytes runs WIRE.md's worked example on a topic:
// partition 0 holds two records and partition 1 one, each the bytes
// 0a 0b "Hello World"; the message delivered last, through a gateway and
// through a ClientConn, is those bytes followed by FA FF 0F 06 01 04 00 04
// 02 02. A caller resuming with the first message's id, in each form WIRE.md
// allows, gets the two other records.
func TestWireAuditFetchEventIDBytes(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("we") + "."
	kafkatest.CreateTopics(t, kc, 2, prefix+"echo-events", prefix+"echo-requests", prefix+"echo-responses")
	hello := append([]byte{0x0a, 0x0b}, "Hello World"...)
	for _, p := range []int32{0, 0, 1} {
		done := make(chan error, 1)
		kc.Produce(&kafkaclient.Record{Topic: prefix + "echo-events", Partition: p, Value: hello}, kafkaclient.AcksAll,
			func(_ *kafkaclient.Record, err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	callers := auditCallers(t, kc, prefix, nil, nil)
	want := append(append(slices.Clone(hello), 0xFA, 0xFF, 0x0F, 0x06), 0x01, 0x04, 0x00, 0x04, 0x02, 0x02)
	for _, c := range callers {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t, 30*time.Second)
			read := func(t *testing.T, ctx context.Context, n int) [][]byte {
				t.Helper()
				s, err := c.client.EchoEvents(ctx, &emptypb.Empty{})
				if err != nil {
					t.Fatal(err)
				}
				var got [][]byte
				for range n {
					ev, err := s.Recv()
					if err != nil {
						t.Fatalf("after %d events: %v", len(got), err)
					}
					b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, b)
				}
				return got
			}
			all := read(t, ctx, 3)
			if !bytes.Equal(all[2], want) {
				t.Fatalf("last message delivered\n % x\nwant\n % x", all[2], want)
			}
			first, ok := wire.EventIDFromMessage(mustEvent(t, all[0]), wire.DefaultEventIDField)
			if !ok {
				t.Fatal("first message has no event id")
			}
			for _, r := range []struct{ name, key, value string }{
				{"base64url unpadded", "last-message-id", base64.RawURLEncoding.EncodeToString(first)},
				{"base64url padded", "last-message-id", base64.URLEncoding.EncodeToString(first)},
				{"standard base64", "last-message-id", base64.StdEncoding.EncodeToString(first)},
				{"raw bytes", "last-message-id-bin", string(first)},
				{"seed name", "last-event-id", base64.RawURLEncoding.EncodeToString(first)},
			} {
				t.Run(r.name, func(t *testing.T) {
					got := read(t, metadata.AppendToOutgoingContext(ctx, r.key, r.value), 2)
					if !bytes.Equal(got[1], want) {
						t.Fatalf("resumed: last message\n % x\nwant\n % x", got[1], want)
					}
				})
			}
		})
	}
}

func mustEvent(t *testing.T, b []byte) *echov1.EchoEvent {
	t.Helper()
	var ev echov1.EchoEvent
	if err := proto.Unmarshal(b, &ev); err != nil {
		t.Fatal(err)
	}
	return &ev
}

// TestWireAuditOnewayRecords: a oneway client stream (no reply topic)
// writes its data records with no zilla:reply-to or zilla:correlation-id
// and no end-of-stream record on a normal end (WIRE.md), through a gateway
// and through a ClientConn: once the call is answered (the records are
// acknowledged) the topic holds the data records and nothing else.
func TestWireAuditOnewayRecords(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("wo") + "."
	topics := []string{"routing-requests", "routing-responses", "acme-requests", "acme-responses",
		"notifications", "uploads", "upload-receipts", "watch.requests", "watch.responses", "watch_traced-responses"}
	for i := range topics {
		topics[i] = prefix + topics[i]
	}
	kafkatest.CreateTopics(t, kc, auditPartitions, topics...)
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	gw := runtime.NewGateway(kc, mapper, runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	viaGateway := routingv1.NewRoutingServiceClient(serve(t, func(s *grpc.Server) {
		if err := routingv1.RegisterRoutingServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	cc := runtime.NewClientConn(kc, mapper, runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = cc.Close() })
	if err := cc.Register(routingv1.RoutingServiceKafkaSpec); err != nil {
		t.Fatal(err)
	}
	uploads := watchReplies(t, kc, prefix+"uploads")
	total := int64(0)
	for _, c := range []struct {
		name   string
		client routingv1.RoutingServiceClient
	}{{"gateway", viaGateway}, {"ClientConn", routingv1.NewRoutingServiceClient(cc)}} {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t, 30*time.Second)
			s, err := c.client.Upload(metadata.AppendToOutgoingContext(ctx, "x-tenant", "acme"))
			if err != nil {
				t.Fatal(err)
			}
			var values [][]byte
			for _, id := range []string{"u1", "u2", "u3"} {
				o := &routingv1.Order{Id: id}
				if err := s.Send(o); err != nil {
					t.Fatal(err)
				}
				v, _ := proto.MarshalOptions{Deterministic: true}.Marshal(o)
				values = append(values, v)
			}
			if _, err := s.CloseAndRecv(); err != nil {
				t.Fatal(err)
			}
			total += 3
			parts, err := kc.Partitions(ctx, prefix+"uploads")
			if err != nil {
				t.Fatal(err)
			}
			ends, err := kc.Offsets(ctx, prefix+"uploads", parts, kafkaclient.Latest)
			if err != nil {
				t.Fatal(err)
			}
			sum := int64(0)
			for _, p := range parts {
				sum += ends[p]
			}
			if sum != total {
				t.Errorf("the uploads topic holds %d records after %d oneway data records: want no end-of-stream record", sum, total)
			}
			var got [][]byte
			var keys []string
			for range 3 {
				rec := uploads.next(t)
				got = append(got, rec.Value)
				want := []string{"zilla:service=testdata.routing.v1.RoutingService", "zilla:method=Upload"}
				if hs := headerList(rec); len(hs) < 2 || !slices.Equal(hs[:2], want) {
					t.Errorf("oneway record headers %q, want %q first", hs, want)
				}
				for _, h := range rec.Headers[2:] {
					if !strings.HasPrefix(h.Key, "meta:") {
						t.Errorf("oneway record header %q, want only meta:* after zilla:method", h.Key)
					}
				}
				// WIRE.md names no key for a call without a correlation
				// id: the code keys a call's records alike, on their
				// murmur2 partition, so that the stream stays in order.
				if keys = append(keys, string(rec.Key)); rec.Key == nil || string(rec.Key) != keys[0] {
					t.Errorf("oneway record keys %q, want one key for the call's records", keys)
				}
				if want := kafkaclient.KeyPartition(rec.Key, auditPartitions); rec.Partition != want {
					t.Errorf("oneway record on partition %d, want %d (murmur2 of the key)", rec.Partition, want)
				}
			}
			sort.Slice(got, func(i, j int) bool { return bytes.Compare(got[i], got[j]) < 0 })
			if !slices.EqualFunc(got, values, bytes.Equal) {
				t.Errorf("oneway values % x, want % x", got, values)
			}
		})
	}
}

// idOnPartition returns a fresh correlation id starting with prefix whose
// records go to partition p of a topic of auditPartitions partitions.
func idOnPartition(prefix string, p int32) string {
	for {
		if id := prefix + wire.NewUUID(); kafkaclient.KeyPartition([]byte(id), auditPartitions) == p {
			return id
		}
	}
}

// TestWireAuditWorkerRejectsOnce: a request the worker answers without
// running it (no zilla:service, no zilla:method, an unknown method, an
// undecodable payload) is answered with one end-of-stream record (WIRE.md),
// though a Zilla gateway writes the call's end-of-stream record after its
// data record, with the same headers. The replies are counted up to the
// end of a call made after the reject's answer was read, whose replies
// share its partition.
func TestWireAuditWorkerRejectsOnce(t *testing.T) {
	e := setup(t, echoserver.Server{})
	replyTopic := e.topic("echo-responses")
	replies := watchReplies(t, e.kc, replyTopic)
	reqTopic := e.topic("echo-requests")
	good, _ := proto.Marshal(&echov1.EchoRequest{Message: "good"})
	key := []byte("reject-key")
	for _, c := range []struct {
		name, service, method, code string
		value                       []byte
	}{
		{"no service", "", "EchoUnary", "13", good},
		{"no method", echoService, "", "13", good},
		{"unknown method", echoService, "EchoNothing", "12", good},
		{"undecodable payload", echoService, "EchoUnary", "13", []byte{0x0a, 0xff, 0xff, 0xff}},
		{"unknown client-stream method", echoService, "EchoNothingStream", "12", good},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := idOnPartition("wr-", 1)
			h := hdrs{}
			if c.service != "" {
				h = append(h, "zilla:service", c.service)
			}
			if c.method != "" {
				h = append(h, "zilla:method", c.method)
			}
			h = append(h, "zilla:reply-to", replyTopic, "zilla:correlation-id", id)
			produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: c.value, Headers: h.headers()})
			produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: h.headers()})
			// The worker answers the reject and the marker calls from
			// different goroutines, so a marker's end may overtake the
			// reject's: read until the reject's answer and the end of a
			// marker call made after it came, then once more until the
			// end of a second marker call, made once the reject's answer
			// was read, so that a second answer has the same chance to
			// show.
			var ours []*kafkaclient.Record
			for round := range 2 {
				marker := idOnPartition(fmt.Sprintf("wm%d-", round), 1)
				mh := hdrs{"zilla:service", echoService, "zilla:method", "EchoUnary", "zilla:reply-to", replyTopic, "zilla:correlation-id", marker}
				produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: good, Headers: mh.headers()})
				produce(t, e.kc, &kafkaclient.Record{Topic: reqTopic, Key: key, Value: nil, Headers: mh.headers()})
				for markerEnded := false; !markerEnded || len(ours) == 0; {
					rec := replies.next(t)
					if v := header(rec, "zilla:correlation-id"); v == id {
						ours = append(ours, rec)
					} else if v == marker && rec.Value == nil {
						markerEnded = true
					}
				}
			}
			if len(ours) != 1 || ours[0].Value != nil || header(ours[0], "zilla:status") != c.code {
				var st []string
				for _, r := range ours {
					st = append(st, fmt.Sprintf("value %v status %q message %q", r.Value != nil, header(r, "zilla:status"), header(r, "zilla:message")))
				}
				t.Fatalf("replies %q, want one end-of-stream record with zilla:status %s", st, c.code)
			}
		})
	}
}

// TestWireAuditConfiguredNames: "every header name below is the default;
// all of them must be configurable" (WIRE.md). A gateway, a ClientConn and
// a worker configured with other names write only those, the correlation
// id hashes them, and the calls work, errors and cancels included.
func TestWireAuditConfiguredNames(t *testing.T) {
	names := wire.Names{Service: "x-svc", Method: "x-mth", ReplyTo: "x-rto", CorrelationID: "x-cid", Status: "x-st",
		Message: "x-msg", StatusDetails: "x-det-bin", MetaPrefix: "md.", TrailerPrefix: "tr.", Identity: "x-id"}
	e := setup(t, auditServer{}, runtime.WithHeaderNames(names))
	callers := auditCallers(t, e.kc, e.prefix, []runtime.GatewayOption{runtime.WithHeaderNames(names)}, []runtime.ConnOption{runtime.WithHeaderNames(names)})
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	replies := watchReplies(t, e.kc, e.topic("echo-responses"))
	for _, c := range callers {
		t.Run(c.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "x-tenant", "acme")
			s, err := c.client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "n", Repeat: 2})
			if err != nil {
				t.Fatal(err)
			}
			for i := range int32(2) {
				if r, err := s.Recv(); err != nil || r.GetIndex() != i {
					t.Fatalf("response %d = %v, %v", i, r, err)
				}
			}
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("end: %v, want OK", err)
			}
			h, _ := s.Header()
			if got := h.Get("x-h"); !slices.Equal(got, []string{"v"}) {
				t.Errorf("response header x-h = %q, want [v]", got)
			}
			tr := s.Trailer()
			if got := tr.Get("x-t"); !slices.Equal(got, []string{"t"}) {
				t.Errorf("trailer x-t = %q, want [t]", got)
			}
			_, err = c.client.EchoUnary(ctx, &echov1.EchoRequest{Message: "gone", FailCode: int32(codes.NotFound)})
			if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "gone" {
				t.Errorf("failed call: %v, want NOT_FOUND gone", err)
			}

			req := requests.next(t)
			id := header(req, "x-cid")
			hash := wire.RouteHash(names.WithDefaults(), echoService, "EchoServerStream", e.topic("echo-responses"))
			if !strings.HasSuffix(id, hash) {
				t.Errorf("correlation id %q, want the hash of the configured names %q", id, hash)
			}
			want := []string{"x-svc=" + echoService, "x-mth=EchoServerStream", "x-rto=" + e.topic("echo-responses"), "x-cid=" + id}
			if got := headerList(req); len(got) < 4 || !slices.Equal(got[:4], want) {
				t.Errorf("request headers %q, want %q first", got, want)
			}
			if got := headerValues(req, "md.x-tenant"); !slices.Equal(got, []string{"acme"}) {
				t.Errorf("request md.x-tenant = %q (headers %q)", got, headerList(req))
			}
			for range 3 { // the rest of both calls' requests
				req = requests.next(t)
				for _, h := range req.Headers {
					if strings.HasPrefix(h.Key, "zilla:") || strings.HasPrefix(h.Key, "meta:") {
						t.Errorf("request header %q: a default name where another is configured", h.Key)
					}
				}
			}
			for { // 2 data and the end of the stream, then the end of the failed call
				rec := replies.next(t)
				for _, h := range rec.Headers {
					if strings.HasPrefix(h.Key, "zilla:") || strings.HasPrefix(h.Key, "meta:") || strings.HasPrefix(h.Key, "trailer:") {
						t.Errorf("reply header %q: a default name where another is configured", h.Key)
					}
				}
				if rec.Value == nil && header(rec, "x-st") != "0" {
					if header(rec, "x-st") != "5" || header(rec, "x-msg") != "gone" {
						t.Errorf("failed call's end: headers %q, want x-st=5 and x-msg=gone", headerList(rec))
					}
					break
				}
			}
		})
	}
}

// TestWireAuditCancelAfterRequestEnd documents a departure from "exactly
// one end-of-stream record" per direction (WIRE.md): when a caller cancels
// a call whose request stream had ended (every unary and server-streaming
// call), the gateway writes by default (GatewayCancelRecord) a second null
// record, with the key and headers of the first and zilla:status=1, so that
// a worker built here cancels the handler. WIRE.md puts zilla:status=1 on
// "the request EOS record", which for those calls is already written.
func TestWireAuditCancelAfterRequestEnd(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("wc") + "."
	kafkatest.CreateTopics(t, kc, auditPartitions, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(_ *kafkaclient.Record, req *echov1.EchoRequest, reply func([]byte, hdrs)) {
		v, _ := proto.Marshal(&echov1.EchoResponse{Message: req.GetMessage()})
		reply(v, nil) // and never an end: the caller cancels
	})
	gw := runtime.NewGateway(kc, runtime.WithTopicMapper(func(s string) string { return prefix + s }), runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	echo := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	requests := watchReplies(t, kc, prefix+"echo-requests")
	ctx, cancel := context.WithCancel(ctxFor(t, 30*time.Second))
	defer cancel()
	s, err := echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "x", Repeat: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	data, end, extra := requests.next(t), requests.next(t), requests.next(t)
	if data.Value == nil || end.Value != nil || extra.Value != nil {
		t.Fatalf("request records: values %v, %v, %v; want data, null, null", data.Value != nil, end.Value != nil, extra.Value != nil)
	}
	if got := headerValues(end, "zilla:status"); len(got) != 0 {
		t.Errorf("the request's end carries zilla:status %q", got)
	}
	if !bytes.Equal(extra.Key, data.Key) || extra.Partition != data.Partition {
		t.Errorf("cancel record keyed %q on %d, want the call's key %q on %d", extra.Key, extra.Partition, data.Key, data.Partition)
	}
	if got, want := headerList(extra), append(headerList(data), "zilla:status=1"); !slices.Equal(got, want) {
		t.Errorf("cancel record headers %q, want %q", got, want)
	}
}

// TestWireAuditUnaryCardinality: a unary call is "1 data + EOS each way"
// (WIRE.md); the typed code enforces the kind at the edges. A worker that
// ends a unary call OK without a data record, or with two, cannot be
// relayed as it is: the caller gets an error, as from a gRPC server that
// did so, not an empty or arbitrary answer.
func TestWireAuditUnaryCardinality(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("wu") + "."
	kafkatest.CreateTopics(t, kc, auditPartitions, prefix+"echo-requests", prefix+"echo-responses")
	scriptedWorker(t, kc, prefix, func(_ *kafkaclient.Record, req *echov1.EchoRequest, reply func([]byte, hdrs)) {
		n := int(req.GetRepeat())
		for i := range n {
			v, _ := proto.Marshal(&echov1.EchoResponse{Message: "r", Index: int32(i)})
			reply(v, nil)
		}
		reply(nil, hdrs{"zilla:status", "0"})
	})
	callers := auditCallers(t, kc, prefix, nil, nil)
	for _, c := range callers {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t, 30*time.Second)
			for _, n := range []int32{0, 2} {
				r, err := c.client.EchoUnary(ctx, &echov1.EchoRequest{Repeat: n})
				if status.Code(err) != codes.Internal {
					t.Errorf("a unary reply of %d data records and OK: answer %v, %v; want INTERNAL", n, r, err)
				}
			}
		})
	}
}

// auditCaller is an echo client through one of the two calling paths.
type auditCaller struct {
	name   string
	client echov1.EchoServiceClient
}

// auditCallers returns an echo client through a gateway (behind a gRPC
// server) and one through a ClientConn, both on kc with the topics of
// prefix, the gateway made with gwOpts too and the ClientConn with
// connOpts.
func auditCallers(t *testing.T, kc kafkaclient.Client, prefix string, gwOpts []runtime.GatewayOption, connOpts []runtime.ConnOption) []auditCaller {
	gw := runtime.NewGateway(kc, append([]runtime.GatewayOption{runtime.WithTopicMapper(func(s string) string { return prefix + s }),
		runtime.WithLogger(kafkatest.Logger(t))}, gwOpts...)...)
	t.Cleanup(func() { _ = gw.Close() })
	viaGateway := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	_, viaConn := connTo(t, kc, prefix, connOpts...)
	return []auditCaller{{"gateway", viaGateway}, {"ClientConn", viaConn}}
}
