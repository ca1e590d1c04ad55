package runtime

import (
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

func TestRecordFilter(t *testing.T) {
	s := func(v string) *string { return &v }
	// testdata/routing/v1's Feed: key customer-42, or type=created and
	// zilla:service=orders, or an empty key with a flag header of "".
	feed := []FetchFilter{
		{Key: s("customer-42")},
		{Headers: []Header{{Name: "type", Value: "created"}, {Name: "zilla:service", Value: "orders"}}},
		{Key: s(""), Headers: []Header{{Name: "flag", Value: ""}}},
	}
	h := func(kv ...string) []kafkaclient.Header {
		var hs []kafkaclient.Header
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, kafkaclient.Header{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	for _, tc := range []struct {
		name    string
		filters []FetchFilter
		caller  *string
		key     []byte
		headers []kafkaclient.Header
		want    bool
	}{
		{"no filters", nil, nil, []byte("any"), nil, true},
		{"key matches", feed, nil, []byte("customer-42"), nil, true},
		{"key differs", feed, nil, []byte("customer-43"), nil, false},
		{"all headers", feed, nil, []byte("k"), h("type", "created", "zilla:service", "orders"), true},
		{"headers in any order, extras", feed, nil, []byte("k"), h("x", "y", "zilla:service", "orders", "type", "created"), true},
		{"one header missing", feed, nil, []byte("k"), h("type", "created"), false},
		{"header value differs", feed, nil, []byte("k"), h("type", "deleted", "zilla:service", "orders"), false},
		{"repeated header, one matches", feed, nil, []byte("k"), h("type", "deleted", "type", "created", "zilla:service", "orders"), true},
		{"header names are case-sensitive", feed, nil, []byte("k"), h("Type", "created", "zilla:service", "orders"), false},
		{"empty key and empty flag", feed, nil, nil, h("flag", ""), true},
		{"empty non-nil key and empty flag", feed, nil, []byte{}, h("flag", ""), true},
		{"empty key, flag with a value", feed, nil, nil, h("flag", "1"), false},
		{"empty key, no flag", feed, nil, nil, nil, false},
		{"caller key alone", nil, s("a"), []byte("a"), nil, true},
		{"caller key alone, other key", nil, s("a"), []byte("b"), nil, false},
		{"caller key and method filter", feed, s("customer-42"), []byte("customer-42"), nil, true},
		{"caller key narrows the method filter", feed, s("other"), []byte("k"), h("type", "created", "zilla:service", "orders"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRecordFilter(tc.filters, tc.caller)
			if got := f.match(tc.key, tc.headers); got != tc.want {
				t.Fatalf("match = %v, want %v", got, tc.want)
			}
		})
	}
	if f := newRecordFilter(nil, nil); !f.passAll() {
		t.Fatal("no filters: passAll false")
	}
}
