package main

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/topicname"
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
	// resumeMetadataSynonym is read for a resume id on every fetch
	// method, as wire.ResumeMetadataSynonym says.
	resumeMetadataSynonym = "last-event-id"
)

// Limits of the values the options take.
const (
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
	keyField   *keyField // set: the key comes from this field (key is then empty)
	overrides  []header
	acks       kafkaoptions.Acks // never ACKS_UNSPECIFIED
	oneway     bool

	// The options topic and replyTopic come from, for errors, e.g.
	// "routes[0].request_topic" or "reply_topic, from the service".
	topicOpt, replyOpt string
}

// keyField is a validated key_field: the record key taken from a field of
// the request message.
type keyField struct {
	path     string  // as written in the option, e.g. "order.id"
	numbers  []int32 // field numbers along path
	kind     protoreflect.Kind
	presence bool // the last field has explicit presence
	required bool
}

// keySource is where a rule takes the record key from: a static key, a
// field, or neither (inherit). option names the rule's option, for errors
// reported where the path is resolved against a method's request.
type keySource struct {
	key      string
	path     string
	required bool
	option   string // e.g. "key_field", "routes[0].key_field", "key_field (from the service)"
}

func (k keySource) set() bool { return k.key != "" || k.path != "" }

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
	key            *string
	headers        []header
	keyMetadata    string
	headerMetadata []header // name: the record header; value: the metadata name
	optional       bool
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
	// topics holds the first use of each topic by the services checked so
	// far, in every file of the request.
	topics map[string]topicUse
	// collisions maps each topic of topics, with '.' replaced by '_', to
	// the topic.
	collisions map[string]string
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
	declared := map[protogen.GoImportPath]map[string]string{}
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
			if declared[f.GoImportPath] == nil {
				declared[f.GoImportPath] = protocGenGoNames(gen, f.GoImportPath)
			}
			c.goNames(kf, declared[f.GoImportPath])
			files = append(files, kf)
		}
	}
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	return files, nil
}

// protocGenGoNames lists the package-level Go names that protoc-gen-go
// declares for the files of the request in Go package pkg (messages, enums
// and their name maps, enum values, oneof wrappers, extensions), each with
// what declares it, e.g. "message pkg.v1.Foo".
func protocGenGoNames(gen *protogen.Plugin, pkg protogen.GoImportPath) map[string]string {
	names := map[string]string{}
	enum := func(e *protogen.Enum) {
		what := "enum " + string(e.Desc.FullName())
		names[e.GoIdent.GoName] = what
		names[e.GoIdent.GoName+"_name"] = what
		names[e.GoIdent.GoName+"_value"] = what
		for _, v := range e.Values {
			names[v.GoIdent.GoName] = "enum value " + string(v.Desc.FullName())
		}
	}
	var message func(m *protogen.Message)
	message = func(m *protogen.Message) {
		if m.Desc.IsMapEntry() {
			return
		}
		names[m.GoIdent.GoName] = "message " + string(m.Desc.FullName())
		for _, o := range m.Oneofs {
			for _, f := range o.Fields {
				names[f.GoIdent.GoName] = "the oneof wrapper of field " + string(f.Desc.FullName())
			}
		}
		for _, e := range m.Enums {
			enum(e)
		}
		for _, n := range m.Messages {
			message(n)
		}
		for _, x := range m.Extensions {
			names[x.GoIdent.GoName] = "extension " + string(x.Desc.FullName())
		}
	}
	for _, f := range gen.Files {
		if f.GoImportPath != pkg {
			continue
		}
		for _, e := range f.Enums {
			enum(e)
		}
		for _, m := range f.Messages {
			message(m)
		}
		for _, x := range f.Extensions {
			names[x.GoIdent.GoName] = "extension " + string(x.Desc.FullName())
		}
	}
	return names
}

