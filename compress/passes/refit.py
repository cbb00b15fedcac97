"""Least-squares refit of a projection whose input features were partly removed.

When structured pruning removes MLP channels, the down projection loses the
columns that read them, and what those channels added to the layer's output is
gone. The kept channels' activations are correlated with the removed ones, so
new weights on the kept columns can carry much of it: with X the projection's
input on calibration tokens, W its (out, in) weight and K the kept features,

    W'_K = argmin ||X_K W'_K^T - X W^T||^2 / tokens + λ ||W'_K - W_K||^2
         i.e.   W'_K^T = (G_KK + λI)^-1 (G_K: W^T + λ W_K^T)

with G = X^T X / tokens (the Hessian that SparseGPT and GPTQ collect). Where the
projection has a bias, a column of ones joins X_K, so the bias absorbs the
removed channels' mean as well (this subsumes bias compensation). The penalty
pulls the new weights towards the old ones rather than towards zero: λ → ∞ is
plain removal, λ → 0 the exact fit to the calibration tokens, which carries
their domain into the weights. λ is a share `damp` of the mean diagonal of
G_KK. The fit is one-shot: G comes from the unpruned model, as the channel
scores do.

Measured on all-MiniLM-L6-v2, 25 % of MLP channels removed, mean cosine of
sentence embeddings to the base's on WikiText-2 sentences: about 0.875 without
refit, 0.936 with it (benchmarks/encoders/README.md, third run).
"""

from __future__ import annotations

import torch

DEFAULT_DAMP = 1e-2


def refit_kept_inputs(
    weight: torch.Tensor, gram: torch.Tensor, mean: torch.Tensor | None, keep: torch.Tensor, damp: float = DEFAULT_DAMP
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """New (out, len(keep)) weight for the kept input features, and the bias change (None without `mean`).

    weight: (out, in) before removal; gram: (in, in) X^T X / tokens; mean: (in,) mean input over the
    same tokens, given when the projection has (or may get) a bias. Computed in float64.
    """
    w = weight.double()
    g = gram.double()
    k = len(keep)
    g_kk = g[keep][:, keep]
    lam = damp * float(g_kk.diagonal().mean().clamp_min(1e-12))
    # (k, out): what the full input produces, seen from the kept features, plus the pull towards the old weights
    rhs = g[keep] @ w.t() + lam * w[:, keep].t()
    if mean is None:
        solution = torch.linalg.solve(g_kk + lam * torch.eye(k, dtype=g.dtype), rhs)
        return solution.t().to(weight.dtype).contiguous(), None
    m = mean.double()
    system = torch.zeros(k + 1, k + 1, dtype=g.dtype)
    system[:k, :k] = g_kk + lam * torch.eye(k, dtype=g.dtype)
    system[:k, k] = m[keep]
    system[k, :k] = m[keep]
    system[k, k] = 1.0
    solution = torch.linalg.solve(system, torch.cat([rhs, (m @ w.t()).unsqueeze(0)]))
    return solution[:k].t().to(weight.dtype).contiguous(), solution[k].to(weight.dtype)


def relative_output_error(
    weight: torch.Tensor, gram: torch.Tensor, mean: torch.Tensor | None, keep: torch.Tensor,
    new_weight: torch.Tensor, bias_change: torch.Tensor | None = None,
) -> float:
    """E||W' x_K + δ - W x||² / E||W x||² over the calibration tokens that gave `gram` and `mean`.

    Plain removal is `new_weight = weight[:, keep]` with no bias change.
    """
    w = weight.double()
    g = gram.double()
    d = -w.clone()
    d[:, keep] += new_weight.double()
    error = float(torch.einsum("oi,ij,oj->", d, g, d))
    if bias_change is not None and mean is not None:
        delta = bias_change.double()
        error += float(2 * delta @ (d @ mean.double()) + delta @ delta)
    total = float(torch.einsum("oi,ij,oj->", w, g, w))
    return error / total if total > 0 else 0.0


def greedy_kept_inputs(weight: torch.Tensor, gram: torch.Tensor, mean: torch.Tensor | None, keep_count: int,
                       damp: float = DEFAULT_DAMP) -> torch.Tensor:
    """The `keep_count` input features to keep, sorted: chosen so that the refit above can make up for the rest.

    One feature at a time goes: the one whose removal, with the others re-solved (the optimal brain surgeon
    step on a whole column, as in SparseGPT), adds the least output error, ||W_:j||^2 / [H^-1]_jj with
    H = G + λI. The objective is the refit's (its λ pulls towards the old weights), so the refit of the
    kept set finishes what the selection began. With `mean` (a projection with a bias), G is centred:
    the bias absorbs the removed features' means, so only their variation costs.
    """
    w = weight.double().clone()
    g = gram.double()
    if mean is not None:
        m = mean.double()
        g = g - torch.outer(m, m)
    n = g.shape[0]
    lam = damp * float(g.diagonal().mean().clamp_min(1e-12))
    hinv = torch.linalg.inv(g + lam * torch.eye(n, dtype=g.dtype))
    alive = torch.ones(n, dtype=torch.bool)
    for _ in range(n - keep_count):
        cost = w.pow(2).sum(0) / hinv.diagonal()
        cost[~alive] = float("inf")
        j = int(torch.argmin(cost))
        row = hinv[j] / hinv[j, j]
        w -= torch.outer(w[:, j], row)
        hinv -= torch.outer(hinv[:, j], row)
        alive[j] = False
    return alive.nonzero().squeeze(1)
