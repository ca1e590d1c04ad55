package main

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	kafkaoptions "github.com/kafkarpc/protoc-gen-go-kafka/options"
)

// The model is everything the emitter needs, read from the options of the
// files to generate and validated in full before a line is emitted. Settings
// are resolved here (service defaults, then method, then route), so the
// emitter only writes values out.

// Defaults of a fetch, as documented in options.proto.
const (
	defaultEventIDField   = 32767
	defaultResumeMetadata = "last-message-id"
)

// Limits of the values the options take.
const (
	maxTopicLen        = 249       // Kafka's limit on a topic name
	maxFieldNumber     = 536870911 // protobuf's largest field number, 2^29-1
	firstReservedField = 19000     // protobuf reserves 19000-19999
	lastReservedField  = 19999
)

// kafkaFile is a proto file with at least one service travelling over Kafka.
type kafkaFile struct {
	file     *protogen.File
	services []*kafkaService
}

// kafkaService is a service with a ServiceRule, or with at least one method
// carrying a MethodRule.
type kafkaService struct {
	service *protogen.Service
	names   names
	// methods that travel over Kafka, in proto order.
	methods []*kafkaMethod
}

// kafkaMethod is one method that travels over Kafka: either produce-style,
// with routes, or a fetch.
type kafkaMethod struct {
	method *protogen.Method
	kind   methodKind
	// routes are the conditional routes in option order, then the method's
	// default route (without conditions). Empty for a fetch.
	routes []route
	fetch  *fetch
}

// route is a fully resolved destination of a method's calls.
type route struct {
	when       []header // metadata conditions: name, value (empty: present)
	topic      string
	replyTopic string
	key        string
	overrides  []header
	acks       kafkaoptions.Acks // never ACKS_UNSPECIFIED
	oneway     bool
}

// header is a name and a value: an override, a filter header or a metadata
// condition.
type header struct {
	name  string
	value string
}

// fetch is a resolved FetchRule.
type fetch struct {
	topic          string
	filters        []fetchFilter
	eventIDField   int32
	resumeMetadata string
}

type fetchFilter struct {
	key     *string
	headers []header
}

// methodKind mirrors runtime.MethodKind.
type methodKind int

const (
	kindUnary methodKind = iota
	kindServerStream
	kindClientStream
	kindBidiStream
)

func kindOf(m *protogen.Method) methodKind {
	switch client, server := m.Desc.IsStreamingClient(), m.Desc.IsStreamingServer(); {
	case client && server:
		return kindBidiStream
	case client:
		return kindClientStream
	case server:
		return kindServerStream
	default:
		return kindUnary
	}
}

func (k methodKind) String() string {
	switch k {
	case kindServerStream:
		return "server-streaming"
	case kindClientStream:
		return "client-streaming"
	case kindBidiStream:
		return "bidi-streaming"
	default:
		return "unary"
	}
}

// optionError is one invalid option: the file, the line and column of the
// option (or of the element, when the problem is an option it lacks), the
// element (service or method full name) and what is wrong, starting with
// the option's field path.
type optionError struct {
	File    string
	Line    int // 1-based; 0 when the request carries no source info
	Column  int // 1-based
	Element protoreflect.FullName
	Msg     string
}

// Error reads as a compiler's: "file:line:column: element: message".
func (e *optionError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d:%d: %s: %s", e.File, e.Line, e.Column, e.Element, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Element, e.Msg)
}

// checker collects every problem found, so that all of them are reported at
// once rather than one per run.
type checker struct {
	file string
	errs []error
	// pos holds the source position of each element checked: its Kafka
	// option when it has one, else its declaration.
	pos map[protoreflect.FullName]protoreflect.SourceLocation
}

func (c *checker) errorf(el protoreflect.FullName, format string, args ...any) {
	loc := c.pos[el]
	e := &optionError{File: c.file, Element: el, Msg: fmt.Sprintf(format, args...)}
	if loc.StartLine >= 0 && (loc.StartLine > 0 || loc.StartColumn > 0 || loc.EndLine > 0) {
		e.Line, e.Column = loc.StartLine+1, loc.StartColumn+1
	}
	c.errs = append(c.errs, e)
}

