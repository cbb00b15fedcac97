"""Calibration statistics shared by the activation-aware pruning passes.

One pass of the calibration windows through the model collects everything the
pruning passes use:

* for every projection (Linear / Conv1D), the L2 norm and the mean of each
  input channel over all calibration tokens (Wanda's ||X_j||; for a down /
  output projection that is the activation of an MLP channel or of an
  attention head);
* for every decoder block, the mean over tokens of 1 - cos(block input, block
  output), how much the block changes the hidden state.

Hooks are registered through `hooked`, which removes them whatever happens. The result is
cached for the last few (model weights, windows) pairs, keyed by a fingerprint
of every parameter, so passes that start from the same model (Wanda at 50% and
at 2:4, channel and head scoring from one base) calibrate once; a model whose
weights changed (say, pruned by an earlier pass) gets fresh statistics.

Sequential (block-by-block) pruning cannot use one pass of the unpruned model;
it collects input norms with `input_norms_while`, over whatever its driver
feeds one block (sequential.py), uncached.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..data import Windows
from ..layers import WeightMatrix, weight_matrices
from ..progress import progress

_CACHE: "OrderedDict[tuple, CalibrationStats]" = OrderedDict()
_CACHE_SIZE = 2


@dataclass
class CalibrationStats:
    input_norms: dict[str, torch.Tensor]  # projection name -> (in_features,) L2 norms
    input_means: dict[str, torch.Tensor]  # projection name -> (in_features,) mean over tokens
    block_change: list[float]  # per decoder block: mean 1 - cos(input, output)
    tokens: int


def decoder_blocks(model) -> list[nn.Module]:
    """The decoder blocks: the ModuleList holding config.num_hidden_layers modules."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return list(module)
    return []


def run_calibration(model, windows: Windows, desc: str = "calibration") -> None:
    """Feed every calibration window through the model once (hooks do the collecting)."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        for i in progress(range(len(windows)), desc=desc, unit="window"):
            model(input_ids=windows.input_ids[i : i + 1].to(device), use_cache=False)


def _fingerprint(model, windows: Windows) -> tuple:
    h = hashlib.sha256(windows.input_ids.numpy().tobytes())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}{tuple(p.shape)}{float(p.double().sum())}{float(p.double().abs().sum())}".encode())
    return (h.hexdigest(),)


class ChannelStats:
    """Running sum of squares, sum and count of every input channel of the hooked projections."""

    def __init__(self):
        self.squares: dict[str, torch.Tensor] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def hook(self, name: str):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            s, f = x.pow(2).sum(0).double(), x.sum(0).double()
            if name in self.squares:
                self.squares[name], self.sums[name] = self.squares[name] + s, self.sums[name] + f
                self.counts[name] += x.shape[0]
            else:
                self.squares[name], self.sums[name], self.counts[name] = s, f, x.shape[0]

        return hook

    def norms(self) -> dict[str, torch.Tensor]:
        return {n: s.sqrt().float() for n, s in self.squares.items()}

    def means(self) -> dict[str, torch.Tensor]:
        return {n: (f / self.counts[n]).float() for n, f in self.sums.items()}


@contextmanager
def hooked(*registrations):
    """Register hooks (each a zero-argument callable returning a handle) and remove them all on exit, whatever happens."""
    handles = []
    try:
        for register in registrations:
            handles.append(register())
        yield
    finally:
        for h in handles:
            h.remove()


def collect(model, windows: Windows, desc: str = "calibration") -> CalibrationStats:
    """Statistics of `model` on `windows` (cached; see the module docstring)."""
    key = _fingerprint(model, windows)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    channels = ChannelStats()
    blocks = decoder_blocks(model)
    change = [[0.0, 0] for _ in blocks]

    def block_hook(i):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            change[i][0] += float((1 - cos).double().sum())
            change[i][1] += cos.numel()

        return hook

    projections = [partial(t.module.register_forward_pre_hook, channels.hook(t.name))
                   for t in weight_matrices(model, include_lm_head=True)]
    block_hooks = [partial(b.register_forward_hook, block_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    with hooked(*projections, *block_hooks):
        run_calibration(model, windows, desc)
    stats = CalibrationStats(
        input_norms=channels.norms(),
        input_means=channels.means(),
        block_change=[s / max(n, 1) for s, n in change],
        tokens=int(windows.input_ids.numel()),
    )
    _CACHE[key] = stats
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return stats


def _checked(found: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"calibration never reached {missing[:3]}; the model's forward skips these modules")
    return {n: found[n] for n in names}


def input_norms_while(targets: list[WeightMatrix], run: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Input-channel L2 norms of `targets` over whatever `run()` feeds them (not cached: for sequential pruning)."""
    channels = ChannelStats()
    with hooked(*(partial(t.module.register_forward_pre_hook, channels.hook(t.name)) for t in targets)):
        run()
    return _checked(channels.norms(), [t.name for t in targets])


def input_norms(model, names: list[str], windows: Windows, desc: str = "calibration") -> dict[str, torch.Tensor]:
    """L2 norm of each input channel of the named projections over the calibration windows."""
    return _checked(collect(model, windows, desc).input_norms, names)


def clear_cache() -> None:
    _CACHE.clear()
