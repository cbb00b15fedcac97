"""The fast ONNX Runtime LLM graph (onnxruntime-genai's layout) inside an Artifact.

A directory written by onnxruntime-genai's model builder holds ``genai_config.json``,
``model.onnx`` (+ ``model.onnx.data``) and the tokenizer; ours also holds the source's
``config.json`` and ``generation_config.json`` (context length, vocabulary size, end
tokens) and, once saved, ``compress.json``. Stock ``onnxruntime_genai.Model(directory)``
loads it.

`GenaiCausalLM` wraps such a directory two ways:

* called with ``input_ids`` and ``attention_mask`` it returns logits for every position
  of whole windows, from a plain ``onnxruntime.InferenceSession`` fed an empty past
  (zero-length ``past_key_values.*`` inputs), so `compress.evaluate.compare` and
  `perplexity` measure it with the same code and windows as every other variant;
* `generator(...)` gives onnxruntime-genai's own Generator (greedy), which is what a
  user of this graph runs and what the ``ort-genai`` bench backend times.

Each is opened on first use, so a process that only times generation never holds the
InferenceSession's copy of the weights, and one that only measures quality never
holds the genai model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from .errors import UserError

GENAI_CONFIG = "genai_config.json"


def is_genai_directory(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).is_dir() and (Path(path) / GENAI_CONFIG).is_file()


def require_genai():
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise UserError("the fast ONNX Runtime graph needs onnxruntime-genai: pip install 'compress[cpu]' "
                        "(onnxruntime-genai==0.15.2)") from None
    return og


def read_genai_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / GENAI_CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is missing or not valid JSON ({exc}); rebuild the model with "
                        "`compress export ort-genai`") from None


class GenaiCausalLM:
    """A causal LM in onnxruntime-genai's layout, held in a directory (owned: removed with this object)."""

    def __init__(self, directory: str | os.PathLike, threads: int | None = None, owned: bool = True):
        self.directory = Path(directory)
        self.threads = threads
        self._session = None
        self._og_model = None
        self._genai_config: dict[str, Any] | None = None
        if owned:
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    @classmethod
    def new_directory(cls, **kwargs) -> "GenaiCausalLM":
        return cls(tempfile.mkdtemp(prefix="compress-genai-"), **kwargs)

    # ------------------------------------------------------------------ description

    @property
    def genai_config(self) -> dict[str, Any]:
        if self._genai_config is None:
            self._genai_config = read_genai_config(self.directory)
        return self._genai_config

    @property
    def decoder(self) -> dict[str, Any]:
        return self.genai_config["model"]["decoder"]

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.decoder.get("filename", "model.onnx")

    @property
    def config(self) -> dict[str, Any]:
        """What the bench and the checks read: vocab size and context length (from genai_config.json)."""
        model = self.genai_config["model"]
        return {"vocab_size": model["vocab_size"], "max_position_embeddings": model["context_length"],
                "eos_token_id": model.get("eos_token_id")}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir()
                   if p.is_file() and (p.suffix == ".onnx" or p.name.endswith((".onnx.data", ".onnx_data"))))

    # ------------------------------------------------------------------ whole windows (quality)

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        return self._session

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        """Logits (batch, length, vocab) as a float32 torch tensor; the past is empty, so whole windows run at once."""
        import numpy as np
        import torch

        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.detach().cpu().numpy().astype(np.int64)
        decoder = self.decoder
        feeds = {"input_ids": ids, "attention_mask": mask}
        empty = np.zeros((ids.shape[0], decoder["num_key_value_heads"], 0, decoder["head_size"]), dtype=np.float32)
        for item in self.session.get_inputs():
            if item.name.startswith("past_key_values"):
                feeds[item.name] = empty
        logits = self.session.run(["logits"], feeds)[0]
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))

    # ------------------------------------------------------------------ token by token (onnxruntime-genai)

    @property
    def og_model(self):
        if self._og_model is None:
            og = require_genai()
            config = og.Config(str(self.directory))
            if self.threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": int(self.threads)}}}}))
            self._og_model = og.Model(config)
        return self._og_model

    def generator(self, max_length: int):
        """A greedy onnxruntime-genai Generator whose key/value buffers hold `max_length` tokens."""
        og = require_genai()
        params = og.GeneratorParams(self.og_model)
        params.set_search_options(max_length=int(max_length), do_sample=False)
        return og.Generator(self.og_model, params)

    def generate_greedy(self, ids, new_tokens: int) -> list[int]:
        """`new_tokens` greedy ids after the prompt ids (a (1, n) tensor or a list), no stop at EOS."""
        import numpy as np

        prompt = np.asarray(ids, dtype=np.int32).reshape(1, -1)
        gen = self.generator(prompt.shape[1] + new_tokens)
        gen.append_tokens(prompt)
        out = []
        for _ in range(new_tokens):
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        return out

    # ------------------------------------------------------------------ artifact plumbing

    def eval(self) -> "GenaiCausalLM":  # torch-like no-op, so callers can treat every model alike
        return self

    def release(self) -> None:
        """Close both sessions and forget the config (after the files changed, or to free memory)."""
        self._session = None
        self._og_model = None
        self._genai_config = None

    def __deepcopy__(self, memo) -> "GenaiCausalLM":
        target = Path(tempfile.mkdtemp(prefix="compress-genai-"))
        shutil.copytree(self.directory, target, dirs_exist_ok=True)
        return GenaiCausalLM(target, threads=self.threads)

    def __repr__(self) -> str:
        return f"GenaiCausalLM({str(self.directory)!r})"


def write_genai_directory(artifact, directory: Path) -> None:
    """Artifact writer: every file of the genai directory (graph, genai config, tokenizer, configs)."""
    model = artifact.model
    if not isinstance(model, GenaiCausalLM):
        raise TypeError(f"write_genai_directory needs a GenaiCausalLM, got {type(model).__name__}")
    from .onnx_utils import copy_files

    copy_files(model.directory, directory)


def is_genai(artifact) -> bool:
    return isinstance(artifact.model, GenaiCausalLM)