// goNames reports every package-level Go name the generated code of kf would
// declare that is already declared in its Go package: by protoc-gen-go, or
// by this plugin for another service or method (as for services A and A_B
// with methods B_C and C, or methods get_thing and GetThing, whose
// protoc-gen-go-grpc names collide too). declared holds the names so far,
// each with what declares it, and gets kf's. Each service or method is
// reported once, at its first colliding name: the generated code would not
// compile.
func (c *checker) goNames(kf *kafkaFile, declared map[string]string) {
	for _, ks := range kf.services {
		n := ks.names
		el := ks.service.Desc.FullName()
		c.declare(declared, el, "service "+string(el),
			n.Spec, n.spec, n.Gateway, n.NewGateway, n.RegisterGateway, n.RegisterWorker)
		// The gateway embeds protoc-gen-go-grpc's Unimplemented<Service>Server:
		// a method of that name would be a method and a field of one type
		// (a Kafka method) or hidden by the field, leaving the gateway short
		// of a method of the server interface (any other).
		for _, m := range ks.service.Methods {
			if m.GoName == n.Unimplemented {
				c.errorf(m.Desc.FullName(), "the generated gateway %s embeds %s, protoc-gen-go-grpc's type, so a method of that Go name cannot be one of its methods: rename the method", n.Gateway, n.Unimplemented)
			}
		}
		for _, km := range ks.methods {
			m := km.method
			mel := m.Desc.FullName()
			names := []string{n.FullMethodName(m), n.MethodSpec(m)}
			if km.fetch != nil {
				names = append(names, n.Publisher(m))
			}
			c.declare(declared, mel, "method "+string(mel), names...)
		}
	}
}

// declare adds names, declared for el (described as what), to declared,
// reporting the first one already there.
func (c *checker) declare(declared map[string]string, el protoreflect.FullName, what string, names ...string) {
	reported := false
	for _, name := range names {
		if prev, ok := declared[name]; ok {
			if !reported {
				reported = true
				c.errorf(el, "the generated Go name %s is also that of %s, in the same Go package: rename one of them", name, prev)
			}
			continue
		}
		declared[name] = what
	}
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
		c.unknownOptions(el, "", srule.ProtoReflect())
	}
	for _, m := range s.Methods {
		if mrule := methodRule(m); mrule != nil {
			c.unknownOptions(m.Desc.FullName(), "", mrule.ProtoReflect())
		}
	}
	if srule != nil && len(s.Methods) == 0 {
		// Its spec would carry no method, and a worker registering it alone
		// would fail only at Start, saying it has no request topics.
		c.errorf(el, "service options on a service without methods: it has nothing to carry over Kafka")
	}
	if srule != nil {
		c.topicName(el, "request_topic", srule.GetRequestTopic())
		c.topicName(el, "reply_topic", srule.GetReplyTopic())
		c.overrides(el, "overrides", srule.GetOverrides())
		c.acks(el, "acks", srule.GetAcks())
		c.keyOptions(el, "", srule.GetKey(), srule.GetKeyField(), srule.GetKeyFieldRequired())
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
	c.topicRoles(ks)
	return ks
}

// unknownOptions reports every field of rule m (an option message, at
// option path p, e.g. "routes[0].") that this plugin does not know: set in an
// options.proto newer than the plugin, it would be silently ignored.
func (c *checker) unknownOptions(el protoreflect.FullName, p string, m protoreflect.Message) {
	for b := m.GetUnknown(); len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			break
		}
		b = b[n:]
		where := ""
		if p != "" {
			where = "in " + strings.TrimSuffix(p, ".") + ", "
		}
		c.errorf(el, "%sfield number %d of %s is unknown to protoc-gen-go-kafka v%s, which would ignore it: the options.proto compiled is newer than the plugin; use the plugin and the options.proto of one version",
			where, num, m.Descriptor().FullName(), version)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Message() == nil:
		case fd.IsList():
			for i := range v.List().Len() {
				c.unknownOptions(el, fmt.Sprintf("%s%s[%d].", p, fd.Name(), i), v.List().Get(i).Message())
			}
		case !fd.IsMap():
			c.unknownOptions(el, p+string(fd.Name())+".", v.Message())
		}
		return true
	})
}

// topicUse is one use of a topic by a method: as its request topic, its
// reply topic or its fetch topic.
type topicUse struct {
	role   string // "request", "reply" or "fetch"
	method protoreflect.FullName
	option string // the option naming the topic, e.g. "routes[0].reply_topic"
}

