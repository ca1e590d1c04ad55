package runtime

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// DefaultDeniedMetadata lists the request metadata names that never reach
// Kafka unless the operator allows them: credentials. A topic is readable by
// more people than the caller trusted with them.
var DefaultDeniedMetadata = []string{"authorization", "cookie", "proxy-authorization", "x-api-key"}

// transportMetadata reports whether name is HTTP/2 or gRPC transport metadata,
// which is never copied into Kafka whatever the configuration.
func transportMetadata(name string) bool {
	if name == "" || name[0] == ':' || strings.HasPrefix(name, "grpc-") {
		return true
	}
	switch name {
	case "content-type", "te", "user-agent", "host", "connection", "keep-alive",
		"proxy-connection", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// withoutTransport returns md without its transport metadata: the
// response headers and trailers a handler sets, or a proxy's target sent
// (grpc-go reports the target's content-type and grpc-status-details-bin
// among them), are written to Kafka as reply headers, where transport
// metadata never goes. md itself is left as it is.
func withoutTransport(md metadata.MD) metadata.MD {
	for k := range md {
		if transportMetadata(k) {
			out := make(metadata.MD, len(md))
			for k, v := range md {
				if !transportMetadata(k) {
					out[k] = v
				}
			}
			return out
		}
	}
	return md
}

// metadataFilter decides which request metadata names are written to Kafka:
// never transport metadata; with an allow list only the names on it; else
// every name not denied.
type metadataFilter struct {
	denied  map[string]bool
	allowed map[string]bool // nil: no allow list
}

// newMetadataFilter builds the filter of a deny list, or of an allow list
// when allowed is not nil. An allow list always lets through own too: the
// names the worker needs from the gateway (the idempotency key, the trace
// context's fields), which an operator listing the application's own names
// would otherwise cut off without noticing.
func newMetadataFilter(denied, allowed, own []string) metadataFilter {
	f := metadataFilter{denied: make(map[string]bool, len(denied))}
	for _, d := range denied {
		f.denied[strings.ToLower(d)] = true
	}
	if allowed != nil {
		f.allowed = make(map[string]bool, len(allowed)+len(own))
		for _, a := range slices.Concat(allowed, own) {
			f.allowed[strings.ToLower(a)] = true
		}
	}
	return f
}

func (f metadataFilter) keep(name string) bool {
	if transportMetadata(name) {
		return false
	}
	if f.allowed != nil {
		return f.allowed[name]
	}
	return !f.denied[name]
}

// matchRoute reports whether every condition of when holds on md.
func matchRoute(when []MetadataMatch, md metadata.MD) bool {
	for _, c := range when {
		vs := md[c.Name]
		if len(vs) == 0 {
			return false
		}
		if c.Value != "" && !slices.Contains(vs, c.Value) {
			return false
		}
	}
	return true
}

// outgoingMetadataError returns the INTERNAL status a grpc-go client fails a
// call of method with when ctx's outgoing metadata (with the pairs added by
// metadata.AppendToOutgoingContext) holds a pair gRPC cannot send: an empty
// name, a name (other than a ":" pseudo-header) outside [0-9a-z-_.], or a
// value that is not printable ASCII under a name without "-bin"; nil
// otherwise. Unlike grpc-go it sees the names lowercased (metadata offers
// no other view): a metadata.MD literal with upper case passes.
func outgoingMetadataError(ctx context.Context, method string) error {
	md, _ := metadata.FromOutgoingContext(ctx)
	for k, vs := range md {
		if err := metadataPairError(k, vs...); err != "" {
			return status.Errorf(codes.Internal, "%s: %s", method, err)
		}
	}
	return nil
}

// metadataPairError says, in grpc-go's words, what makes a metadata pair
// unsendable, or returns "".
func metadataPairError(key string, vals ...string) string {
	if key == "" {
		return "there is an empty key in the header"
	}
	if key[0] == ':' {
		return ""
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Sprintf("header key %q contains illegal characters not in [0-9a-z-_.]", key)
		}
	}
	if strings.HasSuffix(key, "-bin") {
		return ""
	}
	for _, v := range vals {
		for i := 0; i < len(v); i++ {
			if v[i] < 0x20 || v[i] > 0x7e {
				return fmt.Sprintf("header key %q contains value with non-printable ASCII characters", key)
			}
		}
	}
	return ""
}
