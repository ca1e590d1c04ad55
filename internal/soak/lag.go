package main

import (
	"sort"
	"sync"
	"time"
)

// lagMonitor measures how late this process's timers fire: a goroutine
// asks to wake every lagTick and records, at each wake, how much later than
// asked it ran. On a loaded machine (the soak shares 2 cores with a broker,
// its own three processes and whatever else runs) a starved process wakes
// late, and so does the timer that ends a call at its deadline: an attempt
// that ended late while this process itself was starved says nothing about
// the product. The deadline check allows, beyond the fixed grace, the
// largest lateness measured while the attempt was overdue.
type lagMonitor struct {
	mu      sync.Mutex
	samples []lagSample // in wake order
	stop    chan struct{}
	done    chan struct{}
}

type lagSample struct {
	woke int64 // unix ns
	late time.Duration
}

const lagTick = 50 * time.Millisecond

func startLagMonitor() *lagMonitor {
	m := &lagMonitor{stop: make(chan struct{}), done: make(chan struct{})}
	go m.run()
	return m
}

func (m *lagMonitor) run() {
	defer close(m.done)
	t := time.NewTimer(lagTick)
	defer t.Stop()
	want := time.Now().Add(lagTick)
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		m.mu.Lock()
		m.samples = append(m.samples, lagSample{woke: now.UnixNano(), late: max(now.Sub(want), 0)})
		m.mu.Unlock()
		want = now.Add(lagTick)
		t.Reset(lagTick)
	}
}

// close stops the monitor.
func (m *lagMonitor) close() {
	close(m.stop)
	<-m.done
}

// maxLate returns the largest lateness of the wakes in [from, to] (unix ns).
func (m *lagMonitor) maxLate(from, to int64) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := sort.Search(len(m.samples), func(i int) bool { return m.samples[i].woke >= from })
	var most time.Duration
	for ; i < len(m.samples) && m.samples[i].woke <= to; i++ {
		most = max(most, m.samples[i].late)
	}
	return most
}

// summary returns the largest lateness and the 99th percentile.
func (m *lagMonitor) summary() (most, p99 time.Duration) {
	m.mu.Lock()
	ls := make([]time.Duration, len(m.samples))
	for i, s := range m.samples {
		ls[i] = s.late
	}
	m.mu.Unlock()
	if len(ls) == 0 {
		return 0, 0
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i] < ls[j] })
	return ls[len(ls)-1], ls[len(ls)*99/100]
}
