package runtime

import (
	"bytes"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// recordFilter decides which records of a fetched topic one caller
// receives: the method's filters (any of them, each all of its conditions)
// and, when the caller sent the key metadata, that key.
type recordFilter struct {
	anyOf  []compiledFilter // empty: every record
	key    []byte
	hasKey bool
}

// compiledFilter is a FetchFilter with its strings as bytes.
type compiledFilter struct {
	key     []byte
	hasKey  bool
	headers []kafkaclient.Header
}

// newRecordFilter compiles the method's filters and the caller's key.
func newRecordFilter(filters []FetchFilter, callerKey *string) recordFilter {
	var f recordFilter
	for _, ff := range filters {
		c := compiledFilter{}
		if ff.Key != nil {
			c.key, c.hasKey = []byte(*ff.Key), true
		}
		for _, h := range ff.Headers {
			c.headers = append(c.headers, kafkaclient.Header{Key: h.Name, Value: []byte(h.Value)})
		}
		f.anyOf = append(f.anyOf, c)
	}
	if callerKey != nil {
		f.key, f.hasKey = []byte(*callerKey), true
	}
	return f
}

// match reports whether a record with key and headers passes. A key
// condition of "" matches a record without a key as well as an empty key;
// a header condition matches when one of the record's headers of that name
// has exactly that value.
func (f *recordFilter) match(key []byte, hs []kafkaclient.Header) bool {
	if f.hasKey && !bytes.Equal(key, f.key) {
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
	if c.hasKey && !bytes.Equal(key, c.key) {
		return false
	}
	for _, want := range c.headers {
		found := false
		for i := range hs {
			if hs[i].Key == want.Key && bytes.Equal(hs[i].Value, want.Value) {
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

// passAll reports whether the filter lets every record through.
func (f *recordFilter) passAll() bool { return !f.hasKey && len(f.anyOf) == 0 }
