"""Keep a pruned student's zeros through distillation (sparsity-preserving recovery).

Recovering a 50 % or 2:4 model by distillation is only worth it if the zeros
survive: an unmasked optimizer step turns every zero into a small non-zero
weight, and the model is dense again. With ``keep_sparsity`` on, the trainer
records the zero pattern of every pruned projection before the first step and
keeps it:

* after each backward pass the gradients of the pruned positions are zeroed,
  so gradient clipping measures only the weights that train and AdamW's
  moments of those positions stay exactly 0 (its update there is 0 / (0 + eps));
* after each optimizer step the pruned positions are set to 0 again, so nothing
  (weight decay, a moment carried in from elsewhere, rounding) can revive them;
* the masks are saved with every checkpoint and a resumed run takes them from
  the checkpoint, so it keeps the zeros the run started with.

``keep_sparsity: auto`` (the default) is on when the student has pruned
projections: a projection counts as pruned when at least 5 % of its weights are
exactly zero (a trained dense matrix has essentially none; our pruning passes
leave 50 % or N:M). Only those projections are masked; the others train freely.
``true`` insists (and refuses a student with nothing pruned), ``false`` trains
every weight.

Whatever the setting, the zeros of the student's projections are counted
before and after training and recorded (`report`): per-matrix sparsity before
and after, the totals, and, when the zeros form an N:M pattern along the input
dimension (2:4, 4:8, ...), how many groups still hold it.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import numpy as np
import torch

from ..errors import UserError
from ..layers import WeightMatrix, weight_matrices

KeepSparsity = Union[bool, Literal["auto"]]
PRUNED_SHARE = 0.05
PATTERN_GROUPS = (4, 8, 16)


def zero_share(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


def nm_pattern(matrices: list[torch.Tensor]) -> tuple[int, int] | None:
    """The N:M pattern every (out, in) matrix's non-zeros obey along the input dimension (N <= M / 2), if any."""
    if not matrices:
        return None
    for m in PATTERN_GROUPS:
        if any(w.shape[1] % m for w in matrices):
            continue
        n = max(int((w != 0).reshape(w.shape[0], -1, m).sum(-1).max()) for w in matrices)
        if n <= m // 2:
            return max(n, 1), m
    return None


def pattern_violations(matrix: torch.Tensor, pattern: tuple[int, int]) -> tuple[int, int]:
    """(groups of M with more than N non-zeros, groups) of one (out, in) matrix."""
    n, m = pattern
    counts = (matrix != 0).reshape(matrix.shape[0], -1, m).sum(-1)
    return int((counts > n).sum()), counts.numel()


class SparsityMasks:
    """The zero pattern of a student's pruned projections; enforced on gradients and weights unless mode is False."""

    def __init__(self, model, pruned: list[WeightMatrix], mode: KeepSparsity):
        self.mode = mode
        self.enforced = mode is not False and bool(pruned)
        self.pruned = pruned
        self.params = {f"{t.name}.weight": t.module.weight for t in pruned}
        # True where the weight trains; stored in the parameter's own layout (Conv1D: (in, out)).
        self.keep = {name: p.detach() != 0 for name, p in self.params.items()}
        self.before = self.count(model)

    @classmethod
    def of(cls, model, mode: KeepSparsity) -> "SparsityMasks":
        """The zero pattern of `model`'s pruned projections (`model` is the unwrapped student)."""
        pruned = [t for t in weight_matrices(model) if zero_share(t.weight) >= PRUNED_SHARE]
        if mode is True and not pruned:
            raise UserError(f"keep_sparsity is on but no projection of the student has {PRUNED_SHARE:.0%} or more "
                            "zeros; prune it first, or use keep_sparsity: auto")
        return cls(model, pruned, mode)

    # -- during training ---------------------------------------------------------------------------
    @torch.no_grad()
    def mask_gradients(self) -> None:
        if not self.enforced:
            return
        for name, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.keep[name])

    @torch.no_grad()
    def apply(self) -> None:
        if not self.enforced:
            return
        for name, p in self.params.items():
            p.mul_(self.keep[name])

    # -- checkpoints (bit-packed: an eighth of a byte per weight) ---------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {name: {"shape": tuple(k.shape), "bits": np.packbits(k.cpu().numpy().reshape(-1))}
                for name, k in self.keep.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the masks a run started with from its checkpoint (called after its weights are loaded)."""
        if set(state) != set(self.keep):
            raise UserError("the checkpoint's sparsity masks cover other matrices than this student's pruned ones; "
                            "resume with the student the run started from")
        for name, saved in state.items():
            size = int(np.prod(saved["shape"]))
            bits = np.unpackbits(saved["bits"])[:size].astype(bool).reshape(saved["shape"])
            self.keep[name] = torch.from_numpy(bits).to(self.keep[name].device)
        self.apply()

    # -- what the manifest records --------------------------------------------------------------------
    def count(self, model) -> dict[str, Any]:
        """Zeros of every projection of `model`, and the N:M pattern of the pruned ones."""
        per_matrix = {}
        zeros = total = 0
        for t in weight_matrices(model):
            z = int((t.weight == 0).sum())
            per_matrix[t.name] = z
            zeros += z
            total += t.weight.numel()
        return {"per_matrix": per_matrix, "zeros": zeros, "weights": total,
                "pattern": nm_pattern([t.weight for t in self.pruned])}

    def report(self, model) -> dict[str, Any]:
        """Sparsity before and after training (per matrix and in all), and whether every pruned zero is still 0."""
        after = self.count(model)
        sizes = {t.name: t.weight.numel() for t in weight_matrices(model)}
        revived = sum(int((p.detach()[~self.keep[name]] != 0).sum()) for name, p in self.params.items())
        record: dict[str, Any] = {
            "keep_sparsity": self.mode,
            "masked_matrices": len(self.params) if self.enforced else 0,
            "pruned_matrices": len(self.pruned),
            "zeros_before": self.before["zeros"],
            "zeros_after": after["zeros"],
            "sparsity_before": round(self.before["zeros"] / max(self.before["weights"], 1), 6),
            "sparsity_after": round(after["zeros"] / max(after["weights"], 1), 6),
            # Pruned positions that are no longer exactly zero (0 whenever the masks were kept).
            "pruned_weights_revived": revived,
            "per_matrix": {name: {"before": round(z / sizes[name], 6),
                                  "after": round(after["per_matrix"].get(name, 0) / sizes[name], 6)}
                           for name, z in self.before["per_matrix"].items() if z},
        }
        pattern = self.before["pattern"]
        if pattern is not None:
            violations = groups = 0
            for t in self.pruned:
                v, g = pattern_violations(t.weight, pattern)
                violations, groups = violations + v, groups + g
            record["pattern"] = {"n_m": f"{pattern[0]}:{pattern[1]}", "groups": groups,
                                 "groups_breaking_it_after": violations}
        return record
