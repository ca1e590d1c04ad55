package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/embedded"
)

// TestMain lets the test binary serve as floor-2hop-proc's relay child, as
// the bench's binary does: newProcHop starts os.Executable().
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == relayChildFlag {
		if err := relayChildMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "relay child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testClients are the clients to test: KAFKA_CLIENT's when set, else all.
func testClients(t *testing.T) []kafkaClientKind {
	t.Helper()
	name := os.Getenv("KAFKA_CLIENT")
	if name == "" {
		return kafkaClients
	}
	for _, k := range kafkaClients {
		if k.name == name {
			return []kafkaClientKind{k}
		}
	}
	t.Fatalf("KAFKA_CLIENT=%q: not one of the bench's clients", name)
	return nil
}

// A call of floor-2hop-proc goes through the relay child and back, the
// child reports its CPU time, and closing ends the child.
func TestProcHopRelaysThroughChild(t *testing.T) {
	b, err := embedded.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, kc := range testClients(t) {
		t.Run(kc.name, func(t *testing.T) {
			log := slog.New(slog.DiscardHandler)
			front, err := kc.new(b.Addr(), log)
			if err != nil {
				t.Fatal(err)
			}
			defer front.Close()
			a, bt := "relaytest-"+kc.name+"-a", "relaytest-"+kc.name+"-b"
			if err := createTopics(front, 3, a, bt); err != nil {
				t.Fatal(err)
			}
			h, err := newProcHop(front, kc.name, b.Addr(), a, bt, []byte("ping"))
			if err != nil {
				t.Fatal(err)
			}
			cpu0 := h.childCPU()
			for i := range 5 {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := h.call(ctx, 0)
				cancel()
				if err != nil {
					h.close()
					t.Fatalf("call %d: %v", i, err)
				}
			}
			if cpu1 := h.childCPU(); cpu1 <= 0 || cpu1 < cpu0 {
				t.Errorf("child CPU went from %v to %v, want a positive, non-decreasing figure", cpu0, cpu1)
			}
			h.close()
			select {
			case <-h.exited:
			default:
				t.Fatal("the relay child still runs after close")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := h.call(ctx, 0); err == nil {
				t.Error("a call after close succeeded, want an error (no relay child)")
			}
		})
	}
}
