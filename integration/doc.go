// Package integration holds the fault tests that need a real Apache Kafka:
// the broker stopped under load, workers killed or restarted, a gateway
// restarted under fetch callers. They start the example binaries as
// processes, point them at KAFKA_BROKERS, and stop and start the broker
// through scripts/kafka.sh.
//
// The tests carry the build tag "integration", so `make test` does not run
// them; `make integration` does, after the whole suite on the same broker:
//
//	make kafka-up        # Apache Kafka on 127.0.0.1:19092 (scripts/kafka.sh)
//	make integration     # go test ./... then go test -tags integration ./integration/
//	make kafka-down
//
// Run alone: KAFKA_BROKERS=127.0.0.1:19092 go test -tags integration -v ./integration/
//
// On three brokers (make integration-cluster, or KAFKA_NODES=3 make kafka-up
// and KAFKA_BROKERS=$(scripts/kafka.sh addr) make integration) the suite also
// runs TestCluster*, which kill one broker and fail when KAFKA_BROKERS lists
// fewer than three. TestFailover* measure how long a killed worker's
// partitions pause, per group protocol (make failover); make integration
// leaves them out.
//
// Tests that stop the broker fail when KAFKA_BROKERS is not the
// broker of scripts/kafka.sh. INTEGRATION_LOGS=1 logs the binaries' output
// even when a test passes (it is always logged when one fails).
package integration
