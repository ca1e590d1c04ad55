package runtime_test

import (
	"reflect"
	"strconv"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// fullSpec returns a spec with every field of every type it holds set, so
// that a field Clone forgets to copy shows up in TestCloneIsDeep.
func fullSpec() *runtime.ServiceSpec {
	return &runtime.ServiceSpec{
		Name: "test.v1.Service",
		Methods: []*runtime.MethodSpec{
			{
				Service: "test.v1.Service",
				Method:  "Call",
				Kind:    runtime.KindClientStream,
				Routes: []runtime.Route{{
					When:       []runtime.MetadataMatch{{Name: "x-tenant", Value: "acme"}},
					Topic:      "acme-requests",
					ReplyTopic: "acme-responses",
					Key:        "acme",
					KeyField: &runtime.KeyField{Path: "order.id", Numbers: []int32{1, 2}, Kind: protoreflect.StringKind,
						ExplicitPresence: true, Required: true},
					Overrides: []runtime.Header{{Name: "tenant", Value: "acme"}},
					Acks:      runtime.AcksLeader,
					Oneway:    true,
				}},
				Fetch: &runtime.FetchSpec{
					Topic: "events",
					Filters: []runtime.FetchFilter{{Key: new("k"), Headers: []runtime.Header{{Name: "kind", Value: "a"}},
						KeyMetadata: "x-key", HeaderMetadata: []runtime.Header{{Name: "tenant", Value: "x-tenant"}}, MetadataOptional: true}},
					EventIDField:   7,
					ResumeMetadata: "last-id",
				},
			},
		},
	}
}

func TestCloneIsDeep(t *testing.T) {
	orig := fullSpec()
	assertAllSet(t, "spec", reflect.ValueOf(orig))
	c := orig.Clone()
	if !reflect.DeepEqual(c, orig) {
		t.Fatalf("Clone = %+v, want a value equal to %+v", c, orig)
	}
	assertDisjoint(t, "spec", reflect.ValueOf(orig), reflect.ValueOf(c))

	// Changing everything the clone reaches leaves the original as it was.
	m := c.Methods[0]
	m.Method, m.Routes[0].Topic, m.Routes[0].When[0].Value, m.Routes[0].Overrides[0].Value = "x", "x", "x", "x"
	m.Fetch.Topic, *m.Fetch.Filters[0].Key, m.Fetch.Filters[0].Headers[0].Value = "x", "x", "x"
	m.Routes[0].KeyField.Numbers[0], m.Fetch.Filters[0].HeaderMetadata[0].Value = 9, "x"
	c.Methods[0] = nil
	if !reflect.DeepEqual(orig, fullSpec()) {
		t.Errorf("changing the clone changed the original: %+v", orig)
	}

	if (*runtime.ServiceSpec)(nil).Clone() != nil || (*runtime.MethodSpec)(nil).Clone() != nil {
		t.Error("Clone of nil is not nil")
	}
	empty := (&runtime.ServiceSpec{Methods: []*runtime.MethodSpec{{}}}).Clone()
	if empty.Methods[0].Routes != nil || empty.Methods[0].Fetch != nil {
		t.Errorf("Clone of a method without routes or fetch = %+v", empty.Methods[0])
	}
}

// assertAllSet fails for every zero field, slice element or pointer under v.
func assertAllSet(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	if v.IsZero() {
		t.Errorf("%s is zero in fullSpec: set it, so that Clone is checked for it", path)
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		assertAllSet(t, path, v.Elem())
	case reflect.Slice:
		for i := range v.Len() {
			assertAllSet(t, path+"["+strconv.Itoa(i)+"]", v.Index(i))
		}
	case reflect.Struct:
		for i := range v.NumField() {
			assertAllSet(t, path+"."+v.Type().Field(i).Name, v.Field(i))
		}
	}
}

// assertDisjoint fails for every pointer or slice of a that b shares.
func assertDisjoint(t *testing.T, path string, a, b reflect.Value) {
	t.Helper()
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return
		}
		if a.Pointer() == b.Pointer() {
			t.Errorf("%s: the clone shares the original's pointer", path)
			return
		}
		assertDisjoint(t, path, a.Elem(), b.Elem())
	case reflect.Slice:
		if a.Len() > 0 && b.Len() > 0 && a.Pointer() == b.Pointer() {
			t.Errorf("%s: the clone shares the original's slice", path)
			return
		}
		for i := range min(a.Len(), b.Len()) {
			assertDisjoint(t, path+"["+strconv.Itoa(i)+"]", a.Index(i), b.Index(i))
		}
	case reflect.Struct:
		for i := range a.NumField() {
			assertDisjoint(t, path+"."+a.Type().Field(i).Name, a.Field(i), b.Field(i))
		}
	}
}
