"""Sequential (block-by-block) calibration for the activation-aware pruning passes.

One-shot calibration collects every layer's statistics on the unpruned model,
so the layers of block i are pruned for inputs they will never see: once blocks
0..i-1 are pruned, what reaches block i has changed. The reference
implementations of Wanda and SparseGPT therefore go block by block, and so does
`prune_block_by_block`:

1. run every calibration window up to the first decoder block and keep what
   the block is called with (hidden states, attention mask, position
   embeddings/ids, cache position; a forward pre-hook records them and stops
   the forward with a private exception);
2. for each block in order: the caller's `prune` collects its statistics on the
   stored inputs (its hooks see them when it calls `run()`) and prunes the
   block's projections; the pruned block is then run once more on the same
   inputs, and its outputs become the next block's inputs.

Everything except the hidden states is the same for every block in the
supported layouts (Llama-family and GPT-2 blocks get one mask and one set of
position embeddings), so block 0's arguments are reused for all of them; a
config mixing layer types (sliding-window and full attention, with one mask
each) is refused. Projections outside the decoder blocks (the output head,
when asked for) come last: their statistics are collected by one ordinary
calibration pass through the model whose blocks are pruned by then.

Cost: about two forward passes of the model (stats, then outputs, per block),
plus the pruning itself. Memory: the current inputs of one block for every
window (32 x 512 tokens x hidden size, on the model's device), plus the
arguments captured at block 0. No KV cache is used (use_cache=False).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..data import Windows
from ..errors import UserError
from ..layers import WeightMatrix
from ..progress import progress
from .calibration import decoder_blocks, hooked, run_calibration

# prune(targets, run): collect statistics of `targets` while calling run(), then prune them.
PruneGroup = Callable[[list[WeightMatrix], Callable[[], None]], None]


class _ReachedFirstBlock(Exception):
    """Raised by the capture hook to stop the forward once block 0's inputs are recorded."""


class BlockInputs:
    """What a decoder block is called with, per calibration window; the hidden states are replaced block by block."""

    def __init__(self):
        self.hidden: list[torch.Tensor] = []
        self.args: list[tuple] = []  # positional arguments after the hidden states (GPT-2 passes several)
        self.kwargs: list[dict] = []

    def record(self, args: tuple, kwargs: dict) -> None:
        if args:
            self.hidden.append(args[0])
            self.args.append(tuple(args[1:]))
            self.kwargs.append(dict(kwargs))
        else:
            kwargs = dict(kwargs)
            self.hidden.append(kwargs.pop("hidden_states"))
            self.args.append(())
            self.kwargs.append(kwargs)

    def call(self, block: nn.Module, i: int) -> torch.Tensor:
        """Block output (hidden states) for window i; blocks return a tensor (Llama) or a tuple (GPT-2)."""
        out = block(self.hidden[i], *self.args[i], **self.kwargs[i])
        return out[0] if isinstance(out, (tuple, list)) else out

    def __len__(self) -> int:
        return len(self.hidden)


def sequential_blocks(model) -> list[nn.Module]:
    """The decoder blocks, or a UserError saying why this model cannot be calibrated block by block."""
    blocks = decoder_blocks(model)
    if not blocks:
        raise UserError("sequential calibration needs the model's decoder blocks (a ModuleList of "
                        "config.num_hidden_layers modules) and found none; use sequential: false (--one-shot)")
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        raise UserError(f"sequential calibration reuses block 0's attention mask for every block, but this model mixes "
                        f"layer types ({', '.join(sorted(set(layer_types)))}); use sequential: false (--one-shot)")
    return blocks


def capture_first_block_inputs(model, block: nn.Module, windows: Windows) -> BlockInputs:
    """Run each window up to `block` (the first decoder block) and record what it is called with."""
    device = next(model.parameters()).device
    inputs = BlockInputs()

    def stop(module, args, kwargs):
        inputs.record(args, kwargs)
        raise _ReachedFirstBlock

    with hooked(lambda: block.register_forward_pre_hook(stop, with_kwargs=True)), torch.no_grad():
        for i in range(len(windows)):
            try:
                model(input_ids=windows.input_ids[i : i + 1].to(device), use_cache=False)
            except _ReachedFirstBlock:
                continue
            raise RuntimeError("the model's forward never reached its first decoder block")
    return inputs


def prune_block_by_block(model, targets: list[WeightMatrix], windows: Windows, prune: PruneGroup,
                         desc: str = "sequential") -> None:
    """Prune `targets` block by block, each block's statistics taken on the outputs of the pruned blocks before it.

    `prune(group, run)` is called once per block that holds targets, with that
    block's targets; `run()` feeds the block every stored calibration input
    (the caller's hooks collect statistics meanwhile). Targets outside the
    blocks get one call at the end, where `run()` is a calibration pass of
    the whole (by then pruned) model.
    """
    blocks = sequential_blocks(model)
    owner = {id(m): i for i, b in enumerate(blocks) for m in b.modules()}
    groups: list[list[WeightMatrix]] = [[] for _ in blocks]
    outside = []
    for t in targets:
        (groups[owner[id(t.module)]] if id(t.module) in owner else outside).append(t)
    inputs = capture_first_block_inputs(model, blocks[0], windows)

    for block, group in progress(list(zip(blocks, groups)), desc=desc, unit="block"):
        if group:
            def run(block=block):
                with torch.no_grad():
                    for i in range(len(inputs)):
                        inputs.call(block, i)

            prune(group, run)
        if block is not blocks[-1]:
            with torch.no_grad():  # the pruned block's outputs are the next block's inputs
                inputs.hidden = [inputs.call(block, i) for i in range(len(inputs))]
    del inputs
    if outside:
        prune(outside, lambda: run_calibration(model, windows, f"{desc} (outside the blocks)"))
