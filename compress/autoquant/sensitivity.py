"""How much each matrix alone, at each type, moves the model: KL(base || model with only that matrix quantized).

Measured on the search windows, one forward per (matrix, type) and window, with
the matrix on the type's grid and its input rounded as llama.cpp does
(compress.autoquant.simulate). A forward starts at the decoder block that holds
the matrix: the inputs of every block are computed once on the base model
(compress.passes.sequential captures what block 0 is called with) and the
blocks before the matrix's own would compute them again unchanged. Matrices
outside the blocks: an output head starts after the last block; an embedding
table (tied or not) runs the whole model.

f16 is the exception. Its divergence per matrix is far below what a few
thousand tokens resolve (float16 keeps 11 bits; the whole built-in model at f16
is a small fraction of one q8_0 matrix), so it is measured once for the whole
model, every matrix at f16, and shared out in proportion to each matrix's
divergence at its most precise measured type. The shares add up to the
measured whole, so the prediction for all-f16 is that measurement.

Cost: (matrices x measured types x search windows) partial forwards, on
average a little more than half a forward each. Memory: every block's input
for every search window (blocks + 1) x tokens x hidden x 4 bytes, plus the
base's logits (compress.autoquant.divergence).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data import Windows
from ..progress import log, progress
from ..passes.sequential import capture_first_block_inputs, sequential_blocks
from .divergence import Reference
from .simulate import simulated
from .tensors import Matrix

SHARED = "f16"  # measured for the whole model and shared out (see the module's docstring)


def final_norm(model) -> nn.Module:
    """The norm between the last decoder block and the output head (Llama's `norm`, GPT-2's `ln_f`)."""
    inner = getattr(model, "base_model", None)
    for name in ("norm", "ln_f"):
        module = getattr(inner, name, None)
        if isinstance(module, nn.Module):
            return module
    raise RuntimeError(f"no final norm found on {type(model).__name__}")


class BlockStates:
    """Every decoder block's input on each window, from the base model, so a forward can start at any block."""

    def __init__(self, model, windows: Windows):
        self.model = model
        self.windows = windows
        self.blocks = sequential_blocks(model)
        self.norm = final_norm(model)
        self.head = model.get_output_embeddings()
        inputs = capture_first_block_inputs(model, self.blocks[0], windows)
        self.args, self.kwargs = inputs.args, inputs.kwargs
        self.states: list[list[torch.Tensor]] = []
        with torch.inference_mode():
            for i in range(len(windows)):
                h = inputs.hidden[i]
                states = [h]
                for b in range(len(self.blocks)):
                    h = self._block(b, i, h)
                    states.append(h)
                self.states.append(states)
        self.block_of = {id(m): b for b, block in enumerate(self.blocks) for m in block.modules()}

    def _block(self, b: int, i: int, h: torch.Tensor) -> torch.Tensor:
        out = self.blocks[b](h, *self.args[i], **self.kwargs[i])
        return out[0] if isinstance(out, (tuple, list)) else out

    def start_of(self, m: Matrix) -> int | None:
        """The first block a change to `m` reaches; len(blocks) for the output head; None: run the whole model."""
        if m.lookup or not m.products:
            return None
        owners = [self.block_of.get(id(p), len(self.blocks)) for p in m.products]
        return min(owners)

    def logits(self, i: int, start: int | None) -> torch.Tensor:
        """Window i's (length, vocabulary) logits, computed from block `start` on (None: the whole model)."""
        if start is None:
            ids = self.windows.input_ids[i : i + 1].to(next(self.model.parameters()).device)
            return self.model(input_ids=ids, use_cache=False).logits[0].float()
        h = self.states[i][start]
        for b in range(start, len(self.blocks)):
            h = self._block(b, i, h)
        return self.head(self.norm(h))[0].float()


def check_states(states: BlockStates, reference: Reference) -> None:
    """The forward from the last block's input must give the base's logits (else the block layout was misread)."""
    got = reference.scored(0, states.logits(0, len(states.blocks)))
    want = reference.logits[0]
    diff = float((got - want).abs().max())
    if diff > 1e-3 * max(float(want.abs().max()), 1.0):
        raise RuntimeError(f"a forward from the stored block inputs differs from the model's own by {diff:.3g}; "
                           "the model's blocks are not called the way sequential calibration assumes")


@torch.inference_mode()
def measure_sensitivity(model, matrices: list[Matrix], windows: Windows,
                        types: tuple[str, ...]) -> dict[str, Any]:
    """{"kl": {GGUF name: {type: KL}}, "measured": {name: [types measured alone]}, "shared": {...} or None}."""
    reference = Reference(model, windows, desc="sensitivity: base logits")
    states = BlockStates(model, windows)
    check_states(states, reference)
    kl: dict[str, dict[str, float]] = {m.name: {} for m in matrices}
    alone = [(m, t) for m in matrices for t in m.types if t != SHARED]
    for m, type_name in progress(alone, desc="sensitivity (matrix x type)", unit="forward set"):
        start = states.start_of(m)
        with simulated([m], {m.name: type_name}):
            kl[m.name][type_name] = reference.mean_kl(lambda i: states.logits(i, start))
    shared = None
    if SHARED in types:
        with simulated(matrices, {m.name: SHARED for m in matrices}):
            whole = reference.model_kl(model)
        if all(kl[m.name] for m in matrices):  # each matrix's KL at its most precise measured type
            weights = {m.name: kl[m.name][next(t for t in m.types if t != SHARED)] for m in matrices}
        else:  # some matrix is f16-only (no type's blocks fit its rows): share by size instead
            weights = {m.name: float(m.numel) for m in matrices}
        total = sum(weights.values()) or 1.0
        for m in matrices:
            kl[m.name][SHARED] = whole * weights[m.name] / total
        shared = {"type": SHARED, "whole_model_kl": whole,
                  "how": "measured with every matrix at f16, shared in proportion to each matrix's KL at its most "
                         "precise measured type"}
        log.info(f"sensitivity: the whole model at f16 has KL {whole:.2e}")
    del states
    return {"kl": kl, "measured": {m.name: [t for t in m.types if t != SHARED] for m in matrices},
            "shared": shared, "tokens": reference.tokens}
