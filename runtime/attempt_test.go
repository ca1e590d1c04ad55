package runtime_test

import (
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// TestKeyedCallIgnoresRepliesOfAnotherAttempt writes the replies of a keyed
// server stream itself: an earlier attempt's late replies, which share the
// call's correlation id but carry another attempt id, must neither feed nor
// end the call; the replies of its own attempt do.
func TestKeyedCallIgnoresRepliesOfAnotherAttempt(t *testing.T) {
	e := setup(t, silent{})
	requests := watchReplies(t, e.kc, e.topic("echo-requests"))
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 30*time.Second), "idempotency-key", "attempts")
	stream, err := e.echo.EchoServerStream(ctx, &echov1.EchoRequest{Message: "m", Repeat: 2})
	if err != nil {
		t.Fatal(err)
	}
	id := wire.CorrelationID(wire.DefaultNames(), "attempts", "example.echo.v1.EchoService", "EchoServerStream", e.topic("echo-responses"))
	recs := requests.await(t, id)
	attempt := header(recs[0], "meta:"+wire.AttemptMetadata)
	if attempt == "" {
		t.Fatalf("the keyed call's request carries no %s header: %v", wire.AttemptMetadata, recs[0].Headers)
	}
	reply := func(index int32, attempt string, end bool) {
		hs := hdrs{"zilla:correlation-id", id, "meta:" + wire.AttemptMetadata, attempt}
		rec := &kafkaclient.Record{Topic: e.topic("echo-responses"), Key: []byte(id)}
		if end {
			hs = append(hs, "zilla:status", "0")
		} else {
			rec.Value, _ = proto.Marshal(&echov1.EchoResponse{Message: "m", Index: index})
		}
		rec.Headers = hs.headers()
		produce(t, e.kc, rec)
	}
	reply(1, "an-earlier-attempt", false) // the tail of an earlier attempt ...
	reply(0, "an-earlier-attempt", true)  // ... and its OK end
	reply(0, attempt, false)
	reply(1, attempt, false)
	reply(0, attempt, true)
	var got []int32
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, r.GetIndex())
	}
	if len(got) != 2 || got[0] != 0 || got[1] != 1 {
		t.Fatalf("the call received indexes %v, want [0 1] (its own attempt's replies only)", got)
	}
}
