package main

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// badOptions maps each proto of testdata/bad (one invalid option each) to
// the exact error the plugin must answer with, after "<file>: ".
var badOptions = map[string]string{
	"acks_unknown.proto":                          `testdata.bad.v1.BadService.Call: acks 7 is not a known value`,
	"service_without_methods.proto":               `testdata.bad.v1.BadService: service options on a service without methods: it has nothing to carry over Kafka`,
	"fetch_event_id_declared.proto":               `testdata.bad.v1.BadService.Call: fetch.event_id_field 7 is already field seq of testdata.bad.v1.Event`,
	"fetch_event_id_default_declared.proto":       `testdata.bad.v1.BadService.Call: fetch.event_id_field 32767 (the default) is already field id of testdata.bad.v1.Event`,
	"fetch_event_id_out_of_range.proto":           `testdata.bad.v1.BadService.Call: fetch.event_id_field 536870912 is out of range 1..536870911`,
	"fetch_event_id_reserved.proto":               `testdata.bad.v1.BadService.Call: fetch.event_id_field 19500 is in the range 19000-19999 that protobuf reserves`,
	"fetch_filter_empty.proto":                    `testdata.bad.v1.BadService.Call: fetch.filters[0] needs a condition: a key, a header, key_metadata or header_metadata`,
	"fetch_filter_key_and_key_metadata.proto":     `testdata.bad.v1.BadService.Call: fetch.filters[0] sets both key and key_metadata: the record key has one value to match`,
	"fetch_filter_key_metadata_upper_case.proto":  `testdata.bad.v1.BadService.Call: fetch.filters[0].key_metadata "X-Key" is not a valid metadata name: character 'X' is not allowed, only lower case [0-9a-z_.-]`,
	"fetch_filter_header_metadata_no_name.proto":  `testdata.bad.v1.BadService.Call: fetch.filters[0].header_metadata[0].name is required`,
	"fetch_filter_header_metadata_reserved.proto": `testdata.bad.v1.BadService.Call: fetch.filters[0].header_metadata[0].metadata "grpc-timeout" is reserved by gRPC`,
	"fetch_filter_metadata_optional_alone.proto":  `testdata.bad.v1.BadService.Call: fetch.filters[0].metadata_optional needs key_metadata or header_metadata`,
	"fetch_with_key_field.proto":                  `testdata.bad.v1.BadService.Call: key_field cannot be combined with fetch`,
	"key_field_and_key.proto":                     `testdata.bad.v1.BadService.Call: key and key_field cannot both be set: the record key comes from one of them`,
	"key_field_unknown.proto":                     `testdata.bad.v1.BadService.Call: key_field "inner.name": testdata.bad.v1.Inner has no field "name"`,
	"key_field_repeated.proto":                    `testdata.bad.v1.BadService.Call: key_field "tags": testdata.bad.v1.Ping.tags is repeated; every field on the path must be singular`,
	"key_field_double.proto":                      `testdata.bad.v1.BadService.Call: key_field "score": testdata.bad.v1.Ping.score is a double; the key field must be a string, bytes, integer or enum`,
	"key_field_bool.proto":                        `testdata.bad.v1.BadService.Call: key_field "inner.flag": testdata.bad.v1.Inner.flag is a bool; the key field must be a string, bytes, integer or enum`,
	"key_field_message.proto":                     `testdata.bad.v1.BadService.Call: key_field "inner": testdata.bad.v1.Ping.inner is a message; the key field must be a string, bytes, integer or enum`,
	"key_field_delimited.proto":                   `testdata.bad.v1.BadService.Call: key_field "inner.id": testdata.bad.v1.Ping.inner is delimited-encoded (features.message_encoding = DELIMITED), which a key_field path cannot go through: only length-prefixed message fields`,
	"fetch_event_id_extension_range.proto":        `testdata.bad.v1.BadService.Call: fetch.event_id_field 32767 (the default) is in an extension range of testdata.bad.v1.Event: an extension may declare it`,
	"key_field_through_scalar.proto":              `testdata.bad.v1.BadService.Call: key_field "text.id": testdata.bad.v1.Ping.text is a string, not a message, so it has no field "id"`,
	"key_field_empty_step.proto":                  `testdata.bad.v1.BadService.Call: key_field "inner..id" is not a field path: names separated by ".", as in "order.id"`,
	"key_field_required_alone.proto":              `testdata.bad.v1.BadService.Call: key_field_required needs key_field`,
	"route_key_field_and_key.proto":               `testdata.bad.v1.BadService.Call: routes[0].key and routes[0].key_field cannot both be set: the record key comes from one of them`,
	"fetch_filter_header_no_name.proto":           `testdata.bad.v1.BadService.Call: fetch.filters[0].headers[0].name is required`,
	"fetch_missing_topic.proto":                   `testdata.bad.v1.BadService.Call: fetch.topic is required`,
	"fetch_request_not_empty.proto":               `testdata.bad.v1.BadService.Call: fetch requires google.protobuf.Empty as the request, not testdata.bad.v1.Ping`,
	"fetch_resume_metadata_bin.proto":             `testdata.bad.v1.BadService.Call: fetch.resume_metadata "last-id-bin" must not end in "-bin": name the base64 variant, the binary one adds "-bin"`,
	"fetch_resume_metadata_upper_case.proto":      `testdata.bad.v1.BadService.Call: fetch.resume_metadata "Last-Id" is not a valid metadata name: character 'L' is not allowed, only lower case [0-9a-z_.-]`,
	"fetch_unary.proto":                           `testdata.bad.v1.BadService.Call: fetch is only allowed on server-streaming methods, not on a unary method`,
	"fetch_with_acks.proto":                       `testdata.bad.v1.BadService.Call: acks cannot be combined with fetch`,
	"fetch_with_oneway.proto":                     `testdata.bad.v1.BadService.Call: oneway cannot be combined with fetch`,
	"fetch_with_request_topic.proto":              `testdata.bad.v1.BadService.Call: request_topic cannot be combined with fetch`,
	"fetch_with_routes.proto":                     `testdata.bad.v1.BadService.Call: routes cannot be combined with fetch`,
	"missing_reply_topic.proto":                   `testdata.bad.v1.BadService.Call: reply_topic is required unless oneway is set`,
	"missing_request_topic.proto":                 `testdata.bad.v1.BadService.Call: request_topic is required`,
	"oneway_route_bidi.proto":                     `testdata.bad.v1.BadService.Call: routes[0].oneway is only allowed on unary and client-streaming methods, not on a bidi-streaming method`,
	"oneway_server_stream.proto":                  `testdata.bad.v1.BadService.Call: oneway is only allowed on unary and client-streaming methods, not on a server-streaming method`,
	"oneway_with_reply_topic.proto":               `testdata.bad.v1.BadService.Call: reply_topic must be empty when oneway is set`,
	"override_zilla.proto":                        `testdata.bad.v1.BadService.Call: overrides[0].name "zilla:service" must not start with "zilla:", which the wire format reserves`,
	"route_metadata_no_name.proto":                `testdata.bad.v1.BadService.Call: routes[0].when[0].name is required`,
	"route_metadata_pseudo.proto":                 `testdata.bad.v1.BadService.Call: routes[0].when[0].name ":authority" is an HTTP/2 pseudo-header, not request metadata`,
	"route_metadata_reserved.proto":               `testdata.bad.v1.BadService.Call: routes[0].when[0].name "grpc-timeout" is reserved by gRPC`,
	"route_metadata_value_not_ascii.proto":        `testdata.bad.v1.BadService.Call: routes[0].when[0].value "zürich" never matches a gRPC caller: a value of text metadata such as "region" is printable ASCII, and character 'ü' is not (grpc-go refuses to send it); only a name ending in "-bin" carries other bytes`,
	"route_metadata_upper_case.proto":             `testdata.bad.v1.BadService.Call: routes[0].when[0].name "X-Tenant" is not a valid metadata name: character 'X' is not allowed, only lower case [0-9a-z_.-]`,
	"route_not_oneway_without_reply.proto":        `testdata.bad.v1.BadService.Call: routes[0].reply_topic is required unless oneway is set`,
	"route_oneway_with_reply_topic.proto":         `testdata.bad.v1.BadService.Call: routes[0].reply_topic must be empty when oneway is set`,
	"route_override_meta.proto":                   `testdata.bad.v1.BadService.Call: routes[0].overrides[0].name "meta:x" must not start with "meta:", which the wire format reserves`,
	"route_same_request_reply_topic.proto":        `testdata.bad.v1.BadService.Call: routes[0].reply_topic must differ from request_topic "r"`,
	"route_without_when.proto":                    `testdata.bad.v1.BadService.Call: routes[0].when needs at least one condition`,
	"same_request_reply_topic.proto":              `testdata.bad.v1.BadService.Call: reply_topic must differ from request_topic "t"`,
	"service_bad_topic.proto":                     `testdata.bad.v1.BadService: reply_topic "bad topic" is not a valid Kafka topic name: character ' ' is not allowed, only [a-zA-Z0-9._-]`,
	"service_override_no_name.proto":              `testdata.bad.v1.BadService: overrides[0].name is required`,
	"topic_bad_character.proto":                   `testdata.bad.v1.BadService.Call: request_topic "orders/eu" is not a valid Kafka topic name: character '/' is not allowed, only [a-zA-Z0-9._-]`,
	"topic_dot_dot.proto":                         `testdata.bad.v1.BadService.Call: reply_topic ".." is not a valid Kafka topic name: "." and ".." are not allowed`,
	"topic_too_long.proto":                        `testdata.bad.v1.BadService.Call: request_topic is not a valid Kafka topic name: 250 characters, at most 249 allowed`,
}

