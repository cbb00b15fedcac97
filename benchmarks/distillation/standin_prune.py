"""STAND-IN for the structured-pruning pass (issue: structured pruning, branch `prune`).

It exists only so the recovery benchmark has a structured-pruned student before
that pass is merged: in every Llama MLP it removes the same share of
intermediate channels, those with the smallest mean |act(gate) * up| on
calibration text, by slicing gate/up rows and down columns and setting
``intermediate_size``. The result reloads with a stock ``from_pretrained``.
Replace it with the real pass (`run.py --student DIR` accepts any saved model).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def channel_scores(model, input_ids: torch.Tensor) -> list[torch.Tensor]:
    layers = model.model.layers
    sums = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]
    handles = []
    for i, layer in enumerate(layers):
        def hook(module, args, i=i):
            sums[i] += args[0].abs().float().sum(dim=(0, 1))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(hook))
    try:
        for row in input_ids:
            model(input_ids=row[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return sums


def _slice(linear: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.data.index_select(dim, keep).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    new.weight.data = weight
    if linear.bias is not None:
        new.bias.data = linear.bias.data.index_select(0, keep).clone() if dim == 0 else linear.bias.data.clone()
    return new


@torch.inference_mode()
def prune_mlp_channels(model, input_ids: torch.Tensor, ratio: float = 0.25) -> dict:
    """Remove `ratio` of every MLP's intermediate channels in place; returns what it kept."""
    scores = channel_scores(model, input_ids)
    width = model.config.intermediate_size
    keep_n = width - int(round(ratio * width))
    for layer, score in zip(model.model.layers, scores):
        keep = torch.topk(score, keep_n).indices.sort().values
        mlp = layer.mlp
        mlp.gate_proj = _slice(mlp.gate_proj, keep, 0)
        mlp.up_proj = _slice(mlp.up_proj, keep, 0)
        mlp.down_proj = _slice(mlp.down_proj, keep, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep_n
    model.config.intermediate_size = keep_n
    return {"intermediate_size_before": width, "intermediate_size_after": keep_n,
            "score": "mean |act(gate)*up| on calibration text", "calibration_windows": len(input_ids)}
