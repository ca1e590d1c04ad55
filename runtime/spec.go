package runtime

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// These constants are referenced by generated code so that a runtime too old
// or too new for the generated code fails at compile time. A runtime keeps
// the constants of the generated code it still supports.
const (
	// SupportPackageIsVersion1 is referenced by code generated before
	// SupportPackageIsVersion2.
	SupportPackageIsVersion1 = true
	// SupportPackageIsVersion2 is referenced by code that copies its specs
	// with ServiceSpec.Clone.
	SupportPackageIsVersion2 = true
	// SupportPackageIsVersion3 is referenced by code that declares typed
	// publishers of fetch methods (NewPublisher).
	SupportPackageIsVersion3 = true
	// SupportPackageIsVersion4 is referenced by code that registers its
	// gateways with Gateway.ServiceDesc (unary calls relayed as bytes).
	SupportPackageIsVersion4 = true
)

// MethodKind is the gRPC shape of a method, as declared in the proto.
type MethodKind int8

const (
	// KindUnary is one request, one response.
	KindUnary MethodKind = iota
	// KindServerStream is one request, a stream of responses.
	KindServerStream
	// KindClientStream is a stream of requests, one response.
	KindClientStream
	// KindBidiStream is a stream each way.
	KindBidiStream
)

// String returns the kind in lower case, e.g. "server streaming".
func (k MethodKind) String() string {
	switch k {
	case KindUnary:
		return "unary"
	case KindServerStream:
		return "server streaming"
	case KindClientStream:
		return "client streaming"
	case KindBidiStream:
		return "bidi streaming"
	}
	return fmt.Sprintf("MethodKind(%d)", int8(k))
}

// clientStreams reports whether the caller sends a stream.
func (k MethodKind) clientStreams() bool { return k == KindClientStream || k == KindBidiStream }

// serverStreams reports whether the method answers with a stream.
func (k MethodKind) serverStreams() bool { return k == KindServerStream || k == KindBidiStream }

// Acks is the producer acknowledgement level for a method's request records.
type Acks = kafkaclient.Acks

// Acknowledgement levels; see kafkaclient.
const (
	AcksAll    = kafkaclient.AcksAll
	AcksLeader = kafkaclient.AcksLeader
	AcksNone   = kafkaclient.AcksNone
)

// Header is a static header name and value, such as a route override.
type Header struct {
	Name  string
	Value string
}

// MetadataMatch is one condition of a route: the gRPC request metadata Name
// (lower case) has a value equal to Value; an empty Value matches any value as
// long as the name is present.
type MetadataMatch struct {
	Name  string
	Value string
}

// Route is where a call's request records go and where its replies come from.
// Generated code fills these from the proto options; they must not be changed
// after the gateway or worker started using them.
type Route struct {
	// When lists the conditions on request metadata that must all hold for
	// the route to be chosen. Empty on a method's default route.
	When []MetadataMatch
	// Topic receives the request records. Required.
	Topic string
	// ReplyTopic carries the replies. Empty when Oneway.
	ReplyTopic string
	// Key is the static record key; empty uses KeyField, else the
	// correlation id.
	Key string
	// KeyField, when set (and Key empty), takes the record key of every
	// record of a call from a field of its first request message.
	KeyField *KeyField
	// Overrides are static headers written first on every request record and
	// hashed into the correlation id, in order.
	Overrides []Header
	// Acks is the acknowledgement level of request records. Default AcksAll.
	Acks Acks
	// Oneway methods have no reply topic: the gateway answers with an empty
	// message once Kafka acknowledged the request records.
	Oneway bool
}

// KeyField takes a call's record key from a field of its first request
// message, read from the encoded message without decoding it. The key is
// the field's value: string and bytes as they are, integers and enums as
// decimal text. An unset field (absent from the message, its parent message
// absent, or, without ExplicitPresence, its zero value) gives the empty key,
// or fails the call with INVALID_ARGUMENT when Required.
type KeyField struct {
	// Path names the field as the option wrote it, e.g. "order.id"; errors
	// quote it.
	Path string
	// Numbers are the field numbers along Path, outermost first. Every one
	// but the last is a singular message field.
	Numbers []int32
	// Kind is the last field's kind: a string, bytes, integer or enum kind.
	Kind protoreflect.Kind
	// ExplicitPresence reports whether the last field tracks presence
	// (proto3 optional, proto2, editions): then its zero value is a value.
	ExplicitPresence bool
	// Required fails a call whose field is unset with INVALID_ARGUMENT
	// instead of keying it with the empty key.
	Required bool
}

