package kafkaclient

import "testing"

// Vectors of Kafka's own UtilsTest.testMurmur2.
func TestMurmur2JavaVectors(t *testing.T) {
	for in, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		if got := Murmur2([]byte(in)); got != want {
			t.Errorf("Murmur2(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestKeyPartitionIsNeverNegative(t *testing.T) {
	for _, k := range []string{"21", "foobar", "abc", ""} {
		if p := KeyPartition([]byte(k), 7); p < 0 || p >= 7 {
			t.Errorf("KeyPartition(%q, 7) = %d", k, p)
		}
	}
}
