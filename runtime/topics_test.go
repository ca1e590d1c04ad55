package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kafkarpc/protoc-gen-go-kafka/example/echo/echoserver"
	echov1 "github.com/kafkarpc/protoc-gen-go-kafka/example/echo/v1"
	"github.com/kafkarpc/protoc-gen-go-kafka/internal/kafkatest"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime"
	"github.com/kafkarpc/protoc-gen-go-kafka/runtime/kafkaclient"
	routingv1 "github.com/kafkarpc/protoc-gen-go-kafka/testdata/routing/v1"
)

// topicsSpec has every role: a default route, a route by metadata with its
// own request and reply topics, a oneway method and a fetch.
var topicsSpec = &runtime.ServiceSpec{
	Name: "t.v1.S",
	Methods: []*runtime.MethodSpec{
		{Service: "t.v1.S", Method: "A", Routes: []runtime.Route{
			{When: []runtime.MetadataMatch{{Name: "tenant", Value: "vip"}}, Topic: "vip-req", ReplyTopic: "vip-rep"},
			{Topic: "req", ReplyTopic: "rep"},
		}},
		{Service: "t.v1.S", Method: "B", Routes: []runtime.Route{{Topic: "req", ReplyTopic: "rep"}}},
		{Service: "t.v1.S", Method: "C", Routes: []runtime.Route{
			{When: []runtime.MetadataMatch{{Name: "x"}}, Topic: "req", ReplyTopic: "rep"},
			{Topic: "oneway", Oneway: true},
		}},
		{Service: "t.v1.S", Method: "Events", Kind: runtime.KindServerStream, Fetch: &runtime.FetchSpec{Topic: "events"}},
	},
}

func TestServiceSpecTopics(t *testing.T) {
	got := topicsSpec.Topics(func(s string) string { return "env." + s })
	want := []runtime.Topic{
		{Name: "env.vip-req", Role: runtime.TopicRouteRequest, Methods: []string{"/t.v1.S/A"}},
		{Name: "env.vip-rep", Role: runtime.TopicReply, Methods: []string{"/t.v1.S/A"}},
		{Name: "env.req", Role: runtime.TopicRequest | runtime.TopicRouteRequest, Methods: []string{"/t.v1.S/A", "/t.v1.S/B", "/t.v1.S/C"}},
		{Name: "env.rep", Role: runtime.TopicReply, Methods: []string{"/t.v1.S/A", "/t.v1.S/B", "/t.v1.S/C"}},
		{Name: "env.oneway", Role: runtime.TopicRequest, Methods: []string{"/t.v1.S/C"}},
		{Name: "env.events", Role: runtime.TopicFetch, Methods: []string{"/t.v1.S/Events"}},
	}
	if !slices.EqualFunc(got, want, func(a, b runtime.Topic) bool {
		return a.Name == b.Name && a.Role == b.Role && slices.Equal(a.Methods, b.Methods)
	}) {
		t.Fatalf("Topics:\n got %+v\nwant %+v", got, want)
	}
	if s := (runtime.TopicRequest | runtime.TopicRouteRequest | runtime.TopicDeadLetter).String(); s != "request, route request, dead letter" {
		t.Errorf("TopicRole.String = %q", s)
	}
	// Without a mapper the names are the spec's.
	if got := echov1.EchoServiceKafkaSpec.Topics(nil); len(got) != 3 || got[0].Name != "echo-requests" || got[1].Name != "echo-responses" || got[2].Name != "echo-events" {
		t.Errorf("echo Topics(nil) = %+v", got)
	}
}

// fakeAdmin records CreateTopics and knows the topics in have, each with
// one partition unless parts says otherwise.
type fakeAdmin struct {
	have    map[string]bool
	parts   map[string]int32
	created []kafkaclient.TopicSpec
}

func (a *fakeAdmin) CreateTopics(_ context.Context, ts []kafkaclient.TopicSpec) error {
	a.created = append(a.created, ts...)
	for _, t := range ts {
		a.have[t.Name] = true
	}
	return nil
}

func (a *fakeAdmin) Partitions(_ context.Context, topic string) ([]int32, error) {
	if !a.have[topic] {
		return nil, kafkaclient.ErrUnknownTopic
	}
	n := max(a.parts[topic], 1)
	ps := make([]int32, n)
	for i := range ps {
		ps[i] = int32(i)
	}
	return ps, nil
}

