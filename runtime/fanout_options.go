package runtime

import (
	"fmt"
	"strings"

	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// Defaults of the fetch (fanout) settings of a Gateway.
const (
	// DefaultFetchWindowBytes is the size of each fetched topic's in-memory
	// window of recent records (GatewayFetchWindow).
	DefaultFetchWindowBytes = 64 << 20
	// DefaultFetchCatchUpReaders bounds the catch-up readers open at once
	// (GatewayFetchCatchUpReaders).
	DefaultFetchCatchUpReaders = 16
)

// fanoutConfig holds the fetch settings of a gateway.
type fanoutConfig struct {
	windowBytes    int64
	maxLagBytes    int64 // 0: windowBytes
	catchUpReaders int
	keyMetadata    string
	preload        int // records per partition; -1: estimated from the window
}

func defaultFanoutConfig() fanoutConfig {
	return fanoutConfig{
		windowBytes:    DefaultFetchWindowBytes,
		catchUpReaders: DefaultFetchCatchUpReaders,
		keyMetadata:    wire.IdempotencyKeyMetadata,
		preload:        -1,
	}
}

// lag returns the effective lag bound: at most the window.
func (c *fanoutConfig) lag() int64 {
	if c.maxLagBytes <= 0 || c.maxLagBytes > c.windowBytes {
		return c.windowBytes
	}
	return c.maxLagBytes
}

// GatewayFetchWindow sets the size of the in-memory window each fetched topic
// keeps of its most recent records, shared by every caller of the topic on
// this gateway: a caller starting or resuming inside the window is served
// from memory; one resuming from further back reads Kafka with a catch-up
// reader of its own until it reaches the window. The size counts record
// keys, values and headers plus about 100 bytes of bookkeeping per record.
// Default DefaultFetchWindowBytes (64 MiB) per topic.
func GatewayFetchWindow(bytes int) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.fetch.windowBytes = max(int64(bytes), 1) })
}

// GatewayFetchMaxLag bounds how much further a fetch caller may fall behind
// the newest record the gateway read than it ever was since it joined the
// shared reader, or since it last waited at the end of the topic, in window
// bytes (records the caller's filters skip count too): a caller that stops
// reading, or reads more slowly than records arrive, is ended with
// UNAVAILABLE once it lost that much ground, with a message giving the
// event id to resume from. A caller working through a backlog faster than
// records arrive is never ended, however far behind it started; nor is one
// that waited at the end when more than the bound arrived at once (one
// large record, a burst). Either way a caller whose next record left the window is ended
// too. Laggards never delay the others, and hold no records of their own:
// the gateway's memory does not grow with them. Values above the window size
// are capped to it. Default: the window size.
func GatewayFetchMaxLag(bytes int) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.fetch.maxLagBytes = int64(bytes) })
}

// GatewayFetchCatchUpReaders bounds the catch-up readers (one Kafka reader per
// caller resuming from before the window) open at once on this gateway;
// further such callers wait for one to finish catching up. Default
// DefaultFetchCatchUpReaders (16).
func GatewayFetchCatchUpReaders(n int) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.fetch.catchUpReaders = max(n, 1) })
}

// GatewayFetchKeyMetadata sets the request metadata whose value, when a fetch
// caller sends it, limits the caller's stream to the records with that key
// (with several values, any of them)
// (on top of the method's filters). Default wire.IdempotencyKeyMetadata
// ("idempotency-key"), as Zilla does; an empty name turns the per-caller
// filter off. A name a fetch method's callers resume with (its
// resume_metadata, wire.DefaultResumeMetadata, wire.ResumeMetadataSynonym,
// each also with "-bin") is refused: AddService (and ClientConn.Register)
// return an error naming both, and the method's calls end with INTERNAL.
func GatewayFetchKeyMetadata(name string) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.fetch.keyMetadata = strings.ToLower(name) })
}

// GatewayFetchPreload sets how many of each partition's most recent records
// a fetched topic's shared reader reads first, when the first caller of the
// topic arrives (it starts at that many records before the end, or at the
// earliest retained record if there are fewer): callers starting or resuming
// there are served from memory from the start, and the rest of the topic's
// history is read only by the catch-up readers of callers that ask for it.
// math.MaxInt reads every retained record; 0 starts at the end. Default -1:
// as many as the window would hold at 1 KiB a record, i.e. window / 1 KiB /
// partitions, which for a topic whose retention fits the window is all of
// it.
func GatewayFetchPreload(records int) GatewayOption {
	return gatewayOptionFunc(func(c *gatewayConfig) { c.fetch.preload = records })
}

// keyClash returns an error when the fetch key metadata (GatewayFetchKeyMetadata)
// is a name fetch method m's callers send their resume id under: the id would
// be taken for a record key, and a resuming caller would get no record.
func (c *fanoutConfig) keyClash(m *MethodSpec) error {
	k := c.keyMetadata
	if k == "" || m.Fetch == nil {
		return nil
	}
	names := resumeNames(m.Fetch.ResumeMetadata)
	for _, n := range names {
		if k == n || k == n+"-bin" {
			return fmt.Errorf("%s: GatewayFetchKeyMetadata %q is a resume metadata name of the method: the gateway reads a resuming caller's event id from %q, each also with \"-bin\", and would take it for a record key; name other metadata",
				m.FullMethod(), k, names)
		}
	}
	return nil
}

// preloadOf returns the records per partition to preload for a topic of
// partitions partitions.
func (c *fanoutConfig) preloadOf(partitions int) int64 {
	if c.preload >= 0 {
		return int64(c.preload)
	}
	return max(c.windowBytes/1024/int64(max(partitions, 1)), 1)
}
