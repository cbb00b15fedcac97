"""`tune_scales`: train the block scales of a model on a runtime grid, its integer codes fixed.

GPTQ (gptq.py) chooses each weight's code and each block's scale one matrix at
a time, to keep that matrix's output close on calibration inputs. What it
cannot see is how the errors of 210 matrices add up through the network. This
pass trains, end to end, the one thing left free once the codes are chosen: the
scale of every block (and, on q4_1 / q5_1, its minimum), plus the weights of
the normalisation layers, which every runtime here stores in float32. The
loss is the distillation loss against the float teacher (forward KL by
default) on the recipe's calibration text, as in `distill` (passes/distillation.py;
same trainer, schedules and checkpoints). Training only step sizes is the
"E2E-QP" phase of Chen et al., "EfficientQAT: Efficient Quantization-Aware
Training for Large Language Models" (2024).

Each block's scale is trained as a gain g on the scale GPTQ chose
(scale = scale0 * g, g starting at 1; minima as m0 + scale0 * h, h starting at 0),
so one learning rate suits blocks of every magnitude; norm weights likewise as
w0 * g. The codes never change, so a weight whose code decodes to 0 stays 0 and
the runtime's bytes keep their layout: at the end every scale is rounded to how
the runtime stores it (float16 for GGUF, float32 for MatMulNBits), the blocks
are packed again and checked to decode, bit for bit, to the float weights the
pass leaves, exactly as gptq_quantize checks its own (compress/quant_grids.py).

MatMulNBits zero points are integers and stay as they are. The output head
trains only if it is on the grid (gptq_quantize with head: true); a tied or
float head and the embeddings stay frozen.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field
from torch.nn.utils import parametrize

from ..artifact import Artifact
from ..distill import TrainConfig, distill_into, summarize, training_windows
from ..errors import UserError
from ..layers import weight_matrices
from ..quant_grids import Grid, dequantize_entry, unpack_entry
from .base import Pass, PassContext
from .distillation import TeacherTraining


class BlockScaled(nn.Module):
    """A weight parametrization: codes fixed, per-block gains on the scales (and offsets on q4_1/q5_1 minima)."""

    def __init__(self, grid: Grid, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray, transposed: bool):
        super().__init__()
        self.grid, self.transposed = grid, transposed
        self.integer_codes = np.asarray(codes)  # packed again, unchanged, at the end
        codes_t = torch.from_numpy(self.integer_codes.astype(np.float32))
        if grid.levels is not None:  # a codebook grid (iq4_nl): train on the levels the codes stand for, zero offset 0
            codes_t = grid.levels[codes_t.long()]
        self.K = codes_t.shape[1]
        self.register_buffer("codes", codes_t, persistent=False)
        self.register_buffer("scale0", torch.from_numpy(np.asarray(scales, dtype=np.float32)), persistent=False)
        self.register_buffer("offset0", torch.from_numpy(np.asarray(offsets, dtype=np.float32)), persistent=False)
        self.gain = nn.Parameter(torch.ones_like(self.scale0))
        # A minimum moves in units of its block's scale, so its step size matches the gain's.
        self.shift = nn.Parameter(torch.zeros_like(self.scale0)) if grid.uses_min else None

    def block_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale0 * self.gain
        offset = self.offset0 + self.scale0 * self.shift if self.shift is not None else self.offset0
        return scale, offset

    def _per_column(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.grid.block_size, dim=1)[:, : self.K]

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        w = self.values(*self.block_parameters())
        return w.t() if self.transposed else w

    def values(self, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """The (out, in) weights the codes decode to under these block parameters, in the runtime's float32 order."""
        if self.grid.uses_min:
            w = self._per_column(scale) * self.codes + self._per_column(offset)
        else:
            w = (self.codes - self._per_column(offset)) * self._per_column(scale)
        return w

    @torch.no_grad()
    def stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and offsets rounded to how the runtime stores them (float16 for GGUF, float32 for MatMulNBits)."""
        scale, offset = self.block_parameters()
        dtype = self.grid.scale_dtype
        scale = scale.to(dtype).float()
        if self.grid.uses_min:
            offset = offset.to(dtype).float()
        return scale, offset


class Gain(nn.Module):
    """w = w0 * g for a normalisation layer's weight, g starting at 1."""

    def __init__(self, like: torch.Tensor):
        super().__init__()
        self.gain = nn.Parameter(torch.ones_like(like, dtype=torch.float32))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.gain.to(original.dtype)


def norm_layers(model) -> list[tuple[str, nn.Module]]:
    """Every normalisation layer with a weight vector (RMSNorm of the Llama family, LayerNorm of GPT-2)."""
    found = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        weight = getattr(module, "weight", None)
        if ("RMSNorm" in kind or "LayerNorm" in kind or isinstance(module, nn.LayerNorm)) \
                and isinstance(weight, nn.Parameter) and weight.dim() == 1:
            found.append((name, module))
    return found