func TestEnsureTopicsSettings(t *testing.T) {
	a := &fakeAdmin{have: map[string]bool{"req": true}}
	topics := append(topicsSpec.Topics(nil), runtime.Topic{Name: "dlq", Role: runtime.TopicDeadLetter})
	if err := runtime.EnsureTopics(context.Background(), a, topics, runtime.EnsureTopicsOptions{}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range a.created {
		names = append(names, s.Name)
		if s.Partitions != runtime.DefaultTopicPartitions || s.Config["max.message.bytes"] != "8388608" || s.ReplicationFactor != 0 {
			t.Errorf("created %+v, want 3 partitions, max.message.bytes 8388608, the broker's replication factor", s)
		}
	}
	if want := []string{"vip-req", "vip-rep", "rep", "oneway", "events", "dlq"}; !slices.Equal(names, want) {
		t.Errorf("created %v, want the missing ones %v", names, want)
	}
	a = &fakeAdmin{have: map[string]bool{}}
	err := runtime.EnsureTopics(context.Background(), a, []runtime.Topic{{Name: "x"}}, runtime.EnsureTopicsOptions{Partitions: 12, ReplicationFactor: 3, MaxMessageBytes: 1 << 20})
	if err != nil || len(a.created) != 1 || a.created[0].Partitions != 12 || a.created[0].ReplicationFactor != 3 || a.created[0].Config["max.message.bytes"] != "1048576" {
		t.Errorf("EnsureTopics with settings: %v, created %+v", err, a.created)
	}
}

// The line logged for each topic created says what the topic got, in
// words where the broker chose: a newcomer's first run prints these, with
// no logger given (slog's default logger, as the gateway's and worker's).
func TestEnsureTopicsLogsWhatItCreated(t *testing.T) {
	for _, tc := range []struct {
		opts    runtime.EnsureTopicsOptions
		rf, isr string
		dflt    bool // no Logger: slog.Default()
	}{
		{runtime.EnsureTopicsOptions{}, `replication.factor="broker default"`, `min.insync.replicas="broker default"`, false},
		{runtime.EnsureTopicsOptions{ReplicationFactor: 3}, "replication.factor=3", `min.insync.replicas="broker default"`, false},
		{runtime.EnsureTopicsOptions{}, `replication.factor="broker default"`, `min.insync.replicas="broker default"`, true},
	} {
		var log strings.Builder
		if tc.dflt {
			prev := slog.Default()
			slog.SetDefault(slog.New(slog.NewTextHandler(&log, nil)))
			t.Cleanup(func() { slog.SetDefault(prev) })
		} else {
			tc.opts.Logger = slog.New(slog.NewTextHandler(&log, nil))
		}
		if err := runtime.EnsureTopics(context.Background(), &fakeAdmin{have: map[string]bool{}}, []runtime.Topic{{Name: "x"}}, tc.opts); err != nil {
			t.Fatal(err)
		}
		line := log.String()
		for _, want := range []string{"kafkarpc: created topic", "topic=x", "partitions=3", "max.message.bytes=8388608", tc.rf, tc.isr} {
			if !strings.Contains(line, want) {
				t.Errorf("options %+v (slog's default logger: %v): logged %q, want it to say %s", tc.opts, tc.dflt, line, want)
			}
		}
	}
}

// TestEnsureTopicsOutcomeTopic: a worker's ExtraTopics name its dead-letter
// and outcome topics (mapped); EnsureTopics creates the outcome topic
// compacted, the others not.
func TestEnsureTopicsOutcomeTopic(t *testing.T) {
	w := runtime.NewWorker(nil, runtime.WithTopicMapper(func(s string) string { return "p." + s }),
		runtime.WorkerDeadLetterTopic("dlq"), runtime.WorkerOutcomeTopic("outcomes"))
	extra := w.ExtraTopics()
	want := []runtime.Topic{{Name: "p.dlq", Role: runtime.TopicDeadLetter}, {Name: "p.outcomes", Role: runtime.TopicOutcome}}
	if !reflect.DeepEqual(extra, want) {
		t.Fatalf("ExtraTopics = %+v, want %+v", extra, want)
	}
	if s := runtime.TopicOutcome.String(); s != "outcome" {
		t.Errorf("TopicOutcome.String = %q", s)
	}
	a := &fakeAdmin{have: map[string]bool{}}
	if err := runtime.EnsureTopics(context.Background(), a, append(topicsSpec.Topics(nil), extra...), runtime.EnsureTopicsOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range a.created {
		compact := s.Config["cleanup.policy"] == "compact"
		if compact != (s.Name == "p.outcomes") {
			t.Errorf("created %s with cleanup.policy %q", s.Name, s.Config["cleanup.policy"])
		}
		if s.Config["max.message.bytes"] != "8388608" {
			t.Errorf("created %s without max.message.bytes 8388608: %v", s.Name, s.Config)
		}
	}
}

// An outcome topic needs as many partitions as each request topic (an
// outcome goes to the partition with its request's number): EnsureTopics
// creates one with as many as the largest request topic given with it,
// existing or created, when that is more than opts.Partitions. It created
// it with opts.Partitions (3), and the worker, following the docs, logged
// that the outcome topic had fewer partitions than its request topic.
func TestEnsureTopicsOutcomeTopicHasTheRequestTopicsPartitions(t *testing.T) {
	w := runtime.NewWorker(nil, runtime.WorkerOutcomeTopic("outcomes"))
	a := &fakeAdmin{have: map[string]bool{"req": true, "vip-req": true}, parts: map[string]int32{"req": 12, "vip-req": 6}}
	if err := runtime.EnsureTopics(context.Background(), a, append(topicsSpec.Topics(nil), w.ExtraTopics()...), runtime.EnsureTopicsOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range a.created {
		want := int32(runtime.DefaultTopicPartitions)
		if s.Name == "outcomes" {
			want = 12
		}
		if s.Partitions != want {
			t.Errorf("created %s with %d partitions, want %d", s.Name, s.Partitions, want)
		}
	}
	// Request topics created in the same call have opts.Partitions, and so
	// does the outcome topic.
	a = &fakeAdmin{have: map[string]bool{}}
	if err := runtime.EnsureTopics(context.Background(), a, append(topicsSpec.Topics(nil), w.ExtraTopics()...), runtime.EnsureTopicsOptions{Partitions: 8}); err != nil {
		t.Fatal(err)
	}
	for _, s := range a.created {
		if s.Partitions != 8 {
			t.Errorf("created %s with %d partitions, want 8", s.Name, s.Partitions)
		}
	}
}

// TestEnsureTopics verifies and creates the echo service's topics on the
// test's Kafka, with the test's client.
// countingAdmin is a fakeAdmin on a cluster of brokers brokers.
type countingAdmin struct {
	fakeAdmin
	brokers int
	err     error
}

func (a *countingAdmin) Brokers(context.Context) (int, error) { return a.brokers, a.err }

func TestEnsureTopicsReplication(t *testing.T) {
	for _, tc := range []struct {
		brokers int
		opts    runtime.EnsureTopicsOptions
		rf      int16
		isr     string
	}{
		{brokers: 1, rf: 0, isr: ""},
		{brokers: 2, rf: 0, isr: ""},
		{brokers: 3, rf: 3, isr: "2"},
		{brokers: 5, rf: 3, isr: "2"},
		{brokers: 5, opts: runtime.EnsureTopicsOptions{ReplicationFactor: 5}, rf: 5, isr: ""},
	} {
		a := &countingAdmin{fakeAdmin: fakeAdmin{have: map[string]bool{}}, brokers: tc.brokers}
		if err := runtime.EnsureTopics(context.Background(), a, []runtime.Topic{{Name: "x"}, {Name: "y"}}, tc.opts); err != nil {
			t.Fatalf("%d brokers: %v", tc.brokers, err)
		}
		for _, s := range a.created {
			if s.ReplicationFactor != tc.rf || s.Config["min.insync.replicas"] != tc.isr || s.Config["max.message.bytes"] != "8388608" {
				t.Errorf("%d brokers, options %+v: created %+v, want replication factor %d, min.insync.replicas %q", tc.brokers, tc.opts, s, tc.rf, tc.isr)
			}
		}
	}
	a := &countingAdmin{fakeAdmin: fakeAdmin{have: map[string]bool{}}, err: errors.New("no metadata")}
	err := runtime.EnsureTopics(context.Background(), a, []runtime.Topic{{Name: "x"}}, runtime.EnsureTopicsOptions{})
	if err == nil || !strings.Contains(err.Error(), "counting the brokers") || !strings.Contains(err.Error(), "no metadata") || len(a.created) != 0 {
		t.Errorf("EnsureTopics when the brokers cannot be counted = %v (created %+v), want an error naming it and nothing created", err, a.created)
	}
}

func TestEnsureTopics(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("t") + "."
	topics := echov1.EchoServiceKafkaSpec.Topics(func(s string) string { return prefix + s })
	ctx := ctxFor(t, 60*time.Second)
	kafkatest.CreateTopics(t, kc, 1, prefix+"echo-responses")

	err := runtime.EnsureTopics(ctx, kc, topics, runtime.EnsureTopicsOptions{VerifyOnly: true})
	var missing *runtime.MissingTopicsError
	if !errors.As(err, &missing) || !errors.Is(err, kafkaclient.ErrUnknownTopic) {
		t.Fatalf("VerifyOnly with topics missing: %v, want a *MissingTopicsError wrapping ErrUnknownTopic", err)
	}
	msg := err.Error()
	for _, want := range []string{"2 Kafka topics do not exist", prefix + "echo-requests (request topic of EchoUnary, EchoServerStream, EchoClientStream, EchoBidiStream)", prefix + "echo-events (fetch topic of EchoEvents)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, prefix+"echo-responses") {
		t.Errorf("error %q names a topic that exists", msg)
	}

	if err := runtime.EnsureTopics(ctx, kc, topics, runtime.EnsureTopicsOptions{}); err != nil {
		t.Fatalf("EnsureTopics creating: %v", err)
	}
	if err := runtime.EnsureTopics(ctx, kc, topics, runtime.EnsureTopicsOptions{VerifyOnly: true}); err != nil {
		t.Fatalf("VerifyOnly after creating: %v", err)
	}
	parts, err := kc.Partitions(ctx, prefix+"echo-requests")
	if err != nil || len(parts) != runtime.DefaultTopicPartitions {
		t.Fatalf("created request topic has partitions %v (%v), want %d", parts, err, runtime.DefaultTopicPartitions)
	}
	if parts, _ := kc.Partitions(ctx, prefix+"echo-responses"); len(parts) != 1 {
		t.Fatalf("the existing reply topic was changed: partitions %v", parts)
	}
}

// deleteTopic deletes topic with an admin client of its own.
func deleteTopic(t *testing.T, brokers, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resp, err := kadm.NewClient(cl).DeleteTopics(ctxFor(t, 30*time.Second), topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("deleting topic %s: %v", topic, err)
	}
	// Kafka deletes a topic after it answered: wait until the metadata no
	// longer lists it, as a client looking it up would see it.
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ts, err := adm.ListTopics(ctxFor(t, 10*time.Second), topic)
		if err == nil && !ts.Has(topic) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("topic %s still listed 30 s after its deletion (%v)", topic, err)
		}
		<-time.After(100 * time.Millisecond) // polling the broker's metadata
	}
}

// requireNotFound requires err to be NOT_FOUND naming topic, and the call to
// have ended within 10 s of start (the callers' deadlines are 60 s).
func requireNotFound(t *testing.T, what string, err error, topic string, start time.Time) {
	t.Helper()
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("%s took %s, want it to end at once", what, took)
	}
	st := status.Convert(err)
	if st.Code() != codes.NotFound || !strings.Contains(st.Message(), `"`+topic+`"`) {
		t.Fatalf("%s: %v, want NOT_FOUND naming topic %q", what, err, topic)
	}
}