// Field numbers of the options field in ServiceDescriptorProto and
// MethodDescriptorProto, for source paths.
const (
	serviceOptionsField = 3
	methodOptionsField  = 4
)

// locate records where el's problems are reported: at the option whose
// extension number is ext, when the file has source info for it, else at the
// element's declaration.
func (c *checker) locate(el protoreflect.FullName, file protoreflect.FileDescriptor, declPath protoreflect.SourcePath, optionsField int32, ext protoreflect.FieldNumber) {
	if c.pos == nil {
		c.pos = map[protoreflect.FullName]protoreflect.SourceLocation{}
	}
	locs := file.SourceLocations()
	optPath := append(append(protoreflect.SourcePath(nil), declPath...), optionsField, int32(ext))
	if loc := locs.ByPath(optPath); loc.Path != nil {
		c.pos[el] = loc
		return
	}
	if loc := locs.ByPath(declPath); loc.Path != nil {
		c.pos[el] = loc
	}
}

// buildModel reads and validates the options of every file to generate. It
// returns the files that need a _kafka.pb.go, or every problem found, joined.
func buildModel(gen *protogen.Plugin) ([]*kafkaFile, error) {
	c := &checker{}
	var files []*kafkaFile
	for _, f := range gen.Files {
		if !f.Generate {
			continue
		}
		c.file = f.Desc.Path()
		kf := &kafkaFile{file: f}
		for _, s := range f.Services {
			if ks := c.service(s); ks != nil {
				kf.services = append(kf.services, ks)
			}
		}
		if len(kf.services) > 0 {
			files = append(files, kf)
		}
	}
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	return files, nil
}

// serviceRule returns the service's rule, or nil when it has none.
func serviceRule(s *protogen.Service) *kafkaoptions.ServiceRule {
	opts := s.Desc.Options()
	if opts == nil || !proto.HasExtension(opts, kafkaoptions.E_Service) {
		return nil
	}
	r, _ := proto.GetExtension(opts, kafkaoptions.E_Service).(*kafkaoptions.ServiceRule)
	if r == nil {
		r = &kafkaoptions.ServiceRule{}
	}
	return r
}

// methodRule returns the method's rule, or nil when it has none.
func methodRule(m *protogen.Method) *kafkaoptions.MethodRule {
	opts := m.Desc.Options()
	if opts == nil || !proto.HasExtension(opts, kafkaoptions.E_Method) {
		return nil
	}
	r, _ := proto.GetExtension(opts, kafkaoptions.E_Method).(*kafkaoptions.MethodRule)
	if r == nil {
		r = &kafkaoptions.MethodRule{}
	}
	return r
}

// service models s, or returns nil when nothing of it travels over Kafka.
func (c *checker) service(s *protogen.Service) *kafkaService {
	srule := serviceRule(s)
	el := s.Desc.FullName()
	c.locate(el, s.Desc.ParentFile(), s.Location.Path, serviceOptionsField, kafkaoptions.E_Service.TypeDescriptor().Number())
	for _, m := range s.Methods {
		c.locate(m.Desc.FullName(), m.Desc.ParentFile(), m.Location.Path, methodOptionsField, kafkaoptions.E_Method.TypeDescriptor().Number())
	}
	if srule != nil {
		c.topicName(el, "request_topic", srule.GetRequestTopic())
		c.topicName(el, "reply_topic", srule.GetReplyTopic())
		c.overrides(el, "overrides", srule.GetOverrides())
		c.acks(el, "acks", srule.GetAcks())
	}
	ks := &kafkaService{service: s, names: newNames(s)}
	for _, m := range s.Methods {
		mrule := methodRule(m)
		if srule == nil && mrule == nil {
			continue
		}
		ks.methods = append(ks.methods, c.method(m, srule, mrule))
	}
	if srule == nil && len(ks.methods) == 0 {
		return nil
	}
	return ks
}

