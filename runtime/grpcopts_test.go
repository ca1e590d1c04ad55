package runtime_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
)

// recordingConn keeps a copy of every byte written to it.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// pings counts the PING frames (not acknowledgements) in what c wrote.
func (c *recordingConn) pings(t *testing.T) int {
	t.Helper()
	c.mu.Lock()
	b := bytes.Clone(c.out.Bytes())
	c.mu.Unlock()
	b = bytes.TrimPrefix(b, []byte(http2.ClientPreface))
	fr := http2.NewFramer(io.Discard, bytes.NewReader(b))
	n := 0
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return n // the last frame may be cut where the copy was taken
		}
		if err != nil {
			t.Fatalf("parsing the written HTTP/2 frames: %v", err)
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			n++
		}
	}
}

type recordingListener struct {
	net.Listener
	conns chan *recordingConn
}

func (l recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rc := &recordingConn{Conn: c}
	l.conns <- rc
	return rc, nil
}

// TestGatewayOptionsSendNoPings checks what GatewayServerOptions and
// CallerDialOptions are for: with gRPC's defaults, server and client each
// send bandwidth-estimation PINGs as unary calls exchange data; with ours,
// neither sends any.
func TestGatewayOptionsSendNoPings(t *testing.T) {
	for _, tc := range []struct {
		name      string
		srv       []grpc.ServerOption
		dial      []grpc.DialOption
		wantPings bool
	}{
		{"grpc defaults", nil, nil, true},
		{"recommended", runtime.GatewayServerOptions(), runtime.CallerDialOptions(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			rl := recordingListener{Listener: lis, conns: make(chan *recordingConn, 1)}
			s := grpc.NewServer(tc.srv...)
			healthpb.RegisterHealthServer(s, health.NewServer())
			go func() { _ = s.Serve(rl) }()
			defer s.Stop()

			clients := make(chan *recordingConn, 4)
			dial := append([]grpc.DialOption{
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
					c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
					if err != nil {
						return nil, err
					}
					rc := &recordingConn{Conn: c}
					clients <- rc
					return rc, nil
				}),
			}, tc.dial...)
			cc, err := grpc.NewClient(lis.Addr().String(), dial...)
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			hc := healthpb.NewHealthClient(cc)
			for range 20 {
				if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
					t.Fatal(err)
				}
			}
			server, client := <-rl.conns, <-clients
			sp, cp := server.pings(t), client.pings(t)
			t.Logf("PINGs in 20 calls: server %d, client %d", sp, cp)
			if tc.wantPings && (sp == 0 || cp == 0) {
				t.Errorf("with gRPC's defaults, server sent %d and client %d PINGs; want both > 0 (bandwidth estimation)", sp, cp)
			}
			if !tc.wantPings && (sp != 0 || cp != 0) {
				t.Errorf("server sent %d and client %d PINGs; want none", sp, cp)
			}
		})
	}
}