// TestGatewayMissingTopic: a call whose request topic does not exist, or
// was deleted, ends at once with NOT_FOUND naming the topic; so does a fetch
// of a missing topic; once the topic exists the calls go through.
func TestGatewayMissingTopic(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	kc := kafkatest.NewClient(t, brokers)
	prefix := kafkatest.Unique("t") + "."
	req, events := prefix+"echo-requests", prefix+"echo-events"
	kafkatest.CreateTopics(t, kc, 1, prefix+"echo-responses")
	mapper := runtime.WithTopicMapper(func(s string) string { return prefix + s })
	logger := runtime.WithLogger(kafkatest.Logger(t))
	restore := runtime.SetTopicFreshness(0, 0) // every call looks its topic up
	t.Cleanup(restore)

	gw := runtime.NewGateway(kc, mapper, logger)
	t.Cleanup(func() { _ = gw.Close() })
	client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := ctxFor(t, 60*time.Second)

	start := time.Now()
	_, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
	requireNotFound(t, "EchoUnary to a missing topic", err, req, start)
	start = time.Now()
	s, err := client.EchoServerStream(ctx, &echov1.EchoRequest{Message: "x"})
	if err == nil {
		_, err = s.Recv()
	}
	requireNotFound(t, "EchoServerStream to a missing topic", err, req, start)
	start = time.Now()
	ev, err := client.EchoEvents(ctx, &emptypb.Empty{})
	if err == nil {
		_, err = ev.Recv()
	}
	requireNotFound(t, "EchoEvents of a missing topic", err, events, start)

	// Created: served.
	kafkatest.CreateTopics(t, kc, 1, req)
	worker := runtime.NewWorker(kc, mapper, logger, runtime.WorkerGroupID(prefix+"workers"))
	if err := echov1.RegisterEchoServiceKafkaWorker(worker, echoserver.Server{}); err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Close() })
	<-worker.Ready()
	if resp, err := client.EchoUnary(ctx, &echov1.EchoRequest{Message: "after"}); err != nil || resp.GetMessage() != "after" {
		t.Fatalf("EchoUnary once the topic exists: %v, %v", resp, err)
	}

	// Deleted: looked up again, NOT_FOUND at once.
	deleteTopic(t, brokers, req)
	start = time.Now()
	_, err = client.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
	requireNotFound(t, "EchoUnary after the topic was deleted", err, req, start)
}

