package runtime

import (
	"testing"
	"time"
)

// TestRefusalLog: the first refusal is logged, the next ones within a
// minute are not, reading records after a logged refusal is logged once,
// and a refusal a minute after the last one logged is logged again.
func TestRefusalLog(t *testing.T) {
	var l refusalLog
	t0 := time.Unix(1_700_000_000, 0)
	steps := []struct {
		what string
		got  bool
		want bool
	}{
		{"read before any refusal", l.read(), false},
		{"first refusal", l.refused(t0), true},
		{"refusal a second later", l.refused(t0.Add(time.Second)), false},
		{"read after the logged refusal", l.read(), true},
		{"read again", l.read(), false},
		{"refusal 30 s after the logged one", l.refused(t0.Add(30 * time.Second)), false},
		{"read after a refusal not logged", l.read(), false},
		{"refusal a minute after the logged one", l.refused(t0.Add(time.Minute)), true},
	}
	for _, s := range steps {
		if s.got != s.want {
			t.Errorf("%s: %v, want %v", s.what, s.got, s.want)
		}
	}
}
