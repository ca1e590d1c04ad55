package runtime

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// timeoutMetadata is gRPC's own deadline header; the gateway writes it as
// "meta:grpc-timeout" so that the worker can bound the call (extension).
const timeoutMetadata = "grpc-timeout"

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

// appendMetaHeaders appends md as "<prefix><name>" headers, names sorted so
// that records are deterministic, values in order. Binary ("-bin") values are
// written as standard base64 text.
func appendMetaHeaders(hs []kafkaclient.Header, prefix string, md metadata.MD, keep func(string) bool) []kafkaclient.Header {
	if len(md) == 0 {
		return hs
	}
	names := make([]string, 0, len(md))
	for k := range md {
		if keep == nil || keep(k) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		bin := strings.HasSuffix(k, "-bin")
		for _, v := range md[k] {
			val := []byte(v)
			if bin {
				val = []byte(base64.StdEncoding.EncodeToString(val))
			}
			hs = append(hs, kafkaclient.Header{Key: prefix + k, Value: val})
		}
	}
	return hs
}

// metadataFromHeaders collects the headers named "<prefix><name>" into
// metadata, decoding the base64 text of "-bin" names. A "-bin" value that is
// not base64 in either alphabet, padded or not, is an error naming it.
func metadataFromHeaders(hs []kafkaclient.Header, prefix string) (metadata.MD, error) {
	var md metadata.MD
	for _, h := range hs {
		if !strings.HasPrefix(h.Key, prefix) {
			continue
		}
		name := strings.ToLower(h.Key[len(prefix):])
		if name == "" {
			continue
		}
		v := string(h.Value)
		if strings.HasSuffix(name, "-bin") {
			b, err := decodeBase64(v)
			if err != nil {
				return nil, fmt.Errorf("header %q: value is not base64: %w", h.Key, err)
			}
			v = string(b)
		}
		if md == nil {
			md = metadata.MD{}
		}
		md[name] = append(md[name], v)
	}
	return md, nil
}

// decodeBase64 accepts both base64 alphabets, padded or not.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// encodeTimeout writes d in gRPC's timeout syntax: at most eight digits and a
// unit, milliseconds where they fit ("1500m"), rounded down so that the worker
// never gets more time than the caller allowed.
func encodeTimeout(d time.Duration) string {
	if d <= 0 {
		return "0n"
	}
	if d < time.Millisecond {
		return strconv.FormatInt(int64(d/time.Microsecond), 10) + "u"
	}
	const max = 99999999
	for _, u := range [...]struct {
		d time.Duration
		s string
	}{{time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		if n := d / u.d; n <= max {
			return strconv.FormatInt(int64(n), 10) + u.s
		}
	}
	return strconv.FormatInt(min(int64(d/time.Hour), max), 10) + "H"
}

// decodeTimeout parses gRPC's timeout syntax: one to eight digits and one of
// the units H, M, S, m, u, n.
func decodeTimeout(s string) (time.Duration, error) {
	if len(s) < 2 || len(s) > 9 {
		return 0, fmt.Errorf("timeout %q: want 1 to 8 digits and a unit", s)
	}
	n, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("timeout %q: want 1 to 8 digits and a unit", s)
	}
	var unit time.Duration
	switch s[len(s)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, fmt.Errorf("timeout %q: unknown unit %q", s, s[len(s)-1])
	}
	if n > int64(maxTimeout/unit) {
		return maxTimeout, nil // 99999999H does not fit a time.Duration
	}
	return time.Duration(n) * unit, nil
}

// maxTimeout caps decoded timeouts: longer ones mean "no practical limit".
const maxTimeout = 100 * 365 * 24 * time.Hour

// headerValue returns the value of the first header named name.
func headerValue(hs []kafkaclient.Header, name string) ([]byte, bool) {
	for i := range hs {
		if hs[i].Key == name {
			return hs[i].Value, true
		}
	}
	return nil, false
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