// TestGatewayTopicDeletedUnnoticed: when the gateway still believes the
// topic exists, the produce error tells: the call ends with NOT_FOUND
// naming the topic, within the client's second, not at its deadline.
func TestGatewayTopicDeletedUnnoticed(t *testing.T) {
	restore := runtime.SetTopicFreshness(time.Hour, time.Hour) // no second lookup
	t.Cleanup(restore)
	e := setup(t, echoserver.Server{})
	ctx := ctxFor(t, 60*time.Second)
	if _, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"}); err != nil {
		t.Fatal(err)
	}
	req := e.topic("echo-requests")
	deleteTopic(t, e.brokers, req)
	start := time.Now()
	_, err := e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
	requireNotFound(t, "EchoUnary to a deleted topic", err, req, start)
	// Remembered: the next call ends without producing.
	start = time.Now()
	_, err = e.echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "y"})
	requireNotFound(t, "EchoUnary after the produce error", err, req, start)
}

// vagueProduce fails every record to one topic, once told to, with an
// error that does not say why, as librdkafka's "Broker handle destroyed"
// for a record queued on a broker connection it retires.
type vagueProduce struct {
	kafkaclient.Client
	topic string
	err   error
	fail  atomic.Bool
}

func (v *vagueProduce) Produce(r *kafkaclient.Record, acks kafkaclient.Acks, done func(*kafkaclient.Record, error)) {
	if v.fail.Load() && r.Topic == v.topic {
		done(r, v.err)
		return
	}
	v.Client.Produce(r, acks, done)
}

