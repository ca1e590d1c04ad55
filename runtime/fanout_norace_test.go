//go:build !race

package runtime_test

// raceEnabled reports whether the race detector is on, which makes the
// largest fanout tests use fewer records.
const raceEnabled = false
