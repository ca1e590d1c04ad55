package wire

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Envelope is what a record's headers say about the call the record belongs
// to, read in one pass by Decode. Byte slices alias the record's header
// values (no copy): they are valid as long as the record is, and must not be
// modified. A nil slice means the header is absent; a present header with an
// empty value is an empty, non-nil slice.
type Envelope struct {
	// EndOfStream is set for a null record: the end of its direction.
	EndOfStream bool

	Service       []byte // the service header (fully-qualified name)
	Method        []byte // the method header (bare name)
	ReplyTo       []byte // the reply-to header (the reply topic)
	CorrelationID []byte // the correlation-id header
	Identity      []byte // the identity header, written by a gateway with runtime.GatewayIdentity

	// IdempotencyKey is the value of the "meta:idempotency-key" header.
	IdempotencyKey []byte
	// ServedBy is the value of the "meta:kafkarpc-served-by" header of a
	// reply (ServedByMetadata).
	ServedBy []byte
	// Attempt is the value of the "meta:kafkarpc-attempt" header
	// (AttemptMetadata).
	Attempt []byte
	// Timeout is the value of the "meta:grpc-timeout" header, when
	// HasTimeout.
	Timeout    time.Duration
	HasTimeout bool
	// TimeoutErr says why a present "meta:grpc-timeout" header could not be
	// read; HasTimeout is then false.
	TimeoutErr error

	// StatusCode, StatusMessage and StatusDetails are the raw values of the
	// status headers of an end-of-stream record; Status decodes them.
	StatusCode, StatusMessage, StatusDetails []byte

	// Meta holds the "meta:" headers in record order, prefix included, except
	// the timeout, served-by and attempt headers; Metadata decodes them.
	Meta []Header
	// Trailers holds the "trailer:" headers of a reply end-of-stream record,
	// prefix included; Trailer decodes them.
	Trailers []Header

	names *Names
}

// Decode reads hs, the headers of a record whose value is value, in one pass.
// names must be complete (Names.WithDefaults). Headers it does not know (a
// route's override headers, for example) are ignored; of a header that
// repeats, the first counts, except in Meta and Trailers, which keep every
// one.
func Decode(names *Names, hs []Header, value []byte) Envelope {
	e := Envelope{EndOfStream: value == nil, names: names}
	metaFrom, metaTo := -1, -1 // Meta is hs[metaFrom:metaTo] while the meta headers are contiguous
	contiguous := true
	for i := range hs {
		h := &hs[i]
		switch k := h.Key; {
		case strings.HasPrefix(k, names.MetaPrefix):
			switch name := k[len(names.MetaPrefix):]; name {
			case TimeoutMetadata:
				if !e.HasTimeout && e.TimeoutErr == nil {
					d, err := decodeTimeout(h.Value)
					if err != nil {
						e.TimeoutErr = fmt.Errorf("header %q: %w", k, err)
					} else {
						e.Timeout, e.HasTimeout = d, true
					}
				}
				continue
			case ServedByMetadata:
				first(&e.ServedBy, h.Value)
				continue
			case AttemptMetadata:
				first(&e.Attempt, h.Value)
				continue
			case IdempotencyKeyMetadata:
				if e.IdempotencyKey == nil {
					e.IdempotencyKey = nonNil(h.Value)
				}
			}
			switch {
			case metaFrom < 0:
				metaFrom, metaTo = i, i+1
			case contiguous && metaTo == i:
				metaTo = i + 1
			default:
				if contiguous {
					contiguous = false
					e.Meta = append(make([]Header, 0, metaTo-metaFrom+4), hs[metaFrom:metaTo]...)
				}
				e.Meta = append(e.Meta, *h)
			}
		case strings.HasPrefix(k, names.TrailerPrefix):
			e.Trailers = append(e.Trailers, *h)
		case k == names.CorrelationID:
			first(&e.CorrelationID, h.Value)
		case k == names.Service:
			first(&e.Service, h.Value)
		case k == names.Method:
			first(&e.Method, h.Value)
		case k == names.ReplyTo:
			first(&e.ReplyTo, h.Value)
		case k == names.Status:
			first(&e.StatusCode, h.Value)
		case k == names.Message:
			first(&e.StatusMessage, h.Value)
		case k == names.StatusDetails:
			first(&e.StatusDetails, h.Value)
		case k == names.Identity:
			first(&e.Identity, h.Value)
		}
	}
	if contiguous && metaFrom >= 0 {
		e.Meta = hs[metaFrom:metaTo:metaTo]
	}
	return e
}

// first sets *dst to v unless an earlier header set it.
func first(dst *[]byte, v []byte) {
	if *dst == nil {
		*dst = nonNil(v)
	}
}

func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// Cancel reports whether the record is a request end-of-stream record that
// cancels the call (status CANCELLED, extension).
func (e *Envelope) Cancel() bool {
	return e.EndOfStream && string(e.StatusCode) == CancelStatus
}

// Status decodes the status of a reply end-of-stream record: nil for OK (an
// absent status or "0"), UNKNOWN naming the value for a status that is not a
// decimal code, and the google.rpc.Status details when the record has them.
func (e *Envelope) Status() *status.Status {
	return decodeStatus(e.names, e.StatusCode, e.StatusMessage, e.StatusDetails)
}

// Metadata decodes Meta into gRPC metadata (see DecodeMetadata): the request
// metadata of a request record, the response headers of a reply. It never
// contains the timeout, served-by or attempt headers.
func (e *Envelope) Metadata() (metadata.MD, error) {
	return DecodeMetadata(e.Meta, e.names.MetaPrefix, nil)
}

// Trailer decodes Trailers into gRPC metadata.
func (e *Envelope) Trailer() (metadata.MD, error) {
	return DecodeMetadata(e.Trailers, e.names.TrailerPrefix, nil)
}

// Deadline returns the request's deadline, the timeout counted from sent
// (the record's timestamp; zero means now), and whether there is one.
func (e *Envelope) Deadline(sent time.Time) (time.Time, bool) {
	if !e.HasTimeout {
		return time.Time{}, false
	}
	if sent.IsZero() {
		sent = time.Now()
	}
	return sent.Add(e.Timeout), true
}
