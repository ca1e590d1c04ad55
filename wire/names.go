package wire

// Names are the Kafka header names of the wire format (WIRE.md). Every
// name is configurable so that a deployment can match a peer configured
// differently; the zero value of a field means its default.
type Names struct {
	// Service carries the fully-qualified service name. Default "zilla:service".
	Service string
	// Method carries the bare method name. Default "zilla:method".
	Method string
	// ReplyTo carries the reply topic. Default "zilla:reply-to".
	ReplyTo string
	// CorrelationID matches replies to calls. Default "zilla:correlation-id".
	CorrelationID string
	// Status carries the gRPC code in decimal on a reply end-of-stream
	// record, and CANCELLED (1) on a cancelled request. Default "zilla:status".
	Status string
	// Message carries the status message. Default "zilla:message".
	Message string
	// StatusDetails carries the google.rpc.Status, marshalled and then
	// base64-encoded, when the status has details (extension). Default
	// "zilla:status-details-bin".
	StatusDetails string
	// MetaPrefix prefixes gRPC metadata names. Default "meta:".
	MetaPrefix string
	// TrailerPrefix prefixes gRPC trailer names on the reply end-of-stream
	// record (extension). Default "trailer:".
	TrailerPrefix string
	// Identity carries the caller's identity, when the gateway writes one
	// (runtime.GatewayIdentity). Default "zilla:identity".
	Identity string
}

// defaultMetaPrefix is Names.MetaPrefix by default.
const defaultMetaPrefix = "meta:"

// DefaultNames returns the header names of WIRE.md, as Zilla uses them.
func DefaultNames() Names {
	return Names{
		Service:       "zilla:service",
		Method:        "zilla:method",
		ReplyTo:       "zilla:reply-to",
		CorrelationID: "zilla:correlation-id",
		Status:        "zilla:status",
		Message:       "zilla:message",
		StatusDetails: "zilla:status-details-bin",
		MetaPrefix:    defaultMetaPrefix,
		TrailerPrefix: "trailer:",
		Identity:      "zilla:identity",
	}
}

// WithDefaults returns n with every empty field with its default.
func (n Names) WithDefaults() Names {
	d := DefaultNames()
	fill := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	fill(&n.Service, d.Service)
	fill(&n.Method, d.Method)
	fill(&n.ReplyTo, d.ReplyTo)
	fill(&n.CorrelationID, d.CorrelationID)
	fill(&n.Status, d.Status)
	fill(&n.Message, d.Message)
	fill(&n.StatusDetails, d.StatusDetails)
	fill(&n.MetaPrefix, d.MetaPrefix)
	fill(&n.TrailerPrefix, d.TrailerPrefix)
	fill(&n.Identity, d.Identity)
	return n
}
