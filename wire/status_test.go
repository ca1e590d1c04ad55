package wire

import (
	"strconv"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func TestStatusHeadersRoundTrip(t *testing.T) {
	names := DefaultNames()
	st, err := status.New(codes.FailedPrecondition, "not yet").WithDetails(&errdetails.ErrorInfo{Reason: "WAIT"})
	if err != nil {
		t.Fatal(err)
	}
	hs := AppendStatus(nil, &names, st)
	if v, _ := headerValue(hs, "zilla:status"); string(v) != "9" {
		t.Fatalf("zilla:status = %q, want 9", v)
	}
	if v, _ := headerValue(hs, "zilla:message"); string(v) != "not yet" {
		t.Fatalf("zilla:message = %q", v)
	}
	back := decodeOf(&names, hs).Status()
	if !proto.Equal(back.Proto(), st.Proto()) {
		t.Fatalf("status = %v, want %v", back.Proto(), st.Proto())
	}
}

func TestStatusFromHeaders(t *testing.T) {
	names := DefaultNames()
	h := func(kv ...string) []Header {
		var hs []Header
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, Header{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	if st := decodeOf(&names, nil).Status(); st != nil {
		t.Errorf("no status header = %v, want OK", st)
	}
	if st := decodeOf(&names, h("zilla:status", "0")).Status(); st != nil {
		t.Errorf("status 0 = %v, want OK", st)
	}
	if st := decodeOf(&names, h("zilla:status", "5", "zilla:message", "gone")).Status(); st.Code() != codes.NotFound || st.Message() != "gone" {
		t.Errorf("status 5 = %v", st)
	}
	st := decodeOf(&names, h("zilla:status", "abc")).Status()
	if st.Code() != codes.Unknown || !strings.Contains(st.Message(), `"abc"`) {
		t.Errorf("malformed status = %v, want UNKNOWN naming the value", st)
	}
	if st := decodeOf(&names, h("zilla:status", "-1")).Status(); st.Code() != codes.Unknown {
		t.Errorf("negative status = %v, want UNKNOWN", st)
	}
	// Details that are not base64, or not a google.rpc.Status: INTERNAL, as
	// gRPC answers a malformed grpc-status-details-bin, naming the header and
	// keeping the code and message.
	for _, bad := range []string{"not base64!", "/w"} {
		st := decodeOf(&names, h("zilla:status", "5", "zilla:message", "gone", "zilla:status-details-bin", bad)).Status()
		if st.Code() != codes.Internal || !strings.Contains(st.Message(), "zilla:status-details-bin") || !strings.Contains(st.Message(), "NotFound: gone") {
			t.Errorf("details %q: %v, want INTERNAL naming the header and the status NotFound: gone", bad, st)
		}
	}
}

// decodeOf decodes the headers of an end-of-stream record.
func decodeOf(names *Names, hs []Header) *Envelope {
	e := Decode(names, hs, nil)
	return &e
}

// TestStatusValueOfEveryCode: the status header carries each code in
// decimal (the values are shared between records, so none has room to be
// appended into), and a code beyond gRPC's own still round-trips.
func TestStatusValueOfEveryCode(t *testing.T) {
	names := DefaultNames()
	for code := codes.Code(0); code <= 20; code++ {
		var st *status.Status
		if code != codes.OK {
			st = status.New(code, "m")
		}
		hs := AppendStatus(nil, &names, st)
		v, _ := headerValue(hs, "zilla:status")
		if want := strconv.Itoa(int(code)); string(v) != want {
			t.Fatalf("code %d: zilla:status = %q, want %q", code, v, want)
		}
		if code <= codes.Unauthenticated && cap(v) != len(v) {
			t.Fatalf("code %d: status value has room to append into (len %d, cap %d)", code, len(v), cap(v))
		}
		if got := decodeOf(&names, hs).Status().Code(); got != code {
			t.Fatalf("code %d decoded as %d", code, got)
		}
	}
}
