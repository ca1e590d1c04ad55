package cmd_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
)

// TestEchoMetrics runs echo with --metrics and reads the Prometheus
// endpoint after known calls.
func TestEchoMetrics(t *testing.T) {
	addr, metrics := freeAddr(t), freeAddr(t)
	p := start(t, "echo", "--listen", addr, "--metrics", metrics, "--demo=false") // counts only the calls below
	defer p.stop(t)
	requireListening(t, p.waitReady(t), addr)
	c := echov1.NewEchoServiceClient(dial(t, addr))
	for range 3 {
		if _, err := c.EchoUnary(callContext(t), &echov1.EchoRequest{Message: "m"}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		`kafkarpc_gateway_calls_total{`,
		`kafkarpc_worker_calls_total{`,
		`rpc_method="/example.echo.v1.EchoService/EchoUnary"`,
		`kafkarpc_gateway_duration_seconds_bucket{`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "kafkarpc_gateway_calls_total{") && strings.Contains(line, "EchoUnary") && !strings.HasSuffix(line, " 3") {
			t.Errorf("gateway calls after 3 unary calls: %s", line)
		}
	}
}