// TestGatewayVagueProduceErrorOnDeletedTopic: a produce error that does not
// name the cause ends the call UNAVAILABLE (retry) while the topic exists,
// and NOT_FOUND naming it once the topic was deleted: the gateway looks the
// topic up before answering. So does an "unknown topic" from a producer
// whose metadata is stale: librdkafka keeps a topic it saw missing as such
// for up to a second after it is created again, in each of the client's
// producers (one per acks level), while a lookup finds it.
func TestGatewayVagueProduceErrorOnDeletedTopic(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		says string // in the UNAVAILABLE message
	}{
		{"vague", errors.New("Local: Broker handle destroyed for termination"), "Broker handle destroyed"},
		{"stale unknown topic", fmt.Errorf("confluent: produce to x: %w (Local: Unknown topic)", kafkaclient.ErrUnknownTopic), "Local: Unknown topic"},
	} {
		t.Run(tc.name, func(t *testing.T) { testProduceErrorOnDeletedTopic(t, tc.err, tc.says) })
	}
}

func testProduceErrorOnDeletedTopic(t *testing.T, produceErr error, says string) {
	restore := runtime.SetTopicFreshness(time.Hour, time.Hour) // no lookup but the one under test
	t.Cleanup(restore)
	e := setup(t, echoserver.Server{})
	req := e.topic("echo-requests")
	kc := &vagueProduce{Client: e.kc, topic: req, err: produceErr}
	gw := runtime.NewGateway(kc, runtime.WithTopicMapper(func(s string) string { return e.prefix + s }), runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	echo := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := ctxFor(t, 60*time.Second)
	if _, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"}); err != nil {
		t.Fatal(err)
	}
	kc.fail.Store(true)
	_, err := echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), says) {
		t.Fatalf("EchoUnary failing to produce to an existing topic: %v, want UNAVAILABLE with the produce error", err)
	}
	deleteTopic(t, e.brokers, req)
	start := time.Now()
	_, err = echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "x"})
	requireNotFound(t, "EchoUnary failing to produce to a deleted topic", err, req, start)
	// Remembered: the next call ends without producing.
	kc.fail.Store(false)
	start = time.Now()
	_, err = echo.EchoUnary(ctx, &echov1.EchoRequest{Message: "y"})
	requireNotFound(t, "EchoUnary after the produce error", err, req, start)
}

