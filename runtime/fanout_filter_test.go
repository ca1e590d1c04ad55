package runtime

import (
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

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
			var keys []string
			if tc.caller != nil {
				keys = []string{*tc.caller}
			}
			f, err := newRecordFilter(tc.filters, nil, keys)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.match(tc.key, tc.headers); got != tc.want {
				t.Fatalf("match = %v, want %v", got, tc.want)
			}
		})
	}
	if f, err := newRecordFilter(nil, nil, nil); err != nil || !f.passAll() {
		t.Fatal("no filters: passAll false")
	}
}

// TestRecordFilterFromMetadata: conditions whose values come from the
// caller's metadata, as testdata/keyed/v1's Statements declares them.
func TestRecordFilterFromMetadata(t *testing.T) {
	statements := []FetchFilter{
		{KeyMetadata: "x-account"},
		{Headers: []Header{{Name: "kind", Value: "summary"}}, HeaderMetadata: []Header{{Name: "tenant", Value: "x-tenant"}}, MetadataOptional: true},
	}
	summary := func(tenant string) []kafkaclient.Header {
		return []kafkaclient.Header{{Key: "kind", Value: []byte("summary")}, {Key: "tenant", Value: []byte(tenant)}}
	}
	for _, tc := range []struct {
		name    string
		md      metadata.MD
		key     string
		headers []kafkaclient.Header
		want    bool
	}{
		{"the caller's account", metadata.Pairs("x-account", "a1"), "a1", nil, true},
		{"another account", metadata.Pairs("x-account", "a1"), "a2", nil, false},
		{"one of the caller's accounts", metadata.Pairs("x-account", "a1", "x-account", "a2"), "a2", nil, true},
		{"the caller's tenant's summary", metadata.Pairs("x-account", "a1", "x-tenant", "t1"), "zz", summary("t1"), true},
		{"another tenant's summary", metadata.Pairs("x-account", "a1", "x-tenant", "t1"), "zz", summary("t2"), false},
		{"no tenant: every summary", metadata.Pairs("x-account", "a1"), "zz", summary("t2"), true},
		{"no tenant: only summaries", metadata.Pairs("x-account", "a1"), "zz", []kafkaclient.Header{{Key: "kind", Value: []byte("detail")}}, false},
		{"an empty account matches an empty key", metadata.Pairs("x-account", ""), "", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := newRecordFilter(statements, tc.md, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.match([]byte(tc.key), tc.headers); got != tc.want {
				t.Fatalf("match = %v, want %v", got, tc.want)
			}
		})
	}
	// x-account is not optional: a caller without it is refused, naming it.
	_, err := newRecordFilter(statements, metadata.Pairs("x-tenant", "t1"), nil)
	if err == nil || !strings.Contains(err.Error(), `"x-account"`) || !strings.Contains(err.Error(), "fetch.filters[0]") {
		t.Fatalf("without x-account: %v, want an error naming it and its filter", err)
	}
}
