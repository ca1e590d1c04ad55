package kafkatest

import "testing"

func TestClientName(t *testing.T) {
	for env, want := range map[string]string{"": Confluent, "confluent": Confluent, "franz": Franz} {
		t.Setenv("KAFKA_CLIENT", env)
		if got := ClientName(); got != want {
			t.Errorf("KAFKA_CLIENT=%q: ClientName() = %q, want %q", env, got, want)
		}
	}
	t.Setenv("KAFKA_CLIENT", "sarama")
	defer func() {
		if recover() == nil {
			t.Error("KAFKA_CLIENT=sarama did not panic")
		}
	}()
	ClientName()
}
