"""Candidate blocks from a calibrated quantizer: a GPTQ (or GPTQ + tune_scales) output of the same model.

Round-to-nearest is the worst way onto a grid. On the built-in model, GPTQ's
q4_0 blocks, tuned, diverge about a quarter as much as round-to-nearest's
(benchmarks/gptq). With `blocks_from`, a matrix that the given output holds as
blocks of type T takes exactly those blocks whenever the search gives it T.
Its other types (q8_0, f16) are still made from the float weights, and
matrices without blocks are as before. The sensitivities, the check, the
back-off and the written file all use the given blocks, so what is measured is
what is written.

The given output must be a quantized copy of the float model: the same
parameters, and every one that is not a quantized matrix (norms, the embedding
of a tied head) equal. So a tune_scales output qualifies only if it was tuned
with `norms: false`: by default it trains the norms too. Refused in one line
each: an output with different parameters (GPTQ --head unties a tied head, so
it has one more), and ONNX Runtime MatMulNBits blocks, which a GGUF cannot hold.

The blocks were fitted on calibration text: GPTQ's windows, and tune_scales'
training windows, which the manifest records. Measured on that same text, a
mix of them looks better than it is. On the built-in model, held-out
calibration windows that GPTQ had read measured 0.019 while WikiText-2 measured
0.022 (benchmarks/autoquant). So `tokens_fitted_on` reads how far into each
text those passes read, and the pass takes its search and check windows from
after that point (or refuses, when nothing of the text is left).

GPTQ's error compensation and tune_scales' training assumed every other matrix
on the grid too; in a mix the others are at q8_0, so given blocks are not
exactly optimal next to them. The budget holds the measured KL (check
windows, then the written file in llama.cpp), not that assumption.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import UserError
from ..quant_grids import MATMULNBITS_TAG, dequantize_entry
from .tensors import Matrix

GPTQ_COMMAND = "compress quantize MODEL --method gptq --grid q4_0 -o DIR"


def attach_given_blocks(model, matrices: list[Matrix], ref: str, types: tuple[str, ...]) -> dict[str, Any]:
    """Load the quantized output at `ref`, check it is a copy of `model`, and give its blocks to `matrices`.

    Returns what the manifest records about it (where from, its passes, how many matrices, a digest).
    """
    from ..models import load_artifact

    given = load_artifact(ref)
    blocks = given.quantized_blocks
    if not blocks:
        raise UserError(f"{ref} holds no quantized blocks (quantized_blocks.safetensors); give a GPTQ output: "
                        f"{GPTQ_COMMAND}")
    kinds = sorted({entry[0] for entry in blocks.values()})
    if MATMULNBITS_TAG in kinds:
        raise UserError(f"{ref} holds ONNX Runtime MatMulNBits blocks, which a GGUF cannot hold; give a GPTQ output "
                        "on a GGUF grid (--grid q4_0, q4_1 or q5_0)")
    foreign = [k for k in kinds if k not in types]
    if foreign:
        raise UserError(f"{ref} holds {', '.join(foreign)} blocks, which are not among the candidate types "
                        f"({', '.join(types)}); add {foreign[0]} to the types")
    tuned = any(p.get("name") == "tune_scales" for p in given.passes)
    _check_same_model(model, given.model, blocks, ref, tuned)
    by_source = {m.source: m for m in matrices}
    digest = hashlib.sha256()
    for name in sorted(blocks):
        kind, raw = blocks[name]
        m = by_source.get(name)
        if m is None:
            raise UserError(f"{ref} has blocks for {name}, which the GGUF export does not write as a matrix of "
                            "this model; give a GPTQ output of this model")
        m.given[kind] = (blocks[name], dequantize_entry(blocks[name]).astype(np.float32).reshape(m.shape))
        digest.update(name.encode() + kind.encode() + np.ascontiguousarray(raw).tobytes())
    return {"from": ref, "source": given.source, "passes": [p.get("name") for p in given.passes],
            "matrices": len(blocks), "types": kinds, "sha256": digest.hexdigest(),
            "fitted_on": tokens_fitted_on(given.passes)}


def tokens_fitted_on(passes: list[dict]) -> dict[str, int]:
    """{text sha256: tokens from its start} that the given output's passes read (calibration and training
    windows, as their manifests record them)."""
    read: dict[str, int] = {}
    for record in passes:
        metrics = record.get("metrics") or {}
        for data in ((metrics.get("calibration") or {}).get("data"), metrics.get("train_data")):
            if not isinstance(data, dict) or not data.get("sha256") or not data.get("windows"):
                continue
            stride = data.get("stride") or data["seq_len"]
            tokens = (int(data["windows"]) - 1) * int(stride) + int(data["seq_len"])
            read[data["sha256"]] = max(read.get(data["sha256"], 0), tokens)
    return read


def _check_same_model(model, quantized, blocks: dict, ref: str, tuned: bool) -> None:
    """Every parameter but the quantized matrices must be the model's own (else the blocks belong elsewhere)."""
    mine = dict(model.named_parameters())
    theirs = dict(quantized.named_parameters())
    extra = sorted(set(theirs) - set(mine))
    lacking = sorted(set(mine) - set(theirs))
    if extra or lacking:
        what = f"has {extra[0]}, which the model lacks" if extra else f"lacks the model's {lacking[0]}"
        untied = "lm_head.weight" in extra
        hint = " (GPTQ --head unties a tied head: use an output made without --head)" if untied else ""
        raise UserError(f"{ref} is not a quantized copy of the model: it {what}{hint}")
    for name, p in mine.items():
        if name in blocks:
            continue
        q = theirs[name]
        if q.shape != p.shape or not torch.equal(q.detach().float(), p.detach().float()):
            why = ("tune_scales also trains the norms unless given norms: false" if tuned else
                   "another model, or one changed after quantizing")
            raise UserError(f"{ref} is not a quantized copy of the model: its {name} differs from the model's ({why})")


@contextmanager
def holding_given_blocks(artifact, matrices: list[Matrix], assignment: dict[str, str]) -> Iterator[int]:
    """For the GGUF writer: where `assignment` chose a given type, the model holds those blocks' weights and
    `artifact.quantized_blocks` the blocks themselves (the writer checks one against the other).

    Yields how many matrices take given blocks; on leaving, the float weights are back.
    """
    chosen = [m for m in matrices if assignment.get(m.name) in m.given]
    originals = [(m, m.param.data) for m in chosen]
    try:
        for m in chosen:
            m.param.data = m.as_param(m.given[assignment[m.name]][1])
        artifact.quantized_blocks = {m.source: m.given[assignment[m.name]][0] for m in chosen}
        yield len(chosen)
    finally:
        for m, data in originals:
            m.param.data = data
        artifact.quantized_blocks = {}
