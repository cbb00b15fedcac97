"""The ``llamacpp`` backend: a .gguf file run by llama.cpp through llama-cpp-python, on the CPU.

Chosen automatically for a .gguf file (an output of ``compress export gguf``
or any other GGUF). What it measures, like the other backends: load time,
prefill (the prompt in one batch) and decode (one token per step, greedy,
llama.cpp's key/value cache), peak RSS of the measuring process and the file's
size. Quality uses the same windows and code as every variant: the model
returns logits for every position of a window (llama.cpp's ``logits_all``).

Its tokenizer is llama.cpp's own, read from the file, so a GGUF is measured
with the tokenizer it ships; the quality run still requires it to have the
base's vocabulary and scores every variant on the base's token ids.

Threads: ``settings.threads``, or every core this process may use (llama-cpp-
python's own default is half of them, which would not be the protocol's
"all cores"). The key/value cache is sized to what the run needs (llama.cpp
allocates it up front, and a cache for the model's whole context would count
against its peak memory).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .backends import Backend, Runner, register

DEFAULT_POSITIONS = 512  # context when the caller reserves nothing


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LlamaCppRunner(Runner):
    """Greedy decoding in llama.cpp: a token is an int, the state lives in llama.cpp's context."""

    def __init__(self, model, device: str = "cpu"):
        super().__init__(model, device)
        self._session = None
        self._positions = 0

    def reserve(self, positions: int) -> None:
        """Open the context (this loads the weights) with room for `positions` tokens."""
        if self._session is None or positions > self._positions:
            self._session = self.model.session(positions)
            self._positions = positions

    def to_device(self, ids):
        return ids

    def prefill(self, ids):
        ids = [int(i) for i in (ids[0].tolist() if hasattr(ids, "tolist") else ids)]
        if self._session is None or len(ids) >= self._positions:
            self.reserve(max(DEFAULT_POSITIONS, len(ids) + DEFAULT_POSITIONS))
        return self._session.prefill(ids), len(ids)

    def step(self, token, state):
        if state + 1 > self._positions:
            raise UserError(f"llama.cpp's context holds {self._positions} positions and this generation needs more; "
                            "reserve them first (Runner.reserve)")
        return self._session.step(int(token)), state + 1


class LlamaCppBackend(Backend):
    name = "llamacpp"
    devices = ("cpu",)
    priority = 20

    def check(self, device, dtype, path):
        super().check(device, dtype, path)
        from ..llamacpp import is_gguf_file, require_llama_cpp

        require_llama_cpp()
        if dtype != "float32":
            raise UserError(f"--dtype {dtype} applies to the pytorch backend only; a GGUF file runs in the types it "
                            "was written in (choose them with compress export gguf --type)")
        if path is not None and not is_gguf_file(path):
            raise UserError(f"{path} is not a .gguf file, which the llamacpp backend runs; export it first: "
                            f"compress export gguf {path} --type q8_0 -o OUT.gguf")

    def handles(self, path):
        from ..llamacpp import is_gguf_file

        return is_gguf_file(path)

    def context_length(self, path):
        from ..llamacpp import gguf_config

        return gguf_config(path)["max_position_embeddings"] if path and Path(path).is_file() else None

    def load_tokenizer(self, path):
        from ..llamacpp import LlamaCppTokenizer

        return LlamaCppTokenizer(path)

    def load(self, path, device, dtype, io_binding, threads):
        from ..llamacpp import LlamaCppCausalLM

        return LlamaCppCausalLM(path, threads=threads or all_cores())

    def runner(self, model, device):
        return LlamaCppRunner(model, device)

    def config(self, model):
        return model.config

    def parameters(self, model):
        """Every value the file's tensors hold (a tied output once); zeros inside quantized blocks are not counted."""
        return {"parameters": model.n_params(), "nonzero_parameters": None}


register(LlamaCppBackend())
