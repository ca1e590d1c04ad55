package runtime_test

import (
	"context"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	routingv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/routing/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/wire"
)

// routing serves the golden testdata's RoutingService.
type routing struct {
	routingv1.UnimplementedRoutingServiceServer
	notified chan string
}

func (r *routing) Route(ctx context.Context, o *routingv1.Order) (*routingv1.Receipt, error) {
	return &routingv1.Receipt{Id: "route:" + o.GetId()}, nil
}

func (r *routing) Notify(ctx context.Context, o *routingv1.Order) (*emptypb.Empty, error) {
	r.notified <- o.GetId()
	return &emptypb.Empty{}, nil
}

func (r *routing) Upload(s grpc.ClientStreamingServer[routingv1.Order, routingv1.Receipt]) error {
	n := 0
	for {
		_, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&routingv1.Receipt{Id: "uploaded:" + string(rune('0'+n))})
		}
		if err != nil {
			return err
		}
		n++
	}
}

// TestGoldenRoutingService runs the generated code of testdata/routing end to
// end: routes chosen by metadata, static keys and overrides, oneway calls;
// through a gateway, and through a runtime.ClientConn.
func TestGoldenRoutingService(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("g") + "."
	topics := []string{"routing-requests", "routing-responses", "acme-requests", "acme-responses",
		"notifications", "uploads", "upload-receipts", "watch.requests", "watch.responses", "watch_traced-responses"}
	for i := range topics {
		topics[i] = prefix + topics[i]
	}
	kafkatest.CreateTopics(t, kc, 3, topics...)
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	logger := runtime.WithLogger(kafkatest.Logger(t))

	impl := &routing{notified: make(chan string, 1)}
	worker := runtime.NewWorker(kc, mapper, logger, runtime.WorkerGroupID(prefix+"w"))
	if err := routingv1.RegisterRoutingServiceKafkaWorker(worker, impl); err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Close() })
	gw := runtime.NewGateway(kc, mapper, logger)
	t.Cleanup(func() { _ = gw.Close() })
	client := routingv1.NewRoutingServiceClient(serve(t, func(s *grpc.Server) {
		if err := routingv1.RegisterRoutingServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	cc := runtime.NewClientConn(kc, mapper, logger)
	t.Cleanup(func() { _ = cc.Close() })
	if err := cc.Register(routingv1.RoutingServiceKafkaSpec); err != nil {
		t.Fatal(err)
	}
	<-worker.Ready()
	ctx := ctxFor(t, 60*time.Second)
	t.Run("gateway", func(t *testing.T) { testRouting(t, ctx, kc, prefix, client, impl, "") })
	t.Run("ClientConn", func(t *testing.T) {
		testRouting(t, ctx, kc, prefix, routingv1.NewRoutingServiceClient(cc), impl, "-conn")
	})
}

// testRouting is TestGoldenRoutingService through client; suffix makes its
// idempotency keys its own.
func testRouting(t *testing.T, ctx context.Context, kc kafkaclient.Client, prefix string, client routingv1.RoutingServiceClient, impl *routing, suffix string) {
	acme := watchReplies(t, kc, prefix+"acme-requests")
	orders := watchReplies(t, kc, prefix+"routing-requests")
	uploads := watchReplies(t, kc, prefix+"uploads")
	t.Run("route chosen by metadata", func(t *testing.T) {
		md := metadata.AppendToOutgoingContext(ctx, "x-tenant", "acme", "x-region", "eu", "idempotency-key", "key-1"+suffix)
		got, err := client.Route(md, &routingv1.Order{Id: "1"})
		if err != nil || got.GetId() != "route:1" {
			t.Fatalf("Route = %v, %v", got, err)
		}
		id := wire.CorrelationID(wire.DefaultNames(), "key-1"+suffix, "testdata.routing.v1.RoutingService", "Route",
			prefix+"acme-responses", "acme", "order")
		recs := acme.await(t, id)
		if len(recs) != 2 {
			t.Fatalf("%d request records on acme-requests, want data and end-of-stream", len(recs))
		}
		for _, rec := range recs {
			if string(rec.Key) != "acme" {
				t.Errorf("key = %q, want the route's static key", rec.Key)
			}
			wantOrder := []string{"tenant", "kind", "zilla:service", "zilla:method", "zilla:reply-to", "zilla:correlation-id"}
			if got := headerKeys(rec)[:len(wantOrder)]; !slices.Equal(got, wantOrder) {
				t.Errorf("header order = %q, want %q first", got, wantOrder)
			}
		}
	})

	t.Run("default route", func(t *testing.T) {
		md := metadata.AppendToOutgoingContext(ctx, "x-tenant", "acme", "idempotency-key", "key-2"+suffix) // no x-region
		if got, err := client.Route(md, &routingv1.Order{Id: "2"}); err != nil || got.GetId() != "route:2" {
			t.Fatalf("Route = %v, %v", got, err)
		}
		id := wire.CorrelationID(wire.DefaultNames(), "key-2"+suffix, "testdata.routing.v1.RoutingService", "Route",
			prefix+"routing-responses", "order")
		recs := orders.await(t, id)
		if string(recs[0].Key) != "orders" || headerKeys(recs[0])[0] != "kind" {
			t.Fatalf("key %q, headers %q: want key orders and the override first", recs[0].Key, headerKeys(recs[0]))
		}
	})

	t.Run("oneway unary served without a reply", func(t *testing.T) {
		if _, err := client.Notify(ctx, &routingv1.Order{Id: "n1"}); err != nil {
			t.Fatal(err)
		}
		select {
		case id := <-impl.notified:
			if id != "n1" {
				t.Fatalf("worker notified of %q", id)
			}
		case <-ctx.Done():
			t.Fatal("the oneway request never reached the worker")
		}
	})

	t.Run("oneway client stream answered once acknowledged", func(t *testing.T) {
		s, err := client.Upload(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"u1", "u2", "u3"} {
			if err := s.Send(&routingv1.Order{Id: id}); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.CloseAndRecv()
		if err != nil || got.GetId() != "" {
			t.Fatalf("Upload = %v, %v; want an empty receipt", got, err)
		}
		// The three records are in Kafka, with no correlation headers.
		for range 3 {
			select {
			case rec := <-uploads.recs:
				if rec.Value == nil || slices.Contains(headerKeys(rec), "zilla:correlation-id") || slices.Contains(headerKeys(rec), "zilla:reply-to") {
					t.Fatalf("oneway record value %v, headers %q", rec.Value, headerKeys(rec))
				}
			case <-ctx.Done():
				t.Fatal("the oneway records are not in Kafka")
			}
		}
	})

	t.Run("a route can turn oneway off", func(t *testing.T) {
		s, err := client.Upload(metadata.AppendToOutgoingContext(ctx, "x-receipt", "yes"))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := s.Send(&routingv1.Order{}); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.CloseAndRecv()
		if err != nil || got.GetId() != "uploaded:2" {
			t.Fatalf("Upload with a receipt = %v, %v", got, err)
		}
	})
}

func headerKeys(rec *kafkaclient.Record) []string {
	var ks []string
	for _, h := range rec.Headers {
		ks = append(ks, h.Key)
	}
	return ks
}
