"""ONNX models inside an Artifact: a directory on disk plus a lazily opened ONNX Runtime model.

An exported model lives in a private temporary directory (model.onnx, config,
generation config, tokenizer), exactly the layout `ORTModelForCausalLM.from_pretrained`
reads. `OnnxCausalLM` wraps that directory: calling it with input_ids and
attention_mask returns logits (so `compress.evaluate.compare` and `perplexity`
work unchanged), `generate` delegates to optimum, and copying it copies the
directory, so a pass that works on a copy never touches its input.
`write_onnx_directory` is the Artifact writer that saves it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from .errors import UserError
from .genai_model import GENAI_CONFIG

ONNX_FILE = "model.onnx"
_ONNX_GLOBS = ("*.onnx", "*.onnx_data", "*.onnx.data")


def _private_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def onnx_model_files(directory: Path) -> list[Path]:
    return sorted(p for pattern in _ONNX_GLOBS for p in Path(directory).glob(pattern))


def ort_runtime_has_op(op_type: str) -> bool:
    """Whether the installed ONNX Runtime knows an operator (contrib ops included)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as C
    except ImportError:
        return False
    getter = getattr(C, "get_all_operator_schema", None)
    if getter is None:  # builds without schema introspection: assume yes, the session will tell
        return True
    return any(s.name == op_type for s in getter())


def require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("ONNX passes need ONNX Runtime: pip install 'compress[cpu]' (or onnxruntime-gpu)") from None
    from .progress import quiet_onnxruntime

    quiet_onnxruntime()


class OnnxCausalLM:
    """A causal LM exported to ONNX, held in a directory this object owns.

    `provider` is an ONNX Runtime execution provider ("CPUExecutionProvider",
    "CUDAExecutionProvider"); `threads` sets intra-op threads (None: ORT's default).
    """

    def __init__(self, directory: str | os.PathLike, provider: str = "CPUExecutionProvider",
                 threads: int | None = None, owned: bool = True):
        self.directory = Path(directory)
        self.provider = provider
        self.threads = threads
        self._ort = None
        if owned:
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    @classmethod
    def new_directory(cls, **kwargs) -> "OnnxCausalLM":
        return cls(_private_dir("compress-onnx-"), **kwargs)

    @property
    def onnx_path(self) -> Path:
        return self.directory / ONNX_FILE

    @property
    def config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.directory)

    @property
    def ort_model(self):
        """The ORTModelForCausalLM, opened on first use."""
        if self._ort is None:
            require_onnxruntime()
            import onnxruntime as ort
            from optimum.onnxruntime import ORTModelForCausalLM

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._ort = ORTModelForCausalLM.from_pretrained(
                self.directory, provider=self.provider, session_options=options
            )
        return self._ort

    def reload(self) -> None:
        """Forget the open session (after the files changed)."""
        self._ort = None

    def __call__(self, input_ids, attention_mask=None, **kwargs) -> Any:
        import torch

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.ort_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def generate(self, *args, **kwargs):
        return self.ort_model.generate(*args, **kwargs)

    def eval(self) -> "OnnxCausalLM":  # torch-like no-op, so callers can treat both alike
        return self

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in onnx_model_files(self.directory))

    def __deepcopy__(self, memo) -> "OnnxCausalLM":
        target = _private_dir("compress-onnx-")
        shutil.copytree(self.directory, target, dirs_exist_ok=True)
        return type(self)(target, provider=self.provider, threads=self.threads)  # an OnnxEncoder stays one

    def __repr__(self) -> str:
        return f"OnnxCausalLM({str(self.directory)!r}, provider={self.provider!r})"


def copy_files(source: Path, target: Path) -> None:
    """Copy the files (not subdirectories) of `source` into `target`."""
    for item in Path(source).iterdir():
        if item.is_file():
            shutil.copy2(item, Path(target) / item.name)


def write_onnx_directory(artifact, directory: Path) -> None:
    """Artifact writer: model.onnx (+ external data), config, generation config, tokenizer.

    The result loads with `ORTModelForCausalLM.from_pretrained(directory)`.
    """
    model = artifact.model
    if not isinstance(model, OnnxCausalLM):
        raise TypeError(f"write_onnx_directory needs an OnnxCausalLM, got {type(model).__name__}")
    copy_files(model.directory, directory)
    if artifact.tokenizer is not None:
        artifact.tokenizer.save_pretrained(directory)


def is_onnx(artifact) -> bool:
    return isinstance(artifact.model, OnnxCausalLM)


def is_onnx_directory(ref: str) -> bool:
    """An optimum ONNX export (an onnxruntime-genai directory, which also holds model.onnx, is not one)."""
    path = Path(str(ref)).expanduser()
    return path.is_dir() and (path / ONNX_FILE).is_file() and not (path / GENAI_CONFIG).is_file()


def load_onnx_artifact(ref: str):
    """An Artifact for an ONNX directory (an output of `compress export onnx`); the directory is only read."""
    from transformers import AutoTokenizer

    from .artifact import Artifact
    from .saving import read_manifest

    path = Path(str(ref)).expanduser().resolve()
    require_onnxruntime()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not load the tokenizer of ONNX model {path} ({first}); the directory needs one") from None
    from .encoders.architecture import is_encoder_config
    from .encoders.loading import pooling_of, read_config

    encoder = is_encoder_config(read_config(path))
    if encoder:
        from .encoders.onnx import OnnxEncoder

        model = OnnxEncoder(path, owned=False)
    else:
        model = OnnxCausalLM(path, owned=False)
    artifact = Artifact(model=model, tokenizer=tokenizer,
                        source={"kind": "onnx", "ref": str(path), "path": str(path)}, source_path=path,
                        writer=write_onnx_directory, pooling=pooling_of(path) if encoder else None)
    manifest = read_manifest(path)
    if manifest:
        artifact.source["derived_from"] = manifest.get("source")
        artifact.passes = list(manifest.get("passes", []))
    return artifact