// method models one method that travels over Kafka. srule and mrule may each
// be nil, not both.
func (c *checker) method(m *protogen.Method, srule *kafkaoptions.ServiceRule, mrule *kafkaoptions.MethodRule) *kafkaMethod {
	km := &kafkaMethod{method: m, kind: kindOf(m)}
	el := m.Desc.FullName()
	if mrule.GetFetch() != nil {
		km.fetch = c.fetch(m, km.kind, mrule)
		return km
	}

	c.topicName(el, "request_topic", mrule.GetRequestTopic())
	c.topicName(el, "reply_topic", mrule.GetReplyTopic())
	c.overrides(el, "overrides", mrule.GetOverrides())
	c.acks(el, "acks", mrule.GetAcks())

	// The default route: the method's settings over the service's.
	def := route{
		topic:     first(mrule.GetRequestTopic(), srule.GetRequestTopic()),
		key:       first(mrule.GetKey(), srule.GetKey()),
		overrides: firstHeaders(mrule.GetOverrides(), srule.GetOverrides()),
		acks:      firstAcks(mrule.GetAcks(), srule.GetAcks(), kafkaoptions.Acks_ACKS_ALL),
		oneway:    mrule.GetOneway(),
	}
	// A oneway method or route does not inherit a reply topic; one that is
	// not oneway inherits this one.
	inheritedReply := first(mrule.GetReplyTopic(), srule.GetReplyTopic())
	if !def.oneway {
		def.replyTopic = inheritedReply
	}

	if def.topic == "" {
		c.errorf(el, "request_topic is required")
	}
	if def.oneway {
		if km.kind.serverStreams() {
			c.errorf(el, "oneway is only allowed on unary and client-streaming methods, not on a %s method", km.kind)
		}
		if mrule.GetReplyTopic() != "" {
			c.errorf(el, "reply_topic must be empty when oneway is set")
		}
	} else {
		if def.replyTopic == "" {
			c.errorf(el, "reply_topic is required unless oneway is set")
		}
		if def.topic != "" && def.replyTopic == def.topic {
			c.errorf(el, "reply_topic must differ from request_topic %q", def.topic)
		}
	}

	for i, r := range mrule.GetRoutes() {
		p := fmt.Sprintf("routes[%d].", i)
		if len(r.GetWhen()) == 0 {
			c.errorf(el, "%swhen needs at least one condition", p)
		}
		var when []header
		for j, w := range r.GetWhen() {
			c.metadataName(el, fmt.Sprintf("%swhen[%d].name", p, j), w.GetName())
			when = append(when, header{name: w.GetName(), value: w.GetValue()})
		}
		c.topicName(el, p+"request_topic", r.GetRequestTopic())
		c.topicName(el, p+"reply_topic", r.GetReplyTopic())
		c.overrides(el, p+"overrides", r.GetOverrides())
		c.acks(el, p+"acks", r.GetAcks())

		rt := route{
			when:      when,
			topic:     first(r.GetRequestTopic(), def.topic),
			key:       first(r.GetKey(), def.key),
			overrides: def.overrides,
			acks:      firstAcks(r.GetAcks(), def.acks, kafkaoptions.Acks_ACKS_ALL),
			oneway:    def.oneway,
		}
		if len(r.GetOverrides()) > 0 {
			rt.overrides = firstHeaders(r.GetOverrides())
		}
		if r.Oneway != nil {
			rt.oneway = r.GetOneway()
		}
		if rt.oneway {
			// Reported here only when the route itself asks for oneway;
			// otherwise the method's own check already did.
			if r.Oneway != nil && km.kind.serverStreams() {
				c.errorf(el, "%soneway is only allowed on unary and client-streaming methods, not on a %s method", p, km.kind)
			}
			if r.GetReplyTopic() != "" {
				c.errorf(el, "%sreply_topic must be empty when oneway is set", p)
			}
		} else {
			rt.replyTopic = first(r.GetReplyTopic(), inheritedReply)
			if rt.replyTopic == "" && def.oneway {
				c.errorf(el, "%sreply_topic is required unless oneway is set", p)
			}
			// Same pair as the default route: already reported there.
			if rt.topic != "" && rt.replyTopic == rt.topic && (rt.topic != def.topic || rt.replyTopic != def.replyTopic) {
				c.errorf(el, "%sreply_topic must differ from request_topic %q", p, rt.topic)
			}
		}
		km.routes = append(km.routes, rt)
	}
	km.routes = append(km.routes, def)
	return km
}

