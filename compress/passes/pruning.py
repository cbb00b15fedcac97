"""Unstructured pruning: zero the least important weights of each projection.

Importance here is a score per weight; magnitude pruning scores by |W|.
Which weights go is decided by a scope:

* ``row``: the same share of every output row (each neuron keeps the same fan-in),
* ``layer``: the same share of every matrix,
* ``global``: one threshold across all selected matrices,

or by an N:M pattern (``2:4``: in every group of 4 consecutive inputs of a row,
keep the 2 most important), the layout that sparse tensor cores accelerate.
Zeros are written into the weights, so the output is a normal dense checkpoint.

Two scores:

* ``magnitude_prune``: |W|;
* ``wanda_prune`` (activation-aware, after Sun et al., "A Simple and Effective
  Pruning Approach for Large Language Models"): |W_ij| * ||X_j||, where ||X_j||
  is the L2 norm of input channel j over the calibration tokens. A weight
  feeding a channel that carries large activations is kept even if it is
  small. Compared within each output row by default, as the method intends.

The activation-aware passes (Wanda here, SparseGPT in sparsegpt.py) collect
their statistics either block by block (``sequential: true``, the default, as
the papers' reference code does: block i's on the outputs of blocks 0..i-1
already pruned; see sequential.py) or in one calibration pass of the unpruned
model (``sequential: false``; needed by ``scope: global``, which ranks every
matrix at once). One-shot Wanda shares the cached statistics of
calibration.py with channel and head scoring.
"""

from __future__ import annotations

import re
from typing import Callable, Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..artifact import Artifact
from ..data import Windows
from ..errors import UserError
from ..layers import WeightMatrix, count_parameters, weight_matrices
from ..progress import progress
from .base import Pass, PassContext
from .calibration import input_norms, input_norms_while, run_calibration
from .sequential import prune_block_by_block

Scope = Literal["row", "layer", "global"]


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    if pattern is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not m or not (0 < int(m.group(1)) < int(m.group(2))):
        raise ValueError(f"pattern must be N:M with 0 < N < M, such as 2:4 (got {pattern!r})")
    return int(m.group(1)), int(m.group(2))


