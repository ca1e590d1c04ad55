package runtime

import (
	"bytes"
	"fmt"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"google.golang.org/grpc/metadata"
)

// recordFilter decides which records of a fetched topic one caller
// receives: the method's filters (any of them, each all of its conditions),
// with the values of metadata conditions taken from the caller's metadata,
// and, when the caller sent the gateway's key metadata, one of its values.
type recordFilter struct {
	anyOf []compiledFilter // empty: every record
	keys  [][]byte         // nil: any key
}

// compiledFilter is one FetchFilter for one caller: each condition is met
// by any of its values (one, unless it came from metadata with several).
type compiledFilter struct {
	keys    [][]byte // nil: no condition on the key
	headers []headerCondition
}

type headerCondition struct {
	name   string
	values [][]byte
}

// newRecordFilter compiles the method's filters for a caller with metadata
// md and the caller's keys (the values of the gateway's key metadata: a
// record must have one of them, when there are any). A filter condition
// that names metadata md lacks is an error naming it, unless the filter's
// MetadataOptional drops the condition.
func newRecordFilter(filters []FetchFilter, md metadata.MD, callerKeys []string) (recordFilter, error) {
	var f recordFilter
	for i, ff := range filters {
		var c compiledFilter
		if ff.Key != nil {
			c.keys = [][]byte{[]byte(*ff.Key)}
		}
		for _, h := range ff.Headers {
			c.headers = append(c.headers, headerCondition{name: h.Name, values: [][]byte{[]byte(h.Value)}})
		}
		if ff.KeyMetadata != "" {
			vs, err := metadataValues(md, ff.KeyMetadata, i, ff.MetadataOptional)
			if err != nil {
				return f, err
			}
			c.keys = vs
		}
		for _, h := range ff.HeaderMetadata {
			vs, err := metadataValues(md, h.Value, i, ff.MetadataOptional)
			if err != nil {
				return f, err
			}
			if vs != nil {
				c.headers = append(c.headers, headerCondition{name: h.Name, values: vs})
			}
		}
		f.anyOf = append(f.anyOf, c)
	}
	for _, k := range callerKeys {
		f.keys = append(f.keys, []byte(k))
	}
	return f, nil
}

// metadataValues returns the values of metadata name in md, or nil when md
// has none and optional; without it and not optional it is an error.
func metadataValues(md metadata.MD, name string, filter int, optional bool) ([][]byte, error) {
	vs := md.Get(name)
	if len(vs) == 0 {
		if optional {
			return nil, nil
		}
		return nil, fmt.Errorf("request metadata %q is required: fetch.filters[%d] takes its value from it", name, filter)
	}
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i] = []byte(v)
	}
	return out, nil
}

// match reports whether a record with key and headers passes. A key
// condition of "" matches a record without a key as well as an empty key;
// a header condition matches when one of the record's headers of that name
// has one of the condition's values.
func (f *recordFilter) match(key []byte, hs []kafkaclient.Header) bool {
	if f.keys != nil && !anyEqual(f.keys, key) {
		return false
	}
	if len(f.anyOf) == 0 {
		return true
	}
	for i := range f.anyOf {
		if f.anyOf[i].match(key, hs) {
			return true
		}
	}
	return false
}

func (c *compiledFilter) match(key []byte, hs []kafkaclient.Header) bool {
	if c.keys != nil && !anyEqual(c.keys, key) {
		return false
	}
	for _, want := range c.headers {
		found := false
		for i := range hs {
			if hs[i].Key == want.name && anyEqual(want.values, hs[i].Value) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func anyEqual(vs [][]byte, b []byte) bool {
	for _, v := range vs {
		if bytes.Equal(v, b) {
			return true
		}
	}
	return false
}

// passAll reports whether the filter lets every record through.
func (f *recordFilter) passAll() bool { return f.keys == nil && len(f.anyOf) == 0 }
