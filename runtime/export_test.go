package runtime

import "time"

// SetTopicFreshness sets how long the gateway trusts what it learnt of a
// topic's existence (see topicGuard), and returns a function that restores
// the defaults. Tests only; no test of this package runs in parallel.
func SetTopicFreshness(present, missing time.Duration) (restore func()) {
	p, m := topicPresentFresh, topicMissingFresh
	topicPresentFresh, topicMissingFresh = present, missing
	return func() { topicPresentFresh, topicMissingFresh = p, m }
}

// SetOutcomeLoadTimeout sets the bound of a worker's load of stored
// outcomes (outcomeLoadTimeout), and returns a function that restores it.
// Tests only; no test of this package runs in parallel.
func SetOutcomeLoadTimeout(d time.Duration) (restore func()) {
	old := outcomeLoadTimeout
	outcomeLoadTimeout = d
	return func() { outcomeLoadTimeout = old }
}