// optionPosition returns "line:column" of the Kafka option in file (each
// proto of testdata/bad has one), where the plugin's error must point, as a
// compiler's does.
func optionPosition(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, file))
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(b), "\n") {
		if col := strings.Index(line, "option (kafkarpc.kafka.v1."); col >= 0 {
			return fmt.Sprintf("%d:%d", i+1, col+1)
		}
	}
	t.Fatalf("%s has no Kafka option", file)
	return ""
}

// TestBadOptions runs the plugin on every proto of testdata/bad: each must be
// refused with its exact error in the response, naming the file, line and
// column of the offending option, and no file.
func TestBadOptions(t *testing.T) {
	files := protoFiles(t, "testdata/bad")
	if len(files) != len(badOptions) {
		t.Errorf("%d protos in testdata/bad, %d expected errors: keep them in step", len(files), len(badOptions))
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(path.Base(file), ".proto"), func(t *testing.T) {
			want, ok := badOptions[path.Base(file)]
			if !ok {
				t.Fatalf("no expected error for %s", file)
			}
			want = file + ":" + optionPosition(t, file) + ": " + want
			resp := runPlugin(t, compileRequest(t, nil, file))
			if got := resp.GetError(); got != want {
				t.Errorf("error:\n got: %s\nwant: %s", got, want)
			}
			if len(resp.File) != 0 {
				t.Errorf("%d files generated despite the error", len(resp.File))
			}
		})
	}
}

