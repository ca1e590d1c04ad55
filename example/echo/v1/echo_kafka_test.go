package echov1_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkarpctest"
)

// TestChangingTheSpecChangesNothing changes everything in
// EchoServiceKafkaSpec that the gateway and the worker would read, then
// serves the echo service with the generated registration functions: the
// calls still travel on the topics of echo.proto, because the generated code
// uses specs of its own and EchoServiceKafkaSpec is a copy of them.
func TestChangingTheSpecChangesNothing(t *testing.T) {
	generated := echov1.EchoServiceKafkaSpec.Clone()
	spec := echov1.EchoServiceKafkaSpec
	t.Cleanup(func() { *spec = *generated.Clone() })
	// A worker registering this name fails: it is not the descriptor's.
	spec.Name = "example.echo.v1.Changed"
	for _, m := range spec.Methods {
		m.Service = "example.echo.v1.Changed"
		// Topics the test does not create: a gateway reading replies from
		// one fails to register, and a request written to one reaches no
		// worker.
		for i := range m.Routes {
			m.Routes[i].Topic, m.Routes[i].ReplyTopic = "changed-requests", "changed-responses"
		}
		if m.Fetch != nil {
			m.Fetch.Topic = "changed-events"
		}
	}

	env := kafkarpctest.Start(t, kafkarpctest.Service{
		Spec:            generated, // the topics to create: echo.proto's
		RegisterGateway: echov1.RegisterEchoServiceKafkaGateway,
		RegisterWorker: func(w *runtime.Worker) error {
			return echov1.RegisterEchoServiceKafkaWorker(w, echoserver.Server{})
		},
	})
	client := echov1.NewEchoServiceClient(env.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	resp, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "hello"})
	if err != nil || resp.GetMessage() != "hello" {
		t.Fatalf("EchoUnary = %v, %v; want hello", resp, err)
	}
	stream, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "s", Repeat: 2})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("EchoServerStream: %v", err)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("EchoServerStream sent %d responses, want 2", n)
	}
	if got := env.Worker.Topics(); len(got) != 1 || got[0] != env.Topic("echo-requests") {
		t.Errorf("worker consumes %q, want echo.proto's request topic only", got)
	}
}

// TestKafkaFullMethodNames checks the generated constants against
// protoc-gen-go-grpc's and against the spec.
func TestKafkaFullMethodNames(t *testing.T) {
	for _, c := range []struct{ kafka, grpc, method string }{
		{echov1.EchoService_EchoUnary_KafkaFullMethodName, echov1.EchoService_EchoUnary_FullMethodName, "EchoUnary"},
		{echov1.EchoService_EchoServerStream_KafkaFullMethodName, echov1.EchoService_EchoServerStream_FullMethodName, "EchoServerStream"},
		{echov1.EchoService_EchoClientStream_KafkaFullMethodName, echov1.EchoService_EchoClientStream_FullMethodName, "EchoClientStream"},
		{echov1.EchoService_EchoBidiStream_KafkaFullMethodName, echov1.EchoService_EchoBidiStream_FullMethodName, "EchoBidiStream"},
		{echov1.EchoService_EchoEvents_KafkaFullMethodName, echov1.EchoService_EchoEvents_FullMethodName, "EchoEvents"},
	} {
		if c.kafka != c.grpc {
			t.Errorf("%s: Kafka full method name %q, protoc-gen-go-grpc's %q", c.method, c.kafka, c.grpc)
		}
		m := echov1.EchoServiceKafkaSpec.Method(c.method)
		if m == nil || m.FullMethod() != c.kafka {
			t.Errorf("%s: spec %+v, want full method %q", c.method, m, c.kafka)
		}
	}
	if n := len(echov1.EchoServiceKafkaSpec.Methods); n != 5 {
		t.Errorf("the spec lists %d methods, want the 5 constants' methods", n)
	}
}
