package topicname

import (
	"strings"
	"testing"
)

// TestProblem checks Kafka's rule for topic names, the same for a
// name given as a string (the plugin's options) as for one read from a
// header (a request's reply topic), and that the problem names a character
// that is not allowed as the character, not its first byte.
func TestProblem(t *testing.T) {
	for topic, valid := range map[string]bool{
		"a":                        true,
		"echo-requests":            true,
		"Orders.EU_v2":             true,
		"...":                      true,
		strings.Repeat("x", 249):   true,
		"":                         false,
		".":                        false,
		"..":                       false,
		strings.Repeat("x", 250):   false,
		"a b":                      false,
		"a/b":                      false,
		"caf\u00e9":                false,
		"tab\t":                    false,
		"zilla:reply-to":           false,
		"emoji\U0001F600-requests": false,
		"__consumer_offsets":       false,
		"__transaction_state":      false,
		"__share_group_state":      false,
		"__consumer_offsets_x":     true,
	} {
		if got := Problem(topic) == ""; got != valid {
			t.Errorf("Problem(%q) = %q, want valid=%v", topic, Problem(topic), valid)
		}
		if s, b := Problem(topic), Problem([]byte(topic)); s != b {
			t.Errorf("Problem(%q) = %q as a string, %q as bytes", topic, s, b)
		}
	}

	for topic, want := range map[string]string{
		"caf\u00e9": `character 'é' is not allowed, only [a-zA-Z0-9._-]`,
		"a\x00b":    `character '\x00' is not allowed, only [a-zA-Z0-9._-]`,
		"orders/eu": `character '/' is not allowed, only [a-zA-Z0-9._-]`,
		"..":        `"." and ".." are not allowed`,
		"":          "it is empty",
	} {
		if got := Problem([]byte(topic)); got != want {
			t.Errorf("Problem(%q) = %q, want %q", topic, got, want)
		}
	}
}
