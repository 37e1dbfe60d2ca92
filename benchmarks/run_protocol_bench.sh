#!/bin/bash
# Protocol-layer figures for benchmarks/RESULTS.md: cold start of the bundled repository, and
# perf_analyzer on add_sub (gRPC, batch 1, no dynamic batching yet) at concurrency 1 and 8,
# unary and streaming. Run from the repository root: `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PA=.tools/bin/perf_analyzer
REPO=model_repository
PORT=${PORT:-18501}
[ -f "$REPO/.built" ] || { $PY -m tensorgate.examples.build "$REPO" && touch "$REPO/.built"; }
echo "== machine: $(nproc) cores, $(uname -m), $($PY -c 'import platform; print(platform.python_version())')"
echo "== cold start (bundled repository: add_sub onnx, cnn torchscript, text_stats python)"
$PY benchmarks/cold_start.py "$REPO" 5
$PY -m tensorgate serve --model-repository "$REPO" --host 127.0.0.1 --grpc-port "$PORT" \
  > /tmp/tensorgate-bench.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  $PY -c "import tritonclient.grpc as g, sys; sys.exit(0 if g.InferenceServerClient('127.0.0.1:$PORT').is_server_ready() else 1)" 2>/dev/null && break
  sleep 0.1
done
for mode in unary streaming; do
  for c in 1 8; do
    extra=""; [ $mode = streaming ] && extra="--streaming"
    echo "== perf_analyzer add_sub $mode c=$c"
    echo "\$ $PA -m add_sub -i grpc -u 127.0.0.1:$PORT --concurrency-range $c --measurement-interval 5000 $extra"
    $PA -m add_sub -i grpc -u 127.0.0.1:$PORT --concurrency-range $c \
      --measurement-interval 5000 $extra | grep -E "Throughput|p50|p99|Avg gRPC|Server:|Inference count|queue|compute" || true
  done
done
