package runtime

import (
	"context"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
)

// pollUntilDone reads with poll until ctx ends, handing every batch to
// handle. A failed poll is reported to failed and tried again after a
// back-off growing from 10 ms to 1 s, reset by the next success. The reply
// routers, the fanout hubs and the worker all read this way.
func pollUntilDone(ctx context.Context, poll func(context.Context) ([]*kafkaclient.Record, error),
	failed func(error), handle func([]*kafkaclient.Record)) {
	const first = 10 * time.Millisecond
	backoff := first
	for {
		recs, err := poll(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failed(err)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = first
		handle(recs)
	}
}
