package runtime

import (
	"context"
	"errors"
	"testing"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Handler contexts do not derive from the worker's, so nothing cancels a
// call the shutdown drain did not see (a re-run a call started as it
// finished, after the drain listed the calls) unless stopCalls does: it
// must abort every call still entered, and make admit report a call
// entered afterwards, whose caller aborts it. Without either, that
// handler would run on after the worker stopped, its context never done.
func TestStopCallsAbortsCallsLeftAndLater(t *testing.T) {
	w := NewWorker(nil)
	pt := newPartTrack()
	enter := func(id string, offset int64) (*call, bool) {
		rec := &kafkaclient.Record{Topic: "requests", Partition: 0, Offset: offset}
		env := &wire.Envelope{CorrelationID: []byte(id), ReplyTo: []byte("replies")}
		c := w.newCall(rec, env, pt, id, nil)
		c.ctx, c.ctxCancel = context.WithCancelCause(context.Background())
		return c, w.admit(c, rec, env, false)
	}

	left, stopped := enter("left", 1)
	if stopped {
		t.Fatal("admit reported a stopped worker before stopCalls")
	}
	if err := left.ctx.Err(); err != nil {
		t.Fatalf("a running call's context ended before the worker stopped: %v", err)
	}

	w.stopCalls()
	if err := left.ctx.Err(); err == nil {
		t.Fatal("a call still entered when the worker stopped kept running: its context is not done")
	}
	if cause := context.Cause(left.ctx); !errors.Is(cause, errAborted) {
		t.Fatalf("the stopped call's cause is %v, want errAborted", cause)
	}

	if _, stopped := enter("later", 2); !stopped {
		t.Fatal("admit did not report that the worker stopped, for a call entered after stopCalls")
	}
}
