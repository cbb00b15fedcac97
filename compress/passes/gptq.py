"""GPTQ: calibrated quantization onto the exact grid a runtime will decode.

After Frantar et al., "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers". For each projection with calibration
inputs X and H = X^T X, columns (input features) are rounded one at a time to
the target grid, and each rounding error is spread over the columns not yet
rounded through the Cholesky factor of H^-1, so that the layer's output on the
calibration inputs moves as little as possible. The Hessians and the column
sweep are SparseGPT's (hessian.py); block-by-block calibration is the pruning
passes' (sequential.py): block i's Hessians come from the outputs of blocks
0..i-1 already quantized (``sequential: false``: one pass of the float model).

The grid is the runtime's own (compress/quant_grids.py): GGUF q4_0, q4_1, q5_0,
q5_1, q8_0 (blocks of 32, d and m in float16) or ONNX Runtime MatMulNBits
int4 / int8 (symmetric or asymmetric, blocks of 32, 64, 128; float32 scales).
Each block's scale (and minimum or zero point) is fitted once, rounded to how
the runtime stores it, and every weight of the block is then rounded to a code
of that grid, so the float weights this pass leaves are exactly the values the
runtime decodes from the codes it keeps: ``artifact.quantized_blocks[param] =
(type, raw uint8 blocks in GGUF layout)`` for GGUF types, ``("matmulnbits",
{bits, block_size, symmetric, K, N, q, scales, zero_points})`` for MatMulNBits
(layouts in quant_grids.py). A writer for that runtime stores those as they are.
The pass checks, for every matrix, that decoding the packed bytes (GGUF: with
the gguf package's own decoder) gives back the weights it set, bit for bit.

Block scales. Without act-order, block b's parameters are fitted when the sweep
reaches its first column, from the block's present values (its columns already
carry the updates from every column rounded before), as the GPTQ reference does
for groups. ``clip_search`` also tries narrower ranges per block and keeps the
one with the smallest rounding error weighted by H's diagonal.

Act-order with fixed blocks (the default). ``act_order: true`` visits the columns in order
of decreasing H_jj, so the inputs that carry the most energy are rounded first
and their errors are absorbed by the most remaining columns. The runtimes here
cannot take GPTQ's "groups in permuted order" (that needs a per-column group
index, g_idx, which GGUF lacks and MatMulNBits deprecates), so the blocks stay
the runtime's contiguous blocks of input features. A block's parameters are
fitted the first time the sweep reaches any of its columns, from the present
values of all of its columns; none of them is rounded yet at that moment, so
the fit sees the whole block as the error updates have left it so far. Later
columns of the block are rounded with those parameters when the sweep gets to
them.

A pruned model loses its zeros to the error updates unless ``keep_sparsity:
true``: then every weight that is exactly 0 gets the code of 0 (its block's
zero point, so q4_1 / q5_1, whose blocks decode d * q + m, are refused) and
its error is compensated by the weights that remain, as SparseGPT's joint
sparsify-and-quantize mode does. Neither runtime skips zeros today, so this
keeps a pruned model's pattern (for sparse kernels, or to measure it) at some
cost in quality against letting GPTQ fill them.

Only the projections inside the model are quantized unless ``head: true``:
then the output head is quantized too, last, on the final norm's outputs of the
already-quantized model. A head tied to the input embeddings is untied first,
so the embedding table keeps its float values and a writer stores it at its own
type (llama.cpp reads one embedding row per token, so a GGUF's ``token_embd``
at q8_0 costs file size but no decode time, while the head's matrix product is
a large share of each token's work). The saved output is a float checkpoint holding the grid
values (stock `from_pretrained` loads it) plus `quantized_blocks.safetensors`
beside it with the runtime's bytes (compress/quantized_blocks.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..artifact import Artifact
from ..errors import UserError
from ..layers import WeightMatrix, output_head_names, untie_output_head, weight_matrices
from ..progress import progress
from ..quant_grids import GGUF_GRID_TYPES, GRID_NAMES, Grid, dequantize_entry
from .base import Pass, PassContext
from .calibration import run_calibration
from .hessian import ColumnSweep, collect_hessians, inverse_cholesky
from .quantization import refuse_if_quantized
from .sequential import prune_block_by_block

GridName = Literal[GRID_NAMES]  # type: ignore[valid-type]


class GridWeights:
    """What GPTQ chose for one (rows, K) matrix: codes and block parameters, and the values they decode to."""

    def __init__(self, grid: Grid, values: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                 offsets: torch.Tensor, loss: float = 0.0):
        self.grid, self.values, self.codes, self.scales, self.offsets, self.loss = \
            grid, values, codes, scales, offsets, loss

    def rows(self, start: int, stop: int) -> "GridWeights":
        return GridWeights(self.grid, self.values[start:stop], self.codes[start:stop], self.scales[start:stop],
                           self.offsets[start:stop])

    def entry(self) -> tuple[str, Any]:
        return self.grid.entry(self.grid.pack(self.codes, self.scales, self.offsets))


@torch.no_grad()
def gptq_quantize_matrix(w: torch.Tensor, hessian: torch.Tensor, grid: Grid, act_order: bool = False,
                         block: int = 128, damp: float = 0.01, clip_search: bool = False,
                         zeros: torch.Tensor | None = None) -> GridWeights:
    """Round the (out, in) matrix `w` onto `grid`, GPTQ-style; `w` is not modified.

    `zeros` (bool, like `w`) marks weights that must stay exactly 0 (a pruned model's): they get the
    code of 0 and their error is compensated like any other rounding's (SparseGPT's joint mode).
    """
    if zeros is not None and not grid.has_exact_zero:
        raise ValueError(f"{grid.kind} has no exact zero in its blocks (d * q + m), so it cannot keep zeros")
    W = w.detach().float().clone()
    rows, K = W.shape
    bs, n_blocks = grid.block_size, grid.blocks(K)
    H = hessian.detach().float()
    importance = torch.diag(H)
    device = W.device
    order = torch.argsort(importance, descending=True, stable=True) if act_order else torch.arange(K, device=device)
    position = torch.empty_like(order)
    position[order] = torch.arange(K, device=device)  # where each original column sits in the sweep
    if act_order:
        W, H = W[:, order], H[order][:, order]
    hinv, dead = inverse_cholesky(H, damp)
    W[:, dead] = 0  # inputs that were always zero: their weights never mattered

    codes = torch.empty(rows, K, device=device)
    scales = torch.empty(rows, n_blocks, device=device)
    offsets = torch.empty(rows, n_blocks, device=device)
    fitted = [False] * n_blocks
    order_list = order.tolist()

    def choose(sweep: ColumnSweep, i: int) -> torch.Tensor:
        column = order_list[i]
        b = column // bs
        if not fitted[b]:
            members = torch.arange(b * bs, min(K, (b + 1) * bs), device=device)
            present = sweep.current(position[members])
            if zeros is not None:
                present[zeros[:, members]] = 0  # those will be 0: fit the block to what it will hold
            scales[:, b], offsets[:, b] = grid.fit(present, importance[members], clip_search)
            fitted[b] = True
        c = grid.encode(sweep.W1[:, i - sweep.i1], scales[:, b], offsets[:, b])
        if zeros is not None:
            c = torch.where(zeros[:, column], offsets[:, b], c)  # the zero point's code decodes to exactly 0
        codes[:, column] = c
        return grid.decode(c, scales[:, b], offsets[:, b])

    sweep = ColumnSweep(W, hinv, block)
    values = sweep.run(choose)
    if act_order:
        values = values[:, position]
    return GridWeights(grid, values, codes, scales, offsets, sweep.loss)


def output_error(w: torch.Tensor, q: torch.Tensor, hessian: torch.Tensor) -> float:
    """||(W - Q) X^T||^2 / ||W X^T||^2 on the calibration inputs, from H = X^T X / tokens."""
    w, e, H = w.float(), (w - q).float(), hessian.float()
    denominator = float(((w @ H) * w).sum(dtype=torch.float64))
    return float(((e @ H) * e).sum(dtype=torch.float64)) / denominator if denominator else 0.0


def _shared_hessian_groups(targets: list[WeightMatrix], hessians: dict[str, torch.Tensor]):
    """Targets fed the same input (q/k/v; gate/up) in one group: GPTQ treats rows independently, so their
    stacked rows go through one sweep."""
    groups: dict[int, list[WeightMatrix]] = {}
    for t in targets:
        groups.setdefault(id(hessians[t.name]), []).append(t)
    return list(groups.values())


class GptqQuantize(Pass):
    """Round every projection onto a runtime's grid, compensating each rounding on calibration inputs."""

    name = "gptq_quantize"
    needs_calibration = True
    decoder_only: ClassVar[bool] = True  # its grids are llama.cpp's and the genai graph's, both causal-LM formats
    encoder_alternative: ClassVar[str] = ("use ort_quantize (method weight-int8 or dynamic-int8) or bnb_quantize "
                                          "for an encoder")

    grid: GridName = Field("q4_0", description="target grid: GGUF q4_0/q4_1/q5_0/q5_1/q8_0/iq4_nl or MatMulNBits "
                            "int4/int8")
    block_size: int | None = Field(None, description="weights per block (GGUF: 32 only; int4/int8: a power of "
                                   "two >= 16, default 32)")
    symmetric: bool | None = Field(None, description="int4/int8: symmetric (default) or asymmetric with zero "
                                   "points; GGUF types have their own (q4_1, q5_1 are asymmetric)")
    # On by default: on the built-in model plain left-to-right GPTQ was worse than round-to-nearest (its
    # outlier input features take the errors of the columns before them), act-order better (docs/quantization.md).
    act_order: bool = Field(True, description="visit columns by decreasing Hessian diagonal (blocks stay the "
                            "runtime's contiguous ones; see the module docstring)")
    damp: float = Field(0.01, gt=0.0, lt=1.0, description="dampening added to the Hessian's diagonal "
                        "(share of its mean)")
    update_block: int = Field(128, ge=1, description="columns rounded between updates of the rest of the matrix "
                              "(speed only)")
    clip_search: bool = Field(False, description="per block, also try narrower ranges and keep the one with "
                              "the smallest Hessian-weighted rounding error")
    keep_sparsity: bool = Field(False, description="weights that are exactly 0 (a pruned model's) stay 0, the "
                                "other weights compensating; needs a grid with an exact zero (not q4_1 / q5_1)")
    sequential: bool = Field(True, description="collect each decoder block's Hessians on the outputs of the "
                             "blocks already quantized (false: one calibration pass of the float model)")
    head: bool = Field(False, description="also quantize the output head (calibrated last; a tied head is "
                       "untied first, the input embeddings keeping their float values)")
    head_grid: GridName | None = Field(None, description="the output head's own grid when head is true (default: "
                                       "`grid`); e.g. q5_0 or q8_0 for the head of a q4_0 model")
    include: list[str] | None = Field(None, description="glob patterns of module names to quantize "
                                      "(default: every projection, and the output head when head is true)")
    exclude: list[str] | None = None

    @model_validator(mode="after")
    def _valid_grid(self):
        grid = self.target_grid()
        if self.keep_sparsity and not grid.has_exact_zero:
            raise ValueError(f"keep_sparsity needs a grid on which 0 is exact; {self.grid} has no code for 0 "
                             "(use q4_0, q5_0, q8_0 or int4 / int8)")
        return self

    @model_validator(mode="after")
    def _head_grid_needs_head(self):
        if self.head_grid is not None and not self.head:
            raise ValueError("head_grid is the output head's grid, so it needs head: true")
        if self.head_grid is not None and Grid.named(self.head_grid).runtime != Grid.named(self.grid).runtime:
            raise ValueError(f"head_grid {self.head_grid} and grid {self.grid} belong to different runtimes (GGUF "
                             "types or MatMulNBits int4/int8); one file holds one runtime's blocks")
        if self.head_grid is not None and self.keep_sparsity and not Grid.named(self.head_grid).has_exact_zero:
            raise ValueError(f"keep_sparsity needs a grid on which 0 is exact; head_grid {self.head_grid} has no "
                             "code for 0 (use q4_0, q5_0, q8_0 or int4 / int8)")
        return self

    def target_grid(self) -> Grid:
        if self.grid in GGUF_GRID_TYPES and self.symmetric is not None:
            raise ValueError(f"symmetric applies to int4/int8; {self.grid} has its own "
                             f"({'asymmetric' if self.grid in ('q4_1', 'q5_1') else 'symmetric'})")
        return Grid.named(self.grid, self.block_size, self.symmetric)

    def head_target_grid(self) -> Grid:
        """The output head's grid: `head_grid` in `grid`'s block size and symmetry where they apply, else `grid`."""
        if self.head_grid is None:
            return self.target_grid()
        if self.head_grid in ("int4", "int8"):
            return Grid.named(self.head_grid, self.block_size, self.symmetric)
        return Grid.named(self.head_grid)

    def targets(self, model) -> list[WeightMatrix]:
        found = list(weight_matrices(model, self.include, self.exclude, include_lm_head=self.head))
        if not found:
            raise UserError(f"{self.name}: no Linear/Conv1D layers match include={self.include} exclude={self.exclude}")
        return found

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict[str, Any]:
        refuse_if_quantized(artifact, self.name)
        if artifact.quantized_blocks:
            raise UserError(f"{self.name}: the model's weights are already on a runtime grid "
                            f"({len(artifact.quantized_blocks)} matrices); quantize the float model instead")
        grid = self.target_grid()
        untied = untie_output_head(artifact.model) if self.head else False
        targets = self.targets(artifact.model)
        heads = output_head_names(artifact.model)
        head_grid = self.head_target_grid()

        def grid_of(t: WeightMatrix) -> Grid:
            return head_grid if t.name in heads else grid

        unfit = [(t, grid_of(t).check_width(t.in_features)) for t in targets if grid_of(t).check_width(t.in_features)]
        if unfit:
            listed = ", ".join(f"{t.name} ({t.in_features})" for t, _ in unfit[:3])
            raise UserError(f"{self.name}: {unfit[0][1]}; these are not: {listed}; exclude them or choose an "
                            "int4/int8 grid")
        not_float32 = sorted({str(t.weight.dtype) for t in targets if t.weight.dtype != torch.float32})
        if not_float32:
            raise UserError(f"{self.name}: the weights are {', '.join(not_float32)}; grid values are exact in "
                            "float32 only, so load the model in float32")

        windows = ctx.calibration_windows(artifact.tokenizer)
        per_layer: dict[str, dict[str, float]] = {}
        zero_counts = [0, 0]  # exact zeros of the quantized matrices, before and after
        model = artifact.model

        def quantize_group(group: list[WeightMatrix], run) -> None:
            hessians = collect_hessians(group, run)
            for shared in progress(_shared_hessian_groups(group, hessians), desc=self.name, unit="group"):
                hessian = hessians[shared[0].name]
                stacked = torch.cat([t.weight.detach().float() for t in shared])
                zeros = (stacked == 0) if self.keep_sparsity else None
                zero_counts[0] += int((stacked == 0).sum())
                matrix_grid = grid_of(shared[0])  # a shared group is one module kind: all head or none
                chosen = gptq_quantize_matrix(stacked, hessian, matrix_grid, self.act_order, self.update_block,
                                              self.damp, self.clip_search, zeros)
                zero_counts[1] += int((chosen.values == 0).sum())
                start = 0
                for t in shared:
                    part = chosen.rows(start, start + t.out_features)
                    start += t.out_features
                    rounded = matrix_grid.round_to_nearest(t.weight, self.clip_search)[0]
                    per_layer[t.name] = {"gptq": round(output_error(t.weight, part.values, hessian), 6),
                                         "round_to_nearest": round(output_error(t.weight, rounded, hessian), 6)}
                    self._store(artifact, t, part)
                for t in shared:
                    hessians.pop(t.name, None)

        if self.sequential:
            prune_block_by_block(model, targets, windows, quantize_group, desc=self.name)
        else:
            quantize_group(targets, lambda: run_calibration(model, windows, f"{self.name} calibration"))
        weights = sum(t.weight.numel() for t in targets)
        head_record = {"head_grid": head_grid.label} if self.head else {}
        return {**self.report(grid, per_layer), **head_record, "sparsity_before": round(zero_counts[0] / weights, 6),
                "sparsity_after": round(zero_counts[1] / weights, 6), "head_untied": untied}

    @staticmethod
    def _store(artifact: Artifact, t: WeightMatrix, chosen: GridWeights) -> None:
        """Set the weights to the grid values and keep the runtime's bytes, checked to decode to exactly them."""
        entry = chosen.entry()
        decoded = torch.from_numpy(np.ascontiguousarray(dequantize_entry(entry))).to(chosen.values.device)
        if not torch.equal(decoded, chosen.values):
            raise RuntimeError(f"{t.name}: the packed {entry[0]} blocks do not decode to the values GPTQ chose "
                               f"(largest difference {float((decoded - chosen.values).abs().max()):.3g})")
        with torch.no_grad():
            t.weight.copy_(decoded)
        artifact.quantized_blocks[f"{t.name}.weight"] = entry

    def report(self, grid: Grid, per_layer: dict[str, dict[str, float]]) -> dict[str, Any]:
        gptq = [v["gptq"] for v in per_layer.values()]
        rtn = [v["round_to_nearest"] for v in per_layer.values()]
        return {
            "grid": grid.label,
            "runtime": grid.runtime,
            "matrices": len(per_layer),
            "output_error_mean": {"gptq": round(float(np.mean(gptq)), 6),
                                  "round_to_nearest": round(float(np.mean(rtn)), 6)},
            "matrices_better_than_round_to_nearest": sum(g < r for g, r in zip(gptq, rtn)),
            # ||(W - Q) X^T||^2 / ||W X^T||^2 on the calibration inputs each matrix was quantized for.
            "output_error_per_matrix": per_layer,
        }
