"""Find the weight matrices a pass may touch, on Llama, GPT-2 and BERT alike.

GPT-2 stores its projections in `Conv1D` modules whose weight is (in, out),
the transpose of `nn.Linear`'s (out, in). A pass that only looks for
`nn.Linear` silently does nothing to GPT-2, so every pass goes through
`weight_matrices`, which yields a view with the (out, in) layout whatever the
module type. Writing into that view writes into the module's weight.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass
class WeightMatrix:
    """One projection: its qualified name, its module, and an (out, in) view."""

    name: str
    module: nn.Module

    @property
    def transposed(self) -> bool:
        return isinstance(self.module, Conv1D)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as (out_features, in_features); a view, so writes stick."""
        w = self.module.weight.data
        return w.t() if self.transposed else w

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


def is_projection(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the modules that map hidden states to vocabulary logits."""
    names = set()
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if head is not None and module is head:
            names.add(name)
    return names


def untie_output_head(model: nn.Module) -> bool:
    """Give a head tied to the input embeddings its own copy of their weights; True if it was tied.

    A pass that changes the head (quantizing it, say) then leaves the embedding
    table alone; the config says the model is untied, so saving and reloading
    keep the two apart.
    """
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    table = get_in() if callable(get_in) else None
    if head is None or table is None or head.weight is not table.weight:
        return False
    head.weight = nn.Parameter(table.weight.detach().clone(), requires_grad=table.weight.requires_grad)
    model.config.tie_word_embeddings = False
    return True


def weight_matrices(
    model: nn.Module,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    include_lm_head: bool = False,
) -> Iterator[WeightMatrix]:
    """Yield the projections of `model`, filtered by glob patterns on their names.

    By default: every Linear/Conv1D inside the model except the output head
    (embeddings are not projections, so they are never yielded).
    """
    heads = output_head_names(model)
    for name, module in model.named_modules():
        if not is_projection(module):
            continue
        if name in heads and not include_lm_head:
            continue
        if include and not any(fnmatch.fnmatch(name, p) for p in include):
            continue
        if exclude and any(fnmatch.fnmatch(name, p) for p in exclude):
            continue
        yield WeightMatrix(name, module)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total and non-zero parameter counts, tied weights counted once."""
    seen: set[int] = set()
    total = nonzero = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()).item())
    return {"parameters": total, "nonzero_parameters": nonzero}
