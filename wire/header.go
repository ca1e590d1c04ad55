package wire

// Header is one Kafka record header. Names may repeat; order is kept.
// kafkaclient.Header is the same type.
type Header struct {
	Key   string
	Value []byte
}

// Metadata names with a meaning on the wire (extensions of WIRE.md, carried
// as "meta:<name>" headers like any other gRPC metadata).
const (
	// IdempotencyKeyMetadata is the request metadata whose value, when
	// present, replaces the random part of the correlation id, so that a
	// retried call gets the same id.
	IdempotencyKeyMetadata = "idempotency-key"
	// TimeoutMetadata is gRPC's own deadline header, which the gateway writes
	// as "meta:grpc-timeout" in gRPC's timeout syntax, counted from the
	// record's timestamp.
	TimeoutMetadata = "grpc-timeout"
	// ServedByMetadata names the worker process instance that served a call
	// (a random id per worker), carried on the reply records. When a worker
	// dies midway through a streaming call, the partition's next owner serves
	// the call again from its first request, and its replies carry another
	// id: a gateway then ends the call with UNAVAILABLE instead of handing the
	// caller answers it already had. Gateways remove it from the caller's
	// response headers.
	ServedByMetadata = "kafkarpc-served-by"
	// AttemptMetadata tells the attempts of a call apart. A retry with the
	// same idempotency key shares its correlation id with every earlier
	// attempt, so a gateway writes a fresh attempt id on the request records
	// of each keyed call, and a worker writes the attempt id of the request
	// it answers on every reply record. A gateway takes a reply whose attempt
	// id is another's for a late answer to an earlier attempt and drops it; a
	// reply with none (from a worker that does not know the header, such as
	// Zilla's) is taken as before.
	AttemptMetadata = "kafkarpc-attempt"
)

// CancelStatus is the value of the status header on a request end-of-stream
// record that cancels the call (CANCELLED, extension).
const CancelStatus = "1"
