"""Write outputs atomically, with a manifest that records their provenance.

An output is built in a hidden sibling directory and renamed into place only
when complete, so a failed or interrupted run never leaves a half-written
directory where a good one is expected, and an existing output survives intact
until its replacement is whole.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .artifact import Artifact
from .errors import UserError

MANIFEST_NAME = "compress.json"
MANIFEST_FORMAT = "compress-manifest/1"

_VERSIONED_PACKAGES = (
    "compress",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "bitsandbytes",
    "torch-pruning",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def check_output_path(out: str | os.PathLike, force: bool, source_path: Path | None = None) -> Path:
    """Refuse outputs that would overwrite the input or an existing result."""
    out = Path(out).expanduser().resolve()
    if source_path is not None:
        src = Path(source_path).resolve()
        src_dir = src if src.is_dir() else src.parent
        if out == src_dir or _is_within(out, src_dir) or _is_within(src_dir, out):
            raise UserError(
                f"output {out} overlaps the input model at {src}; choose an output directory elsewhere"
            )
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is a file; choose a directory path")
    if out.exists() and not force:
        raise UserError(f"output directory {out} already exists; pass --force to replace it")
    return out


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary directory is
    removed and an existing `out` is left untouched.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and not force:
        raise UserError(f"output directory {out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        # Swap in two renames; the old output is deleted only once the new one is in place.
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def manifest_for(artifact: Artifact) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": artifact.source,
        "passes": artifact.passes,
        "metrics": artifact.metrics,
        "versions": library_versions(),
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (Path(directory) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"manifest {path} is not valid JSON ({exc}); delete it or re-create the output") from None


def write_hf_checkpoint(artifact: Artifact, directory: Path) -> None:
    """A plain Hugging Face directory: safetensors weights, config, tokenizer; and the runtime blocks of
    weights already on a grid, if any (see compress.quantized_blocks)."""
    artifact.model.save_pretrained(directory, safe_serialization=True)
    if artifact.tokenizer is not None:
        artifact.tokenizer.save_pretrained(directory)
    if artifact.quantized_blocks:
        from .quantized_blocks import save_quantized_blocks

        save_quantized_blocks(artifact.model, artifact.quantized_blocks, directory)


def save_artifact(artifact: Artifact, out: str | os.PathLike, force: bool = False) -> Path:
    """Save the model, tokenizer and manifest to `out`, atomically."""
    out = check_output_path(out, force, artifact.source_path)
    writer = artifact.writer or write_hf_checkpoint
    with atomic_directory(out, force=force) as tmp:
        writer(artifact, tmp)
        write_manifest(tmp, manifest_for(artifact))
    return out
