"""The GGUF types a matrix may take, their exact grids, and what llama.cpp does to a matrix's input.

A weight is put on a type's grid by the gguf package's numpy code (iq4_nl,
which gguf can only decode, by compress.quant_grids; both through
`compress.gguf_file.types.encode`, which the GGUF writer also uses) and
decoded again with gguf's dequantizer, so a PyTorch model holding the decoded
weights holds exactly what the file will hold.

That alone does not compute what llama.cpp computes. ggml's CPU matrix product
first converts the *input* of a matrix to the weight's "vec_dot type": for
q4_0, iq4_nl, q5_0 and q8_0 weights each run of 32 input values becomes a q8_0 block
(one float16 scale, amax / 127; values rounded to int8); for q4_1 and q5_1 a
q8_1 block (the same values, plus their sum); for f16 weights the input is
rounded to float16. On the built-in model this input rounding is most of
q8_0's divergence: KL(base || llama.cpp q8_0) was 0.0040 on a 512-token
WikiText-2 window, the weights alone round-tripped in PyTorch 0.0011, weights
and inputs rounded 0.0039 (llama.cpp at f32 differs from PyTorch by 7e-7).
So every simulation here rounds both.

q8_1's sum is stored in float16 and used for q4_1/q5_1's minimum term; that
rounding (about 2^-11 of one term) is not simulated.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..gguf_file.types import block_shape, check_type, encode, ggml_type

# Types a matrix may be given, most precise first. q4_1 and q5_1 are allowed on request
# (not by default): see docs/autoquant.md for why they flatter the built-in model.
CANDIDATE_TYPES = ("f16", "q8_0", "q5_1", "q5_0", "q4_1", "iq4_nl", "q4_0")
DEFAULT_TYPES = ("q4_0", "q5_0", "q8_0", "f16")

# ggml's vec_dot_type of each weight type on the CPU: how a matrix's input is rounded.
INPUT_ROUNDING = {"f16": "f16", "q8_0": "q8_0", "q5_0": "q8_0", "q4_0": "q8_0", "iq4_nl": "q8_0", "q5_1": "q8_1",
                  "q4_1": "q8_1"}
INPUT_BLOCK = 32


def check_candidate_types(types) -> tuple[str, ...]:
    """The types, validated and ordered most precise first; one-line errors for unknown or too few."""
    if isinstance(types, str):
        types = [t for t in types.replace(",", " ").split() if t]
    checked = []
    for t in types:
        key = check_type(t, "the candidate types", CANDIDATE_TYPES)
        if key not in checked:
            checked.append(key)
    if not checked:
        raise UserError(f"no candidate types given; use some of {', '.join(CANDIDATE_TYPES)}")
    return tuple(t for t in CANDIDATE_TYPES if t in checked)


def bytes_per_weight(type_name: str) -> float:
    """Bytes one weight takes in the file (block bytes / values per block), from the gguf package's table."""
    values, nbytes = block_shape(type_name)
    return nbytes / values


def fits(type_name: str, columns: int) -> bool:
    """Whether rows of `columns` values split into whole blocks of the type (otherwise the writer falls back)."""
    return columns % block_shape(type_name)[0] == 0


def roundtrip(rows: np.ndarray, type_name: str) -> np.ndarray:
    """`rows` (one per output feature, float32) put on the type's grid and decoded, as the GGUF file will hold them."""
    from gguf import quants

    data = np.ascontiguousarray(rows, dtype=np.float32)
    encoded = encode(data, type_name)
    if type_name == "f16":
        return encoded.astype(np.float32)
    return quants.dequantize(encoded, ggml_type(type_name)).reshape(data.shape).astype(np.float32, copy=False)


def round_input(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """A matrix's input as ggml's CPU matrix product sees it (`rounding` from INPUT_ROUNDING)."""
    if rounding == "f16":
        return x.to(torch.float16).to(x.dtype)
    if rounding not in ("q8_0", "q8_1"):
        raise ValueError(f"unknown input rounding {rounding}")
    shape = x.shape
    if shape[-1] % INPUT_BLOCK:
        raise ValueError(f"input of {shape[-1]} features does not split into blocks of {INPUT_BLOCK}")
    blocks = x.float().reshape(*shape[:-1], shape[-1] // INPUT_BLOCK, INPUT_BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True)
    # As ggml's x86 quantize_row_q8_0: scale amax/127 stored in float16, values multiplied by
    # 127/amax and rounded to nearest (ties to even, as _mm256_round_ps does).
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    codes = torch.round(blocks * inverse)
    scale = (amax / 127.0).to(torch.float16).float()
    return (codes * scale).reshape(shape).to(x.dtype)
