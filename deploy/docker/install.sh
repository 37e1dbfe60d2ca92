#!/usr/bin/env bash
# Installs tensorgate into a virtual environment: the one install step of both images
# (Dockerfile, Dockerfile.cuda), and what `make test-deploy` runs in a fresh venv so that a
# broken step fails the test suite, not a later image build.
#
#   deploy/docker/install.sh VENV cpu|cuda
#
# TORCH_INDEX: the index of torch's wheels (PyTorch's CPU or CUDA 12.8 index by default);
# empty to take torch from pip's configured index.
set -euo pipefail
venv=${1:?usage: install.sh VENV cpu|cuda}
variant=${2:?usage: install.sh VENV cpu|cuda}
source_dir=$(cd "$(dirname "$0")/../.." && pwd)

case "$variant" in
  cpu) default_index=https://download.pytorch.org/whl/cpu; extras="torch,generation,otel" ;;
  cuda) default_index=https://download.pytorch.org/whl/cu128; extras="torch,generation,gpu,otel" ;;
  *) echo "install.sh: variant must be cpu or cuda, not '$variant'" >&2; exit 2 ;;
esac
index=${TORCH_INDEX-$default_index}

python3 -m venv "$venv"
pip=("$venv/bin/pip" install --no-cache-dir --quiet)
"${pip[@]}" --upgrade pip
if [ -n "$index" ]; then
  # torch first, from its own index: the same version, without the CUDA libraries on CPU.
  "${pip[@]}" --index-url "$index" torch==2.13.0
fi
"${pip[@]}" "$source_dir/protos/python" "$source_dir[$extras]"
if [ "$variant" = cuda ]; then
  # onnxruntime-gpu serves the same module as onnxruntime: only one may stay installed.
  "$venv/bin/pip" uninstall --yes --quiet onnxruntime
  "${pip[@]}" --force-reinstall --no-deps "onnxruntime-gpu>=1.18"
fi
"$venv/bin/tensorgate" --version
