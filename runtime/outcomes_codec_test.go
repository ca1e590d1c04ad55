package runtime

import (
	"reflect"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// TestOutcomeRecordRoundTrip: an outcome record decodes to what was
// encoded, null and empty values and header values kept apart.
func TestOutcomeRecordRoundTrip(t *testing.T) {
	in := &storedOutcome{
		at:    time.UnixMilli(1_764_000_000_123),
		topic: "orders-requests",
		code:  codes.NotFound,
		records: []kafkaclient.Record{
			{Value: []byte("response"), Headers: []kafkaclient.Header{{Key: "zilla:correlation-id", Value: []byte("id-1")}, {Key: "meta:x", Value: []byte{}}}},
			{Value: []byte{}},
			{Value: nil, Headers: []kafkaclient.Header{{Key: "zilla:status", Value: []byte("5")}, {Key: "meta:nil", Value: nil}}},
		},
	}
	v := appendOutcome(nil, in)
	if len(v) > outcomeSize(in.records) {
		t.Fatalf("encoded %d bytes, over the %d outcomeSize bounds it by", len(v), outcomeSize(in.records))
	}
	out, err := decodeOutcome(v)
	if err != nil {
		t.Fatal(err)
	}
	if !out.at.Equal(in.at) || out.topic != in.topic || out.code != in.code || !reflect.DeepEqual(out.records, in.records) {
		t.Fatalf("decoded %+v, want %+v", out, in)
	}
	if out.records[1].Value == nil || out.records[2].Value != nil || out.records[0].Headers[1].Value == nil || out.records[2].Headers[1].Value != nil {
		t.Fatal("null and empty values were not kept apart")
	}
}

// TestMalformedOutcomeRecords: every truncation of a valid record, and a
// record with bytes after its end, is an error naming what was wrong, never
// a panic.
func TestMalformedOutcomeRecords(t *testing.T) {
	v := appendOutcome(nil, &storedOutcome{at: time.Now(), topic: "t", code: codes.OK,
		records: []kafkaclient.Record{{Value: []byte("abc"), Headers: []kafkaclient.Header{{Key: "k", Value: []byte("v")}}}, {}}})
	for n := 0; n < len(v); n++ {
		if _, err := decodeOutcome(v[:n]); err == nil || err.Error() == "" {
			t.Errorf("the first %d of %d bytes decoded without an error", n, len(v))
		}
	}
	if _, err := decodeOutcome(append(v[:len(v):len(v)], 0)); err == nil {
		t.Error("a record with a trailing byte decoded without an error")
	}
	// A count larger than the bytes left is refused before anything is
	// allocated for it.
	huge := append([]byte{outcomeVersion, outcomeKindReply, 1, 1, 't', 0}, 0xff, 0xff, 0xff, 0xff, 0x0f)
	if _, err := decodeOutcome(huge); err == nil {
		t.Error("a reply count of 4 G in 11 bytes decoded without an error")
	}
}
