"""What assemble.py (here) and runner.py (on the GPU machine) share: the manifest, hashes, parts, digests.

Standard library only, so the runner can use it before anything is installed
on the GPU machine. The manifest (manifest.json, a copy in every call's
folder) lists every carried file: its role (``wheel``: installed if the machine
lacks what its ``requirement`` asks for; ``text``: the evaluation corpus;
``model-archive``: a model directory as a tar, for the dry run), its size and
sha256, and the parts it was cut into, each with the call that carries it.
It also holds what the reassembled model must hash to, so the GPU measures
exactly the model the CPU did.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = "compress-gpu-kit/1"
MiB = 1 << 20


class KitError(Exception):
    """Something the kit cannot go on without; the message is one line saying what to do."""


def sha256_stream(stream, chunk: int = 1 << 20) -> str:
    # compress.models has its own file digest, but the runner cannot import compress before installing.
    h = hashlib.sha256()
    while block := stream.read(chunk):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def split_into(path: Path, pieces: list[tuple[Path, int]]) -> list[dict[str, Any]]:
    """Cut `path` into consecutive parts of the given sizes (the last takes the rest); returns their entries."""
    entries = []
    with open(path, "rb") as src:
        for i, (target, size) in enumerate(pieces):
            target.parent.mkdir(parents=True, exist_ok=True)
            data = src.read() if i == len(pieces) - 1 else src.read(size)
            target.write_bytes(data)
            entries.append({"name": target.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        if src.read(1):
            raise ValueError(f"{path} is longer than its parts")
    return entries


def join_parts(parts: list[Path], target: Path, sha256: str) -> Path:
    """Concatenate `parts` into `target` and check the whole file's hash (KitError if it differs)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".joining")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != sha256:
        tmp.unlink()
        raise KitError(f"{target.name} reassembled from {len(parts)} parts has sha256 {h.hexdigest()[:16]}, "
                       f"not {sha256[:16]}; assemble the carry again (benchmarks/gpu/assemble.py)")
    tmp.replace(target)
    return target


def weights_digest(model_dir: Path) -> str:
    """A hash of every tensor in the directory's *.safetensors files: name, dtype, shape and bytes.

    Read straight from the safetensors layout (8-byte header length, JSON header,
    data), so it needs no library, and it ignores what does not change the
    weights (file metadata, the order of tensors in the file, how many shards).
    """
    tensors = []
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
            start = 8 + length
            for name, info in header.items():
                if name != "__metadata__":
                    tensors.append((name, info, file, start))
    h = hashlib.sha256()
    for name, info, file, start in sorted(tensors, key=lambda t: t[0]):
        begin, end = info["data_offsets"]
        with open(file, "rb") as f:
            f.seek(start + begin)
            data = f.read(end - begin)
        h.update(json.dumps([name, info["dtype"], info["shape"]]).encode())
        h.update(hashlib.sha256(data).digest())
    if not tensors:
        raise KitError(f"{model_dir} holds no *.safetensors weights to check")
    return h.hexdigest()


def tokens_digest(model_dir: Path, text: str, characters: int = 20000) -> str:
    """A hash of the token ids the model's tokenizer gives for the start of `text` (needs transformers)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tokenizer(text[:characters], add_special_tokens=False, verbose=False)["input_ids"]
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise KitError(f"{folder} has no {MANIFEST}; carry a folder made by benchmarks/gpu/assemble.py")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise KitError(f"{path} is not a {FORMAT} manifest; assemble the carry again")
    return manifest


def write_manifest(manifest: dict[str, Any], folders: list[Path]) -> None:
    text = json.dumps({"format": FORMAT, **manifest}, indent=1) + "\n"
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).write_text(text)


def mib(n: int | float) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB / 10 else f"{n / 1024:.0f} KiB"