// FetchFilter selects records of a fetched topic: every condition given must
// hold (all-of). A nil Key places no condition on the key. KeyMetadata and
// HeaderMetadata take their values from the caller's request metadata (any
// of its values matches); a caller without them is refused with
// INVALID_ARGUMENT, or, with MetadataOptional, is not filtered by them.
type FetchFilter struct {
	Key     *string
	Headers []Header
	// KeyMetadata names request metadata whose value the key must equal.
	KeyMetadata string
	// HeaderMetadata are header conditions whose values come from request
	// metadata: Name is the record header, Value the metadata name.
	HeaderMetadata []Header
	// MetadataOptional drops the metadata conditions a caller has no
	// metadata for, instead of refusing the call.
	MetadataOptional bool
}

// FetchSpec describes a fetch (fanout) method.
type FetchSpec struct {
	// Topic whose records are streamed to every caller.
	Topic string
	// Filters: a record is delivered when any filter matches (any-of); no
	// filters deliver everything.
	Filters []FetchFilter
	// EventIDField is the unknown field number carrying the event id.
	// Default 32767.
	EventIDField int32
	// ResumeMetadata is the request metadata name carrying the last event id.
	// Default "last-message-id".
	ResumeMetadata string
}

// MethodSpec is everything the runtime needs to relay or serve one method.
// Generated code declares one per annotated method.
type MethodSpec struct {
	// Service is the fully-qualified service name, e.g. "example.echo.v1.EchoService".
	Service string
	// Method is the bare method name, e.g. "EchoUnary".
	Method string
	// Kind is the method's gRPC shape.
	Kind MethodKind
	// Routes are tried in order; the first whose When all hold is used. The
	// last route normally has no conditions (the method's default).
	Routes []Route
	// Fetch is set for fetch methods; Routes is then empty.
	Fetch *FetchSpec
}

// FullMethod returns "/service/method", the gRPC method path.
func (m *MethodSpec) FullMethod() string { return "/" + m.Service + "/" + m.Method }

// Clone returns a deep copy of m: changing the copy, or anything it points
// to, leaves m as it was.
func (m *MethodSpec) Clone() *MethodSpec {
	if m == nil {
		return nil
	}
	c := *m
	if m.Routes != nil {
		c.Routes = make([]Route, len(m.Routes))
		for i, r := range m.Routes {
			r.When = slices.Clone(r.When)
			r.Overrides = slices.Clone(r.Overrides)
			if r.KeyField != nil {
				kf := *r.KeyField
				kf.Numbers = slices.Clone(kf.Numbers)
				r.KeyField = &kf
			}
			c.Routes[i] = r
		}
	}
	if m.Fetch != nil {
		f := *m.Fetch
		if f.Filters != nil {
			f.Filters = make([]FetchFilter, len(m.Fetch.Filters))
			for i, ff := range m.Fetch.Filters {
				if ff.Key != nil {
					ff.Key = new(*ff.Key)
				}
				ff.Headers = slices.Clone(ff.Headers)
				ff.HeaderMetadata = slices.Clone(ff.HeaderMetadata)
				f.Filters[i] = ff
			}
		}
		c.Fetch = &f
	}
	return &c
}

// ServiceSpec lists the annotated methods of one service.
type ServiceSpec struct {
	// Name is the fully-qualified service name.
	Name string
	// Methods of the service that travel over Kafka, in proto order.
	Methods []*MethodSpec
}

// Clone returns a deep copy of s: changing the copy, or anything it points
// to, leaves s as it was. Generated code gives out a clone of the spec it
// uses (<Service>KafkaSpec), so that nothing a caller does to it reaches the
// generated gateway and worker.
func (s *ServiceSpec) Clone() *ServiceSpec {
	if s == nil {
		return nil
	}
	c := *s
	if s.Methods != nil {
		c.Methods = make([]*MethodSpec, len(s.Methods))
		for i, m := range s.Methods {
			c.Methods[i] = m.Clone()
		}
	}
	return &c
}

// Method returns the spec of the named method, or nil.
func (s *ServiceSpec) Method(name string) *MethodSpec {
	for _, m := range s.Methods {
		if m.Method == name {
			return m
		}
	}
	return nil
}
