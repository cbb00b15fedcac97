"""The fastest types assignment within a divergence budget, and the back-off when measurement disagrees.

The prediction is additive: KL(assignment) ~ sum over matrices of the KL of
that matrix alone at its type (compress.autoquant.sensitivity). Under it,
choosing one type per matrix to minimise the cost (bytes read per decoded
token, compress.autoquant.cost) with the summed KL within the budget is a
multiple-choice knapsack. `fastest_within` solves it exactly by dynamic
programming over the budget cut into `bins` steps; each matrix's KL is rounded
*up* to whole steps, so the chosen assignment's predicted KL (reported
unrounded) never exceeds the budget.

Additivity is an approximation (errors of different matrices can add up, or
cancel, through the rest of the network). So the assignment is then measured on
calibration windows the search never saw, and while that measurement exceeds
the budget, `back_off` upgrades matrices to their next more precise type: the
upgrades that remove the most predicted KL per added byte first, as many as
the measured excess calls for (scaled by measured / predicted), at least one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

DEFAULT_BINS = 20000


@dataclass(frozen=True)
class Option:
    type: str
    kl: float  # predicted KL of this matrix alone at this type
    cost: float  # bytes read per decoded token


Options = dict[str, list[Option]]  # GGUF name -> its candidate types


def predicted_kl(options: Options, assignment: dict[str, str]) -> float:
    return sum(_option(options, name, t).kl for name, t in assignment.items())


def predicted_cost(options: Options, assignment: dict[str, str]) -> float:
    return sum(_option(options, name, t).cost for name, t in assignment.items())


def _option(options: Options, name: str, type_name: str) -> Option:
    return next(o for o in options[name] if o.type == type_name)


def fastest_within(options: Options, budget: float, bins: int = DEFAULT_BINS) -> dict[str, str] | None:
    """The assignment of least cost whose predicted KL is within `budget`; None when none is."""
    if not budget > 0:
        raise UserError(f"the KL budget must be a positive number, got {budget}")
    step = budget / bins
    names = list(options)
    best = np.zeros(bins + 1)  # least cost of the matrices so far with total KL steps <= index
    choices = np.zeros((len(names), bins + 1), dtype=np.int16)
    for k, name in enumerate(names):
        new = np.full(bins + 1, np.inf)
        for j, o in enumerate(options[name]):
            steps = math.ceil(o.kl / step - 1e-9) if o.kl > 0 else 0
            if steps > bins:
                continue
            candidate = np.full(bins + 1, np.inf)
            candidate[steps:] = best[: bins + 1 - steps] + o.cost
            better = candidate < new
            new[better] = candidate[better]
            choices[k, better] = j
        best = new
    if not np.isfinite(best[bins]):
        return None
    assignment, left = {}, bins
    for k in range(len(names) - 1, -1, -1):
        o = options[names[k]][choices[k, left]]
        assignment[names[k]] = o.type
        left -= math.ceil(o.kl / step - 1e-9) if o.kl > 0 else 0
    return {name: assignment[name] for name in names}


def most_precise(options: Options) -> dict[str, str]:
    """Every matrix at its least divergent type."""
    return {name: min(opts, key=lambda o: (o.kl, -o.cost)).type for name, opts in options.items()}


def _upgrade(options: Options, name: str, current: str) -> Option | None:
    """The cheapest type that is predicted to diverge less than `current`."""
    now = _option(options, name, current)
    better = [o for o in options[name] if o.kl < now.kl]
    return min(better, key=lambda o: o.cost) if better else None


def back_off(options: Options, assignment: dict[str, str], measured: float, budget: float) -> tuple[dict[str, str], list[dict]]:
    """Upgrade matrices until the predicted KL has dropped by what the measured excess calls for.

    Returns the new assignment and the upgrades made ([] when nothing can be upgraded).
    """
    predicted = predicted_kl(options, assignment)
    ratio = measured / predicted if predicted > 0 else 1.0
    needed = predicted - budget / ratio if ratio > 0 else predicted  # in predicted units
    ranked = []
    for name, current in assignment.items():
        up = _upgrade(options, name, current)
        if up is None:
            continue
        now = _option(options, name, current)
        gain = now.kl - up.kl
        ranked.append((gain / max(up.cost - now.cost, 1e-9), name, now, up))
    ranked.sort(key=lambda r: -r[0])
    new = dict(assignment)
    upgrades, removed = [], 0.0
    for _, name, now, up in ranked:
        if upgrades and removed >= needed:
            break
        new[name] = up.type
        removed += now.kl - up.kl
        upgrades.append({"tensor": name, "from": now.type, "to": up.type, "predicted_kl_removed": now.kl - up.kl,
                         "bytes_added": up.cost - now.cost})
    return new, upgrades