def keep_mask(scores: torch.Tensor, sparsity: float, scope: Scope, pattern: tuple[int, int] | None) -> torch.Tensor:
    """Boolean mask (True = keep) for one (out, in) score matrix; `global` is handled by the caller."""
    out_f, in_f = scores.shape
    # Contiguous whatever the scores' layout: GPT-2's Conv1D scores are a transposed view, and `layer` scope
    # indexes the mask through .view(-1).
    mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if pattern is not None:
        n, m = pattern
        if in_f % m:
            raise UserError(f"a {n}:{m} pattern needs input widths divisible by {m}, got {in_f}")
        groups = scores.reshape(out_f, in_f // m, m)
        drop = torch.topk(groups, m - n, dim=-1, largest=False).indices
        group_mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        return group_mask.reshape(out_f, in_f)
    if scope == "row":
        k = int(round(sparsity * in_f))
        if k:
            drop = torch.topk(scores, k, dim=1, largest=False).indices
            mask.scatter_(1, drop, False)
        return mask
    k = int(round(sparsity * scores.numel()))
    if k:
        drop = torch.topk(scores.flatten(), k, largest=False).indices
        mask.view(-1)[drop] = False
    return mask


class UnstructuredPrune(Pass):
    """Shared config and machinery; subclasses supply `scores`."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="share of weights set to zero (ignored with a pattern)")
    scope: Scope = "row"
    pattern: str | None = Field(None, description="N:M pattern such as 2:4 along the input dimension")
    include: list[str] | None = Field(None, description="glob patterns of module names to prune (default: all projections)")
    exclude: list[str] | None = None
    include_lm_head: bool = False

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, v):
        parse_pattern(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _pattern_decides_sparsity_and_scope(cls, data):
        """An N:M pattern fixes the sparsity (1 - N/M) and works row by row: record that, refuse anything else."""
        if not isinstance(data, dict) or data.get("pattern") is None:
            return data
        n, m = parse_pattern(data["pattern"])
        implied = 1 - n / m
        given = data.get("sparsity")
        if given is not None and abs(float(given) - implied) > 1e-9:
            raise ValueError(f"pattern {data['pattern']} zeroes {implied:g} of the weights, not sparsity {given}; "
                             "drop sparsity when giving a pattern")
        if data.get("scope") not in (None, "row"):
            raise ValueError(f"pattern {data['pattern']} applies within every row; scope {data['scope']!r} does not "
                             "apply, drop it")
        return {**data, "sparsity": implied, "scope": "row"}

    def targets(self, model) -> list[WeightMatrix]:
        found = list(weight_matrices(model, self.include, self.exclude, self.include_lm_head))
        if not found:
            raise UserError(f"{self.name}: no Linear/Conv1D layers match include={self.include} exclude={self.exclude}")
        return found

    def scores(self, artifact: Artifact, targets: list[WeightMatrix], ctx: PassContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict:
        targets = self.targets(artifact.model)
        pattern = parse_pattern(self.pattern)
        if pattern is not None:  # refuse before any calibration work
            bad = [f"{t.name} ({t.in_features})" for t in targets if t.in_features % pattern[1]]
            if bad:
                raise UserError(
                    f"a {self.pattern} pattern needs input widths divisible by {pattern[1]}; these are not: "
                    f"{', '.join(bad[:3])}; exclude them or choose another pattern"
                )
        self.prune_weights(artifact, targets, ctx, pattern)
        return self.report(artifact, targets)

    def prune_weights(self, artifact: Artifact, targets: list[WeightMatrix], ctx: PassContext,
                      pattern: tuple[int, int] | None) -> None:
        """Zero the weights with the lowest scores."""
        self.zero_lowest(targets, self.scores(artifact, targets, ctx), pattern)

    def zero_lowest(self, targets: list[WeightMatrix], scores: dict[str, torch.Tensor],
                    pattern: tuple[int, int] | None) -> None:
        """Zero the lowest-scored weights of `targets` as the scope / pattern says."""
        masks: dict[str, torch.Tensor] = {}
        if self.scope == "global" and pattern is None:
            flat = torch.cat([scores[t.name].flatten().float() for t in targets])
            k = int(round(self.sparsity * flat.numel()))
            keep = torch.ones_like(flat, dtype=torch.bool)
            if k:
                keep[torch.topk(flat, k, largest=False).indices] = False
            offset = 0
            for t in targets:
                n = t.weight.numel()
                masks[t.name] = keep[offset : offset + n].view_as(t.weight)
                offset += n
        else:
            for t in progress(targets, desc=f"{self.name}", unit="layer"):
                masks[t.name] = keep_mask(scores[t.name].float(), self.sparsity, self.scope, pattern)
        with torch.no_grad():
            for t in targets:
                t.weight.mul_(masks[t.name].to(t.weight.dtype))

    def report(self, artifact: Artifact, targets: list[WeightMatrix]) -> dict:
        per_layer = {}
        zeros = total = 0
        with torch.no_grad():
            for t in targets:
                w = t.weight
                z = int((w == 0).sum())
                per_layer[t.name] = round(z / w.numel(), 4)
                zeros += z
                total += w.numel()
        return {
            "layers_pruned": len(targets),
            "sparsity_reached": round(zeros / total, 6),
            "sparsity_per_layer": per_layer,
            **count_parameters(artifact.model),
        }


class MagnitudePrune(UnstructuredPrune):
    """Zero the weights of smallest magnitude."""

    name = "magnitude_prune"

    def scores(self, artifact, targets, ctx):
        return {t.name: t.weight.abs() for t in targets}


class CalibratedPrune(UnstructuredPrune):
    """Pruning from calibration statistics, collected one-shot or block by block (``sequential``).

    Subclasses implement `prune_group`: collect the statistics of some targets
    while `run()` feeds them calibration inputs, then prune those targets.
    Sequential mode calls it once per decoder block, on the outputs of the
    blocks already pruned (see sequential.py); one-shot mode calls it once for
    every target, over a calibration pass of the unpruned model.
    """

    needs_calibration = True
    sequential: bool = Field(True, description="collect each decoder block's statistics on the outputs of the blocks "
                             "already pruned, as the papers do (false: one calibration pass of the unpruned model)")

    @model_validator(mode="before")
    @classmethod
    def _global_is_one_shot(cls, data):
        # One threshold over all matrices needs every score before any block is pruned: one-shot unless told otherwise.
        if isinstance(data, dict) and data.get("scope") == "global" and "sequential" not in data:
            data = {**data, "sequential": False}
        return data

    @model_validator(mode="after")
    def _sequential_is_not_global(self):
        if self.sequential and self.scope == "global":
            raise ValueError("scope global ranks every matrix together, so it cannot prune block by block; "
                             "use sequential: false (--one-shot) or scope row / layer")
        return self

    def prune_weights(self, artifact: Artifact, targets: list[WeightMatrix], ctx: PassContext,
                      pattern: tuple[int, int] | None) -> None:
        windows = ctx.calibration_windows(artifact.tokenizer)
        if self.sequential:
            prune_block_by_block(artifact.model, targets, windows,
                                 lambda group, run: self.prune_group(group, run, pattern), desc=self.name)
        else:
            self.prune_one_shot(artifact.model, targets, windows, pattern)

    def prune_one_shot(self, model, targets: list[WeightMatrix], windows: Windows,
                       pattern: tuple[int, int] | None) -> None:
        self.prune_group(targets, lambda: run_calibration(model, windows, f"{self.name} calibration"), pattern)

    def prune_group(self, targets: list[WeightMatrix], run: Callable[[], None],
                    pattern: tuple[int, int] | None) -> None:
        raise NotImplementedError


class WandaPrune(CalibratedPrune):
    """Zero the weights with the smallest |W| * ||X|| (activation-aware; needs calibration text)."""

    name = "wanda_prune"

    @staticmethod
    def wanda_scores(targets: list[WeightMatrix], norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t.name: t.weight.abs() * norms[t.name].to(t.weight.dtype).unsqueeze(0) for t in targets}

    def prune_one_shot(self, model, targets, windows, pattern):
        # The shared, cached statistics of the unpruned model (also used by channel and head scoring).
        norms = input_norms(model, [t.name for t in targets], windows, desc="wanda calibration")
        self.zero_lowest(targets, self.wanda_scores(targets, norms), pattern)

    def prune_group(self, targets, run, pattern):
        self.zero_lowest(targets, self.wanda_scores(targets, input_norms_while(targets, run)), pattern)
