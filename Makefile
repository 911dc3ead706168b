# Thin wrappers over go commands. `make test` is the README's test command and
# what CI runs (through .ci/run).

GO ?= go
STATICCHECK_VERSION ?= v0.8.2

.PHONY: run example test deps-test lint staticcheck fmt-check bench fuzz

## run: serve the HTTP API on 127.0.0.1:8080 with the in-process memory backend
run:
	$(GO) run ./cmd/eleva-redis serve

## test: install redis-server when missing (as root, with apt-get), then run every test with -race
## (and the bench harness's smoke test, which asserts no timing)
test: deps-test
	$(GO) test -race -count=1 -timeout 20m ./...
	cd bench && $(GO) test -count=1 -timeout 10m ./...

deps-test:
	@./scripts/ensure-test-deps.sh

## example: the PostgreSQL query cache example on 127.0.0.1:8081, on a throwaway PostgreSQL
## (installed with the test dependencies when missing); see examples/pgcache/README.md
example: deps-test
	$(GO) run ./examples/pgcache -dev

## lint: gofmt, go vet and staticcheck
lint: fmt-check staticcheck
	$(GO) vet ./...

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## bench: our backends vs the peer libraries on the same Redis, printed as a table of ratios
bench: deps-test
	cd bench && $(GO) run . $(BENCH_FLAGS)

## fuzz: run every fuzz target for FUZZTIME each (default 20s)
FUZZTIME ?= 20s
FUZZ_TARGETS = \
	./internal/keys:FuzzKey \
	./internal/seal:FuzzOpen \
	./ratelimit:FuzzClientIP \
	./cache:FuzzParseEntry ./cache:FuzzTagspec ./cache:FuzzLease \
	./notify:FuzzParseMeta ./notify:FuzzByStatus \
	./realtime:FuzzParseEventID ./realtime:FuzzParsePayload ./realtime:FuzzVerifyToken ./realtime:FuzzParsePresence \
	./tempdata:FuzzDecodeResponse ./tempdata:FuzzParseIdempotencyKey ./tempdata:FuzzParseToken ./tempdata:FuzzConsume \
	./internal/server:FuzzDecodeAllow ./internal/server:FuzzDecodePolicyAllow ./internal/server:FuzzLocks \
	./internal/server:FuzzTemp ./internal/server:FuzzTokens ./internal/server:FuzzIdempotency \
	./internal/server:FuzzSessions ./internal/server:FuzzCache ./internal/server:FuzzNotifications ./internal/server:FuzzRealtime \
	./analytics:FuzzRetryAfter ./analytics:FuzzEvent ./analytics:FuzzMetricName ./internal/server:FuzzAnalytics

fuzz: deps-test
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$name ($$pkg)"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg; \
	done
