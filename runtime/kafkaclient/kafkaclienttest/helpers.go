package kafkaclienttest

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// LogCapture is a slog.Handler that keeps every record, at every level.
// Safe for concurrent use.
type LogCapture struct {
	mu      sync.Mutex
	records []LogRecord
	changed chan struct{}
	attrs   []slog.Attr
	parent  *LogCapture
}

// LogRecord is one captured log record. Attrs holds every attribute,
// including those added with Logger.With, as strings.
type LogRecord struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

// NewLogCapture returns an empty capture.
func NewLogCapture() *LogCapture {
	return &LogCapture{changed: make(chan struct{}, 1)}
}

func (h *LogCapture) root() *LogCapture {
	if h.parent != nil {
		return h.parent
	}
	return h
}

// Enabled implements slog.Handler: every level is enabled.
func (h *LogCapture) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (h *LogCapture) Handle(_ context.Context, r slog.Record) error {
	c := LogRecord{Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	for _, a := range h.attrs {
		c.Attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		c.Attrs[a.Key] = a.Value.String()
		return true
	})
	root := h.root()
	root.mu.Lock()
	root.records = append(root.records, c)
	root.mu.Unlock()
	select {
	case root.changed <- struct{}{}:
	default:
	}
	return nil
}

// WithAttrs implements slog.Handler.
func (h *LogCapture) WithAttrs(as []slog.Attr) slog.Handler {
	return &LogCapture{parent: h.root(), attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

// WithGroup implements slog.Handler; groups are flattened.
func (h *LogCapture) WithGroup(string) slog.Handler { return h }

// WaitFor waits until some captured record satisfies match, failing tb
// after timeout.
func (h *LogCapture) WaitFor(tb testing.TB, timeout time.Duration, match func(LogRecord) bool) LogRecord {
	tb.Helper()
	root := h.root()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		root.mu.Lock()
		for _, c := range root.records {
			if match(c) {
				root.mu.Unlock()
				return c
			}
		}
		root.mu.Unlock()
		select {
		case <-root.changed:
		case <-deadline.C:
			tb.Fatalf("no matching log record within %v", timeout)
		}
	}
}