// topicRoles reports every topic of ks used in two roles: a topic carries
// one kind of record. A request topic that is also a reply topic has the
// workers consume the replies as requests; a fetch topic that is also a
// request or reply topic streams requests or replies to the fetch's callers
// and has workers consume the published events. Each method and route is
// checked, the method's own settings first, against the uses before it, in
// this service and in the services checked before it: service A's request
// topic as service B's reply topic is as wrong as within one service.
// (Services sharing a request topic stay allowed: one worker may serve
// them together.)
func (c *checker) topicRoles(ks *kafkaService) {
	if c.topics == nil {
		c.topics = map[string]topicUse{}
		c.collisions = map[string]string{}
	}
	first := c.topics
	for _, km := range ks.methods {
		el := km.method.Desc.FullName()
		var uses []struct {
			topic string
			use   topicUse
		}
		add := func(topic string, u topicUse) {
			if topic != "" {
				uses = append(uses, struct {
					topic string
					use   topicUse
				}{topic, u})
			}
		}
		if km.fetch != nil {
			add(km.fetch.topic, topicUse{role: "fetch", method: el, option: "fetch.topic"})
		}
		// The default route (last) first, then the routes in order.
		for n, i := len(km.routes), 0; i < n; i++ {
			r := km.routes[(i+n-1)%n]
			role := "request"
			if r.oneway {
				role = "oneway request"
			}
			add(r.topic, topicUse{role: role, method: el, option: r.topicOpt})
			if !r.oneway {
				add(r.replyTopic, topicUse{role: "reply", method: el, option: r.replyOpt})
			}
		}
		reported := map[string]bool{}
		for _, r := range km.routes {
			if !r.oneway && r.topic == r.replyTopic {
				reported[r.topic] = true // reply_topic equal to request_topic: reported by method
			}
		}
		for _, u := range uses {
			// "reply_topic, from the service" reads `reply_topic "x" (from the service)`.
			opt, from, _ := strings.Cut(u.use.option, ", ")
			if from != "" {
				from = " (" + from + ")"
			}
			prev, ok := first[u.topic]
			switch {
			case !ok:
				first[u.topic] = u.use
				// Kafka refuses to create a topic whose name differs from an
				// existing one's only in '.' against '_' (both become '_' in
				// its metric names): "Topic 'a_b' collides with existing
				// topics: a.b"; the embedded broker answers INVALID_TOPIC_EXCEPTION.
				norm := strings.ReplaceAll(u.topic, ".", "_")
				if other, ok := c.collisions[norm]; ok && !reported[u.topic] {
					reported[u.topic] = true
					o := first[other]
					c.errorf(el, "%s %q%s differs from %q, the %s topic of %s (%s), only in '.' against '_': Kafka refuses to create both, as their metric names collide",
						opt, u.topic, from, other, o.role, o.method, o.option)
				} else if !ok {
					c.collisions[norm] = u.topic
				}
			case compatibleRoles(prev.role, u.use.role), reported[u.topic]:
			default:
				reported[u.topic] = true
				c.errorf(el, "%s %q%s is also the %s topic of %s (%s): a topic carries one kind of record, requests, replies or fetched events",
					opt, u.topic, from, prev.role, prev.method, prev.option)
			}
		}
	}
}

