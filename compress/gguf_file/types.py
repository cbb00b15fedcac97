"""Which GGML type each tensor of a GGUF export is written in, and the bytes for it.

The choice, per weight matrix, in this order:

1. weights a calibrated quantizer already put on a runtime grid
   (`Artifact.quantized_blocks`) are written as given, byte for byte;
2. otherwise the last override pattern that matches the tensor's GGUF name
   (``blk.*.ffn_down.weight``) or its model name (``model.layers.*.mlp.down_proj.weight``);
3. otherwise the export's type.

Vectors (norms, biases) are always F32, as llama.cpp's own quantizer leaves them.
A matrix whose rows do not split into whole blocks of the asked type is written
in F16 instead (llama.cpp's quantizer falls back the same way), and the choice
records that. Quantizing is the `gguf` package's numpy code, the same
reference rounding as llama.cpp's ``quantize_row_*_ref``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

# The types `--type` and overrides accept. The gguf package quantizes all but iq4_nl in numpy; iq4_nl, which
# it can only decode, is rounded by compress.quant_grids (see `encode`).
EXPORT_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
# Types accepted as ready-made blocks (`quantized_blocks`): the K-quants too, which the gguf package can only
# decode, so they can arrive from a quantizer that made them.
RAW_TYPES = EXPORT_TYPES[2:] + ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
FALLBACK_TYPE = "f16"


def ggml_type(name: str):
    """The gguf package's GGMLQuantizationType for a lower-case type name."""
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name.upper()]


def block_shape(name: str) -> tuple[int, int]:
    """(values per block, bytes per block) of a type."""
    from gguf import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[ggml_type(name)]


def check_type(name: str, what: str = "--type", allowed: tuple[str, ...] = EXPORT_TYPES) -> str:
    key = str(name).lower()
    if key not in allowed:
        raise UserError(f"unknown GGUF type '{name}' for {what}; use one of {', '.join(allowed)}")
    return key


@dataclass
class TypeChoice:
    """What one tensor is written as, and why."""

    name: str  # GGUF tensor name
    source: str  # the model's parameter name
    asked: str  # the type the export or an override asked for ("quantized_blocks": given as blocks)
    written: str  # the type in the file
    why: str  # "type", "override <pattern>", "quantized_blocks", or the fallback's reason

    @property
    def fell_back(self) -> bool:
        return self.asked != self.written and self.asked != "quantized_blocks"


def choose_types(tensors, default: str, overrides: dict[str, str], raw_blocks: dict) -> list[TypeChoice]:
    """One TypeChoice per weight matrix; an override that matches no matrix is refused (a typo, most likely)."""
    default = check_type(default)
    patterns = [(pattern, check_type(t, f"override '{pattern}'")) for pattern, t in overrides.items()]
    used: set[str] = set()
    choices = []
    for t in tensors:
        if not t.matrix:
            continue
        asked, why = default, "type"
        for pattern, wanted in patterns:
            if fnmatch.fnmatchcase(t.name, pattern) or fnmatch.fnmatchcase(t.source, pattern):
                asked, why = wanted, f"override {pattern}"
                used.add(pattern)
        if t.source in raw_blocks:
            written = check_type(raw_blocks[t.source][0], f"quantized_blocks of {t.source}", RAW_TYPES)
            choices.append(TypeChoice(t.name, t.source, "quantized_blocks", written, "quantized_blocks"))
            continue
        written = asked
        cols = t.data.shape[-1]
        if asked not in ("f32", "f16") and cols % block_shape(asked)[0]:
            written = FALLBACK_TYPE
            why = f"rows of {cols} values do not split into {asked} blocks of {block_shape(asked)[0]}"
        choices.append(TypeChoice(t.name, t.source, asked, written, why))
    unused = [p for p, _ in patterns if p not in used]
    if unused:
        raise UserError(
            f"override pattern(s) {', '.join(unused)} match no weight matrix; patterns match GGUF names such as "
            "'token_embd.weight' or 'blk.*.ffn_down.weight', or the model's parameter names"
        )
    unknown = set(raw_blocks) - {t.source for t in tensors if t.matrix}
    if unknown:
        raise UserError(
            f"quantized_blocks names {len(unknown)} weight(s) the model does not have as a matrix "
            f"(e.g. {sorted(unknown)[0]}); a pass changed the model after it was quantized: quantize last"
        )
    return choices