// fetch models a fetch method.
func (c *checker) fetch(m *protogen.Method, kind methodKind, mrule *kafkaoptions.MethodRule) *fetch {
	el := m.Desc.FullName()
	if kind != kindServerStream {
		c.errorf(el, "fetch is only allowed on server-streaming methods, not on a %s method", kind)
	}
	if in := m.Input.Desc.FullName(); in != "google.protobuf.Empty" {
		c.errorf(el, "fetch requires google.protobuf.Empty as the request, not %s", in)
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"request_topic", mrule.GetRequestTopic() != ""},
		{"reply_topic", mrule.GetReplyTopic() != ""},
		{"key", mrule.GetKey() != ""},
		{"overrides", len(mrule.GetOverrides()) > 0},
		{"acks", mrule.GetAcks() != kafkaoptions.Acks_ACKS_UNSPECIFIED},
		{"oneway", mrule.GetOneway()},
		{"routes", len(mrule.GetRoutes()) > 0},
	} {
		if f.set {
			c.errorf(el, "%s cannot be combined with fetch", f.name)
		}
	}

	fr := mrule.GetFetch()
	ft := &fetch{
		topic:          fr.GetTopic(),
		eventIDField:   fr.GetEventIdField(),
		resumeMetadata: fr.GetResumeMetadata(),
	}
	if ft.topic == "" {
		c.errorf(el, "fetch.topic is required")
	} else {
		c.topicName(el, "fetch.topic", ft.topic)
	}

	for i, flt := range fr.GetFilters() {
		p := fmt.Sprintf("fetch.filters[%d]", i)
		if flt.Key == nil && len(flt.GetHeaders()) == 0 {
			c.errorf(el, "%s needs a key or at least one header", p)
		}
		ff := fetchFilter{}
		if flt.Key != nil {
			k := flt.GetKey()
			ff.key = &k
		}
		for j, h := range flt.GetHeaders() {
			if h.GetName() == "" {
				c.errorf(el, "%s.headers[%d].name is required", p, j)
			}
			ff.headers = append(ff.headers, header{name: h.GetName(), value: h.GetValue()})
		}
		ft.filters = append(ft.filters, ff)
	}

	const field = "fetch.event_id_field"
	defaulted := ""
	if ft.eventIDField == 0 {
		ft.eventIDField = defaultEventIDField
		defaulted = " (the default)"
	}
	switch n := ft.eventIDField; {
	case n < 1 || n > maxFieldNumber:
		c.errorf(el, "%s %d is out of range 1..%d", field, n, maxFieldNumber)
	case n >= firstReservedField && n <= lastReservedField:
		c.errorf(el, "%s %d is in the range %d-%d that protobuf reserves", field, n, firstReservedField, lastReservedField)
	default:
		if fd := m.Output.Desc.Fields().ByNumber(protoreflect.FieldNumber(n)); fd != nil {
			c.errorf(el, "%s %d%s is already field %s of %s", field, n, defaulted, fd.Name(), m.Output.Desc.FullName())
		}
	}

	if ft.resumeMetadata == "" {
		ft.resumeMetadata = defaultResumeMetadata
	} else if c.metadataName(el, "fetch.resume_metadata", ft.resumeMetadata) && strings.HasSuffix(ft.resumeMetadata, "-bin") {
		c.errorf(el, "fetch.resume_metadata %q must not end in \"-bin\": name the base64 variant, the binary one adds \"-bin\"", ft.resumeMetadata)
	}
	return ft
}

