// Package wire is the record layout of gRPC calls carried over Kafka, as
// WIRE.md describes it: the header names, the correlation id, the encoding of
// a request's and a reply's headers, the decoding of a record's headers in
// one pass into an Envelope, the mapping of gRPC statuses to headers, the
// fetch event ids, and the dead-letter header keys.
//
// It depends on no Kafka client, no gRPC server and no telemetry library, so
// that tools and programs of any kind can read and write the records of a
// kafkarpc or Zilla deployment. Its functions are safe for concurrent use;
// its values are not, unless a type says so.
package wire
