package fetchclient_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/fetchclient"
)

// A subscriber of the example's fetch method that survives gateway
// restarts and "too slow" endings, and can resume after its own restart
// from the id it saved.
func ExampleNew() {
	cc, err := grpc.NewClient("127.0.0.1:7151", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	var saved []byte // e.g. read from disk; nil starts at the earliest record
	sub := fetchclient.New(ctx, echov1.NewEchoServiceClient(cc).EchoEvents,
		fetchclient.WithResume(saved),
		fetchclient.WithCallOptions(grpc.WaitForReady(true)))
	defer sub.Close()
	for {
		ev, err := sub.Recv()
		if err != nil {
			log.Fatal(err) // ctx ended, or a status that is not worth retrying
		}
		fmt.Println(ev.GetMessage())
		saved = sub.EventID() // the same id grpcurl shows as field 32767
		_ = base64.RawURLEncoding.EncodeToString(saved)
	}
}
