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
them all from the unpruned model in one calibration pass. The Hessians and the
column sweep are shared with GPTQ quantization (hessian.py). ``scope: global`` is
not offered (the method works one layer at a time).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..progress import progress
from .hessian import ColumnSweep, collect_hessians, inverse_cholesky
from .pruning import CalibratedPrune


def _drop_mask(scores: torch.Tensor, count: int, scope: str) -> torch.Tensor:
    """True where a weight goes: the `count`-share smallest per row (row) or in the whole block (layer)."""
    # Contiguous whatever the scores' layout (the sweep's batch is a transposed view): `layer` uses .view(-1).
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
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
    rows, cols = W.shape
    Hinv, dead = inverse_cholesky(hessian, damp)
    W[:, dead] = 0
    if pattern is not None and block % pattern[1]:
        block = pattern[1] * max(1, block // pattern[1])
    masks: dict[str, torch.Tensor] = {}

    def choose(sweep: ColumnSweep, i: int) -> torch.Tensor:
        j = i - sweep.i1
        d = torch.diag(sweep.Hinv1)
        if j == 0:
            # Unstructured: which weights of this batch go is decided from its values at the batch start.
            count = sweep.i2 - sweep.i1
            if pattern is None:
                k = int(round(sparsity * (count if scope == "row" else count * rows)))
                masks["batch"] = _drop_mask(sweep.W1.pow(2) / d.pow(2).unsqueeze(0), k, scope)
            else:
                masks["batch"] = torch.zeros_like(sweep.W1, dtype=torch.bool)
        mask1 = masks["batch"]
        if pattern is not None and j % pattern[1] == 0:
            # N:M: each group of M is decided when the sweep reaches it, from its values updated so far.
            n, m = pattern
            s = sweep.W1[:, j : j + m].pow(2) / d[j : j + m].pow(2).unsqueeze(0)
            mask1[:, j : j + m].scatter_(1, torch.topk(s, m - n, dim=1, largest=False).indices, True)
        q = sweep.W1[:, j].clone()
        q[mask1[:, j]] = 0
        return q

    return ColumnSweep(W, Hinv, block).run(choose).to(w.dtype)


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
