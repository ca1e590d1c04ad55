# protoc-gen-go-kafka: gRPC services over Kafka. `make help` lists the targets.
# A newcomer needs two: `make run` and `make test`.

GO      ?= go
BUF     := $(GO) tool -modfile=tools/go.mod buf
BIN     := bin
CMDS    := echo echo-gateway echo-worker echo-server

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run
run: ## run the all-in-one echo example on an embedded Kafka broker (gRPC on 127.0.0.1:7151)
	$(GO) run ./example/cmd/echo

.PHONY: test
test: ## run every test under the race detector, on the embedded broker
	$(GO) test -race -count=1 ./...

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
lint: ## go vet, gofmt and buf lint
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(BUF) lint

.PHONY: bench
bench: ## unary latency through gateway and worker against its floor (ratios in the same run)
	$(GO) test -run '^$$' -bench . -benchtime 3000x ./runtime/ ./runtime/confluent/

.PHONY: fuzz
fuzz: ## fuzz the record and header decoders for 20 s each
	for f in FuzzRequestHeaders FuzzReplyStatus FuzzTimeout; do $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s ./runtime/ || exit 1; done

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
