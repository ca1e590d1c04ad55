# protoc-gen-go-kafka: gRPC services over Kafka. `make help` lists the targets.
# A newcomer needs two: `make run` and `make test`.

GO      ?= go
BUF     := $(GO) tool -modfile=tools/go.mod buf
STATICCHECK := $(GO) tool -modfile=$(CURDIR)/tools/go.mod staticcheck
BIN     := bin
CMDS    := echo echo-gateway echo-worker echo-server echo-publish echo-call

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run
run: ## run the all-in-one echo example on an embedded Kafka broker (gRPC on 127.0.0.1:7151)
	@# Built, then run: `go run` exits 1 on Ctrl-C, and make would call a
	@# clean stop a failure.
	$(GO) build -o $(BIN)/echo ./example/cmd/echo
	$(BIN)/echo

.PHONY: test
# The Kafka clients every test runs on (KAFKA_CLIENT switches the runtime's
# end-to-end tests and the example binaries; the seam's conformance suite runs
# both in every pass).
KAFKA_CLIENTS ?= confluent franz

test: ## run every test under the race detector, on the embedded broker, once per Kafka client
	@for c in $(KAFKA_CLIENTS); do echo "== KAFKA_CLIENT=$$c"; KAFKA_CLIENT=$$c $(GO) test -race -count=1 -timeout 20m ./... || exit 1; done
	@# The heap bound of an idle fetch caller: the race detector's shadow
	@# memory distorts heap figures, so it runs once more without it.
	@for c in $(KAFKA_CLIENTS); do echo "== KAFKA_CLIENT=$$c, without the race detector: heap bounds"; \
	  KAFKA_CLIENT=$$c $(GO) test -count=1 -run '^TestFetchIdleCallerHeap$$' -v ./runtime/ || exit 1; done

.PHONY: purego
# The test kit runs on franz, its default without cgo (and the only client
# it can make then: KAFKA_CLIENT=confluent would fail its tests); its test
# TestNoConfluentWithoutCgo checks that no confluent package (nor any with cgo
# files) is among its dependencies then.
purego: ## show that a program importing only runtime, runtime/franz and runtime/embedded, and the test kit, build and run without cgo
	CGO_ENABLED=0 $(GO) build -o /dev/null ./example/internal/purego
	CGO_ENABLED=0 $(GO) run ./example/internal/purego
	KAFKA_CLIENT=franz CGO_ENABLED=0 $(GO) test -count=1 ./runtime/kafkarpctest/...

# Apache Kafka for the integration suite: scripts/kafka.sh fetches the broker
# with Maven into .cache/kafka (KAFKA_VERSION, KAFKA_PORT: see the script).
KAFKA   := scripts/kafka.sh
# Bounds the fault tests of integration/ (they stop and start the broker and
# the example binaries; a few minutes on 2 cores).
INTEGRATION_TIMEOUT ?= 15m
# The tests of integration/ that `make integration` leaves out: TestFailover*
# (the failover measurement, `make failover`), and TestCluster* (they kill
# one broker of three) unless KAFKA_BROKERS lists three brokers or more.
INTEGRATION_SKIP_ALWAYS := ^TestFailover
INTEGRATION_SKIP_SMALL  := ^(TestFailover|TestCluster)

.PHONY: kafka-up
kafka-up: ## start Apache Kafka 4.x (KRaft): one node on 127.0.0.1:19092, or KAFKA_NODES=3 three on 127.0.0.1:19192-19194 (needs Java 17+ and Maven); reuses a running one
	@$(KAFKA) up

.PHONY: kafka-down
kafka-down: ## stop the broker of kafka-up (KAFKA_NODES=3: the cluster) and delete its storage
	@$(KAFKA) down

.PHONY: integration
integration: ## run every test, then the fault tests of integration/, on Apache Kafka (kafka-up's broker, or KAFKA_BROKERS)
	@brokers="$${KAFKA_BROKERS:-$$($(KAFKA) addr)}" && [ -n "$$brokers" ] || exit 1; \
	  skip='$(INTEGRATION_SKIP_SMALL)'; \
	  if [ "$$(echo "$$brokers" | tr ',' '\n' | wc -l)" -ge 3 ]; then skip='$(INTEGRATION_SKIP_ALWAYS)'; fi; \
	  for c in $(KAFKA_CLIENTS); do \
	    echo "== KAFKA_CLIENT=$$c: go test on Apache Kafka at $$brokers"; \
	    KAFKA_CLIENT=$$c KAFKA_BROKERS="$$brokers" $(GO) test -race -count=1 -timeout 20m ./... || exit 1; \
	    echo "== KAFKA_CLIENT=$$c: fault tests (integration/) on Apache Kafka at $$brokers"; \
	    KAFKA_CLIENT=$$c KAFKA_BROKERS="$$brokers" $(GO) test -race -count=1 -tags integration -timeout $(INTEGRATION_TIMEOUT) -skip "$$skip" -v ./integration/ || exit 1; \
	  done

.PHONY: integration-cluster
# The cluster of KAFKA_NODES=3 scripts/kafka.sh: its own ports (19192-19197)
# and storage, so it runs beside kafka-up's single node. Stopped at the end
# unless it was running before.
integration-cluster: ## start a three-broker Apache Kafka cluster, run `make integration` on it (with the tests that kill a broker), stop it
	@was=$$(KAFKA_NODES=3 $(KAFKA) status >/dev/null 2>&1 && echo yes); \
	  KAFKA_NODES=3 $(KAFKA) up >/dev/null || exit 1; \
	  KAFKA_BROKERS=$$(KAFKA_NODES=3 $(KAFKA) addr) $(MAKE) --no-print-directory integration; rc=$$?; \
	  if [ -z "$$was" ]; then KAFKA_NODES=3 $(KAFKA) down; fi; exit $$rc

