"""The second-order machinery that SparseGPT pruning and GPTQ quantization share.

Both replace the weights of one projection column by column (input feature by
input feature) so that the layer's output on calibration inputs X changes as
little as possible. With H = X^T X (the Hessian of ||W X^T - W' X^T||^2 in W,
up to a factor), the optimal-brain-surgeon step for a column that moves from w
to q spreads the error (w - q) / [U]_ii over the columns not yet processed
along row i of U, the upper Cholesky factor of H^-1. Processing columns left
to right, only the columns to the right of i change, so one factorisation of
H^-1 serves the whole sweep.

* `collect_hessians` accumulates X^T X / tokens for every target while a
  caller-supplied `run()` feeds the model calibration inputs (projections fed
  the same tensor, like q/k/v or gate/up, share one Hessian object);
* `inverse_cholesky` dampens H (a share of the mean of its diagonal is added
  to the diagonal, so H is safely positive definite) and returns U; input
  features that never carried a non-zero value ("dead" columns: diagonal 0)
  get a unit diagonal and are reported so the caller can zero their weights;
* `ColumnSweep` runs the left-to-right sweep with lazy batch updates (Frantar
  et al.: the columns of one batch are updated eagerly, the rest of the matrix
  once per batch, the same result up to rounding at a fraction of the memory
  traffic). A caller-supplied `choose(sweep, i)` returns the new value of
  column i: zero or kept (SparseGPT), the nearest grid point (GPTQ). It may
  read `sweep.current(columns)` to see the present (error-updated) values of
  columns not yet processed, for decisions that look ahead (a pruning mask for
  the next batch, a quantization scale for the next runtime block).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from ..layers import WeightMatrix
from .calibration import hooked


def collect_hessians(targets: list[WeightMatrix], run: Callable[[], None],
                     means: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """X^T X / tokens for each target's input over what `run()` feeds it; projections fed the same tensor
    (q/k/v, gate/up) share one (the same tensor object). Given a `means` dict, it also receives each
    target's mean input over the same tokens (for a bias in a least-squares refit)."""
    hessians: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
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
            if means is not None:
                sums[name] = sums[name] + x.sum(0) if name in sums else x.sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    try:
        with hooked(*(partial(t.module.register_forward_pre_hook, hook_for(t.name)) for t in targets)):
            run()
    finally:
        last["input"] = None
    normalised = {name: h / counts[name] for name, h in hessians.items()}
    result = {}
    for t in targets:
        source = t.name if t.name in hessians else alias.get(t.name)
        if source is None:
            raise RuntimeError(f"calibration never reached {t.name}")
        result[t.name] = normalised[source]
        if means is not None:
            means[t.name] = sums[source] / counts[source]
    return result


def inverse_cholesky(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, dead the columns with H_jj = 0.

    `hessian` is not modified.
    """
    H = hessian.detach().float().clone()
    cols = H.shape[0]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True), dead


class ColumnSweep:
    """Replace the columns of W left to right, each column's error spread over the columns to its right.

    `W` (rows, cols) float32 is updated in place and ends holding the chosen
    values. `hinv` is `inverse_cholesky`'s U. `block` columns are processed
    between updates of the rest of the matrix (lazy batches).
    """

    def __init__(self, W: torch.Tensor, hinv: torch.Tensor, block: int):
        self.W = W
        self.hinv = hinv
        self.block = max(1, block)
        # The OBS objective of the sweep: sum over columns of ||w_i - q_i||^2 / U_ii^2 / 2 (for reports).
        self.loss = 0.0
        # State of the batch being processed: its first/last column, its present values and its errors so far,
        # both kept column-major (one column per row of memory: the rank-1 updates then run 5x faster on a CPU).
        self.i1 = self.i2 = self.done = 0
        self._W1t = self._Err1t = self.Hinv1 = None

    @property
    def W1(self) -> torch.Tensor:
        """The present values of the batch's columns, (rows, batch columns) (a view: read, don't write)."""
        return self._W1t.t()

    def current(self, columns: torch.Tensor) -> torch.Tensor:
        """The present values of `columns` (indices at or after the column being chosen), as (rows, len)."""
        columns = columns.to(torch.long)
        out = self.W[:, columns].clone()
        inside = (columns >= self.i1) & (columns < self.i2)
        if inside.any():
            out[:, inside] = self.W1[:, columns[inside] - self.i1]
        after = columns >= self.i2
        if after.any() and self.done:
            # Columns past this batch have not had its update yet: apply what the batch's errors so far owe them.
            pending = self._Err1t[: self.done].t() @ self.hinv[self.i1 : self.i1 + self.done][:, columns[after]]
            out[:, after] -= pending
        return out

    @torch.no_grad()
    def run(self, choose: Callable[["ColumnSweep", int], torch.Tensor]) -> torch.Tensor:
        W, hinv = self.W, self.hinv
        cols = W.shape[1]
        for i1 in range(0, cols, self.block):
            i2 = min(i1 + self.block, cols)
            self.i1, self.i2, self.done = i1, i2, 0
            self._W1t = W[:, i1:i2].t().contiguous()
            self._Err1t = torch.zeros_like(self._W1t)
            self.Hinv1 = hinv[i1:i2, i1:i2]
            Q1t = torch.zeros_like(self._W1t)
            for j in range(i2 - i1):
                col = self._W1t[j].clone()
                q = choose(self, i1 + j)
                Q1t[j] = q
                err = (col - q) / self.Hinv1[j, j]
                self._W1t[j:].addr_(self.Hinv1[j, j:], err, alpha=-1)
                self._Err1t[j] = err
                self.done = j + 1
            W[:, i1:i2] = Q1t.t()
            self.loss += float((self._Err1t.double() ** 2).sum()) / 2
            W[:, i2:] -= self._Err1t.t() @ hinv[i1:i2, i2:]
        self._W1t = self._Err1t = self.Hinv1 = None
        return W