def encode(data: np.ndarray, written: str) -> np.ndarray:
    """The array the GGUF writer stores for a float tensor in type `written` (uint8 blocks for quantized types).

    iq4_nl is rounded to the nearest of its levels with llama.cpp's first choice of block scale (the largest
    magnitude on level -127), by compress.quant_grids, whose packing the gguf package decodes bit for bit.
    llama.cpp's own quantizer also tries nearby scales and keeps the best, so its round-to-nearest iq4_nl
    can be a little closer; a calibrated quantizer (gptq_quantize --grid iq4_nl) does better than both.
    """
    from gguf import quants

    if written == "f32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if written == "f16":
        return np.ascontiguousarray(data, dtype=np.float16)
    if written == "iq4_nl":
        import torch

        from ..quant_grids import Grid

        grid = Grid.named("iq4_nl")
        flat = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32).reshape(-1, data.shape[-1]))
        _, codes, scales, offsets = grid.round_to_nearest(flat)
        return grid.pack(codes, scales, offsets).reshape(*data.shape[:-1], -1)
    return quants.quantize(np.ascontiguousarray(data, dtype=np.float32), ggml_type(written))


def check_raw_blocks(source: str, type_name: str, blocks, data: np.ndarray,
                     row_order: np.ndarray | None = None) -> np.ndarray:
    """Blocks given by a quantizer, checked against the float weights they stand for; returned as uint8 rows.

    Their rows are the model's output features in the model's order, each row's
    blocks running along the input features; `row_order` is the row permutation
    the layout applied to `data` (llama.cpp's rotary order for q and k), applied
    here to whole rows, so every row's bytes stay as given. They must decode to
    the model's weights: blocks that do not were made before a later pass changed
    the weights, and writing them would run a different model.
    """
    from gguf import quants

    blocks = np.asarray(blocks)
    rows, cols = data.shape
    per_block, block_bytes = block_shape(type_name)
    if blocks.dtype != np.uint8:
        raise UserError(f"quantized_blocks of {source}: expected uint8 bytes, got {blocks.dtype}")
    if cols % per_block:
        raise UserError(f"quantized_blocks of {source}: rows of {cols} values do not split into {type_name} "
                        f"blocks of {per_block}")
    expected = (rows, cols // per_block * block_bytes)
    if tuple(blocks.shape) != expected:
        raise UserError(f"quantized_blocks of {source}: shape {tuple(blocks.shape)} does not fit a {rows}x{cols} "
                        f"weight in {type_name} (expected {expected}); a pass changed the model after it was quantized")
    if row_order is not None:
        blocks = blocks[row_order]
    decoded = quants.dequantize(blocks, ggml_type(type_name))
    scale = max(float(np.abs(data).max()), 1e-8)
    diff = float(np.abs(decoded - data).max())
    if diff > 1e-3 * scale:
        raise UserError(
            f"quantized_blocks of {source} decode to values that differ from the model's weights by up to {diff:.3g} "
            f"(largest weight {scale:.3g}); a pass changed the weights after they were quantized: quantize last"
        )
    return np.ascontiguousarray(blocks)


def type_counts(choices: list[TypeChoice]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in choices:
        counts[c.written] = counts.get(c.written, 0) + 1
    return dict(sorted(counts.items()))


def file_type(choices: list[TypeChoice]):
    """general.file_type: the type most matrices were written in (llama.cpp's 'mostly Q8_0' and so on)."""
    from gguf import LlamaFileType

    names = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
             "q4_1": "MOSTLY_Q4_1", "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1", "iq4_nl": "MOSTLY_IQ4_NL",
             "q2_k": "MOSTLY_Q2_K",
             "q3_k": "MOSTLY_Q3_K_M", "q4_k": "MOSTLY_Q4_K_M", "q5_k": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}
    counts = type_counts(choices)
    if not counts:
        return LlamaFileType.ALL_F32
    most = max(counts, key=lambda k: counts[k])
    return LlamaFileType[names[most]]
