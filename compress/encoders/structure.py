"""Structured pruning of BERT-family encoders: the layout, and attention heads through transformers' own `prune_heads`.

Intermediate channels and whole layers go through the same passes as decoders
(``channel_prune``, ``layer_drop``, ``drop_layers``; compress/passes/structured.py
knows the encoder layout: ``intermediate.dense`` rows with ``output.dense``
columns, config ``intermediate_size``).

Heads are different: a stock BERT config derives the head size from
``hidden_size / num_attention_heads``, so fewer heads cannot be written as a
smaller ``num_attention_heads``. transformers has its own mechanism instead:
``config.pruned_heads`` ({layer: [head indices]}), which ``from_pretrained``
applies before loading the weights (`PreTrainedModel.prune_heads`). So
``head_prune`` on an encoder scores the heads, calls ``model.prune_heads``, and
the saved checkpoint reloads with stock ``AutoModel`` (and sentence-transformers,
and optimum's ONNX export) at its smaller size. Head indices there are the
original ones, so pruning twice (or after dropping layers, which renumbers
``pruned_heads``) stays consistent.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..layers import count_parameters

# mode=query of head_prune removes query heads inside key/value groups; encoders have none.
_NO_GROUPS = ("BERT-family encoders have no key/value groups (every head has its own keys and values), so "
              "head_prune mode=query does not apply; use mode=groups (the default), which removes whole heads")


def heads_per_layer(config) -> list[int]:
    """How many heads each layer has now (the original count minus config.pruned_heads)."""
    pruned = getattr(config, "pruned_heads", None) or {}
    return [config.num_attention_heads - len(pruned.get(i, pruned.get(str(i), [])))
            for i in range(config.num_hidden_layers)]


def heads_to_remove(ratio: float, mode: str, config) -> list[int]:
    """Per layer, how many heads `ratio` removes; a ratio that fits no layer's count exactly is refused."""
    if mode != "groups":
        raise UserError(_NO_GROUPS)
    counts = heads_per_layer(config)
    result = []
    for i, n in enumerate(counts):
        k = round(ratio * n)
        if not (0 < k < n and abs(ratio - k / n) <= 0.01):
            valid = ", ".join(f"{j / n:.3g}" for j in range(1, n))
            where = f"layer {i} has" if len(set(counts)) > 1 else "each layer has"
            raise UserError(f"head ratio {ratio} does not fit: {where} {n} attention heads, so valid ratios are "
                            f"{valid} (whole heads: k/{n})")
        result.append(k)
    return result


def head_scores(artifact, ctx, importance: str) -> list[torch.Tensor]:
    """Per layer, one score per remaining head (in the module's current order)."""
    from ..passes.calibration import input_norms

    model = artifact.model
    layers = model.encoder.layer
    norms = None
    if importance == "activation":
        windows = ctx.calibration_windows(artifact.tokenizer)
        names = [f"encoder.layer.{i}.attention.output.dense" for i in range(len(layers))]
        norms = input_norms(model, names, windows, desc="head importance")
    scores = []
    for i, layer in enumerate(layers):
        attention = layer.attention
        n, d = attention.self.num_attention_heads, attention.self.attention_head_size
        out_cols = attention.output.dense.weight.float().pow(2).sum(0).reshape(n, d).sum(1)
        if norms is None:
            rows = sum(getattr(attention.self, p).weight.float().pow(2).reshape(n, d, -1).sum((1, 2))
                       for p in ("query", "key", "value"))
            scores.append((rows + out_cols).sqrt())
        else:  # the head's output activation times the weights that carry it out (Wanda's |W|·||X||, per head)
            x = norms[f"encoder.layer.{i}.attention.output.dense"].pow(2).reshape(n, d).sum(1)
            scores.append((x * out_cols).sqrt())
    return scores


def prune_encoder_heads(ratio: float, mode: str, importance: str, artifact, ctx,
                        refit_damp: float | None = None) -> dict[str, Any]:
    """head_prune for an encoder: remove the lowest-scored heads of every layer through model.prune_heads.

    With `refit_damp`, each layer's attention output projection is refitted on its kept columns by least
    squares on the calibration text (compress/passes/refit.py), as channel_prune refits the MLP's.
    """
    from ..layers import WeightMatrix
    from ..passes.structured import kept_input_statistics, refit_projection, refit_summary

    model = artifact.model
    config = model.config
    remove = heads_to_remove(ratio, mode, config)
    before = count_parameters(model)
    heads_before = heads_per_layer(config)
    scores = head_scores(artifact, ctx, importance)
    pruned = config.pruned_heads or {}
    plan: dict[int, list[int]] = {}
    layers = model.encoder.layer
    kept_columns = []  # per layer, the output projection's columns of the heads that stay, in the module's order
    for i, (k, s) in enumerate(zip(remove, scores)):
        # The module's heads, in order, are the original heads not pruned before.
        original = [h for h in range(config.num_attention_heads) if h not in set(pruned.get(i, []))]
        plan[i] = sorted(original[j] for j in torch.topk(s, k, largest=False).indices.tolist())
        d = layers[i].attention.self.attention_head_size
        kept = [j for j, h in enumerate(original) if h not in set(plan[i])]
        kept_columns.append((torch.tensor(kept)[:, None] * d + torch.arange(d)).flatten())
    outputs = [WeightMatrix(f"encoder.layer.{i}.attention.output.dense", layer.attention.output.dense)
               for i, layer in enumerate(layers)]
    stats = kept_input_statistics(artifact, outputs, ctx, "head statistics") if refit_damp is not None else None
    before_weights = [o.weight.detach().clone() for o in outputs]
    model.prune_heads(plan)
    errors = []
    if stats is not None:
        with torch.no_grad():
            for layer, o, full, keep in zip(layers, outputs, before_weights, kept_columns):
                dense = layer.attention.output.dense  # prune_heads put a new, narrower Linear there
                weight, delta, error = refit_projection(full, stats[o.name], keep, refit_damp, dense.bias is not None)
                errors.append(error)
                dense.weight.copy_(weight)
                if delta is not None:
                    dense.bias.add_(delta)
    return {
        "heads_before": heads_before,
        "heads_after": heads_per_layer(config),
        "removed_heads_per_layer": [plan[i] for i in range(len(plan))],
        "pruned_heads": {str(k): sorted(v) for k, v in config.pruned_heads.items()},
        **refit_summary(errors, "attention"),
        "parameters_before": before["parameters"],
        **count_parameters(model),
    }
