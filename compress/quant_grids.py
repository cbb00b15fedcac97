"""The weight grids of the runtimes we write for: GGUF block types and ONNX Runtime's MatMulNBits.

A grid says which values a weight may take once a runtime stores it: per block
of `block_size` consecutive input features of one output row, a scale (and a
minimum or a zero point) as the runtime stores it, and integer codes. A
calibrated quantizer (GPTQ, compress/passes/gptq.py) chooses the codes; this
module fits block parameters, rounds to the grid, decodes exactly as the
runtime does, and packs codes and parameters into the runtime's own bytes.

Everything here is about one weight matrix in the (out, in) = (N, K) layout of
`nn.Linear` (GPT-2's Conv1D weights are transposed first, see compress/layers.py):
rows are output features, blocks run along the input dimension.

GGUF (llama.cpp's ggml block types; the `gguf` package's quants.py is the
reference for layout and decoding; blocks of 32, d and m stored as float16):

* q4_0 (18 bytes): d f16, then 16 bytes: code j in the low nibble of byte j,
  code j + 16 in its high nibble; value d * (q - 8), codes 0..15;
* q4_1 (20 bytes): d f16, m f16, 16 bytes as q4_0; value d * q + m, codes 0..15;
* q5_0 (22 bytes): d f16, qh (4 bytes, a little-endian uint32 whose bit j is
  bit 4 of code j), 16 bytes of low nibbles as q4_0; value d * (q - 16), codes 0..31;
* q5_1 (24 bytes): d f16, m f16, qh, 16 bytes; value d * q + m, codes 0..31;
* q8_0 (34 bytes): d f16, 32 int8 codes; value d * q, codes -127..127;
* iq4_nl (18 bytes): d f16, 16 bytes as q4_0; value d * LEVEL[q], codes 0..15, with llama.cpp's fixed
  non-uniform levels (-127 ... 113, denser near 0, as weights are). Same size and block as q4_0, and
  llama.cpp decodes it about as fast (benchmarks/gptq/README.md), so where q4_0 fits, it fits, with a
  grid that wastes fewer codes on the tails. No level is 0, so a pruned model's zeros cannot be kept on it.

The raw blocks of a matrix are a uint8 array of shape (N, K / 32 * bytes per
block): row r holds its K / 32 blocks in order, exactly what
`gguf.quants.quantize` returns for an (N, K) float array and what a GGUF file
stores for a tensor with ne0 = K (`gguf.quants.dequantize` decodes it).
Arithmetic is float32 as in ggml's reference decoder: q4_1 is (d * q) + m, two
roundings, never a fused multiply-add, and the float weights this module
returns are those exact float32 values. (q8_0 codes stay within ±127, as
llama.cpp's own quantizer keeps them: its int8 dot products assume it.)

ONNX Runtime MatMulNBits (com.microsoft contrib op; attributes K, N, bits,
block_size; bits 4 or 8; block_size a power of two >= 16; the tests cover 32, 64, 128):

* ``q``: uint8 (N, k_blocks, block_size * bits / 8) with k_blocks = ceil(K / block_size);
  codes are packed low-first along K (4 bits: code 2i in the low nibble of byte
  i of the block, code 2i+1 in its high nibble; 8 bits: one code per byte); a
  partial last block (K not a multiple of block_size) is padded with code 0, as
  ONNX Runtime's own quantizer pads it (no activation meets it);
* ``scales``: float32 (N, k_blocks), the graph's float type (a float32 CPU graph);
* ``zero_points``: None when symmetric (the op's default zero point 2^(bits-1):
  8 or 128); asymmetric: uint8 (N, ceil(k_blocks * bits / 8)), 4-bit zero points
  packed two per byte low-first like q (a high nibble left over when k_blocks is
  odd is 8, as ONNX Runtime writes it), 8-bit one per byte;
* decoded value (q - zero_point) * scale, one float32 rounding. Checked in the
  tests against an actual MatMulNBits node.

Block parameters follow each runtime's own round-to-nearest choice: symmetric
types scale the signed value of largest magnitude to the most negative code
(q4_0: d = max / -8, as llama.cpp; MatMulNBits symmetric as ONNX Runtime's
quantizer), q8_0 maps the largest magnitude to 127, q4_1/q5_1 span min..max,
MatMulNBits asymmetric spans min(min, 0)..max(max, 0) with an integer zero
point. `fit(..., clip_search=True)` also tries narrower ranges (scaled by 1.0
down to 0.7) and keeps, per row, the one whose rounding error (weighted by the
given per-column importance) is smallest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

GGUF_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")  # uniform grids, which the gguf package also quantizes
CODEBOOK_TYPES = ("iq4_nl",)  # GGUF types whose codes index fixed levels; only a calibrated quantizer writes them
GGUF_GRID_TYPES = GGUF_TYPES + CODEBOOK_TYPES
MATMULNBITS_TYPES = ("int4", "int8")
GRID_NAMES = GGUF_GRID_TYPES + MATMULNBITS_TYPES
GGUF_BLOCK = 32
MATMULNBITS_BLOCKS = (32, 64, 128)
MATMULNBITS_TAG = "matmulnbits"
CLIP_SHRINKS = tuple(1.0 - 0.02 * i for i in range(16))  # 1.00 .. 0.70

_GGUF_BYTES = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "q8_0": 34, "iq4_nl": 18}
# llama.cpp's kvalues_iq4nl (ggml-common.h; the gguf package's IQ4_NL.kvalues): the value of each 4-bit code, times d.
IQ4_NL_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
# Made once: GPTQ's sweep encodes one column at a time, so the grid would otherwise rebuild them per column.
_IQ4_NL_LEVELS = torch.tensor(IQ4_NL_LEVELS, dtype=torch.float32)
_IQ4_NL_MIDPOINTS = (_IQ4_NL_LEVELS[1:] + _IQ4_NL_LEVELS[:-1]) / 2
_SYMMETRIC_GGUF = ("q4_0", "q5_0", "q8_0", "iq4_nl")


@dataclass(frozen=True)
class Grid:
    """One runtime grid: a type (q4_0 ... q8_0, int4, int8), its block size and (MatMulNBits) symmetry."""

    kind: str
    block_size: int = GGUF_BLOCK
    symmetric: bool = True

    def __post_init__(self):
        if self.kind not in GRID_NAMES:
            raise ValueError(f"unknown grid {self.kind!r}; known: {', '.join(GRID_NAMES)}")
        if self.runtime == "gguf":
            if self.block_size != GGUF_BLOCK:
                raise ValueError(f"GGUF {self.kind} blocks hold {GGUF_BLOCK} weights; block_size {self.block_size} "
                                 "is not available")
            if self.symmetric != (self.kind in _SYMMETRIC_GGUF):
                raise ValueError(f"{self.kind} is {'symmetric' if not self.symmetric else 'asymmetric'} by definition")
        elif self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"MatMulNBits block_size must be a power of two >= 16, got {self.block_size}")

    # -- what the grid is ------------------------------------------------------------------------
    @classmethod
    def named(cls, kind: str, block_size: int | None = None, symmetric: bool | None = None) -> "Grid":
        """A grid with the runtime's defaults for what is not given (GGUF: 32 and the type's symmetry)."""
        if kind in GGUF_GRID_TYPES:
            return cls(kind, block_size or GGUF_BLOCK, kind in _SYMMETRIC_GGUF if symmetric is None
                       else symmetric)
        return cls(kind, block_size or 32, True if symmetric is None else symmetric)

    @property
    def runtime(self) -> str:
        return "gguf" if self.kind in GGUF_GRID_TYPES else MATMULNBITS_TAG

    @property
    def bits(self) -> int:
        return {"q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5, "q8_0": 8, "iq4_nl": 4, "int4": 4, "int8": 8}[self.kind]

    @property
    def label(self) -> str:
        if self.runtime == "gguf":
            return self.kind
        return f"{self.kind}-{'sym' if self.symmetric else 'asym'}-b{self.block_size}"

    @property
    def uses_min(self) -> bool:
        """Decoded as d * q + m (q4_1, q5_1) rather than (q - zero) * d."""
        return self.kind in ("q4_1", "q5_1")

    @property
    def levels(self) -> torch.Tensor | None:
        """The value of each code in units of the block's scale, for a codebook grid (iq4_nl); None when uniform."""
        return _IQ4_NL_LEVELS if self.kind == "iq4_nl" else None

    @property
    def has_exact_zero(self) -> bool:
        """Whether 0 is a point of every block's grid (its zero point's code); q4_1 / q5_1 decode d * q + m,
        and iq4_nl has no level at 0."""
        return not self.uses_min and self.kind not in CODEBOOK_TYPES

    @property
    def code_range(self) -> tuple[int, int]:
        if self.kind == "q8_0":
            return -127, 127
        return 0, 2**self.bits - 1

    @property
    def fixed_zero(self) -> int | None:
        """The zero point every block shares (None: per block, or a minimum instead)."""
        if self.uses_min or (self.runtime == MATMULNBITS_TAG and not self.symmetric):
            return None
        return 0 if self.kind in ("q8_0",) + CODEBOOK_TYPES else 2 ** (self.bits - 1)

    @property
    def scale_dtype(self) -> torch.dtype:
        return torch.float16 if self.runtime == "gguf" else torch.float32

    def blocks(self, in_features: int) -> int:
        return -(-in_features // self.block_size)

    def check_width(self, in_features: int) -> str | None:
        """Why a matrix with this many input features cannot use the grid (None: it can)."""
        if self.runtime == "gguf" and in_features % GGUF_BLOCK:
            return f"GGUF blocks need input widths divisible by {GGUF_BLOCK}"
        return None

    # -- block parameters, rounding, decoding (torch, float32, vectorised over rows) ------------------
    def _stored(self, x: torch.Tensor) -> torch.Tensor:
        """x as the runtime stores it (float16 for GGUF d and m), back in float32."""
        return x.to(self.scale_dtype).to(torch.float32)

    def _params(self, w: torch.Tensor, shrink: float) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.code_range
        if self.uses_min:
            mn, mx = w.min(dim=1).values * shrink, w.max(dim=1).values * shrink
            return self._stored((mx - mn) / (hi - lo)), self._stored(mn)
        if self.fixed_zero is None:  # MatMulNBits asymmetric: the range always holds 0, integer zero point
            mn = torch.clamp(w.min(dim=1).values, max=0) * shrink
            mx = torch.clamp(w.max(dim=1).values, min=0) * shrink
            scale = self._stored((mx - mn) / (hi - lo))
            safe = torch.where(scale == 0, torch.ones_like(scale), scale)
            zero = torch.where(scale == 0, torch.full_like(scale, 2 ** (self.bits - 1)),
                               torch.clamp(torch.round(-mn / safe), lo, hi))
            return scale, zero
        if self.kind == "q8_0":
            return self._stored(w.abs().max(dim=1).values * shrink / 127), torch.zeros(w.shape[0], device=w.device)
        # Symmetric with the largest magnitude on the most negative code, as the runtimes' own quantizers
        # (iq4_nl: on its most negative level, -127, llama.cpp's first try).
        signed = w.gather(1, w.abs().argmax(dim=1, keepdim=True)).squeeze(1) * shrink
        if self.kind == "iq4_nl":
            return self._stored(signed / IQ4_NL_LEVELS[0]), torch.zeros(w.shape[0], device=w.device)
        half = 2 ** (self.bits - 1)
        return self._stored(signed / -half), torch.full((w.shape[0],), float(half), device=w.device)

    def fit(self, w: torch.Tensor, importance: torch.Tensor | None = None,
            clip_search: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) per row for one block `w` (rows, n): offset is the zero point, or m for q4_1/q5_1."""
        w = w.float()
        scale, offset = self._params(w, 1.0)
        if not clip_search:
            return scale, offset
        weight = importance.float().unsqueeze(0) if importance is not None else torch.ones(1, w.shape[1], device=w.device)
        best = ((self.decode(self.encode(w, scale, offset), scale, offset) - w) ** 2 * weight).sum(1)
        for shrink in CLIP_SHRINKS[1:]:
            s, o = self._params(w, shrink)
            err = ((self.decode(self.encode(w, s, o), s, o) - w) ** 2 * weight).sum(1)
            better = err < best
            scale, offset, best = torch.where(better, s, scale), torch.where(better, o, offset), torch.minimum(err, best)
        return scale, offset

    def encode(self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Nearest codes (float tensor of integers) of x (rows,) or (rows, n) with per-row parameters."""
        lo, hi = self.code_range
        if x.dim() == 2:
            scale, offset = scale.unsqueeze(1), offset.unsqueeze(1)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        if self.levels is not None:  # the nearest level of x / d (ties to the lower one); d = 0 decodes to 0 anyway
            return torch.bucketize((x / safe).contiguous(), _IQ4_NL_MIDPOINTS.to(x.device)).float()
        if self.uses_min:
            codes = torch.round((x - offset) / safe)
            codes = torch.where(scale == 0, torch.zeros_like(codes), codes)
        else:
            codes = torch.round(x / safe) + offset
            codes = torch.where(scale == 0, offset.expand_as(codes), codes)
        return torch.clamp(codes, lo, hi)

    def decode(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """The runtime's float32 value of codes with per-row parameters (same arithmetic as its decoder)."""
        if codes.dim() == 2:
            scale, offset = scale.unsqueeze(1), offset.unsqueeze(1)
        levels = self.levels
        if levels is not None:
            return scale * levels.to(codes.device)[codes.long()]
        if self.uses_min:
            return scale * codes + offset
        return (codes - offset) * scale

    def round_to_nearest(self, w: torch.Tensor, clip_search: bool = False):
        """Plain rounding of a whole (rows, K) matrix on this grid: (values, codes, scales, offsets)."""
        w = w.detach().float()
        rows, K = w.shape
        codes = torch.empty_like(w)
        values = torch.empty_like(w)
        scales = torch.empty(rows, self.blocks(K), device=w.device)
        offsets = torch.empty(rows, self.blocks(K), device=w.device)
        for b in range(self.blocks(K)):
            sl = slice(b * self.block_size, min(K, (b + 1) * self.block_size))
            scales[:, b], offsets[:, b] = self.fit(w[:, sl], clip_search=clip_search)
            codes[:, sl] = self.encode(w[:, sl], scales[:, b], offsets[:, b])
            values[:, sl] = self.decode(codes[:, sl], scales[:, b], offsets[:, b])
        return values, codes, scales, offsets

    # -- the runtime's bytes (numpy) ---------------------------------------------------------------
    def pack(self, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> Any:
        """The runtime's storage of one matrix: GGUF raw blocks (uint8 array) or the MatMulNBits dict."""
        codes_np = codes.detach().cpu().numpy()
        scales_np = scales.detach().cpu().numpy().astype(np.float32)
        offsets_np = offsets.detach().cpu().numpy().astype(np.float32)
        if self.runtime == "gguf":
            return _pack_gguf(self.kind, codes_np, scales_np, offsets_np)
        return _pack_matmulnbits(self, codes_np, scales_np, offsets_np)

    def entry(self, payload: Any) -> tuple[str, Any]:
        """The `Artifact.quantized_blocks` value for a packed matrix."""
        return (self.kind, payload) if self.runtime == "gguf" else (MATMULNBITS_TAG, payload)


def grid_of_entry(entry: tuple[str, Any]) -> Grid:
    kind, payload = entry
    if kind == MATMULNBITS_TAG:
        return Grid(f"int{payload['bits']}", payload["block_size"], payload["symmetric"])
    return Grid.named(kind)


def unpack_entry(entry: tuple[str, Any]) -> tuple[Grid, np.ndarray, np.ndarray, np.ndarray]:
    """(grid, codes, scales, offsets) of a quantized_blocks entry, as `Grid.encode` / `Grid.decode` use them
    (MatMulNBits zero points as float32 offsets)."""
    grid = grid_of_entry(entry)
    kind, payload = entry
    if kind == MATMULNBITS_TAG:
        codes, scales, zeros = unpack_matmulnbits(payload)
        return grid, codes, scales, zeros.astype(np.float32)
    codes, scales, offsets = unpack_gguf(kind, np.asarray(payload))
    return grid, codes, scales, offsets


def dequantize_entry(entry: tuple[str, Any]) -> np.ndarray:
    """The float32 (N, K) matrix a runtime decodes from a `quantized_blocks` entry (GGUF: gguf's own decoder)."""
    kind, payload = entry
    if kind == MATMULNBITS_TAG:
        return dequantize_matmulnbits(payload)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return dequantize(np.ascontiguousarray(payload), GGMLQuantizationType[kind.upper()])


# -- GGUF packing ---------------------------------------------------------------------------------
def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(*x.shape, 2)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """(…, 32) codes -> (…, 16) bytes: code j low nibble, code j + 16 high nibble, as ggml's q4/q5 blocks."""
    c = codes.astype(np.uint8) & np.uint8(0x0F)
    return c[..., :16] | (c[..., 16:] << np.uint8(4))


def _pack_gguf(kind: str, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    rows, K = codes.shape
    nb = K // GGUF_BLOCK
    blocks = codes.reshape(rows, nb, GGUF_BLOCK)
    parts = [_f16_bytes(scales)]
    if kind in ("q4_1", "q5_1"):
        parts.append(_f16_bytes(offsets))
    if kind in ("q5_0", "q5_1"):
        high = ((blocks.astype(np.uint8) >> np.uint8(4)) & np.uint8(1))
        parts.append(np.packbits(high, axis=-1, bitorder="little"))  # 4 bytes: bit j = bit 4 of code j
    if kind == "q8_0":
        parts.append(blocks.astype(np.int8).view(np.uint8))
    else:
        parts.append(_nibbles(blocks))
    raw = np.concatenate(parts, axis=-1)
    assert raw.shape[-1] == _GGUF_BYTES[kind]
    return np.ascontiguousarray(raw.reshape(rows, nb * _GGUF_BYTES[kind]))


def unpack_gguf(kind: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scales, offsets) of raw GGUF blocks (N, bytes): the inverse of the packing above."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _GGUF_BYTES[kind])
    scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    at = 2
    offsets = np.full_like(scales, {"q4_0": 8, "q5_0": 16}.get(kind, 0))  # q8_0, iq4_nl: no zero point
    if kind in ("q4_1", "q5_1"):
        offsets = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        at = 4
    if kind == "q8_0":
        codes = blocks[..., at:].copy().view(np.int8).astype(np.int16)
    else:
        high = None
        if kind in ("q5_0", "q5_1"):
            high = np.unpackbits(blocks[..., at : at + 4], axis=-1, bitorder="little").astype(np.int16)
            at += 4
        qs = blocks[..., at:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)
        if high is not None:
            codes |= high << 4
    return codes.reshape(rows, -1), scales, offsets


# -- MatMulNBits packing --------------------------------------------------------------------------
def _low_first(values: np.ndarray, bits: int, pad: int = 0) -> np.ndarray:
    """Pack the last axis of uint8 values low-first: 4 bits two per byte (an odd count padded with `pad`),
    8 bits as they are."""
    values = values.astype(np.uint8)
    if bits == 8:
        return values
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.full((*values.shape[:-1], 1), pad, np.uint8)], axis=-1)
    return values[..., 0::2] | (values[..., 1::2] << np.uint8(4))


def _unpack_low_first(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return packed[..., :count].astype(np.int16)
    both = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return both[..., :count].astype(np.int16)


def _pack_matmulnbits(grid: Grid, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> dict[str, Any]:
    N, K = codes.shape
    nb, bs = grid.blocks(K), grid.block_size
    # Padding as ONNX Runtime's own quantizer writes it (codes 0; a spare zero-point nibble 8), so the bytes
    # of a round-to-nearest matrix are identical to its; padded codes never meet an activation.
    padded = np.zeros((N, nb * bs), np.float32)
    padded[:, :K] = codes
    q = _low_first(padded.reshape(N, nb, bs), grid.bits)
    zero_points = None if grid.symmetric else _low_first(offsets, grid.bits, pad=8)
    return {"bits": grid.bits, "block_size": bs, "symmetric": grid.symmetric, "K": K, "N": N,
            "q": np.ascontiguousarray(q), "scales": np.ascontiguousarray(scales, dtype=np.float32),
            "zero_points": None if zero_points is None else np.ascontiguousarray(zero_points)}


def unpack_matmulnbits(payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes (N, K), scales (N, k_blocks), zero points (N, k_blocks)) of a MatMulNBits payload."""
    bits, bs, K, N = payload["bits"], payload["block_size"], payload["K"], payload["N"]
    q, scales = payload["q"], payload["scales"]
    nb = q.shape[1]
    codes = _unpack_low_first(q, bits, bs).reshape(N, nb * bs)[:, :K]
    if payload["zero_points"] is None:
        zeros = np.full((N, nb), 2 ** (bits - 1), np.int16)
    else:
        zeros = _unpack_low_first(payload["zero_points"], bits, nb)
    return codes, scales, zeros


def dequantize_matmulnbits(payload: dict[str, Any]) -> np.ndarray:
    """(q - zero_point) * scale per block, in float32, as the MatMulNBits op spec decodes B; (N, K)."""
    codes, scales, zeros = unpack_matmulnbits(payload)
    bs, K = payload["block_size"], payload["K"]
    column_block = np.arange(K) // bs
    return (codes.astype(np.float32) - zeros[:, column_block].astype(np.float32)) * scales[:, column_block]


# -- the runtimes' own round-to-nearest quantizers (baselines) ---------------------------------------
def runtime_round_to_nearest(grid: Grid, w: np.ndarray) -> tuple[str, Any]:
    """The entry the runtime's own quantizer writes for an (N, K) float32 matrix: gguf.quants.quantize for
    GGUF types, ONNX Runtime's MatMulNBits block quantizer (the C++ one its MatMulNBitsQuantizer calls)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if grid.runtime == "gguf":
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        return grid.entry(quantize(w, GGMLQuantizationType[grid.kind.upper()]))
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    N, K = w.shape
    nb, bs = grid.blocks(K), grid.block_size
    q = np.zeros((N, nb, bs * grid.bits // 8), np.uint8)
    scales = np.zeros((N, nb), np.float32)
    zero_points = np.zeros((N, -(-nb * grid.bits // 8)), np.uint8)
    quantize = quantize_matmul_4bits if grid.bits == 4 else quantize_matmul_8bits
    quantize(q, np.ascontiguousarray(w.T), scales, zero_points, bs, N, K, grid.symmetric)
    return grid.entry({"bits": grid.bits, "block_size": bs, "symmetric": grid.symmetric, "K": K, "N": N,
                       "q": q, "scales": scales, "zero_points": None if grid.symmetric else zero_points})