.PHONY: integration-cluster-tests
integration-cluster-tests: ## only the tests of integration/ that kill one broker of three (TestCluster*), on KAFKA_BROKERS, per client
	@[ -n "$$KAFKA_BROKERS" ] || { echo "KAFKA_BROKERS is not set (KAFKA_NODES=3 make kafka-up; KAFKA_BROKERS=\$$(scripts/kafka.sh addr))"; exit 1; }; \
	  for c in $(KAFKA_CLIENTS); do \
	    echo "== KAFKA_CLIENT=$$c: cluster tests (integration/) on Apache Kafka at $$KAFKA_BROKERS"; \
	    KAFKA_CLIENT=$$c $(GO) test -race -count=1 -tags integration -timeout $(INTEGRATION_TIMEOUT) -run '^TestCluster' -v ./integration/ || exit 1; \
	  done

.PHONY: failover
failover: ## measure the pause of a SIGKILLed worker's partitions, classic vs consumer (KIP-848) group protocol, per client (Kafka 4.x: kafka-up's, or KAFKA_BROKERS)
	@brokers="$${KAFKA_BROKERS:-$$($(KAFKA) addr)}" && [ -n "$$brokers" ] || exit 1; \
	  mkdir -p $(BIN); \
	  for c in $(KAFKA_CLIENTS); do \
	    echo "== KAFKA_CLIENT=$$c: failover on Apache Kafka at $$brokers"; \
	    KAFKA_CLIENT=$$c KAFKA_BROKERS="$$brokers" $(GO) test -race -count=1 -tags integration -timeout $(INTEGRATION_TIMEOUT) -run '^TestFailover' -v ./integration/ > $(BIN)/failover-$$c.log 2>&1; rc=$$?; \
	    grep -E 'failover: |calls, [0-9]+ attempts|saturated|^(--- |ok|FAIL)' $(BIN)/failover-$$c.log; \
	    [ $$rc -eq 0 ] || { tail -n 80 $(BIN)/failover-$$c.log; exit 1; }; \
	  done

.PHONY: soak
# The soak (internal/soak): SOAK_DURATION of mixed load on Apache Kafka while
# a worker is SIGKILLed and restarted on a schedule; ends with one summary
# line, non-zero on a lost or duplicated execution or a call past its
# deadline. SOAK_FLAGS adds flags (e.g. -outcome-topic=false; `bin/soak -h`).
SOAK_DURATION ?= 10m
soak: ## soak for SOAK_DURATION (default 10m) on Apache Kafka (KAFKA_BROKERS, or kafka-up's broker, started if none) with KAFKA_CLIENT's client
	@brokers="$${KAFKA_BROKERS:-}"; \
	  if [ -z "$$brokers" ]; then $(KAFKA) up >&2 && brokers="$$($(KAFKA) addr)" || exit 1; fi; \
	  $(GO) build -o $(BIN)/soak ./internal/soak && \
	  $(BIN)/soak -brokers "$$brokers" -client "$${KAFKA_CLIENT:-confluent}" -duration $(SOAK_DURATION) $(SOAK_FLAGS)

.PHONY: build
build: ## build the plugin and the example binaries into bin/
	$(GO) build -o $(BIN)/protoc-gen-go-kafka ./cmd/protoc-gen-go-kafka
	for c in $(CMDS); do $(GO) build -o $(BIN)/$$c ./example/cmd/$$c || exit 1; done

.PHONY: generate
generate: ## regenerate the checked-in Go code from the protos with buf (local plugins only)
	$(BUF) generate

.PHONY: check-generated
check-generated: generate ## fail if `buf generate` changes the tree
	@git diff --exit-code -- . ':(exclude)go.sum' || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- '*.go'); \
	  if [ -n "$$untracked" ]; then echo "buf generate wrote files that are not checked in: $$untracked"; exit 1; fi

.PHONY: lint
lint: ## go vet, staticcheck (pinned in tools/go.mod), gofmt and buf lint
	$(GO) vet ./...
	$(GO) vet -tags integration ./integration/
	cd bench && $(GO) vet .
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags integration ./integration/
	cd bench && $(STATICCHECK) .
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(BUF) lint

.PHONY: bench
bench: ## RPC against its Kafka floor, plain gRPC and Watermill, interleaved in one run (embedded broker, or KAFKA_BROKERS); markdown report
	cd bench && $(GO) run . $(BENCHFLAGS)

.PHONY: bench-go
bench-go: ## the Go benchmarks: unary p50 against its floor per client, the clients' floors, fanout
	@for c in $(KAFKA_CLIENTS); do KAFKA_CLIENT=$$c $(GO) test -run '^$$' -bench UnaryVsFloor -benchtime 3000x ./runtime/ || exit 1; done
	$(GO) test -run '^$$' -bench Clients -benchtime 5000x ./internal/kafkatest/

.PHONY: fuzz
fuzz: ## fuzz the record and header decoders and the key_field reader for 20 s each
	for f in FuzzDecode FuzzReplyStatus FuzzTimeout; do $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s ./wire/ || exit 1; done
	$(GO) test -run '^$$' -fuzz '^FuzzKeyOf$$' -fuzztime 20s ./runtime/

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
