package runtime

import (
	"encoding/base64"
	"strconv"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// appendStatusHeaders appends the status of an end-of-stream record:
// "zilla:status" with the code in decimal, "zilla:message" when there is a
// message, and the marshalled google.rpc.Status in base64 when it carries
// details (extension).
func appendStatusHeaders(hs []kafkaclient.Header, names *HeaderNames, st *status.Status) []kafkaclient.Header {
	hs = append(hs, kafkaclient.Header{Key: names.Status, Value: strconv.AppendInt(nil, int64(st.Code()), 10)})
	if msg := st.Message(); msg != "" {
		hs = append(hs, kafkaclient.Header{Key: names.Message, Value: []byte(msg)})
	}
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		if b, err := proto.Marshal(p); err == nil {
			hs = append(hs, kafkaclient.Header{Key: names.StatusDetails, Value: []byte(base64.StdEncoding.EncodeToString(b))})
		}
	}
	return hs
}

// statusFromHeaders reads the status of an end-of-stream record. An absent
// status or "0" is OK. A status that is not a decimal code is UNKNOWN with a
// message naming the bad value.
func statusFromHeaders(hs []kafkaclient.Header, names *HeaderNames) *status.Status {
	raw, ok := headerValue(hs, names.Status)
	if !ok || string(raw) == "0" {
		return nil
	}
	code, err := strconv.ParseUint(string(raw), 10, 32)
	if err != nil {
		return status.Newf(codes.Unknown, "reply has a malformed %s header %q", names.Status, raw)
	}
	msg, _ := headerValue(hs, names.Message)
	if det, ok := headerValue(hs, names.StatusDetails); ok {
		if b, err := decodeBase64(string(det)); err == nil {
			p := new(spb.Status)
			if proto.Unmarshal(b, p) == nil {
				p.Code = int32(code)
				p.Message = string(msg)
				return status.FromProto(p)
			}
		}
	}
	if code == 0 {
		return nil
	}
	return status.New(codes.Code(code), string(msg))
}
