package runtime

import (
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
)

// IdempotencyKeyMetadata is the gRPC request metadata whose value, when
// present, replaces the random part of the correlation id, so that a retried
// call gets the same id.
const IdempotencyKeyMetadata = "idempotency-key"

// CorrelationID computes the correlation id of WIRE.md:
//
//	base + "-" + hex(md5("<service header>" + service + "<method header>" + method
//	                     + "<reply-to header>" + replyTo + override values...))
//
// where the header names are the configured ones. base is the caller's
// idempotency key, or a fresh random UUID when the caller sent none.
func CorrelationID(names HeaderNames, base, service, method, replyTo string, overrides []Header) string {
	return base + routeHash(names.withDefaults(), service, method, replyTo, overrides)
}

// routeHash returns "-" + hex(md5(input)); it depends only on the route, so
// the gateway computes it once per route.
func routeHash(names HeaderNames, service, method, replyTo string, overrides []Header) string {
	h := md5.New()
	for _, s := range [...]string{names.Service, service, names.Method, method, names.ReplyTo, replyTo} {
		h.Write([]byte(s))
	}
	for _, o := range overrides {
		h.Write([]byte(o.Value))
	}
	var sum [md5.Size]byte
	return "-" + hex.EncodeToString(h.Sum(sum[:0]))
}

// newUUID returns a random (version 4) UUID: 36 characters, lower case,
// hyphenated.
func newUUID() string {
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
	return string(b[:])
}