// logCatcher is a slog handler passing records to a test.
type logCatcher struct {
	records chan slog.Record
}

func (h *logCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCatcher) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.records <- r.Clone():
	default: // the test reads what it waits for; the rest may be dropped
	}
	return nil
}
func (h *logCatcher) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCatcher) WithGroup(string) slog.Handler      { return h }

// waitLog returns the first record at level whose message contains msg and
// whose "topic" attribute is topic.
func (h *logCatcher) waitLog(t *testing.T, level slog.Level, msg, topic string) slog.Record {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case r := <-h.records:
			if r.Level != level || !strings.Contains(r.Message, msg) {
				continue
			}
			found := false
			r.Attrs(func(a slog.Attr) bool {
				found = found || a.Key == "topic" && a.Value.String() == topic
				return true
			})
			if found {
				return r
			}
		case <-timeout:
			t.Fatalf("no %s log %q naming topic %s within 30 s", level, msg, topic)
		}
	}
}

// missingTopicWorker is an echo worker whose request topic (req) does
// not exist, with its topic mapper and its logs.
type missingTopicWorker struct {
	worker *runtime.Worker
	req    string
	mapper runtime.Option
	logs   *logCatcher
}

// startWorkerMissingTopic starts a missingTopicWorker on wc (kc, or a
// wrapper of it), its reply topic created, and returns once the worker
// logged the missing request topic at error level.
func startWorkerMissingTopic(t *testing.T, kc, wc kafkaclient.Client) missingTopicWorker {
	t.Helper()
	prefix := kafkatest.Unique("t") + "."
	m := missingTopicWorker{
		req:    prefix + "echo-requests",
		mapper: runtime.WithTopicMapper(func(s string) string { return prefix + s }),
		logs:   &logCatcher{records: make(chan slog.Record, 1024)},
	}
	kafkatest.CreateTopics(t, kc, 1, prefix+"echo-responses")
	m.worker = runtime.NewWorker(wc, m.mapper, runtime.WithLogger(slog.New(m.logs)), runtime.WorkerGroupID(prefix+"workers"))
	if err := echov1.RegisterEchoServiceKafkaWorker(m.worker, echoserver.Server{}); err != nil {
		t.Fatal(err)
	}
	if err := m.worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.worker.Close() })
	m.logs.waitLog(t, slog.LevelError, "request topic does not exist", m.req)
	return m
}

