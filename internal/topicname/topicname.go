// Package topicname holds Kafka's rule for topic names, shared by the
// plugin (the topics in a .proto's options) and the worker (the reply topic
// a request names), without the dependencies of either.
package topicname

import (
	"fmt"
	"unicode/utf8"
)

// MaxLen is Kafka's limit on the length of a topic name.
const MaxLen = 249

// internal lists the topics Kafka keeps for itself: a broker refuses
// records to them (INVALID_TOPIC_EXCEPTION), however often they are sent.
var internal = map[string]bool{"__consumer_offsets": true, "__transaction_state": true, "__share_group_state": true}

// Problem says what makes t an invalid Kafka topic name (1 to
// MaxLen characters of [a-zA-Z0-9._-], neither "." nor ".."), or one
// clients cannot write (an internal topic of Kafka's), or
// returns "" for a valid one. It allocates nothing for a valid name.
func Problem[T string | []byte](t T) string {
	switch {
	case len(t) == 0:
		return "it is empty"
	case string(t) == "." || string(t) == "..":
		return `"." and ".." are not allowed`
	case internal[string(t)]:
		return "it is an internal topic of Kafka's, which clients cannot write"
	case len(t) > MaxLen:
		return fmt.Sprintf("%d characters, at most %d allowed", len(t), MaxLen)
	}
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			r, _ := utf8.DecodeRuneInString(string(t[i:]))
			return fmt.Sprintf("character %q is not allowed, only [a-zA-Z0-9._-]", r)
		}
	}
	return ""
}
