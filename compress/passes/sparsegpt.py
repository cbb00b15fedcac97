"""SparseGPT-style pruning: choose the weights to drop and update the ones that stay.

After Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot". For each projection with calibration inputs X, the
Hessian of the layer-wise squared error is H = X^T X. Columns are processed left
to right in blocks; within a block, the weights to drop are those with the
smallest w^2 / [H^-1]_jj^2 (per output row for ``scope: row``, per block for
``scope: layer``, per group of M inputs for an N:M pattern), and the error of
each dropped or kept column is spread over the columns not yet processed
through the Cholesky factor of H^-1, so the layer's output on the calibration
inputs changes as little as possible.

By default the Hessians are collected block by block, as in the paper's
reference: block i's on the outputs of blocks 0..i-1 already pruned and
updated (``sequential: true``, see sequential.py); ``sequential: false`` takes
them all from the unpruned model in one calibration pass. ``scope: global`` is
not offered (the method works one layer at a time).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal

import torch
from pydantic import Field

from ..layers import WeightMatrix
from ..progress import progress
from .calibration import hooked
from .pruning import CalibratedPrune


def collect_hessians(targets: list[WeightMatrix], run: Callable[[], None]) -> dict:
    """X^T X / tokens for each target's input over what `run()` feeds it; projections fed the same tensor
    (q/k/v, gate/up) share one."""
    hessians: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    alias: dict[str, str] = {}
    last: dict = {"input": None, "name": None}

    def hook_for(name):
        def hook(module, args):
            x = args[0]
            if x is last["input"]:
                alias[name] = last["name"]
                return
            last["input"], last["name"] = x, name
            x = x.detach().reshape(-1, x.shape[-1]).float()
            h = x.t() @ x
            hessians[name] = hessians[name] + h if name in hessians else h
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    try:
        with hooked(*(partial(t.module.register_forward_pre_hook, hook_for(t.name)) for t in targets)):
            run()
    finally:
        last["input"] = None
    result = {}
    for t in targets:
        source = t.name if t.name in hessians else alias.get(t.name)
        if source is None:
            raise RuntimeError(f"calibration never reached {t.name}")
        result[t.name] = hessians[source] / counts[source]
    return result


def _drop_mask(scores: torch.Tensor, count: int, scope: str) -> torch.Tensor:
    """True where a weight goes: the `count`-share smallest per row (row) or in the whole block (layer)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if scope == "row":
        if count:
            mask.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, True)
    elif count:
        mask.view(-1)[torch.topk(scores.flatten(), count, largest=False).indices] = True
    return mask


@torch.no_grad()
def sparsegpt_prune_matrix(w: torch.Tensor, hessian: torch.Tensor, sparsity: float, scope: str,
                           pattern: tuple[int, int] | None, block: int = 128, damp: float = 0.01) -> torch.Tensor:
    """Return the pruned and updated (out, in) matrix; `w` is not modified."""
    W = w.detach().float().clone()
    H = hessian.detach().float().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    if pattern is not None and block % pattern[1]:
        block = pattern[1] * max(1, block // pattern[1])
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if pattern is None:
            k = int(round(sparsity * (count if scope == "row" else count * rows)))
            mask1 = _drop_mask(W1.pow(2) / d.pow(2).unsqueeze(0), k, scope)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            col = W1[:, i]
            if pattern is not None and i % pattern[1] == 0:
                n, m = pattern
                s = W1[:, i : i + m].pow(2) / d[i : i + m].pow(2).unsqueeze(0)
                mask1[:, i : i + m].scatter_(1, torch.topk(s, m - n, dim=1, largest=False).indices, True)
            q = col.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (col - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(w.dtype)


class SparseGPTPrune(CalibratedPrune):
    """Zero weights by the SparseGPT criterion and update the remaining ones to compensate."""

    name = "sparsegpt_prune"

    scope: Literal["row", "layer"] = "row"  # type: ignore[assignment]
    block_size: int = Field(128, ge=1, description="columns processed together")
    damp: float = Field(0.01, gt=0.0, lt=1.0, description="dampening added to the Hessian's diagonal (share of its mean)")

    def prune_group(self, targets, run, pattern):
        hessians = collect_hessians(targets, run)
        for t in progress(targets, desc=self.name, unit="layer"):
            pruned = sparsegpt_prune_matrix(t.weight, hessians.pop(t.name), self.sparsity, self.scope, pattern,
                                            self.block_size, self.damp)
            t.weight.copy_(pruned)