// compatibleRoles reports whether one topic may serve both roles: the same
// role, requests of any kind (a worker serves oneway requests with the
// others), or oneway requests and a fetch (publishing events with a oneway
// method that fetch callers receive: no reply is involved, and a worker
// serving the oneway method reads them as the requests they are).
func compatibleRoles(a, b string) bool {
	if a == b {
		return true
	}
	pair := map[string]bool{a: true, b: true}
	return pair["oneway request"] && (pair["request"] || pair["fetch"])
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
	c.keyOptions(el, "", mrule.GetKey(), mrule.GetKeyField(), mrule.GetKeyFieldRequired())

	// The default route: the method's settings over the service's. Of key
	// and key_field, the most specific rule setting either decides.
	defKey := keySource{key: mrule.GetKey(), path: mrule.GetKeyField(), required: mrule.GetKeyFieldRequired(), option: "key_field"}
	if !defKey.set() {
		defKey = keySource{key: srule.GetKey(), path: srule.GetKeyField(), required: srule.GetKeyFieldRequired(), option: "key_field (from the service)"}
	}
	def := route{
		topic:     first(mrule.GetRequestTopic(), srule.GetRequestTopic()),
		overrides: firstHeaders(mrule.GetOverrides(), srule.GetOverrides()),
		acks:      firstAcks(mrule.GetAcks(), srule.GetAcks(), kafkaoptions.Acks_ACKS_ALL),
		oneway:    mrule.GetOneway(),
	}
	// A oneway method or route does not inherit a reply topic; one that is
	// not oneway inherits this one.
	inheritedReply := first(mrule.GetReplyTopic(), srule.GetReplyTopic())
	replyOpt := "reply_topic"
	if mrule.GetReplyTopic() == "" {
		replyOpt = "reply_topic, from the service"
	}
	def.topicOpt, def.replyOpt = "request_topic", replyOpt
	if mrule.GetRequestTopic() == "" {
		def.topicOpt = "request_topic, from the service"
	}
	if !def.oneway {
		def.replyTopic = inheritedReply
	}

	def.key, def.keyField = c.resolveKey(el, m, defKey)
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
			if c.metadataName(el, fmt.Sprintf("%swhen[%d].name", p, j), w.GetName()) && !strings.HasSuffix(w.GetName(), "-bin") {
				// gRPC carries a text metadata value as printable ASCII
				// only: a condition on any other never holds.
				for _, ch := range w.GetValue() {
					if ch < 0x20 || ch > 0x7e {
						c.errorf(el, "%swhen[%d].value %q never matches a gRPC caller: a value of text metadata such as %q is printable ASCII, and character %q is not (grpc-go refuses to send it); only a name ending in \"-bin\" carries other bytes", p, j, w.GetValue(), w.GetName(), ch)
						break
					}
				}
			}
			when = append(when, header{name: w.GetName(), value: w.GetValue()})
		}
		c.topicName(el, p+"request_topic", r.GetRequestTopic())
		c.topicName(el, p+"reply_topic", r.GetReplyTopic())
		c.overrides(el, p+"overrides", r.GetOverrides())
		c.acks(el, p+"acks", r.GetAcks())
		c.keyOptions(el, p, r.GetKey(), r.GetKeyField(), r.GetKeyFieldRequired())

		rt := route{
			when:      when,
			topic:     first(r.GetRequestTopic(), def.topic),
			key:       def.key,
			keyField:  def.keyField,
			overrides: def.overrides,
			acks:      firstAcks(r.GetAcks(), def.acks, kafkaoptions.Acks_ACKS_ALL),
			oneway:    def.oneway,
			topicOpt:  def.topicOpt,
			replyOpt:  replyOpt,
		}
		if r.GetRequestTopic() != "" {
			rt.topicOpt = p + "request_topic"
		}
		if r.GetReplyTopic() != "" {
			rt.replyOpt = p + "reply_topic"
		}
		if rk := (keySource{key: r.GetKey(), path: r.GetKeyField(), required: r.GetKeyFieldRequired(), option: p + "key_field"}); rk.set() {
			rt.key, rt.keyField = c.resolveKey(el, m, rk)
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
	// Routes are tried in order: one whose conditions include all of an
	// earlier route's is never chosen.
	for j, rj := range km.routes {
		for i, ri := range km.routes[:j] {
			if len(ri.when) > 0 && implies(rj.when, ri.when) {
				c.errorf(el, "routes[%d] is never chosen: routes[%d] comes first and matches every call it matches", j, i)
				break
			}
		}
	}
	km.routes = append(km.routes, def)
	return km
}