// topicName checks a topic name when it is set.
func (c *checker) topicName(el protoreflect.FullName, field, t string) {
	if t == "" {
		return
	}
	if problem := topicProblem(t); problem != "" {
		if len(t) > maxTopicLen {
			c.errorf(el, "%s is not a valid Kafka topic name: %s", field, problem)
			return
		}
		c.errorf(el, "%s %q is not a valid Kafka topic name: %s", field, t, problem)
	}
}

// topicProblem says what makes t an invalid Kafka topic name, or returns "".
func topicProblem(t string) string {
	switch {
	case t == "":
		return "it is empty"
	case t == "." || t == "..":
		return `"." and ".." are not allowed`
	case len(t) > maxTopicLen:
		return fmt.Sprintf("%d characters, at most %d allowed", len(t), maxTopicLen)
	}
	for _, r := range t {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '.', r == '_', r == '-':
		default:
			return fmt.Sprintf("character %q is not allowed, only [a-zA-Z0-9._-]", r)
		}
	}
	return ""
}

// reservedMetadata lists the metadata names gRPC or HTTP/2 handle
// themselves, besides every name starting with "grpc-".
var reservedMetadata = map[string]bool{
	"content-type":      true,
	"te":                true,
	"user-agent":        true,
	"connection":        true,
	"keep-alive":        true,
	"proxy-connection":  true,
	"transfer-encoding": true,
	"upgrade":           true,
}

// metadataName checks a gRPC metadata name and reports whether it is valid.
func (c *checker) metadataName(el protoreflect.FullName, field, name string) bool {
	switch {
	case name == "":
		c.errorf(el, "%s is required", field)
		return false
	case strings.HasPrefix(name, ":"):
		c.errorf(el, "%s %q is an HTTP/2 pseudo-header, not request metadata", field, name)
		return false
	}
	for _, r := range name {
		switch {
		case 'a' <= r && r <= 'z', '0' <= r && r <= '9', r == '_', r == '.', r == '-':
		default:
			c.errorf(el, "%s %q is not a valid metadata name: character %q is not allowed, only lower case [0-9a-z_.-]", field, name, r)
			return false
		}
	}
	if strings.HasPrefix(name, "grpc-") || reservedMetadata[name] {
		c.errorf(el, "%s %q is reserved by gRPC", field, name)
		return false
	}
	return true
}

// overrides checks static request headers.
func (c *checker) overrides(el protoreflect.FullName, field string, hs []*kafkaoptions.Header) {
	for i, h := range hs {
		switch name := h.GetName(); {
		case name == "":
			c.errorf(el, "%s[%d].name is required", field, i)
		case strings.HasPrefix(name, "zilla:"), strings.HasPrefix(name, "meta:"):
			prefix, _, _ := strings.Cut(name, ":")
			c.errorf(el, "%s[%d].name %q must not start with %q, which the wire format reserves", field, i, name, prefix+":")
		}
	}
}

// acks checks that a is a known value.
func (c *checker) acks(el protoreflect.FullName, field string, a kafkaoptions.Acks) {
	if _, ok := kafkaoptions.Acks_name[int32(a)]; !ok {
		c.errorf(el, "%s %d is not a known value", field, int32(a))
	}
}

func (k methodKind) serverStreams() bool { return k == kindServerStream || k == kindBidiStream }

// first returns the first non-empty string.
func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// firstHeaders converts the first non-empty list.
func firstHeaders(lists ...[]*kafkaoptions.Header) []header {
	for _, l := range lists {
		if len(l) == 0 {
			continue
		}
		hs := make([]header, len(l))
		for i, h := range l {
			hs[i] = header{name: h.GetName(), value: h.GetValue()}
		}
		return hs
	}
	return nil
}

// firstAcks returns the first specified level.
func firstAcks(as ...kafkaoptions.Acks) kafkaoptions.Acks {
	for _, a := range as {
		if a != kafkaoptions.Acks_ACKS_UNSPECIFIED {
			return a
		}
	}
	return kafkaoptions.Acks_ACKS_ALL
}
