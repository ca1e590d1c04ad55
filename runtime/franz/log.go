package franz

import (
	"context"
	"log/slog"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// slogLogger implements kgo.Logger on a slog.Logger.
type slogLogger struct{ l *slog.Logger }

func newLogger(l *slog.Logger) kgo.Logger { return slogLogger{l} }

// slogLevel maps a kgo level to a slog level.
func slogLevel(l kgo.LogLevel) slog.Level {
	switch l {
	case kgo.LogLevelError:
		return slog.LevelError
	case kgo.LogLevelWarn:
		return slog.LevelWarn
	case kgo.LogLevelInfo:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}

// Level reports the most verbose kgo level the handler accepts, so that kgo
// does not even format lines that would be dropped; Info where the handler
// takes Warn, since Log raises a few of kgo's Info lines to Warn.
func (s slogLogger) Level() kgo.LogLevel {
	ctx := context.Background()
	for _, l := range []kgo.LogLevel{kgo.LogLevelDebug, kgo.LogLevelInfo, kgo.LogLevelWarn, kgo.LogLevelError} {
		if s.l.Enabled(ctx, slogLevel(l)) {
			if l == kgo.LogLevelWarn {
				return kgo.LogLevelInfo
			}
			return l
		}
	}
	return kgo.LogLevelNone
}

// Log forwards one kgo line; kgo's keyvals (alternating string keys and
// values) become slog attributes.
func (s slogLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	if level == kgo.LogLevelNone {
		return
	}
	lvl := slogLevel(level)
	if msg == "flushing" && lvl == slog.LevelInfo {
		// kgo logs every Flush at Info; a producer with a load linger
		// flushes after most records it produces at low load
		// (WithLoadLinger): at Info that would be a line per record.
		lvl = slog.LevelDebug
	}
	if strings.HasPrefix(msg, "received OFFSET_OUT_OF_RANGE") && lvl < slog.LevelWarn {
		// kgo logs at Info the reset of a partition whose first fetch
		// was out of range: a committed or assigned offset whose records
		// were deleted (never read: a worker's unserved calls) or one past
		// the end. librdkafka warns of the same reset.
		lvl = slog.LevelWarn
	}
	ctx := context.Background()
	if !s.l.Enabled(ctx, lvl) {
		return
	}
	s.l.Log(ctx, lvl, msg, keyvals...)
}