class TuneScales(TrainConfig, TeacherTraining, Pass):
    """Distil a grid-quantized model into its teacher by training its block scales and norms (codes fixed)."""

    name = "tune_scales"
    needs_calibration = True
    decoder_only = True  # it matches next-token distributions
    encoder_alternative = "use embedding_distill before quantizing an encoder"

    # Defaults sized for the built-in model on a 2-core CPU (about 18 minutes): gains move about 0.1 % a step.
    steps: int = Field(150, ge=1)
    batch_size: int = Field(4, ge=1)
    seq_len: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate of the scale and norm gains (AdamW)")
    warmup_steps: int = Field(10, ge=0)
    dtype: Literal["float32", "bfloat16"] = Field("bfloat16", description="compute dtype of student and teacher "
                                                  "(bfloat16: autocast; the gains themselves stay float32)")
    keep_sparsity: bool = Field(False, description="not used: the codes are fixed, so zeros stay zeros")
    norms: bool = Field(True, description="also train the normalisation layers' weights (float32 in every runtime)")
    train_windows: int | None = Field(None, ge=1, description="training windows of seq_len tokens (None: all)")

    def training_config(self) -> TrainConfig:
        return TrainConfig(**{k: getattr(self, k) for k in TrainConfig.model_fields})

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict[str, Any]:
        if not artifact.quantized_blocks:
            raise UserError("tune_scales trains the block scales of a model on a runtime grid, and this one has "
                            "none; put gptq_quantize before it in the recipe")
        if self.keep_sparsity:
            raise UserError("tune_scales keeps every code as it is, so zeros stay zeros; drop keep_sparsity")
        teacher = self.load_teacher(artifact)
        windows = training_windows(artifact.tokenizer, ctx.calibration, self.seq_len, self.train_windows)
        return self.tune(artifact, teacher, windows)

    def tune(self, artifact: Artifact, teacher: Artifact, windows) -> dict[str, Any]:
        """Train `artifact`'s quantized blocks' scales (and its norms) against `teacher` on `windows`, in place.

        Also what auto_quantize calls to tune a chosen mix (its teacher: the float model it started from)."""
        config = self.training_config()
        model = artifact.model
        matrices = {f"{t.name}.weight": t for t in weight_matrices(model, include_lm_head=True)}
        missing = sorted(set(artifact.quantized_blocks) - set(matrices))
        if missing:
            raise UserError(f"tune_scales: quantized blocks for {missing[0]} match no weight matrix of the model")
        for p in model.parameters():
            p.requires_grad_(False)
        tuned: dict[str, BlockScaled] = {}
        for name, entry in artifact.quantized_blocks.items():
            t = matrices[name]
            grid, codes, scales, offsets = unpack_entry(entry)
            param = BlockScaled(grid, codes, scales, offsets, transposed=t.transposed)
            parametrize.register_parametrization(t.module, "weight", param, unsafe=True)
            tuned[name] = param
        norms = norm_layers(model) if self.norms else []
        for _, module in norms:
            parametrize.register_parametrization(module, "weight", Gain(module.weight))
        scales_trained = sum(p.gain.numel() for p in tuned.values())
        # The trainer runs the student in train mode; dropout (GPT-2 has it) would only add noise to a fit of
        # scales to the teacher's exact outputs, so it is off while this pass trains.
        dropouts = [(m, m.p) for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
        for m, _ in dropouts:
            m.p = 0.0
        # (The pass works on a copy, so a failed run leaves nothing to restore.)
        result = distill_into(artifact, teacher, windows, config, checkpoint_dir=self.checkpoint_dir,
                              resume=self.resume, device=self.device, final_eval=False)
        artifact.model.to("cpu").eval()
        for m, p in dropouts:
            m.p = p
        gains = self._fold(artifact, matrices, tuned, norms)
        record = summarize(result)
        record.pop("sparsity", None)  # codes are fixed: the trainer's zero count says nothing here
        return {**record, "teacher": teacher.source, "train_data": windows.provenance,
                "matrices_tuned": len(tuned), "block_scales_trained": scales_trained,
                "norm_layers_tuned": len(norms), **gains}

    @staticmethod
    @torch.no_grad()
    def _fold(artifact: Artifact, matrices, tuned: dict[str, BlockScaled], norms) -> dict[str, Any]:
        """Write the trained scales back as the runtime's bytes and the float weights they decode to."""
        spread = []
        for name, param in tuned.items():
            t = matrices[name]
            scales, offsets = param.stored()
            spread.append(param.gain.detach().flatten())
            parametrize.remove_parametrizations(t.module, "weight", leave_parametrized=False)
            entry = param.grid.entry(param.grid.pack(torch.from_numpy(param.integer_codes), scales, offsets))
            decoded = torch.from_numpy(np.ascontiguousarray(dequantize_entry(entry)))
            if not torch.equal(decoded, param.values(scales, offsets)):
                raise RuntimeError(f"{name}: the repacked {entry[0]} blocks do not decode to the tuned values "
                                   f"(largest difference {float((decoded - param.values(scales, offsets)).abs().max()):.3g})")
            t.weight.copy_(decoded)  # the (out, in) view, Conv1D included
            artifact.quantized_blocks[name] = entry
        for _, module in norms:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        for p in artifact.model.parameters():
            p.requires_grad_(True)
        g = torch.cat(spread) if spread else torch.ones(1)
        return {"scale_gain": {"min": round(float(g.min()), 4), "median": round(float(g.median()), 4),
                               "max": round(float(g.max()), 4)}}