// TestAllErrorsReported checks that every problem of every file is reported,
// in file, service and method order, rather than only the first.
func TestAllErrorsReported(t *testing.T) {
	const header = `syntax = "proto3";
package multi.v1;
import "google/protobuf/empty.proto";
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/multi/v1;multiv1";
`
	sources := map[string]string{
		"multi/v1/a.proto": header + `
service AService {
  option (kafkarpc.kafka.v1.service) = {reply_topic: "bad topic"};
  rpc One(google.protobuf.Empty) returns (google.protobuf.Empty);
  rpc Two(google.protobuf.Empty) returns (stream google.protobuf.Empty) {
    option (kafkarpc.kafka.v1.method) = {request_topic: "q" oneway: true reply_topic: "r"};
  }
}
`,
		"multi/v1/b.proto": header + `
service BService {
  rpc Three(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (kafkarpc.kafka.v1.method) = {
      request_topic: "q" reply_topic: "r"
      routes: {request_topic: "."}
    };
  }
  rpc Fine(google.protobuf.Empty) returns (google.protobuf.Empty);
}
`,
	}
	resp := runPlugin(t, compileRequest(t, sources, "multi/v1/a.proto", "multi/v1/b.proto"))
	got := strings.Split(resp.GetError(), "\n")
	wantLines := []string{
		// At the service's option.
		`multi/v1/a.proto:8:3: multi.v1.AService: reply_topic "bad topic" is not a valid Kafka topic name: character ' ' is not allowed, only [a-zA-Z0-9._-]`,
		// At the method's declaration: it has no option of its own.
		`multi/v1/a.proto:9:3: multi.v1.AService.One: request_topic is required`,
		// At the method's option.
		`multi/v1/a.proto:11:5: multi.v1.AService.Two: oneway is only allowed on unary and client-streaming methods, not on a server-streaming method`,
		`multi/v1/a.proto:11:5: multi.v1.AService.Two: reply_topic must be empty when oneway is set`,
		`multi/v1/b.proto:9:5: multi.v1.BService.Three: routes[0].when needs at least one condition`,
		`multi/v1/b.proto:9:5: multi.v1.BService.Three: routes[0].request_topic "." is not a valid Kafka topic name: "." and ".." are not allowed`,
	}
	if strings.Join(got, "\n") != strings.Join(wantLines, "\n") {
		t.Errorf("errors:\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(wantLines, "\n      "))
	}
	if len(resp.File) != 0 {
		t.Errorf("%d files generated despite the errors", len(resp.File))
	}
}

// TestKeyFieldFromService: a service's key_field is resolved against the
// request of every method that inherits it, and a problem is reported at
// that method, saying where the option came from; a method that sets its
// own key or key_field does not inherit it.
func TestKeyFieldFromService(t *testing.T) {
	const src = `syntax = "proto3";
package keys.v1;
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/keys/v1;keysv1";
service KeyService {
  option (kafkarpc.kafka.v1.service) = {request_topic: "q" reply_topic: "r" key_field: "account.id"};
  rpc Inherits(WithAccount) returns (WithAccount);
  rpc Lacks(Plain) returns (Plain);
  rpc OwnKey(Plain) returns (Plain) {
    option (kafkarpc.kafka.v1.method) = {key: "k"};
  }
  rpc OwnField(Plain) returns (Plain) {
    option (kafkarpc.kafka.v1.method) = {key_field: "name"};
  }
}
service BothService {
  option (kafkarpc.kafka.v1.service) = {request_topic: "q" reply_topic: "r" key: "k" key_field: "name"};
  rpc Call(Plain) returns (Plain);
}
message Account { string id = 1; }
message WithAccount { Account account = 1; }
message Plain { string name = 1; }
`
	resp := runPlugin(t, compileRequest(t, map[string]string{"keys/v1/keys.proto": src}, "keys/v1/keys.proto"))
	want := strings.Join([]string{
		`keys/v1/keys.proto:8:3: keys.v1.KeyService.Lacks: key_field (from the service) "account.id": keys.v1.Plain has no field "account"`,
		`keys/v1/keys.proto:17:3: keys.v1.BothService: key and key_field cannot both be set: the record key comes from one of them`,
	}, "\n")
	if got := resp.GetError(); got != want {
		t.Errorf("errors:\n got: %s\nwant: %s", got, want)
	}
}

// TestTopicRolesConflict: a topic carries one kind of record. A topic that
// is a request topic of one method (or route) and the reply topic of another,
// or the fetch topic of one method and a request or reply topic of another,
// makes workers consume replies or published events as requests, and fetch
// callers receive requests or replies as events. Each method checks fine on
// its own; the plugin must refuse the service, naming both uses.
func TestTopicRolesConflict(t *testing.T) {
	const header = `syntax = "proto3";
package roles.v1;
import "google/protobuf/empty.proto";
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/roles/v1;rolesv1";
message Ping { string id = 1; }
`
	for name, c := range map[string]struct{ src, want string }{
		"swapped": {`service S {
  rpc A(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "x" reply_topic: "y"}; }
  rpc B(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "y" reply_topic: "z"}; }
}`, `:9:32: roles.v1.S.B: request_topic "y" is also the reply topic of roles.v1.S.A (reply_topic): a topic carries one kind of record, requests, replies or fetched events`},
		"route": {`service S {
  rpc A(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "x" reply_topic: "y"
    routes: {when: {name: "t"} request_topic: "x2" reply_topic: "x"}
  }; }
}`, `:8:32: roles.v1.S.A: routes[0].reply_topic "x" is also the request topic of roles.v1.S.A (request_topic): a topic carries one kind of record, requests, replies or fetched events`},
		"fetch": {`service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "q" reply_topic: "r"};
  rpc A(Ping) returns (Ping);
  rpc E(google.protobuf.Empty) returns (stream Ping) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "q"}}; }
}`, `:10:56: roles.v1.S.E: fetch.topic "q" is also the request topic of roles.v1.S.A (request_topic, from the service): a topic carries one kind of record, requests, replies or fetched events`},
		"oneway to a reply topic": {`service S {
  rpc A(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "x" reply_topic: "y"}; }
  rpc N(Ping) returns (google.protobuf.Empty) { option (kafkarpc.kafka.v1.method) = {request_topic: "y" oneway: true}; }
}`, `:9:49: roles.v1.S.N: request_topic "y" is also the reply topic of roles.v1.S.A (reply_topic): a topic carries one kind of record, requests, replies or fetched events`},
		"across services": {`service A {
  option (kafkarpc.kafka.v1.service) = {request_topic: "x" reply_topic: "a-r"};
  rpc M(Ping) returns (Ping);
}
service B {
  option (kafkarpc.kafka.v1.service) = {request_topic: "b-q" reply_topic: "x"};
  rpc M(Ping) returns (Ping);
}`, `:13:3: roles.v1.B.M: reply_topic "x" (from the service) is also the request topic of roles.v1.A.M (request_topic, from the service): a topic carries one kind of record, requests, replies or fetched events`},
		"dot and underscore": {`service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "orders.requests" reply_topic: "orders.replies"};
  rpc A(Ping) returns (Ping);
  rpc B(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "orders_requests"}; }
}`, `:10:32: roles.v1.S.B: request_topic "orders_requests" differs from "orders.requests", the request topic of roles.v1.S.A (request_topic, from the service), only in '.' against '_': Kafka refuses to create both, as their metric names collide`},
	} {
		t.Run(name, func(t *testing.T) {
			file := "roles/v1/" + strings.ReplaceAll(name, " ", "_") + ".proto"
			resp := runPlugin(t, compileRequest(t, map[string]string{file: header + c.src}, file))
			if got, want := resp.GetError(), file+c.want; got != want {
				t.Errorf("error:\n got: %s\nwant: %s", got, want)
			}
			if len(resp.File) != 0 {
				t.Errorf("%d files generated despite the error", len(resp.File))
			}
		})
	}
	// Across files of one run too: the second file's service is refused.
	sources := map[string]string{
		"roles/v1/one.proto": header + `service A { rpc M(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "x" reply_topic: "y"}; } }`,
		"roles/v2/two.proto": strings.ReplaceAll(header, "roles.v1", "roles.v2") + `service B { rpc M(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "y" reply_topic: "z"}; } }`,
	}
	resp := runPlugin(t, compileRequest(t, sources, "roles/v1/one.proto", "roles/v2/two.proto"))
	if got, want := resp.GetError(), `roles/v2/two.proto:7:42: roles.v2.B.M: request_topic "y" is also the reply topic of roles.v1.A.M (reply_topic): a topic carries one kind of record, requests, replies or fetched events`; got != want {
		t.Errorf("two files: error:\n got: %s\nwant: %s", got, want)
	}

	// Shared topics of one role stay allowed: several methods on one
	// request topic and one reply topic, a route on the default's topics;
	// so do a oneway method publishing to a topic that a fetch method
	// streams (publish and subscribe), and oneway and answered requests on
	// one request topic.
	ok := header + `service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "q" reply_topic: "r"};
  rpc A(Ping) returns (Ping);
  rpc B(Ping) returns (stream Ping) { option (kafkarpc.kafka.v1.method) = {routes: {when: {name: "t"} key: "k"}}; }
  rpc E(google.protobuf.Empty) returns (stream Ping) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "f"}}; }
  rpc F(google.protobuf.Empty) returns (stream Ping) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "f"}}; }
  rpc P(Ping) returns (google.protobuf.Empty) { option (kafkarpc.kafka.v1.method) = {request_topic: "f" oneway: true}; }
  rpc N(Ping) returns (google.protobuf.Empty) { option (kafkarpc.kafka.v1.method) = {oneway: true}; }
}`
	if resp := runPlugin(t, compileRequest(t, map[string]string{"roles/v1/ok.proto": ok}, "roles/v1/ok.proto")); resp.Error != nil {
		t.Errorf("shared topics of one role refused: %s", resp.GetError())
	}
}

// TestShadowedRoutes: routes are tried in order and the first whose
// conditions all hold is chosen, so a route whose conditions include every
// condition of an earlier route (the same ones, or more) is never chosen.
// Its calls silently go where the earlier route says: the plugin must refuse
// it, naming both routes.
func TestShadowedRoutes(t *testing.T) {
	const src = `syntax = "proto3";
package shadow.v1;
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/shadow/v1;shadowv1";
message Ping { string id = 1; }
service S {
  rpc A(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {request_topic: "q" reply_topic: "r"
    routes: {when: {name: "x-tenant" value: "acme"} request_topic: "acme"}
    routes: {when: {name: "x-tenant" value: "acme"} request_topic: "acme-2"}
    routes: {when: {name: "x-region"} request_topic: "regional"}
    routes: {when: {name: "x-region" value: "eu"} when: {name: "x-tier" value: "gold"} request_topic: "eu-gold"}
    routes: {when: {name: "x-tenant" value: "other"} request_topic: "other"}
  }; }
}
`
	const file = "shadow/v1/shadow.proto"
	resp := runPlugin(t, compileRequest(t, map[string]string{file: src}, file))
	want := strings.Join([]string{
		file + `:7:32: shadow.v1.S.A: routes[1] is never chosen: routes[0] comes first and matches every call it matches`,
		file + `:7:32: shadow.v1.S.A: routes[3] is never chosen: routes[2] comes first and matches every call it matches`,
	}, "\n")
	if got := resp.GetError(); got != want {
		t.Errorf("error:\n got: %s\nwant: %s", got, want)
	}
}

// TestGoNameCollisions: a service or method whose generated Go names are
// already declared in its Go package, by protoc-gen-go (a message, an enum
// value, a oneof wrapper) or by this plugin for another service or method
// (services A and A_B with methods B_C and C; methods get_thing and
// GetThing), would give code that does not compile, with "redeclared in
// this block" pointing into generated files. The plugin must refuse it,
// naming the service or method, the name and what else declares it, and
// generate nothing; the same names in different Go packages stay allowed.
func TestGoNameCollisions(t *testing.T) {
	const header = `syntax = "proto3";
package names.v1;
import "google/protobuf/empty.proto";
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/names/v1;namesv1";
message Ping { string id = 1; }
`
	const rule = `option (kafkarpc.kafka.v1.service) = {request_topic: "q" reply_topic: "r"};`
	for name, c := range map[string]struct{ src, want string }{
		"message": {`message SKafkaGateway { string id = 1; }
service S { ` + rule + ` rpc M(Ping) returns (Ping); }`,
			`:8:13: names.v1.S: the generated Go name SKafkaGateway is also that of message names.v1.SKafkaGateway, in the same Go package: rename one of them`},
		"nested message": {`message S { message M_KafkaMethod { string id = 1; } }
service T { ` + rule + ` rpc M(Ping) returns (Ping); }
service S_M { option (kafkarpc.kafka.v1.service) = {request_topic: "q2" reply_topic: "r2"}; rpc X(Ping) returns (Ping); }`,
			// S.M_KafkaMethod is Go type S_M_KafkaMethod; service S_M declares
			// none of that shape, but _S_M_KafkaSpec is free: no collision.
			``},
		"enum value": {`enum E { E_UNSPECIFIED = 0; }
enum S_M { S_M_UNSPECIFIED = 0; KafkaFullMethodName = 1; }
service S { ` + rule + ` rpc M(Ping) returns (Ping); }`,
			`:9:89: names.v1.S.M: the generated Go name S_M_KafkaFullMethodName is also that of enum value names.v1.KafkaFullMethodName, in the same Go package: rename one of them`},
		"oneof wrapper": {`message NewS { oneof o { string E_KafkaPublisher = 1; } }
service S { ` + rule + ` rpc E(google.protobuf.Empty) returns (stream Ping) { option (kafkarpc.kafka.v1.method) = {fetch: {topic: "f"}}; } }`,
			`:8:142: names.v1.S.E: the generated Go name NewS_E_KafkaPublisher is also that of the oneof wrapper of field names.v1.NewS.E_KafkaPublisher, in the same Go package: rename one of them`},
		"services A and A_B": {`service A { ` + rule + ` rpc B_C(Ping) returns (Ping); }
service A_B { ` + rule + ` rpc C(Ping) returns (Ping); }`,
			`:8:91: names.v1.A_B.C: the generated Go name A_B_C_KafkaFullMethodName is also that of method names.v1.A.B_C, in the same Go package: rename one of them`},
		"methods get_thing and GetThing": {`service S { ` + rule + `
  rpc get_thing(Ping) returns (Ping);
  rpc GetThing(Ping) returns (Ping);
}`,
			`:9:3: names.v1.S.GetThing: the generated Go name S_GetThing_KafkaFullMethodName is also that of method names.v1.S.get_thing, in the same Go package: rename one of them`},
	} {
		t.Run(name, func(t *testing.T) {
			file := "names/v1/" + strings.ReplaceAll(name, " ", "_") + ".proto"
			resp := runPlugin(t, compileRequest(t, map[string]string{file: header + c.src}, file))
			if c.want == "" {
				if resp.Error != nil {
					t.Errorf("refused: %s", resp.GetError())
				}
				return
			}
			if got, want := resp.GetError(), file+c.want; got != want {
				t.Errorf("error:\n got: %s\nwant: %s", got, want)
			}
			if len(resp.File) != 0 {
				t.Errorf("%d files generated despite the error", len(resp.File))
			}
		})
	}

	// Two files of one Go package: the second service's names collide with
	// the first's; in two Go packages they do not.
	const other = `syntax = "proto3";
package names.v2;
import "kafkarpc/kafka/v1/options.proto";
option go_package = "GOPKG";
message Ping { string id = 1; }
service S { ` + rule + ` rpc M(Ping) returns (Ping); }
`
	same := strings.ReplaceAll(header+"service S { "+rule+" rpc M(Ping) returns (Ping); }\n", "package names.v1;", "package names.v3;")
	sources := map[string]string{
		"names/v1/one.proto": same,
		"names/v1/two.proto": strings.ReplaceAll(other, "GOPKG", "github.com/kafkarpc/protoc-gen-go-kafka/names/v1;namesv1"),
	}
	resp := runPlugin(t, compileRequest(t, sources, "names/v1/one.proto", "names/v1/two.proto"))
	want := `names/v1/two.proto:6:13: names.v2.S: the generated Go name SKafkaSpec is also that of service names.v3.S, in the same Go package: rename one of them` + "\n" +
		`names/v1/two.proto:6:89: names.v2.S.M: the generated Go name S_M_KafkaFullMethodName is also that of method names.v3.S.M, in the same Go package: rename one of them`
	if got := resp.GetError(); got != want {
		t.Errorf("two files, one Go package: error:\n got: %s\nwant: %s", got, want)
	}
	sources["names/v1/two.proto"] = strings.ReplaceAll(other, "GOPKG", "github.com/kafkarpc/protoc-gen-go-kafka/names/v2;namesv2")
	if resp := runPlugin(t, compileRequest(t, sources, "names/v1/one.proto", "names/v1/two.proto")); resp.Error != nil {
		t.Errorf("two Go packages: refused: %s", resp.GetError())
	}
}

// TestUnknownOptionFields: options set in an options.proto newer than the
// plugin reach it as fields it does not know. Ignored, they would change
// nothing in the generated code without a word (a route's topic, a key
// field): the plugin must refuse them, naming the option's path, the field
// number and the version mismatch, and generate nothing.
func TestUnknownOptionFields(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "options/kafkarpc/kafka/v1/options.proto"))
	if err != nil {
		t.Fatal(err)
	}
	newer := string(b)
	for _, m := range []struct{ message, field string }{
		{"message ServiceRule {", "string future_service = 99;"},
		{"message MetadataMatch {", "string future_match = 98;"},
	} {
		if !strings.Contains(newer, m.message) {
			t.Fatalf("options.proto has no %q", m.message)
		}
		newer = strings.Replace(newer, m.message, m.message+"\n  "+m.field, 1)
	}
	const file = "future/v1/future.proto"
	src := `syntax = "proto3";
package future.v1;
import "kafkarpc/kafka/v1/options.proto";
option go_package = "github.com/kafkarpc/protoc-gen-go-kafka/future/v1;futurev1";
message Ping { string id = 1; }
service S {
  option (kafkarpc.kafka.v1.service) = {request_topic: "q" reply_topic: "r" future_service: "x"};
  rpc A(Ping) returns (Ping) { option (kafkarpc.kafka.v1.method) = {
    routes: {when: {name: "t"} when: {name: "u" future_match: "y"} request_topic: "q2"}
  }; }
}
`
	resp := runPlugin(t, compileRequest(t, map[string]string{"kafkarpc/kafka/v1/options.proto": newer, file: src}, file))
	want := strings.Join([]string{
		file + `:7:3: future.v1.S: field number 99 of kafkarpc.kafka.v1.ServiceRule is unknown to protoc-gen-go-kafka v` + version + `, which would ignore it: the options.proto compiled is newer than the plugin; use the plugin and the options.proto of one version`,
		file + `:8:32: future.v1.S.A: in routes[0].when[1], field number 98 of kafkarpc.kafka.v1.MetadataMatch is unknown to protoc-gen-go-kafka v` + version + `, which would ignore it: the options.proto compiled is newer than the plugin; use the plugin and the options.proto of one version`,
	}, "\n")
	if got := resp.GetError(); got != want {
		t.Errorf("error:\n got: %s\nwant: %s", got, want)
	}
	if len(resp.File) != 0 {
		t.Errorf("%d files generated despite the error", len(resp.File))
	}
}
