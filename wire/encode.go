package wire

import (
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// AppendRoute appends the request headers a route fixes for every call, in
// WIRE.md's order: the route's override headers, then the service, method
// and, unless replyTo is empty (a oneway route), reply-to headers. A gateway
// computes them once per route and passes them to AppendRequest.
func AppendRoute(hs []Header, names *Names, overrides []Header, service, method, replyTo string) []Header {
	hs = append(hs, overrides...)
	hs = append(hs, Header{Key: names.Service, Value: []byte(service)}, Header{Key: names.Method, Value: []byte(method)})
	if replyTo != "" {
		hs = append(hs, Header{Key: names.ReplyTo, Value: []byte(replyTo)})
	}
	return hs
}

// Request is what varies from call to call in a request record's headers.
type Request struct {
	// Route is what AppendRoute returned for the call's route.
	Route []Header
	// Identity is the caller's identity; nil writes no identity header.
	Identity []byte
	// CorrelationID is the call's correlation id; nil (a oneway call)
	// writes none.
	CorrelationID []byte
	// Timeout, when HasTimeout, is written as "meta:grpc-timeout"
	// (EncodeTimeout): the time left before the caller's deadline.
	Timeout    time.Duration
	HasTimeout bool
	// Attempt, when not nil, is written as "meta:kafkarpc-attempt"
	// (AttemptMetadata): a keyed call's attempt id.
	Attempt []byte
	// Scratch, when it has room (9 bytes suffice), holds the encoded
	// timeout, so that writing it allocates nothing; the caller leaves it
	// unchanged while the headers are in use. Nil allocates.
	Scratch []byte
	// Metadata is the caller's request metadata, written as "meta:" headers
	// (AppendMetadata) with the names Keep accepts (all when Keep is nil).
	Metadata metadata.MD
	Keep     func(name string) bool
}

// AppendRequest appends the headers of every request record of a call (data
// and end-of-stream alike), in WIRE.md's order: r.Route, identity,
// correlation id, then the "meta:" headers: timeout, attempt, metadata.
func AppendRequest(hs []Header, names *Names, r *Request) []Header {
	hs = append(hs, r.Route...)
	if r.Identity != nil {
		hs = append(hs, Header{Key: names.Identity, Value: r.Identity})
	}
	if r.CorrelationID != nil {
		hs = append(hs, Header{Key: names.CorrelationID, Value: r.CorrelationID})
	}
	if r.HasTimeout {
		key := defaultMetaPrefix + TimeoutMetadata // a constant: no allocation for the default prefix
		if names.MetaPrefix != defaultMetaPrefix {
			key = names.MetaPrefix + TimeoutMetadata
		}
		hs = append(hs, Header{Key: key, Value: AppendTimeout(r.Scratch[:0], r.Timeout)})
	}
	if r.Attempt != nil {
		hs = append(hs, Header{Key: names.MetaPrefix + AttemptMetadata, Value: r.Attempt})
	}
	return AppendMetadata(hs, names.MetaPrefix, r.Metadata, r.Keep)
}

// AppendCancel appends to a copy of a call's request headers the status
// header that makes its end-of-stream record a cancel (CancelStatus).
func AppendCancel(request []Header, names *Names) []Header {
	hs := make([]Header, len(request), len(request)+1)
	copy(hs, request)
	return append(hs, Header{Key: names.Status, Value: []byte(CancelStatus)})
}

// AppendReply appends the headers a reply record starts with: the
// correlation id, the response header metadata md as "meta:" headers, then
// extra, headers already encoded (the worker's trace context and served-by
// id, for example). Data records carry these; an end-of-stream record carries
// them too when no data record did, followed by AppendEnd's.
func AppendReply(hs []Header, names *Names, correlationID []byte, md metadata.MD, extra ...Header) []Header {
	hs = append(hs, Header{Key: names.CorrelationID, Value: correlationID})
	hs = AppendMetadata(hs, names.MetaPrefix, md, nil)
	return append(hs, extra...)
}

// AppendEnd appends what closes a reply end-of-stream record: the status
// (AppendStatus; nil is OK) and the trailers as "trailer:" headers.
func AppendEnd(hs []Header, names *Names, st *status.Status, trailer metadata.MD) []Header {
	hs = AppendStatus(hs, names, st)
	return AppendMetadata(hs, names.TrailerPrefix, trailer, nil)
}
