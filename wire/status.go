package wire

import (
	"encoding/base64"
	"strconv"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// codeValues are the status header values of gRPC's codes, shared by every
// record that carries one (records' header values are only ever read).
var codeValues = func() [17][]byte {
	var vs [17][]byte
	for i := range vs {
		v := strconv.AppendInt(nil, int64(i), 10)
		vs[i] = v[:len(v):len(v)] // no room to append into
	}
	return vs
}()

// AppendStatus appends the status of an end-of-stream record: the status
// header with the code in decimal, the message header when there is a
// message, and the marshalled google.rpc.Status in base64 when it carries
// details (extension). A nil st is OK.
func AppendStatus(hs []Header, names *Names, st *status.Status) []Header {
	if st == nil {
		return append(hs, Header{Key: names.Status, Value: codeValues[0]})
	}
	var v []byte
	if code := st.Code(); int(code) < len(codeValues) {
		v = codeValues[code]
	} else {
		v = strconv.AppendInt(nil, int64(code), 10)
	}
	hs = append(hs, Header{Key: names.Status, Value: v})
	if msg := st.Message(); msg != "" {
		hs = append(hs, Header{Key: names.Message, Value: []byte(msg)})
	}
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		if b, err := proto.Marshal(p); err == nil {
			hs = append(hs, Header{Key: names.StatusDetails, Value: base64.StdEncoding.AppendEncode(nil, b)})
		}
	}
	return hs
}

// decodeStatus reads the status of an end-of-stream record from the raw
// values of its status, message and details headers. An absent status or
// "0" is OK (nil). A status that is not a decimal code is UNKNOWN with a
// message naming the bad value. Details that cannot be decoded make the
// status INTERNAL, as gRPC makes a malformed grpc-status-details-bin, with a
// message naming the header and keeping the code and message it came with.
func decodeStatus(names *Names, code, msg, details []byte) *status.Status {
	if code == nil || string(code) == "0" {
		return nil
	}
	n, err := strconv.ParseUint(string(code), 10, 32)
	if err != nil {
		return status.Newf(codes.Unknown, "reply has a malformed %s header %q", names.Status, code)
	}
	if details != nil {
		b, err := DecodeBase64(string(details))
		p := new(spb.Status)
		if err == nil {
			err = proto.Unmarshal(b, p)
		}
		if err != nil {
			return status.Newf(codes.Internal, "reply has a malformed %s header (%v); its status was %s: %s", names.StatusDetails, err, codes.Code(n), msg)
		}
		p.Code = int32(n)
		p.Message = string(msg)
		return status.FromProto(p)
	}
	if n == 0 {
		return nil
	}
	return status.New(codes.Code(n), string(msg))
}