// TestWorkerMissingTopic: a worker whose request topic does not exist says
// so at error level, naming it, keeps trying, and serves once it exists.
func TestWorkerMissingTopic(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	m := startWorkerMissingTopic(t, kc, kc)

	kafkatest.CreateTopics(t, kc, 1, m.req)
	m.logs.waitLog(t, slog.LevelInfo, "request topic exists now", m.req)
	gw := runtime.NewGateway(kc, m.mapper, runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	client := echov1.NewEchoServiceClient(serve(t, func(s *grpc.Server) {
		if err := echov1.RegisterEchoServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	if resp, err := client.EchoUnary(ctxFor(t, 60*time.Second), &echov1.EchoRequest{Message: "served"}); err != nil || resp.GetMessage() != "served" {
		t.Fatalf("EchoUnary once the topic exists: %v, %v", resp, err)
	}
}

// slowWatchClient is a Kafka client whose lookups of topic wait, once
// block is set, until their context ends, and then take 200 ms more to
// return (a broker slow to answer), recording that they returned.
type slowWatchClient struct {
	kafkaclient.Client
	topic   atomic.Pointer[string]
	block   atomic.Bool
	waiting chan struct{} // closed at the first blocked lookup
	once    atomic.Bool
	ended   atomic.Bool
}

func (c *slowWatchClient) Partitions(ctx context.Context, topic string) ([]int32, error) {
	if !c.block.Load() || topic != *c.topic.Load() {
		return c.Client.Partitions(ctx, topic)
	}
	if c.once.CompareAndSwap(false, true) {
		close(c.waiting)
	}
	<-ctx.Done()
	time.Sleep(200 * time.Millisecond) // slow to answer, not a synchronisation
	c.ended.Store(true)
	return nil, ctx.Err()
}

// TestWorkerShutdownEndsTopicWatch: the watch of a missing request topic
// is the worker's: Shutdown ends it and waits for it, so nothing of the
// worker looks topics up with the Kafka client, or logs, once Shutdown
// returned (the user may close the client then, and a test's logger may
// be gone).
func TestWorkerShutdownEndsTopicWatch(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	client := &slowWatchClient{Client: kc, waiting: make(chan struct{})}
	m := startWorkerMissingTopic(t, kc, client)
	worker := m.worker
	client.topic.Store(&m.req)
	client.block.Store(true)
	select { // the watch looks again after topicWatchRetry (1 s)
	case <-client.waiting:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not look its missing request topic up again within 30 s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := worker.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if !client.ended.Load() {
		t.Fatal("Shutdown returned while the worker's lookup of its request topic was still running")
	}
	select {
	case <-worker.Done():
	default:
		t.Fatal("Done is not closed after Shutdown returned")
	}
}

// TestGatewayMissingRouteTopic: the case, a route chosen by
// metadata whose request topic was never created (and whose records are
// produced with acks=0, so no broker error would ever tell): the call ends
// at once with NOT_FOUND naming the route's topic.
func TestGatewayMissingRouteTopic(t *testing.T) {
	kc := kafkatest.NewClient(t, kafkatest.Brokers(t))
	prefix := kafkatest.Unique("t") + "."
	var create []string
	for _, tp := range routingv1.RoutingServiceKafkaSpec.Topics(func(s string) string { return prefix + s }) {
		if tp.Name != prefix+"acme-requests" {
			create = append(create, tp.Name)
		}
	}
	kafkatest.CreateTopics(t, kc, 1, create...)
	gw := runtime.NewGateway(kc, runtime.WithTopicMapper(func(s string) string { return prefix + s }), runtime.WithLogger(kafkatest.Logger(t)))
	t.Cleanup(func() { _ = gw.Close() })
	client := routingv1.NewRoutingServiceClient(serve(t, func(s *grpc.Server) {
		if err := routingv1.RegisterRoutingServiceKafkaGateway(s, gw); err != nil {
			t.Fatal(err)
		}
	}))
	ctx := metadata.AppendToOutgoingContext(ctxFor(t, 60*time.Second), "x-tenant", "acme", "x-region", "eu")
	start := time.Now()
	_, err := client.Route(ctx, &routingv1.Order{Id: "1"})
	requireNotFound(t, "Route on the acme route", err, prefix+"acme-requests", start)
}
