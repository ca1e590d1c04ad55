package runtime

import (
	"bytes"
	"fmt"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
	"google.golang.org/grpc/metadata"
)

// resumeNames returns the metadata names that may carry a fetch caller's
// resume id: the method's own name, then wire.DefaultResumeMetadata and
// wire.ResumeMetadataSynonym, without repeats.
func resumeNames(name string) []string {
	if name == "" {
		name = wire.DefaultResumeMetadata
	}
	names := []string{name}
	for _, n := range []string{wire.DefaultResumeMetadata, wire.ResumeMetadataSynonym} {
		if n != name {
			names = append(names, n)
		}
	}
	return names
}

// resumeFromMetadata reads the resume id a fetch caller sent: under each of
// names, the text form (base64, either alphabet, padded or not) or, under
// the name with "-bin", the raw bytes. An empty value counts as absent. It
// returns nil when the caller sent none, and an error saying what is wrong
// when a value cannot be decoded or two values disagree.
func resumeFromMetadata(md metadata.MD, names []string) (wire.EventID, error) {
	var raw []byte
	from := ""
	take := func(name string, b []byte) error {
		if raw != nil && !bytes.Equal(raw, b) {
			return fmt.Errorf("metadata %s and %s carry different event ids", from, name)
		}
		raw, from = b, name
		return nil
	}
	for _, n := range names {
		for _, v := range md[n+"-bin"] {
			if v == "" {
				continue
			}
			if err := take(n+"-bin", []byte(v)); err != nil {
				return nil, err
			}
		}
		for _, v := range md[n] {
			if v == "" {
				continue
			}
			b, err := wire.DecodeBase64(v)
			if err != nil {
				return nil, fmt.Errorf("metadata %s: event id %q is not base64 (either alphabet, padding optional): %v", n, v, err)
			}
			if err := take(n, b); err != nil {
				return nil, err
			}
		}
	}
	if raw == nil {
		return nil, nil
	}
	id, err := wire.DecodeEventID(raw)
	if err != nil {
		return nil, fmt.Errorf("metadata %s: %w", from, err)
	}
	return id, nil
}

// FetchRecordsDeletedMetadata is the response header by which a fetch
// tells its caller that records it resumes after no longer exist (retention
// or a deletion removed them): one value per partition, "partition P
// offsets A to B", naming the records the stream skips. The stream goes on
// from the earliest record Kafka retains.
const FetchRecordsDeletedMetadata = "fetch-records-deleted"
