package wire

import (
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
)

// CorrelationID computes the correlation id of WIRE.md:
//
//	base + "-" + hex(md5("<service header>" + service + "<method header>" + method
//	                     + "<reply-to header>" + replyTo + override values...))
//
// where the header names are the configured ones (empty fields of names
// mean their defaults) and overrides are the values of the route's override
// headers, in order. base is the caller's idempotency key, or a fresh random
// UUID (NewUUID) when the caller sent none.
func CorrelationID(names Names, base, service, method, replyTo string, overrides ...string) string {
	return base + RouteHash(names.WithDefaults(), service, method, replyTo, overrides...)
}

// RouteHash returns "-" + hex(md5(input)), the part of a correlation id that
// depends only on the route, so that a gateway computes it once per route.
// names must be complete (Names.WithDefaults).
func RouteHash(names Names, service, method, replyTo string, overrides ...string) string {
	h := md5.New()
	for _, s := range [...]string{names.Service, service, names.Method, method, names.ReplyTo, replyTo} {
		h.Write([]byte(s))
	}
	for _, o := range overrides {
		h.Write([]byte(o))
	}
	var sum [md5.Size]byte
	return "-" + hex.EncodeToString(h.Sum(sum[:0]))
}

// NewUUID returns a random (version 4) UUID: 36 characters, lower case,
// hyphenated.
func NewUUID() string {
	var b [36]byte
	return string(AppendUUID(b[:0]))
}

// AppendUUID appends a new random (version 4) UUID to dst, as NewUUID
// returns it, and returns the extended slice.
func AppendUUID(dst []byte) []byte {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails on supported platforms
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return append(dst, b[:]...)
}
