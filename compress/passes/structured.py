"""Structured pruning: remove rows and columns so the model really gets smaller.

Three passes, each rewriting the tensors and the model config so that a stock
``AutoModelForCausalLM.from_pretrained`` (``AutoModel`` for an encoder) reloads the result:

* ``channel_prune``: MLP intermediate channels (Llama-style gate/up/down, GPT-2
  c_fc/c_proj); updates ``intermediate_size`` (``n_inner`` on GPT-2).
* ``head_prune``: attention heads, grouped-query aware (Llama-style models; BERT-family
  encoders through transformers' ``pruned_heads``, see compress/encoders/structure.py).
  ``mode=groups`` removes whole key/value groups with their query heads;
  ``mode=query`` removes the same number of query heads from every group. The
  ratio is checked against the head layout before any work; a ratio that does
  not fit is refused with the ratios that do.
* ``layer_drop``: whole decoder blocks, those that change their input least on
  calibration text (score ``1 - cos(block input, block output)``, averaged over
  tokens); the remaining attention modules are renumbered so the KV cache works.

Channel and head importance come from the weights (``magnitude``: the L2 norm
of every weight attached to a channel or head) or from calibration text
(``activation``: the L2 norm of the channel's activation entering the down /
output projection, times the norm of the weights that carry it out, the
structured analogue of Wanda's |W|·||X||).

Uniform widths. A stock Llama or GPT-2 config holds one MLP width and one head
count for all layers, so by default every layer loses the same number of
channels or heads. Different widths per layer (``layer_ratios`` or
``skip_first_last`` on ``channel_prune``) are allowed on request: in memory the
layers really differ; when saved as a Hugging Face checkpoint each layer is
padded with zero channels back to the widest layer, which reloads with stock
transformers and computes exactly the same outputs, but is not smaller on disk
nor faster (only its non-zero count drops). The pass says so when it runs.
Heads are uniform only (padding heads back would hide all the gain).

Why not torch-pruning's dependency graph: for the decoder layouts handled
here the coupled tensors are known exactly (gate/up rows with down columns,
q/k/v rows with o columns), so slicing them directly is exact, needs no
tracing of the model, and keeps GPT-2's Conv1D and grouped-query layout under
our control; the hard part (keeping the config consistent) is ours either way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field, field_validator
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..artifact import Artifact
from ..distill.students import renumber_layer_config
from ..encoders.architecture import is_encoder_config, is_encoder_model
from ..encoders.structure import heads_to_remove, prune_encoder_heads
from ..errors import UserError
from ..layers import WeightMatrix, count_parameters
from ..progress import log
from ..saving import write_hf_checkpoint
from .base import Pass, PassContext
from .calibration import collect, input_norms, run_calibration
from .hessian import collect_hessians
from .refit import DEFAULT_DAMP, greedy_kept_inputs, refit_kept_inputs, relative_output_error

Importance = Literal["magnitude", "activation"]


# ---------------------------------------------------------------- model layout


@dataclass
class Block:
    """One decoder block and the projections structured pruning touches."""

    module: nn.Module
    mlp_in: list[WeightMatrix]  # their outputs are the intermediate channels (gate, up / c_fc)
    mlp_out: WeightMatrix  # its inputs are the intermediate channels (down / c_proj)
    attn: nn.Module


@dataclass
class Layout:
    kind: str  # "llama" | "gpt2" | "bert" (BERT-family encoders)
    parent: nn.Module  # holds the ModuleList of blocks
    attr: str  # its attribute name ("layers" / "h")
    blocks: list[Block]

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self.parent, self.attr)


def model_layout(model) -> Layout:
    """Find the decoder blocks of a Llama-style or GPT-2 model, or explain why not."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList) and all(
        hasattr(getattr(b, "mlp", None), "down_proj") and hasattr(getattr(b, "self_attn", None), "q_proj") for b in layers
    ):
        blocks = []
        for i, b in enumerate(layers):
            mlp = b.mlp
            ins = [WeightMatrix(f"model.layers.{i}.mlp.{n}", getattr(mlp, n)) for n in ("gate_proj", "up_proj") if hasattr(mlp, n)]
            blocks.append(Block(b, ins, WeightMatrix(f"model.layers.{i}.mlp.down_proj", mlp.down_proj), b.self_attn))
        return Layout("llama", inner, "layers", blocks)
    inner = getattr(model, "transformer", None)
    layers = getattr(inner, "h", None)
    if isinstance(layers, nn.ModuleList) and all(hasattr(getattr(b, "mlp", None), "c_fc") for b in layers):
        blocks = [
            Block(b, [WeightMatrix(f"transformer.h.{i}.mlp.c_fc", b.mlp.c_fc)],
                  WeightMatrix(f"transformer.h.{i}.mlp.c_proj", b.mlp.c_proj), b.attn)
            for i, b in enumerate(layers)
        ]
        return Layout("gpt2", inner, "h", blocks)
    inner = getattr(model, "encoder", None)  # BERT-family encoders (compress.encoders)
    layers = getattr(inner, "layer", None)
    if isinstance(layers, nn.ModuleList) and all(
        hasattr(getattr(b, "intermediate", None), "dense") and hasattr(getattr(b, "output", None), "dense") for b in layers
    ):
        blocks = [
            Block(b, [WeightMatrix(f"encoder.layer.{i}.intermediate.dense", b.intermediate.dense)],
                  WeightMatrix(f"encoder.layer.{i}.output.dense", b.output.dense), b.attention)
            for i, b in enumerate(layers)
        ]
        return Layout("bert", inner, "layer", blocks)
    raise UserError(
        f"structured pruning supports Llama-style (model.layers with mlp.gate/up/down_proj), GPT-2 and BERT-family "
        f"models; {type(model).__name__} is none of these; use unstructured pruning (magnitude_prune, wanda_prune) instead"
    )