// implies reports whether every call that meets all conditions of a also
// meets all of b's: each condition of b is one of a's, or asks only for the
// presence of a name a conditions.
func implies(a, b []header) bool {
	for _, cb := range b {
		found := false
		for _, ca := range a {
			if ca.name == cb.name && (cb.value == "" || cb.value == ca.value) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
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
		{"key_field", mrule.GetKeyField() != ""},
		{"key_field_required", mrule.GetKeyFieldRequired()},
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
		ft.filters = append(ft.filters, c.fetchFilter(el, p, flt))
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
		} else if m.Output.Desc.ExtensionRanges().Has(protoreflect.FieldNumber(n)) {
			c.errorf(el, "%s %d%s is in an extension range of %s: an extension may declare it", field, n, defaulted, m.Output.Desc.FullName())
		} else if m.Output.Desc.ReservedRanges().Has(protoreflect.FieldNumber(n)) {
			c.errorf(el, "%s %d%s is a reserved number of %s: a field that had it may still be read by callers with its old meaning", field, n, defaulted, m.Output.Desc.FullName())
		}
	}

	if ft.resumeMetadata == "" {
		ft.resumeMetadata = defaultResumeMetadata
	} else if c.metadataName(el, "fetch.resume_metadata", ft.resumeMetadata) && strings.HasSuffix(ft.resumeMetadata, "-bin") {
		c.errorf(el, "fetch.resume_metadata %q must not end in \"-bin\": name the base64 variant, the binary one adds \"-bin\"", ft.resumeMetadata)
	}

	// The gateway reads a resuming caller's event id from these names: a
	// filter taking its value from one of them would take the event id for
	// a record key or header value, and refuse every caller that does not
	// resume.
	resume := map[string]bool{}
	for _, n := range []string{ft.resumeMetadata, defaultResumeMetadata, resumeMetadataSynonym} {
		resume[n], resume[n+"-bin"] = true, true
	}
	resumeNames := fmt.Sprintf("%q and %q", defaultResumeMetadata, resumeMetadataSynonym)
	if ft.resumeMetadata != defaultResumeMetadata && ft.resumeMetadata != resumeMetadataSynonym {
		resumeNames = fmt.Sprintf("%q (resume_metadata), %s", ft.resumeMetadata, resumeNames)
	}
	clash := func(option, name string) {
		if resume[name] {
			c.errorf(el, "%s %q carries a resuming caller's event id: the gateway reads it from %s, each also with \"-bin\"; name other metadata", option, name, resumeNames)
		}
	}
	for i, f := range ft.filters {
		if f.keyMetadata != "" {
			clash(fmt.Sprintf("fetch.filters[%d].key_metadata", i), f.keyMetadata)
		}
		for j, h := range f.headerMetadata {
			clash(fmt.Sprintf("fetch.filters[%d].header_metadata[%d].metadata", i, j), h.value)
		}
	}
	return ft
}

// fetchFilter checks and models one fetch filter; p is its option path.
func (c *checker) fetchFilter(el protoreflect.FullName, p string, flt *kafkaoptions.FetchFilter) fetchFilter {
	ff := fetchFilter{keyMetadata: flt.GetKeyMetadata(), optional: flt.GetMetadataOptional()}
	fromMetadata := ff.keyMetadata != "" || len(flt.GetHeaderMetadata()) > 0
	if flt.Key == nil && len(flt.GetHeaders()) == 0 && !fromMetadata {
		c.errorf(el, "%s needs a condition: a key, a header, key_metadata or header_metadata", p)
	}
	if flt.Key != nil {
		k := flt.GetKey()
		ff.key = &k
		if ff.keyMetadata != "" {
			c.errorf(el, "%s sets both key and key_metadata: the record key has one value to match", p)
		}
	}
	for j, h := range flt.GetHeaders() {
		if h.GetName() == "" {
			c.errorf(el, "%s.headers[%d].name is required", p, j)
		}
		ff.headers = append(ff.headers, header{name: h.GetName(), value: h.GetValue()})
	}
	if ff.keyMetadata != "" {
		c.metadataName(el, p+".key_metadata", ff.keyMetadata)
	}
	for j, h := range flt.GetHeaderMetadata() {
		if h.GetName() == "" {
			c.errorf(el, "%s.header_metadata[%d].name is required", p, j)
		}
		c.metadataName(el, fmt.Sprintf("%s.header_metadata[%d].metadata", p, j), h.GetMetadata())
		ff.headerMetadata = append(ff.headerMetadata, header{name: h.GetName(), value: h.GetMetadata()})
	}
	if ff.optional && !fromMetadata {
		c.errorf(el, "%s.metadata_optional needs key_metadata or header_metadata", p)
	}
	return ff
}

