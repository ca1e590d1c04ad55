package runtime

import "testing"

// A trailing id removed and added again is kept for a whole window from
// its new add: the slot of its earlier entry, still queued, must not evict
// it when that slot's turn comes (an id forgotten early lets the rest of a
// finished call's request be taken for a new call).
func TestRecentSetReAddedIDKeepsItsWindow(t *testing.T) {
	s := newRecentSet(3)
	s.add("a", nil)
	s.remove("a", nil)
	s.add("a", nil) // again: its old slot is still queued
	s.add("b", nil)
	s.add("c", nil) // the window is full: the old slot of "a" goes
	for _, k := range []string{"a", "b", "c"} {
		if !s.has(k, nil) {
			t.Errorf("%q forgotten, want kept: the set holds the last 3 added", k)
		}
	}
	s.add("d", nil) // evicts "a", added before "b" and "c"
	if s.has("a", nil) || !s.has("b", nil) || !s.has("c", nil) || !s.has("d", nil) {
		t.Errorf("after one more add: a=%v b=%v c=%v d=%v, want a forgotten, the rest kept", s.has("a", nil), s.has("b", nil), s.has("c", nil), s.has("d", nil))
	}
}

// Attempts of one id: removing one keeps the others.
func TestRecentSetAttempts(t *testing.T) {
	s := newRecentSet(4)
	s.add("x", []byte("a1"))
	s.add("x", []byte("a2"))
	s.remove("x", []byte("a1"))
	if s.has("x", []byte("a1")) || !s.has("x", []byte("a2")) {
		t.Errorf("a1=%v a2=%v, want a1 removed and a2 kept", s.has("x", []byte("a1")), s.has("x", []byte("a2")))
	}
	if !s.has("x", nil) {
		t.Error("an attempt-less record of x not matched while x has an attempt")
	}
}
