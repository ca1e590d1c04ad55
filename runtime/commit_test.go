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

func TestOffsetHeapPopsInOrder(t *testing.T) {
	var h offsetHeap
	in := []int64{5, 3, 9, 3, 1, 8, 2, 7, 7, 0, 6, 4}
	for _, off := range in {
		h.push(off)
	}
	prev := int64(-1)
	for range in {
		off := h.pop()
		if off < prev {
			t.Fatalf("popped %d after %d", off, prev)
		}
		prev = off
	}
	if len(h) != 0 {
		t.Fatalf("%d offsets left", len(h))
	}
}
