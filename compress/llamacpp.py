"""GGUF models run by llama.cpp (through llama-cpp-python), shaped like the rest of the toolkit.

* `LlamaCppCausalLM`: a .gguf file, opened lazily. Called with ``input_ids``
  (a batch of windows) it returns logits for every position (llama.cpp's
  ``logits_all``), so `compress.evaluate.compare` and `perplexity` score it on
  the same windows with the same code as every other variant. `greedy` and the
  `LlamaCppSession` below drive it one token at a time (prefill, then steps)
  for timing and samples.
* `LlamaCppTokenizer`: llama.cpp's own tokenizer for a GGUF file, with the few
  methods the toolkit calls on a Hugging Face tokenizer (call, decode, get_vocab,
  bos/eos ids). The bench uses it for a .gguf variant, so a GGUF is measured
  with the tokenizer it ships.
* `write_gguf_file`: the Artifact writer of an exported GGUF (a file; its
  manifest goes beside it, see compress.saving).

Before llama.cpp is first used in a process, `require_llama_cpp` checks that
llama-cpp-python is installed and loads the CPU code that runs on this machine
(compress.llamacpp_runtime.ensure_cpu_backend); both failures are one line.
Every llama.cpp context opened here is closed before the interpreter exits
(seen here: a context left to be freed during interpreter shutdown crashed the
process with SIGSEGV after its work was done).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .errors import UserError

_open: "weakref.WeakSet[Any]" = weakref.WeakSet()  # every llama_cpp.Llama opened here, closed at exit


def require_llama_cpp():
    """The llama_cpp module with a CPU backend that runs here; one-line UserError otherwise."""
    from .llamacpp_runtime import ensure_cpu_backend
    from .llamacpp_runtime import require_llama_cpp as installed

    llama_cpp = installed()
    ensure_cpu_backend()  # also sends llama.cpp's log lines to our debug log (-v shows them)
    return llama_cpp


def open_llama(path: str | os.PathLike, **kwargs):
    """llama_cpp.Llama(path, verbose=False, **kwargs), closed before exit; a load failure is one line."""
    llama_cpp = require_llama_cpp()
    try:
        llm = llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"llama.cpp could not load {path} ({str(exc)[:200]}); run with -v for llama.cpp's own "
                        "messages") from None
    _open.add(llm)
    return llm


@atexit.register
def _close_all() -> None:
    for llm in list(_open):
        llm.close()


def is_gguf_file(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).is_file() and Path(path).suffix.lower() == ".gguf"


def gguf_config(path: str | os.PathLike) -> dict[str, Any]:
    """model_type, vocab_size and context length of a GGUF file, as the bench asks for them.

    Read by llama.cpp with only the vocabulary loaded (milliseconds; the gguf package's
    Python reader takes seconds to parse a 49k-token vocabulary).
    """
    llm = open_llama(path, vocab_only=True)
    try:
        meta = llm.metadata
        arch = meta.get("general.architecture", "?")
        context = meta.get(f"{arch}.context_length")
        return {"model_type": arch, "vocab_size": int(llm.n_vocab()),
                "max_position_embeddings": int(context) if context else None}
    finally:
        llm.close()


class LlamaCppCausalLM:
    """A GGUF model run by llama.cpp; `threads` sets its threads (None: llama-cpp-python's default)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, owned: bool = False):
        self.path = Path(path)
        self.threads = threads
        self._llm = None
        self._n_ctx = 0
        self._logits_all = False
        self._config: dict[str, Any] | None = None
        if owned:  # a private temporary file: removed with this object
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path.parent), True)

    @classmethod
    def new_file(cls, **kwargs) -> "LlamaCppCausalLM":
        return cls(Path(tempfile.mkdtemp(prefix="compress-gguf-")) / "model.gguf", owned=True, **kwargs)

    # ----------------------------------------------------------------- llama.cpp

    def open(self, n_ctx: int, logits_all: bool):
        """The llama_cpp.Llama over this file with at least `n_ctx` positions (reused when it fits)."""
        if self._llm is not None and self._n_ctx >= n_ctx and self._logits_all == logits_all:
            return self._llm
        self.close()
        n_ctx = max(int(n_ctx), 16)
        threads = self.threads or None
        # flash_attn: llama.cpp's own default ("auto") turns flash attention on for the CPU, llama-cpp-python's
        # turns it off. On: q8_0 decode +6% here, logits within KL 1e-6 of off (benchmarks/bench/README.md).
        self._llm = open_llama(self.path, n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512),
                               n_threads=threads, n_threads_batch=threads, logits_all=logits_all, flash_attn=True)
        self._n_ctx, self._logits_all = n_ctx, logits_all
        return self._llm

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = gguf_config(self.path)
        return self._config

    def n_params(self) -> int:
        """Values in the file's tensors, as llama.cpp counts them (a tied output once)."""
        llm = self._llm if self._llm is not None else self.open(16, logits_all=False)
        return int(require_llama_cpp().llama_model_n_params(llm.model))

    def window_logits(self, ids: list[int]) -> np.ndarray:
        """Logits (len(ids), vocab) for every position of one window, from an empty cache."""
        llm = self.open(len(ids), logits_all=True)
        llm.reset()
        llm.eval(list(map(int, ids)))
        return np.array(llm.scores[: len(ids)], dtype=np.float32, copy=True)

    def __call__(self, input_ids, attention_mask=None, **kwargs) -> Any:
        """Logits for every position of each row of `input_ids` (a (batch, length) tensor), like a HF model."""
        import torch

        if attention_mask is not None and not bool(attention_mask.all()):
            raise UserError("the llama.cpp model scores whole windows only (no padding in the attention mask)")
        rows = [torch.from_numpy(self.window_logits(row.tolist())) for row in input_ids.cpu()]
        return SimpleNamespace(logits=torch.stack(rows))

    def session(self, n_ctx: int) -> "LlamaCppSession":
        return LlamaCppSession(self.open(n_ctx, logits_all=False))

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        """Greedy continuation of `ids` (no stop at EOS)."""
        s = self.session(len(ids) + new_tokens)
        token = s.prefill(ids)
        out = [token]
        for _ in range(new_tokens - 1):
            token = s.step(token)
            out.append(token)
        return out

    def eval(self) -> "LlamaCppCausalLM":  # torch-like no-op, so callers can treat every model alike
        return self

    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def __deepcopy__(self, memo) -> "LlamaCppCausalLM":
        copy = LlamaCppCausalLM.new_file(threads=self.threads)
        shutil.copy2(self.path, copy.path)
        return copy

    def __getstate__(self):
        raise TypeError("a LlamaCppCausalLM holds a llama.cpp context and is not picklable; pass its path instead")

    def __repr__(self) -> str:
        return f"LlamaCppCausalLM({str(self.path)!r})"


