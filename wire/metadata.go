package wire

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
)

// AppendMetadata appends md as "<prefix><name>" headers, names sorted so that
// records are deterministic, values in order; keep, when not nil, chooses the
// names written. Binary ("-bin") values are written as standard base64 text.
func AppendMetadata(hs []Header, prefix string, md metadata.MD, keep func(name string) bool) []Header {
	if len(md) == 0 {
		return hs
	}
	var buf [16]string
	names := buf[:0]
	for k := range md {
		if keep == nil || keep(k) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		bin := strings.HasSuffix(k, "-bin")
		key := prefix + k
		for _, v := range md[k] {
			var val []byte
			if bin {
				val = base64.StdEncoding.AppendEncode(nil, []byte(v))
			} else {
				val = []byte(v)
			}
			hs = append(hs, Header{Key: key, Value: val})
		}
	}
	return hs
}

// DecodeMetadata collects the headers named "<prefix><name>" into metadata,
// names in lower case, decoding the base64 text of "-bin" names. A "-bin"
// value that is not base64 in either alphabet, padded or not, is an error
// naming the header. skip, when not nil, leaves names out.
func DecodeMetadata(hs []Header, prefix string, skip func(name string) bool) (metadata.MD, error) {
	var md metadata.MD
	for _, h := range hs {
		if !strings.HasPrefix(h.Key, prefix) {
			continue
		}
		name := strings.ToLower(h.Key[len(prefix):])
		if name == "" || (skip != nil && skip(name)) {
			continue
		}
		v := string(h.Value)
		if strings.HasSuffix(name, "-bin") {
			b, err := DecodeBase64(v)
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

// DecodeBase64 accepts both base64 alphabets, padded or not.
func DecodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// EncodeTimeout writes d in gRPC's timeout syntax: at most eight digits and a
// unit, milliseconds where they fit ("1500m"), rounded down so that the worker
// never gets more time than the caller allowed.
func EncodeTimeout(d time.Duration) string {
	return string(AppendTimeout(nil, d))
}

// AppendTimeout appends EncodeTimeout(d) to dst.
func AppendTimeout(dst []byte, d time.Duration) []byte {
	if d <= 0 {
		return append(dst, "0n"...)
	}
	if d < time.Millisecond {
		return append(strconv.AppendInt(dst, int64(d/time.Microsecond), 10), 'u')
	}
	const most = 99999999
	for _, u := range [...]struct {
		d time.Duration
		s byte
	}{{time.Millisecond, 'm'}, {time.Second, 'S'}, {time.Minute, 'M'}} {
		if n := d / u.d; n <= most {
			return append(strconv.AppendInt(dst, int64(n), 10), u.s)
		}
	}
	return append(strconv.AppendInt(dst, min(int64(d/time.Hour), most), 10), 'H')
}

// DecodeTimeout parses gRPC's timeout syntax: one to eight digits and one of
// the units H, M, S, m, u, n. Timeouts longer than MaxTimeout are MaxTimeout.
func DecodeTimeout(s string) (time.Duration, error) { return decodeTimeout(s) }

func decodeTimeout[T string | []byte](s T) (time.Duration, error) {
	if len(s) < 2 || len(s) > 9 {
		return 0, fmt.Errorf("timeout %q: want 1 to 8 digits and a unit", s)
	}
	var n int64
	for i := 0; i < len(s)-1; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("timeout %q: want 1 to 8 digits and a unit", s)
		}
		n = n*10 + int64(c-'0')
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
		return 0, fmt.Errorf("timeout %q: unknown unit %q", s, rune(s[len(s)-1]))
	}
	if n > int64(MaxTimeout/unit) {
		return MaxTimeout, nil // 99999999H does not fit a time.Duration
	}
	return time.Duration(n) * unit, nil
}

// MaxTimeout caps decoded timeouts: longer ones mean "no practical limit".
const MaxTimeout = 100 * 365 * 24 * time.Hour
