package kafkaclient

import (
	"context"
	"errors"
	"maps"
	"testing"
)

type brokerCount struct {
	n   int
	err error
}

func (b brokerCount) Brokers(context.Context) (int, error) { return b.n, b.err }

func TestReplicatedSpecs(t *testing.T) {
	in := []TopicSpec{
		{Name: "dflt", Partitions: 3, Config: TopicConfig()},
		{Name: "minus", ReplicationFactor: -1},
		{Name: "own", ReplicationFactor: 2},
		{Name: "isr", Config: map[string]string{"min.insync.replicas": "1"}},
	}
	orig := maps.Clone(in[0].Config)
	for _, n := range []int{1, 2} {
		out, err := ReplicatedSpecs(context.Background(), brokerCount{n: n}, in)
		if err != nil || len(out) != 4 || out[0].ReplicationFactor != 0 || out[1].ReplicationFactor != -1 || out[0].Config["min.insync.replicas"] != "" {
			t.Errorf("%d brokers: %+v, %v; want the specs unchanged", n, out, err)
		}
	}
	out, err := ReplicatedSpecs(context.Background(), brokerCount{n: 3}, in)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		rf  int16
		isr string
	}{{3, "2"}, {3, "2"}, {2, ""}, {3, "1"}} {
		if out[i].ReplicationFactor != want.rf || out[i].Config["min.insync.replicas"] != want.isr {
			t.Errorf("3 brokers: %s = factor %d, min.insync.replicas %q; want %d, %q", out[i].Name, out[i].ReplicationFactor, out[i].Config["min.insync.replicas"], want.rf, want.isr)
		}
	}
	if out[0].Config["max.message.bytes"] != orig["max.message.bytes"] || !maps.Equal(in[0].Config, orig) {
		t.Errorf("the config was not kept, or the caller's map was changed: %v, %v", out[0].Config, in[0].Config)
	}
	if _, err := ReplicatedSpecs(context.Background(), brokerCount{err: errors.New("down")}, in); err == nil {
		t.Error("no error when the brokers cannot be counted")
	}
}
