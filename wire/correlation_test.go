package wire

import (
	"regexp"
	"testing"
)

func TestCorrelationIDWorkedExample(t *testing.T) {
	// WIRE.md: service example.EchoService, method EchoUnary, reply topic
	// responses, one override value "test".
	got := CorrelationID(DefaultNames(), "base", "example.EchoService", "EchoUnary", "responses", "test")
	if want := "base-479f2c3fb58bc3f04bbe15440a657670"; got != want {
		t.Fatalf("CorrelationID = %q, want %q", got, want)
	}
}

func TestCorrelationIDHashesConfiguredNames(t *testing.T) {
	def := CorrelationID(DefaultNames(), "k", "s", "m", "r")
	custom := CorrelationID(Names{Service: "x:service"}, "k", "s", "m", "r")
	if def == custom {
		t.Fatalf("renaming the service header did not change the id: %q", def)
	}
	again := CorrelationID(Names{}, "k", "s", "m", "r")
	if again != def {
		t.Fatalf("zero Names = %q, want the defaults' %q", again, def)
	}
}

func TestCorrelationIDSameKeySameRoute(t *testing.T) {
	a := CorrelationID(DefaultNames(), "retry-1", "s", "m", "r", "a")
	b := CorrelationID(DefaultNames(), "retry-1", "s", "m", "r", "a")
	c := CorrelationID(DefaultNames(), "retry-1", "s", "m", "r", "b")
	if a != b {
		t.Fatalf("same key and route gave %q and %q", a, b)
	}
	if a == c {
		t.Fatalf("different override values gave the same id %q", a)
	}
}

func TestNewUUID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 1000 {
		u := NewUUID()
		if !re.MatchString(u) {
			t.Fatalf("NewUUID() = %q, not a lower-case version 4 UUID", u)
		}
		if seen[u] {
			t.Fatalf("NewUUID() repeated %q", u)
		}
		seen[u] = true
	}
}
