package main

import (
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/google/pprof/profile"
)

// The CPU breakdown of -breakdown: where a contender's CPU goes, from its
// CPU profile, in the groups issue 14 names. A sample is charged to the
// first frame, from the leaf, of a package that does the work (gRPC, our
// runtime by file, the Kafka client, the broker, protobuf, OpenTelemetry,
// the handler and the bench's callers); the Go runtime's and the standard
// library's frames in between (allocation, channels, locks, syscalls) are
// charged to that frame too, since it is that package's work that made
// them. What no such frame owns is the Go runtime's own: the garbage
// collector (mark workers, assists, sweeping) or the scheduler (finding,
// parking and waking goroutines, the network poller); anything else in the
// Go runtime or the standard library is "other".

// cpuGroup names the group of a sample's stack (leaf first).
func cpuGroup(stack []*profile.Line) string {
	for _, l := range stack {
		if gcFrame(l.Function.Name) {
			return "GC"
		}
	}
	for _, l := range stack {
		if g := ownerGroup(l.Function.Name, l.Function.Filename); g != "" {
			return g
		}
	}
	for _, l := range stack {
		if schedFrame(l.Function.Name) {
			return "scheduler"
		}
	}
	for _, l := range stack {
		if l.Function.Name == "runtime._ExternalCode" || strings.HasPrefix(l.Function.Name, "runtime.cgocall") {
			return "Kafka client" // librdkafka's own threads, or a cgo call into it
		}
	}
	return "other (Go runtime, standard library)"
}

func gcFrame(fn string) bool {
	switch fn {
	case "runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.gcAssistAlloc1", "runtime.bgsweep",
		"runtime.bgscavenge", "runtime.gcStart", "runtime.markroot", "runtime.gcDrain", "runtime.sweepone",
		"runtime.(*mheap).reclaim", "runtime.gcMarkDone", "runtime.gcMarkTermination":
		return true
	}
	return false
}

func schedFrame(fn string) bool {
	switch fn {
	case "runtime.schedule", "runtime.findRunnable", "runtime.mcall", "runtime.park_m", "runtime.goexit0",
		"runtime.netpoll", "runtime.mstart", "runtime.sysmon", "runtime.wakep", "runtime.ready",
		"runtime.goready", "runtime.newproc", "runtime.gopark", "runtime.futexwakeup", "runtime.notewakeup",
		"runtime.stopm", "runtime.startm", "runtime.handoffp", "runtime.exitsyscall", "runtime.entersyscall":
		return true
	}
	return false
}

// ownerGroup returns the group of a frame whose package does the work, or
// "" for the Go runtime and the standard library.
func ownerGroup(fn, file string) string {
	const self = "github.com/kafkarpc/protoc-gen-go-kafka/"
	switch {
	case strings.HasPrefix(fn, self+"runtime/franz"), strings.HasPrefix(fn, self+"runtime/confluent"),
		strings.HasPrefix(fn, "github.com/twmb/franz-go/pkg/kgo"), strings.HasPrefix(fn, "github.com/twmb/franz-go/pkg/kbin"),
		strings.HasPrefix(fn, "github.com/twmb/franz-go/pkg/kmsg"), strings.HasPrefix(fn, "github.com/confluentinc/"),
		strings.HasPrefix(fn, "github.com/IBM/sarama"), strings.HasPrefix(fn, "github.com/klauspost/"),
		strings.HasPrefix(fn, "github.com/pierrec/"):
		return "Kafka client"
	case strings.HasPrefix(fn, "github.com/twmb/franz-go/pkg/kfake"), strings.HasPrefix(fn, self+"runtime/embedded"):
		return "broker (embedded)"
	case strings.HasPrefix(fn, self+"wire."):
		return "runtime: wire (header codec)"
	case strings.HasPrefix(fn, self+"runtime."):
		return "runtime: " + runtimeFileGroup(path.Base(file))
	case strings.HasPrefix(fn, self+"example/"):
		return "handler and generated code"
	case strings.HasPrefix(fn, "google.golang.org/grpc"), strings.HasPrefix(fn, "golang.org/x/net/http2"):
		return "gRPC"
	case strings.HasPrefix(fn, "google.golang.org/protobuf"):
		return "protobuf"
	case strings.HasPrefix(fn, "go.opentelemetry.io/"):
		return "OpenTelemetry"
	case strings.HasPrefix(fn, "main."):
		return "bench harness (callers)"
	case strings.HasPrefix(fn, "github.com/ThreeDotsLabs/"):
		return "Watermill"
	}
	return ""
}

// runtimeFileGroup groups the runtime package's files by what they do.
func runtimeFileGroup(file string) string {
	switch {
	case strings.HasPrefix(file, "fanout"):
		return "fetch fanout"
	case slices.Contains([]string{"gateway.go", "gwcall.go", "router.go", "conn.go", "connstream.go", "topics.go", "metadata.go"}, file):
		return "gateway (call, reply router)"
	case slices.Contains([]string{"worker.go", "dispatch.go", "call.go", "serverstream.go", "repeats.go", "keyorder.go",
		"commit.go", "replywriter.go", "replyretry.go", "deadletter.go", "lostreply.go", "proxy.go", "runners.go"}, file):
		return "worker (dispatch, call, replies, commits)"
	case strings.Contains(file, "telemetry"):
		return "telemetry"
	}
	return "other (" + file + ")"
}

// cpuShare is one group's part of a profile.
type cpuShare struct {
	group string
	share float64 // of the profile's CPU samples
}

// readBreakdown splits the CPU profile at file into groups, largest first.
func readBreakdown(file string) ([]cpuShare, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	idx := len(p.SampleType) - 1 // cpu nanoseconds
	by := map[string]int64{}
	var total int64
	for _, s := range p.Sample {
		var stack []*profile.Line
		for _, loc := range s.Location {
			for i := range loc.Line { // inlined frames first, as pprof lists them
				stack = append(stack, &loc.Line[i])
			}
		}
		v := s.Value[idx]
		by[cpuGroup(stack)] += v
		total += v
	}
	if total == 0 {
		return nil, fmt.Errorf("%s: no CPU samples", file)
	}
	var out []cpuShare
	for g, v := range by {
		out = append(out, cpuShare{group: g, share: float64(v) / float64(total)})
	}
	slices.SortFunc(out, func(a, b cpuShare) int {
		if a.share != b.share {
			if a.share > b.share {
				return -1
			}
			return 1
		}
		return strings.Compare(a.group, b.group)
	})
	return out, nil
}

// printBreakdown writes the breakdown as a markdown table, with each
// group's CPU per unit (call or message) from the measured perUnit.
func printBreakdown(w io.Writer, label string, shares []cpuShare, perUnit float64, unit string) {
	fmt.Fprintf(w, "\nCPU breakdown of %s (%.1f µs of CPU per %s, whole process):\n\n", label, perUnit, unit)
	fmt.Fprintf(w, "| group | share | µs per %s |\n|---|---:|---:|\n", unit)
	prec := 1
	if perUnit < 10 {
		prec = 2
	}
	for _, s := range shares {
		fmt.Fprintf(w, "| %s | %.1f%% | %.*f |\n", s.group, 100*s.share, prec, s.share*perUnit)
	}
}
