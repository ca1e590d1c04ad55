package runtime

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

func TestStatusHeadersRoundTrip(t *testing.T) {
	names := DefaultHeaderNames()
	st, err := status.New(codes.FailedPrecondition, "not yet").WithDetails(&errdetails.ErrorInfo{Reason: "WAIT"})
	if err != nil {
		t.Fatal(err)
	}
	hs := appendStatusHeaders(nil, &names, st)
	if v, _ := headerValue(hs, "zilla:status"); string(v) != "9" {
		t.Fatalf("zilla:status = %q, want 9", v)
	}
	if v, _ := headerValue(hs, "zilla:message"); string(v) != "not yet" {
		t.Fatalf("zilla:message = %q", v)
	}
	back := statusFromHeaders(hs, &names)
	if !proto.Equal(back.Proto(), st.Proto()) {
		t.Fatalf("status = %v, want %v", back.Proto(), st.Proto())
	}
}

func TestStatusFromHeaders(t *testing.T) {
	names := DefaultHeaderNames()
	h := func(kv ...string) []kafkaclient.Header {
		var hs []kafkaclient.Header
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, kafkaclient.Header{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	if st := statusFromHeaders(nil, &names); st != nil {
		t.Errorf("no status header = %v, want OK", st)
	}
	if st := statusFromHeaders(h("zilla:status", "0"), &names); st != nil {
		t.Errorf("status 0 = %v, want OK", st)
	}
	if st := statusFromHeaders(h("zilla:status", "5", "zilla:message", "gone"), &names); st.Code() != codes.NotFound || st.Message() != "gone" {
		t.Errorf("status 5 = %v", st)
	}
	st := statusFromHeaders(h("zilla:status", "abc"), &names)
	if st.Code() != codes.Unknown || !strings.Contains(st.Message(), `"abc"`) {
		t.Errorf("malformed status = %v, want UNKNOWN naming the value", st)
	}
	if st := statusFromHeaders(h("zilla:status", "-1"), &names); st.Code() != codes.Unknown {
		t.Errorf("negative status = %v, want UNKNOWN", st)
	}
}

func TestPartTrackCommitPoint(t *testing.T) {
	p := newPartTrack()
	for off := int64(10); off <= 14; off++ {
		p.seen(off)
	}
	p.begin(10)
	p.begin(11)
	p.begin(13)
	if got := p.point(); got != 10 {
		t.Fatalf("point = %d, want 10", got)
	}
	p.finish(11)
	if got := p.point(); got != 10 {
		t.Fatalf("after 11 finished: point = %d, want 10", got)
	}
	p.finish(10)
	if got := p.point(); got != 13 {
		t.Fatalf("after 10 finished: point = %d, want 13", got)
	}
	p.finish(13)
	if got := p.point(); got != 15 {
		t.Fatalf("all finished: point = %d, want 15", got)
	}
}
