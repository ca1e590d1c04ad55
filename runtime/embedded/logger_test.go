package embedded

import (
	"context"
	"log/slog"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

type recorder struct{ got []slog.Record }

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelDebug }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.got = append(r.got, rec)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func TestSlogAdapterLevels(t *testing.T) {
	rec := &recorder{}
	a := slogAdapter{slog.New(rec)}
	a.Logf(kfake.LogLevelError, "e %d", 1)
	a.Logf(kfake.LogLevelWarn, "w %s", "x")
	a.Logf(kfake.LogLevelInfo, "i")
	a.Logf(kfake.LogLevelDebug, "d")
	a.Logf(kfake.LogLevelNone, "n")
	want := []struct {
		lvl slog.Level
		msg string
	}{{slog.LevelError, "e 1"}, {slog.LevelWarn, "w x"}, {slog.LevelDebug, "i"}, {slog.LevelDebug, "d"}}
	if len(rec.got) != len(want) {
		t.Fatalf("got %d records, want %d", len(rec.got), len(want))
	}
	for i, w := range want {
		if rec.got[i].Level != w.lvl || rec.got[i].Message != w.msg {
			t.Errorf("#%d = %v %q, want %v %q", i, rec.got[i].Level, rec.got[i].Message, w.lvl, w.msg)
		}
	}
}
