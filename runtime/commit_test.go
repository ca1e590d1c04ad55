package runtime

import "testing"

func TestPartTrackCommitPoint(t *testing.T) {
	p := newPartTrack()
	for off := int64(10); off <= 14; off++ {
		p.seen(off)
	}
	p.begin(10)
	p.begin(11)
	p.begin(13)
	if got := p.point(); got != 10 {
		t.Fatalf("point = %d, want 10", got)
	}
	p.finish(11)
	if got := p.point(); got != 10 {
		t.Fatalf("after 11 finished: point = %d, want 10", got)
	}
	p.finish(10)
	if got := p.point(); got != 13 {
		t.Fatalf("after 10 finished: point = %d, want 13", got)
	}
	p.finish(13)
	if got := p.point(); got != 15 {
		t.Fatalf("all finished: point = %d, want 15", got)
	}
}