// keyOptions checks the key options of one rule (p is the route's prefix,
// or empty): key and key_field exclude each other, and key_field_required
// needs key_field. The path itself is checked where a method resolves it.
func (c *checker) keyOptions(el protoreflect.FullName, p, key, field string, required bool) {
	if key != "" && field != "" {
		c.errorf(el, "%skey and %skey_field cannot both be set: the record key comes from one of them", p, p)
	}
	if required && field == "" {
		c.errorf(el, "%skey_field_required needs %skey_field", p, p)
	}
}

// keyableKinds are the kinds a key_field may end on.
var keyableKinds = map[protoreflect.Kind]bool{
	protoreflect.StringKind: true, protoreflect.BytesKind: true, protoreflect.EnumKind: true,
	protoreflect.Int32Kind: true, protoreflect.Sint32Kind: true, protoreflect.Uint32Kind: true,
	protoreflect.Int64Kind: true, protoreflect.Sint64Kind: true, protoreflect.Uint64Kind: true,
	protoreflect.Fixed32Kind: true, protoreflect.Sfixed32Kind: true,
	protoreflect.Fixed64Kind: true, protoreflect.Sfixed64Kind: true,
}

// resolveKey returns a route's static key or its key field, resolved
// against m's request message. A key_field the message does not have, or
// that does not lead to a singular scalar, is reported and dropped.
func (c *checker) resolveKey(el protoreflect.FullName, m *protogen.Method, k keySource) (string, *keyField) {
	if k.key != "" || k.path == "" {
		return k.key, nil
	}
	msg := m.Input.Desc
	kf := &keyField{path: k.path, required: k.required}
	steps := strings.Split(k.path, ".")
	for i, name := range steps {
		if name == "" {
			c.errorf(el, "%s %q is not a field path: names separated by \".\", as in \"order.id\"", k.option, k.path)
			return "", nil
		}
		fd := msg.Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			c.errorf(el, "%s %q: %s has no field %q", k.option, k.path, msg.FullName(), name)
			return "", nil
		}
		kf.numbers = append(kf.numbers, int32(fd.Number()))
		if fd.IsMap() {
			c.errorf(el, "%s %q: %s is a map; every field on the path must be singular", k.option, k.path, fd.FullName())
			return "", nil
		}
		if fd.Cardinality() == protoreflect.Repeated {
			c.errorf(el, "%s %q: %s is repeated; every field on the path must be singular", k.option, k.path, fd.FullName())
			return "", nil
		}
		if i < len(steps)-1 {
			if fd.Kind() == protoreflect.GroupKind {
				// The key is read from the encoded request, through
				// length-prefixed messages only.
				how := "a group"
				if fd.ParentFile().Syntax() == protoreflect.Editions {
					how = "delimited-encoded (features.message_encoding = DELIMITED)"
				}
				c.errorf(el, "%s %q: %s is %s, which a key_field path cannot go through: only length-prefixed message fields", k.option, k.path, fd.FullName(), how)
				return "", nil
			}
			if fd.Kind() != protoreflect.MessageKind {
				c.errorf(el, "%s %q: %s is a %s, not a message, so it has no field %q", k.option, k.path, fd.FullName(), fd.Kind(), steps[i+1])
				return "", nil
			}
			msg = fd.Message()
			continue
		}
		if !keyableKinds[fd.Kind()] {
			c.errorf(el, "%s %q: %s is a %s; the key field must be a string, bytes, integer or enum", k.option, k.path, fd.FullName(), fd.Kind())
			return "", nil
		}
		kf.kind, kf.presence = fd.Kind(), fd.HasPresence()
	}
	return "", kf
}

// topicName checks a topic name when it is set.
func (c *checker) topicName(el protoreflect.FullName, field, t string) {
	if t == "" {
		return
	}
	if problem := topicname.Problem(t); problem != "" {
		if len(t) > topicname.MaxLen {
			c.errorf(el, "%s is not a valid Kafka topic name: %s", field, problem)
			return
		}
		c.errorf(el, "%s %q is not a valid Kafka topic name: %s", field, t, problem)
	}
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
