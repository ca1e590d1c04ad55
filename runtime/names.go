package runtime

// HeaderNames are the Kafka header names of the wire format (WIRE.md). Every
// name is configurable so that a deployment can match a peer configured
// differently; the zero value of a field means its default.
type HeaderNames struct {
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
	// Identity carries the caller's identity when the gateway has
	// GatewayIdentity. Default "zilla:identity".
	Identity string
}

// DefaultHeaderNames returns the header names of WIRE.md, as Zilla uses them.
func DefaultHeaderNames() HeaderNames {
	return HeaderNames{
		Service:       "zilla:service",
		Method:        "zilla:method",
		ReplyTo:       "zilla:reply-to",
		CorrelationID: "zilla:correlation-id",
		Status:        "zilla:status",
		Message:       "zilla:message",
		StatusDetails: "zilla:status-details-bin",
		MetaPrefix:    "meta:",
		TrailerPrefix: "trailer:",
		Identity:      "zilla:identity",
	}
}

// withDefaults fills every empty field with its default.
func (n HeaderNames) withDefaults() HeaderNames {
	d := DefaultHeaderNames()
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
