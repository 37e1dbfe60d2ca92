#!/bin/bash
# Installs what the end-to-end tests and benchmarks drive the server with:
#   .tools/bin/perf_analyzer  Triton's load generator, from the tritonclient 2.41.0 wheel
#                             (PyPI's perf-analyzer package is a placeholder)
#   libb64-0d                 perf_analyzer's one system dependency (Debian; only as root)
#   chromium, chromium-driver the browser page's headless test (Debian; only as root)
#   curl                      the README's REST examples (Debian; only as root)
#   protobuf-compiler-grpc, libgrpc++-dev, cmake, g++, pkg-config
#                             the C++ client example (Debian; only as root)
#   nodejs, npm               the Node client example, if no node is installed (Debian)
#   clients/node/node_modules @grpc/grpc-js and @grpc/proto-loader (npm ci, from the lock file)
# Idempotent; tests that need a missing piece skip and name it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
tools=.tools
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  packages=(libb64-0d chromium chromium-driver curl openssl
            protobuf-compiler-grpc libgrpc++-dev protobuf-compiler libprotobuf-dev cmake g++ pkg-config)
  command -v node >/dev/null || packages+=(nodejs npm)
  for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
fi
if command -v npm >/dev/null && [ ! -d clients/node/node_modules ]; then
  (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -x "$tools/bin/perf_analyzer.real" ]; then
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --no-deps --only-binary=:all: -d "$tmp" "tritonclient==2.41.0"
  mkdir -p "$tools/bin"
  unzip -q -o -j "$tmp"/tritonclient-2.41.0-*.whl '*/data/bin/perf_analyzer' -d "$tools/bin"
  mv "$tools/bin/perf_analyzer" "$tools/bin/perf_analyzer.real"
  chmod +x "$tools/bin/perf_analyzer.real"
  rm -rf "$tmp"
fi
# perf_analyzer links libcudart even for CPU-only use; the nvidia-cuda-runtime wheel has it.
cudart=$("$venv/bin/python" -c 'import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], "lib"))')
printf '#!/bin/bash\nexport LD_LIBRARY_PATH=%s:${LD_LIBRARY_PATH:-}\nexec %s "$@"\n' \
  "$(realpath "$cudart")" "$(realpath "$tools/bin/perf_analyzer.real")" > "$tools/bin/perf_analyzer"
chmod +x "$tools/bin/perf_analyzer"
echo "tools ready: $tools/bin/perf_analyzer"
