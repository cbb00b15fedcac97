"""`Artifact.quantized_blocks` on disk: a safetensors file beside the float checkpoint.

A GPTQ output is saved as a Hugging Face checkpoint whose float weights are the
grid values (stock `from_pretrained` loads it), plus `quantized_blocks.safetensors`
with the runtime's own bytes for those weights, so that a later
`compress export gguf` (or the fast ONNX Runtime writer) of the saved directory
stores exactly the blocks GPTQ chose instead of quantizing the float weights again.
`compress.models.load_artifact` reads the file back into `artifact.quantized_blocks`.

Layout of the file (tensor names are the model's parameter names):

* GGUF entry ``(type, raw)``: one uint8 tensor ``NAME`` (N, K / 32 * bytes per block);
* MatMulNBits entry ``("matmulnbits", {...})``: ``NAME/q``, ``NAME/scales`` and,
  when asymmetric, ``NAME/zero_points``;
* metadata ``format`` (``compress-quantized-blocks/1``) and ``entries``: JSON
  ``{NAME: {"type": ..., "weight_sha256": ...}}`` plus bits, block_size, symmetric,
  K and N for MatMulNBits entries.

``weight_sha256`` is the SHA-256 of the float32 (out, in) matrix the blocks
decode to. Saving checks every entry against the model's weights by decoding
it (an entry that no longer matches, because a later pass changed the weights,
is dropped with a warning rather than written); loading checks the hash of the
loaded weights, so blocks never travel with weights they do not describe.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .layers import WeightMatrix, weight_matrices
from .progress import log
from .quant_grids import MATMULNBITS_TAG, dequantize_entry

BLOCKS_FILE = "quantized_blocks.safetensors"
BLOCKS_FORMAT = "compress-quantized-blocks/1"


def _matrices_by_parameter(model) -> dict[str, WeightMatrix]:
    return {f"{t.name}.weight": t for t in weight_matrices(model, include_lm_head=True)}


def _matrix_bytes(matrix: torch.Tensor) -> bytes:
    return np.ascontiguousarray(matrix.detach().cpu().float().numpy()).tobytes()


def _sha256(matrix: torch.Tensor) -> str:
    return hashlib.sha256(_matrix_bytes(matrix)).hexdigest()


def matching_entries(model, blocks: dict[str, Any]) -> dict[str, Any]:
    """The entries of `blocks` that decode exactly to the model's current weights (the others are logged)."""
    matrices = _matrices_by_parameter(model)
    kept = {}
    for name, entry in blocks.items():
        t = matrices.get(name)
        decoded = dequantize_entry(entry) if t is not None else None
        if t is None or decoded.shape != tuple(t.weight.shape) or \
                not np.array_equal(decoded, t.weight.detach().cpu().float().numpy()):
            log.warning(f"quantized blocks of {name} no longer match its weights (changed after quantization?); "
                        "they are not saved")
            continue
        kept[name] = entry
    return kept


def save_quantized_blocks(model, blocks: dict[str, Any], directory: str | Path) -> Path | None:
    """Write the entries that still match the model's weights to DIRECTORY/quantized_blocks.safetensors."""
    from safetensors.numpy import save_file

    blocks = matching_entries(model, blocks)
    if not blocks:
        return None
    matrices = _matrices_by_parameter(model)
    tensors: dict[str, np.ndarray] = {}
    described: dict[str, dict[str, Any]] = {}
    for name, (kind, payload) in blocks.items():
        info: dict[str, Any] = {"type": kind, "weight_sha256": _sha256(matrices[name].weight)}
        if kind == MATMULNBITS_TAG:
            info.update({k: payload[k] for k in ("bits", "block_size", "symmetric", "K", "N")})
            tensors[f"{name}/q"] = payload["q"]
            tensors[f"{name}/scales"] = payload["scales"]
            if payload["zero_points"] is not None:
                tensors[f"{name}/zero_points"] = payload["zero_points"]
        else:
            tensors[name] = payload
        described[name] = info
    path = Path(directory) / BLOCKS_FILE
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata={"format": BLOCKS_FORMAT, "entries": json.dumps(described)})
    return path


def load_quantized_blocks(model, directory: str | Path) -> dict[str, Any]:
    """The entries of DIRECTORY/quantized_blocks.safetensors whose weights the loaded model still holds."""
    from safetensors import safe_open

    path = Path(directory) / BLOCKS_FILE
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != BLOCKS_FORMAT:
            log.warning(f"{path} is not a {BLOCKS_FORMAT} file; its blocks are ignored")
            return {}
        described = json.loads(metadata["entries"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    matrices = _matrices_by_parameter(model)
    blocks: dict[str, Any] = {}
    for name, info in described.items():
        t = matrices.get(name)
        if t is None or _sha256(t.weight) != info["weight_sha256"]:
            log.warning(f"{path}: the blocks of {name} do not describe the loaded weights "
                        "(edited, or loaded in another dtype); they are ignored")
            continue
        if info["type"] == MATMULNBITS_TAG:
            payload = {k: info[k] for k in ("bits", "block_size", "symmetric", "K", "N")}
            payload.update(q=tensors[f"{name}/q"], scales=tensors[f"{name}/scales"],
                           zero_points=tensors.get(f"{name}/zero_points"))
            blocks[name] = (MATMULNBITS_TAG, payload)
        else:
            blocks[name] = (info["type"], tensors[name])
    return blocks