class LlamaCppSession:
    """Greedy decoding with llama.cpp's key/value cache: prefill a prompt, then one token per step."""

    def __init__(self, llm):
        import llama_cpp

        self.llm = llm
        self._lib = llama_cpp
        self._n_vocab = llm.n_vocab()

    def _last_argmax(self) -> int:
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).argmax())

    def prefill(self, ids: list[int]) -> int:
        self.llm.reset()
        self.llm.eval(list(map(int, ids)))
        return self._last_argmax()

    def step(self, token: int) -> int:
        self.llm.eval([int(token)])
        return self._last_argmax()


class LlamaCppTokenizer:
    """llama.cpp's tokenizer for a GGUF file, answering the calls the toolkit makes on a HF tokenizer."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._llm = open_llama(self.path, vocab_only=True)
        self.bos_token_id = _token_or_none(self._llm.token_bos())
        self.eos_token_id = _token_or_none(self._llm.token_eos())
        self.pad_token_id = None
        self.name_or_path = str(self.path)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # parse_special: added special tokens written in the text become their ids, as transformers does.
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)

    def __call__(self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None, **_):
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.tensor([ids], dtype=torch.long)}
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens: bool = False, **_) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        return self._llm.detokenize(ids, special=not skip_special_tokens).decode("utf-8", errors="replace")

    def get_vocab(self) -> dict[str, int]:
        """{token text: id}, as the file stores the tokens (byte-level strings, like transformers' get_vocab)."""
        llama_cpp = require_llama_cpp()
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        texts = (llama_cpp.llama_vocab_get_text(vocab, i) for i in range(self._llm.n_vocab()))
        return {t.decode("utf-8", errors="replace"): i for i, t in enumerate(texts)}

    def __len__(self) -> int:
        return self._llm.n_vocab()


def _token_or_none(token: int) -> int | None:
    return None if token is None or token < 0 else int(token)


def write_gguf_file(artifact, path: Path) -> None:
    """Artifact writer: the exported GGUF, copied to `path` (a temporary name that compress.saving renames)."""
    model = artifact.model
    if not isinstance(model, LlamaCppCausalLM):
        raise TypeError(f"write_gguf_file needs a LlamaCppCausalLM, got {type(model).__name__}")
    shutil.copyfile(model.path, path)


write_gguf_file.file_suffix = ".gguf"  # one file, manifest beside it (compress.saving.save_file_artifact)