# ------------------------------------------------------- slicing and padding


def _set_weight(module: nn.Module, w: torch.Tensor, bias: torch.Tensor | None) -> None:
    module.weight = nn.Parameter(w.contiguous(), requires_grad=module.weight.requires_grad)
    if bias is not None:
        module.bias = nn.Parameter(bias.contiguous(), requires_grad=module.bias.requires_grad)


def keep_outputs(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep only the output features `idx` of a Linear or Conv1D."""
    bias = module.bias.data[idx] if getattr(module, "bias", None) is not None else None
    if isinstance(module, Conv1D):
        _set_weight(module, module.weight.data[:, idx], bias)
        module.nf = len(idx)
    else:
        _set_weight(module, module.weight.data[idx, :], bias)
        module.out_features = len(idx)


def keep_inputs(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep only the input features `idx` of a Linear or Conv1D."""
    if isinstance(module, Conv1D):
        _set_weight(module, module.weight.data[idx, :], None)
        module.nx = len(idx)
    else:
        _set_weight(module, module.weight.data[:, idx], None)
        module.in_features = len(idx)


def _pad_outputs(module: nn.Module, width: int) -> None:
    w = WeightMatrix("", module).weight
    extra = width - w.shape[0]
    if extra <= 0:
        return
    w = torch.cat([w, w.new_zeros(extra, w.shape[1])])
    bias = getattr(module, "bias", None)
    bias = torch.cat([bias.data, bias.data.new_zeros(extra)]) if bias is not None else None
    _set_weight(module, w.t() if isinstance(module, Conv1D) else w, bias)
    if isinstance(module, Conv1D):
        module.nf = width
    else:
        module.out_features = width


def _pad_inputs(module: nn.Module, width: int) -> None:
    w = WeightMatrix("", module).weight
    extra = width - w.shape[1]
    if extra <= 0:
        return
    w = torch.cat([w, w.new_zeros(w.shape[0], extra)], dim=1)
    _set_weight(module, w.t() if isinstance(module, Conv1D) else w, None)
    if isinstance(module, Conv1D):
        module.nx = width
    else:
        module.in_features = width


def add_bias(block: Block, delta: torch.Tensor, kind: str) -> None:
    """Add delta to the down projection's bias; Llama-style MLPs get (zero) biases on every projection."""
    out = block.mlp_out.module
    if getattr(out, "bias", None) is None:
        out.bias = nn.Parameter(torch.zeros(block.mlp_out.out_features, dtype=out.weight.dtype))
    out.bias.data += delta.to(out.bias.dtype)
    if kind == "llama":
        for m in block.mlp_in:
            if getattr(m.module, "bias", None) is None:
                m.module.bias = nn.Parameter(torch.zeros(m.out_features, dtype=m.module.weight.dtype))


def mlp_width(block: Block) -> int:
    return block.mlp_out.in_features


def set_mlp_width_config(config, kind: str, width: int) -> None:
    if kind == "gpt2":
        config.n_inner = width
    else:
        config.intermediate_size = width


def write_padded_checkpoint(artifact: Artifact, directory) -> None:
    """Save a model whose MLP widths differ per layer as a stock checkpoint.

    Each layer is padded with zero channels up to the widest layer. A zero
    channel contributes nothing (act(0 + 0) * 0 = 0, then a zero column), so
    the reloaded model computes the same outputs as the one in memory.
    """
    model = copy.deepcopy(artifact.model)
    layout = model_layout(model)
    width = max(mlp_width(b) for b in layout.blocks)
    for b in layout.blocks:
        for m in b.mlp_in:
            _pad_outputs(m.module, width)
        _pad_inputs(b.mlp_out.module, width)
    set_mlp_width_config(model.config, layout.kind, width)
    write_hf_checkpoint(Artifact(model=model, tokenizer=artifact.tokenizer), directory)


# ---------------------------------------------------------------- the passes


def _count_to_remove(ratio: float, width: int) -> int:
    return int(round(ratio * width))


class StructuredPrune(Pass):
    """Shared config: the share to remove, and where importance comes from."""

    ratio: float = Field(0.25, gt=0.0, lt=1.0, description="share of channels / heads to remove in each layer")
    importance: Importance = "activation"

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.importance == "activation"


class KeptInputRefit(BaseModel):
    """The least-squares refit of the projection that reads what was removed (compress/passes/refit.py)."""

    refit: bool = Field(
        True, description="re-solve the kept columns of the projection that reads the removed units (the MLP's down "
        "projection, the attention output projection), and its bias where it has one, by least squares, so its output "
        "on calibration text stays as close as it can to the unpruned one's (compress/passes/refit.py); off: the kept "
        "columns stay as they were"
    )
    refit_damp: float = Field(
        DEFAULT_DAMP, gt=0.0, description="how strongly the refit holds the kept columns to their old values (a share "
        "of the mean activation energy): larger stays closer to plain removal, smaller fits the calibration text harder"
    )


def kept_input_statistics(artifact: Artifact, targets: list[WeightMatrix], ctx: PassContext,
                          desc: str) -> dict[str, tuple]:
    """Per target projection: (X^T X / tokens, mean input) on the calibration windows, before any removal."""
    windows = ctx.calibration_windows(artifact.tokenizer)
    means: dict[str, torch.Tensor] = {}
    grams = collect_hessians(targets, lambda: run_calibration(artifact.model, windows, desc=desc), means)
    return {t.name: (grams[t.name], means[t.name]) for t in targets}


def refit_projection(full: torch.Tensor, stats: tuple, keep: torch.Tensor, damp: float,
                     with_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None, tuple[float, float]]:
    """The refit weight for `keep`, the bias change (None without a bias), and the relative output error
    (plain removal, refit) on the calibration tokens."""
    gram, mean = stats
    weight, delta = refit_kept_inputs(full, gram, mean if with_bias else None, keep, damp)
    errors = (relative_output_error(full, gram, mean, keep, full[:, keep]),
              relative_output_error(full, gram, mean, keep, weight, delta))
    return weight, delta, errors


def refit_summary(errors: list[tuple[float, float]], what: str) -> dict:
    return {"refit": {
        f"{what}_output_error_removed": round(sum(e[0] for e in errors) / len(errors), 6),
        f"{what}_output_error_refit": round(sum(e[1] for e in errors) / len(errors), 6),
        "note": f"mean over pruned layers of E||change of the {what} output||^2 / E||{what} output||^2 on calibration "
                "text",
    }} if errors else {}


class ChannelPrune(KeptInputRefit, StructuredPrune):
    """Remove MLP intermediate channels (the same number in every layer unless asked otherwise)."""

    name = "channel_prune"

    layer_ratios: dict[int, float] | None = Field(
        None, description="per-layer ratios {layer index: ratio}, overriding `ratio`; widths then differ per layer"
    )
    skip_first_last: bool = Field(False, description="leave the first and last blocks alone (widths then differ)")
    multiple_of: int = Field(1, ge=1, description="round the number of kept channels down to a multiple of this")
    bias_compensation: bool = Field(
        False, description="add the removed channels' mean contribution on calibration text to the down projection's "
        "bias (Llama: sets mlp_bias, so gate/up get zero biases too)"
    )
    selection: Literal["score", "reconstruction"] = Field(
        "score", description="score: keep the channels with the highest importance scores; reconstruction: remove "
        "one channel at a time, the one whose loss the refit of the others makes up for best (optimal brain "
        "surgeon on the down projection's calibration statistics; needs refit, ignores importance)"
    )

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.importance == "activation" or self.bias_compensation or self.refit

    @field_validator("layer_ratios")
    @classmethod
    def _ratios_in_range(cls, v):
        for k, r in (v or {}).items():
            if not 0.0 <= r < 1.0:
                raise ValueError(f"layer {k}: ratio must be in [0, 1), got {r}")
        return v

    def plan(self, layout: Layout) -> list[int]:
        """How many channels each layer keeps."""
        n = len(layout.blocks)
        bad = [k for k in (self.layer_ratios or {}) if not 0 <= k < n]
        if bad:
            raise UserError(f"layer_ratios names layers {bad}, but the model has layers 0..{n - 1}")
        keep = []
        for i, b in enumerate(layout.blocks):
            ratio = (self.layer_ratios or {}).get(i, self.ratio)
            if self.skip_first_last and i in (0, n - 1):
                ratio = 0.0
            width = mlp_width(b)
            k = width - _count_to_remove(ratio, width)
            if ratio > 0:
                k = max(self.multiple_of, k - k % self.multiple_of)
            keep.append(max(k, 1))
        starved = [i for i, (k, b) in enumerate(zip(keep, layout.blocks)) if k == 1 < mlp_width(b)]
        if starved:
            log.warning(f"channel_prune leaves 1 MLP channel of {mlp_width(layout.blocks[starved[0]])} in "
                        f"{len(starved)} layer(s) (ratio {self.ratio}): the MLPs are all but removed; "
                        "a smaller ratio keeps a usable model")
        return keep

    def channel_scores(self, artifact: Artifact, layout: Layout, ctx: PassContext,
                       refit: dict[str, tuple] | None = None) -> list[torch.Tensor]:
        out_col = [b.mlp_out.weight.float().pow(2).sum(0) for b in layout.blocks]  # per channel, down columns
        if self.importance == "magnitude":
            return [
                (sum(m.weight.float().pow(2).sum(1) for m in b.mlp_in) + out_col[i]).sqrt()
                for i, b in enumerate(layout.blocks)
            ]
        if refit is not None:  # the refit's statistics hold every channel's mean square: no second pass
            # sqrt(mean square) is the L2 norm over tokens divided by sqrt(tokens), the same for every channel
            return [refit[b.mlp_out.name][0].diagonal().clamp_min(0).sqrt() * out_col[i].sqrt()
                    for i, b in enumerate(layout.blocks)]
        windows = ctx.calibration_windows(artifact.tokenizer)
        norms = input_norms(artifact.model, [b.mlp_out.name for b in layout.blocks], windows, desc="channel importance")
        return [norms[b.mlp_out.name] * out_col[i].sqrt() for i, b in enumerate(layout.blocks)]

    def check_compensation(self, model, layout: Layout) -> None:
        if self.bias_compensation and layout.kind == "llama" and not hasattr(model.config, "mlp_bias"):
            raise UserError(
                f"bias_compensation needs an MLP bias, and {type(model.config).__name__} has no mlp_bias setting "
                "(its checkpoint could not hold one); turn bias_compensation off"
            )

    def compensate(self, artifact: Artifact, layout: Layout, ctx: PassContext) -> list[torch.Tensor]:
        """Per layer: what every channel adds to the down projection's output on average (out, width)."""
        windows = ctx.calibration_windows(artifact.tokenizer)
        stats = collect(artifact.model, windows, desc="channel means")
        return [b.mlp_out.weight.float() * stats.input_means[b.mlp_out.name].unsqueeze(0) for b in layout.blocks]

    def refit_statistics(self, artifact: Artifact, layout: Layout, ctx: PassContext) -> dict[str, tuple]:
        """Per down projection: (X^T X / tokens, mean input) on the calibration windows, before any removal."""
        return kept_input_statistics(artifact, [b.mlp_out for b in layout.blocks], ctx, "channel statistics")

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict:
        model = artifact.model
        layout = model_layout(model)
        self.check_compensation(model, layout)
        before = count_parameters(model)
        keep = self.plan(layout)
        widths = [mlp_width(b) for b in layout.blocks]
        if self.selection == "reconstruction" and not self.refit:
            raise UserError("selection: reconstruction chooses the channels the refit compensates best, so it needs "
                            "refit: true; use selection: score for plain removal")
        refit = self.refit_statistics(artifact, layout, ctx) if self.refit else None
        scores = self.channel_scores(artifact, layout, ctx, refit)
        contributions = self.compensate(artifact, layout, ctx) if self.bias_compensation and refit is None else None
        errors: list[tuple[float, float]] = []  # per pruned layer: relative MLP output error, plain removal / refit
        with torch.no_grad():
            for i, (b, k, s) in enumerate(zip(layout.blocks, keep, scores)):
                if k >= mlp_width(b):
                    if self.bias_compensation:  # mlp_bias holds for every layer: give this one zero biases
                        add_bias(b, torch.zeros(b.mlp_out.out_features), layout.kind)
                    continue
                full = b.mlp_out.weight.clone()  # (out, in) before removal
                with_bias = self.bias_compensation or getattr(b.mlp_out.module, "bias", None) is not None
                if self.selection == "reconstruction":
                    gram, mean = refit[b.mlp_out.name]
                    idx = greedy_kept_inputs(full, gram, mean if with_bias else None, k, self.refit_damp)
                else:
                    idx = torch.topk(s, k).indices.sort().values
                for m in b.mlp_in:
                    keep_outputs(m.module, idx)
                keep_inputs(b.mlp_out.module, idx)
                if refit is not None:
                    weight, delta, error = refit_projection(full, refit[b.mlp_out.name], idx,
                                                            self.refit_damp, with_bias)
                    errors.append(error)
                    b.mlp_out.weight.copy_(weight)
                    if delta is not None:
                        add_bias(b, delta, layout.kind)
                if contributions is not None:
                    dropped = torch.ones(contributions[i].shape[1], dtype=torch.bool)
                    dropped[idx] = False
                    add_bias(b, contributions[i][:, dropped].sum(1), layout.kind)
        if self.bias_compensation and layout.kind == "llama":
            model.config.mlp_bias = True
        uniform = len(set(keep)) == 1
        set_mlp_width_config(model.config, layout.kind, max(keep))
        if not uniform:
            artifact.writer = write_padded_checkpoint
            log.warning(
                f"MLP widths now differ per layer ({min(keep)}..{max(keep)}); a stock config holds one width, so a saved "
                f"checkpoint pads every layer with zero channels to {max(keep)}: it reloads with stock transformers and "
                "gives the same outputs, but is not smaller or faster. Use one ratio for every layer for a smaller checkpoint."
            )
        return {
            "mlp_width_before": widths[0] if len(set(widths)) == 1 else widths,
            "mlp_width_after": keep[0] if uniform else keep,
            "uniform": uniform,
            **refit_summary(errors, "mlp"),
            "parameters_before": before["parameters"],
            **count_parameters(model),
        }


def valid_head_ratios(num_heads: int, num_kv: int) -> dict[str, list[float]]:
    group = num_heads // num_kv
    return {
        "groups": [round(k / num_kv, 4) for k in range(1, num_kv)],
        "query": [round(k / group, 4) for k in range(1, group)],
    }


class HeadPrune(KeptInputRefit, StructuredPrune):
    """Remove attention heads, grouped-query aware (Llama-style models; encoders through their own mechanism)."""

    name = "head_prune"

    ratio: float = Field(..., gt=0.0, lt=1.0, description="share of query heads to remove; must fit the head layout")
    mode: Literal["groups", "query"] = Field(
        "groups", description="groups: remove whole key/value groups with their query heads; "
        "query: remove the same number of query heads from every group"
    )

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.importance == "activation" or self.refit

    def check_config(self, config) -> None:
        """Refuse a ratio that does not fit the model's head layout, from its config alone (before loading it)."""
        if getattr(config, "model_type", "") == "gpt2":
            raise UserError(self._gpt2_message)
        if is_encoder_config(config):
            heads_to_remove(self.ratio, self.mode, config)
            return
        heads = config.num_attention_heads
        self.check_ratio(heads, getattr(config, "num_key_value_heads", None) or heads)

    _gpt2_message: ClassVar[str] = (
        "head pruning supports Llama-style models (separate q/k/v projections); GPT-2's config ties the head "
        "count to the hidden size, so fewer heads cannot be described; prune MLP channels or layers instead"
    )

    def heads(self, model) -> tuple[int, int, int]:
        cfg = model.config
        if model_layout(model).kind != "llama":
            raise UserError(self._gpt2_message)
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return heads, kv, head_dim

    def check_ratio(self, heads: int, kv: int) -> int:
        """How many groups (mode=groups) or heads per group (mode=query) to remove; refuse ratios that do not fit."""
        units = kv if self.mode == "groups" else heads // kv
        k = round(self.ratio * units)
        if 0 < k < units and abs(self.ratio - k / units) <= 0.01:
            return k
        valid = valid_head_ratios(heads, kv)
        other = "query" if self.mode == "groups" else "groups"

        def show(rs):
            return ", ".join(f"{r:.3g}" for r in rs) or "none"

        what = f"{kv} key/value groups" if self.mode == "groups" else f"{heads // kv} query heads per group"
        raise UserError(
            f"head ratio {self.ratio} does not fit {heads} query heads in {kv} key/value groups: mode={self.mode} removes "
            f"whole units of {what}, so valid ratios are {show(valid[self.mode])}; with mode={other}: {show(valid[other])}"
        )

    def head_scores(self, artifact: Artifact, layout: Layout, ctx: PassContext, heads: int, kv: int, d: int):
        """Per layer: (score per query head, score per key/value group)."""
        group = heads // kv
        result = []
        norms = None
        if self.importance == "activation":
            windows = ctx.calibration_windows(artifact.tokenizer)
            names = [f"model.layers.{i}.self_attn.o_proj" for i in range(len(layout.blocks))]
            norms = dict(zip(map(str, range(len(names))),
                             input_norms(artifact.model, names, windows, desc="head importance").values()))
        for i, b in enumerate(layout.blocks):
            a = b.attn
            o_cols = a.o_proj.weight.float().pow(2).sum(0).reshape(heads, d).sum(1)  # per query head
            if norms is None:
                q = a.q_proj.weight.float().pow(2).reshape(heads, d, -1).sum((1, 2))
                k = a.k_proj.weight.float().pow(2).reshape(kv, d, -1).sum((1, 2))
                v = a.v_proj.weight.float().pow(2).reshape(kv, d, -1).sum((1, 2))
                per_head = q + o_cols
                per_group = per_head.reshape(kv, group).sum(1) + k + v
            else:
                x = norms[str(i)].pow(2).reshape(heads, d).sum(1)
                per_head = (x * o_cols).sqrt()
                per_group = per_head.reshape(kv, group).sum(1)
            result.append((per_head, per_group))
        return result

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict:
        model = artifact.model
        if is_encoder_model(model):  # through transformers' own pruned_heads (compress.encoders.structure)
            return prune_encoder_heads(self.ratio, self.mode, self.importance, artifact, ctx,
                                       refit_damp=self.refit_damp if self.refit else None)
        heads, kv, d = self.heads(model)
        k = self.check_ratio(heads, kv)
        layout = model_layout(model)
        before = count_parameters(model)
        group = heads // kv
        scores = self.head_scores(artifact, layout, ctx, heads, kv, d)
        outputs = [WeightMatrix(f"model.layers.{i}.self_attn.o_proj", b.attn.o_proj) for i, b in enumerate(layout.blocks)]
        # The kept heads' outputs do not change when others go, so the o_proj inputs measured now are exact.
        stats = kept_input_statistics(artifact, outputs, ctx, "head statistics") if self.refit else None
        errors: list[tuple[float, float]] = []
        new_heads = new_kv = 0
        removed = []
        with torch.no_grad():
            for i, (b, (per_head, per_group)) in enumerate(zip(layout.blocks, scores)):
                if self.mode == "groups":
                    groups = torch.topk(per_group, kv - k).indices.sort().values
                    q_heads = (groups[:, None] * group + torch.arange(group)).flatten()
                else:
                    groups = torch.arange(kv)
                    within = torch.topk(per_head.reshape(kv, group), group - k, dim=1).indices.sort(dim=1).values
                    q_heads = (groups[:, None] * group + within).flatten()
                removed.append(sorted(set(range(heads)) - set(q_heads.tolist())))
                q_rows = (q_heads[:, None] * d + torch.arange(d)).flatten()
                kv_rows = (groups[:, None] * d + torch.arange(d)).flatten()
                a = b.attn
                full = a.o_proj.weight.clone()
                keep_outputs(a.q_proj, q_rows)
                keep_outputs(a.k_proj, kv_rows)
                keep_outputs(a.v_proj, kv_rows)
                keep_inputs(a.o_proj, q_rows)
                if stats is not None:
                    o = outputs[i]
                    bias = getattr(a.o_proj, "bias", None)
                    weight, delta, error = refit_projection(full, stats[o.name], q_rows, self.refit_damp,
                                                            bias is not None)
                    errors.append(error)
                    a.o_proj.weight.copy_(weight)
                    if delta is not None:
                        bias.add_(delta)
                new_heads, new_kv = len(q_heads), len(groups)
                a.num_key_value_groups = new_heads // new_kv
        cfg = model.config
        cfg.num_attention_heads = new_heads
        cfg.num_key_value_heads = new_kv
        cfg.head_dim = d  # explicit: hidden_size // heads no longer gives it
        return {
            "heads_before": heads,
            "kv_heads_before": kv,
            "heads_after": new_heads,
            "kv_heads_after": new_kv,
            "removed_query_heads_per_layer": removed,
            **refit_summary(errors, "attention"),
            "parameters_before": before["parameters"],
            **count_parameters(model),
        }


class LayerDrop(Pass):
    """Drop whole decoder blocks: those that change their input least on calibration text."""

    name = "layer_drop"
    needs_calibration: ClassVar[bool] = True

    ratio: float | None = Field(None, gt=0.0, lt=1.0, description="share of blocks to drop (rounded)")
    count: int | None = Field(None, ge=1, description="number of blocks to drop (instead of ratio)")
    skip_first_last: bool = Field(False, description="never drop the first or the last block")

    def to_drop(self, n: int) -> int:
        if (self.ratio is None) == (self.count is None):
            raise UserError("layer_drop needs exactly one of ratio (share of blocks) or count (number of blocks)")
        k = self.count if self.count is not None else int(round(self.ratio * n))
        candidates = n - 2 if self.skip_first_last else n
        if not 1 <= k < n or k > candidates:
            raise UserError(
                f"cannot drop {k} of {n} blocks{' with the first and last kept' if self.skip_first_last else ''}; "
                f"choose between 1 and {min(n - 1, candidates)} blocks (ratio {1 / n:.3g} to {min(n - 1, candidates) / n:.3g})"
            )
        return k

    def block_scores(self, model, layout: Layout, windows) -> list[float]:
        """Mean over calibration tokens of 1 - cos(block input, block output)."""
        scores = collect(model, windows, desc="block importance").block_change
        if len(scores) != len(layout.blocks):
            raise RuntimeError(f"found {len(scores)} blocks to score but the model has {len(layout.blocks)}")
        return scores

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict:
        model = artifact.model
        layout = model_layout(model)
        n = len(layout.blocks)
        k = self.to_drop(n)
        if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
            raise UserError("this GPT-2 config scales attention by the layer index; dropping layers would change the "
                            "remaining layers' math; layer dropping is refused for it")
        before = count_parameters(model)
        scores = self.block_scores(model, layout, ctx.calibration_windows(artifact.tokenizer))
        candidates = [i for i in range(n) if not (self.skip_first_last and i in (0, n - 1))]
        dropped = sorted(sorted(candidates, key=lambda i: scores[i])[:k])
        kept = [i for i in range(n) if i not in dropped]
        new_layers = nn.ModuleList([layout.layers[i] for i in kept])
        for new_idx, block in enumerate(new_layers):
            for m in block.modules():  # attention (and anything else) indexes the KV cache by layer_idx
                if hasattr(m, "layer_idx"):
                    m.layer_idx = new_idx
        setattr(layout.parent, layout.attr, new_layers)
        renumber_layer_config(model.config, kept)
        return {
            "layers_before": n,
            "layers_after": len(kept),
            "dropped_layers": dropped,
            "block_scores": [round(s, 6) for s in scores],
            "parameters_before": before["parameters"],
            **count_parameters(model),
        }


__all__ = ["ChannelPrune", "HeadPrune", "LayerDrop", "model_layout", "valid_head_ratios", "write_padded_checkpoint"]
