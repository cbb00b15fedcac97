"""Students: check one against its teacher, or make one by dropping the teacher's layers.

A layer-dropped student is a deep copy of the teacher that keeps some of its
decoder layers. The config's ``num_hidden_layers`` (and ``layer_types`` where
the architecture has it) and each attention module's ``layer_idx`` are
renumbered, so generation with a KV cache works and the saved student reloads
with a stock ``AutoModelForCausalLM.from_pretrained``.

Which layers stay:

* ``uniform``: evenly spaced, always including the first and the last layer
  (with N = depth / k this is "every k-th layer");
* ``importance``: the layers that change their input most on calibration text,
  scored as 1 - cosine(input, output) of each layer averaged over tokens (a
  layer that barely changes the residual stream is the cheapest to lose).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from ..errors import UserError

LayerSelection = Literal["uniform", "importance"]


def decoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The ModuleList holding the decoder layers: (parent module, attribute name, list)."""
    depth = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == depth and attr in ("layers", "h", "blocks", "layer"):
                return module, attr, child
    raise UserError(
        f"cannot find the decoder layers of {type(model).__name__} (expected a list of {depth} layers named "
        "'layers' or 'h'); layer dropping supports Llama-, Mistral-, Qwen- and GPT-2-style models"
    )


def depth_of(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def uniform_layers(depth: int, keep: int) -> list[int]:
    """`keep` evenly spaced layer indices in [0, depth), first and last included."""
    if keep == 1:
        return [0]
    return sorted({round(i * (depth - 1) / (keep - 1)) for i in range(keep)})


@torch.inference_mode()
def layer_importance(model: nn.Module, input_ids: torch.Tensor, batch_size: int = 1) -> list[float]:
    """Per layer: mean over tokens of 1 - cosine(layer input, layer output)."""
    _, _, layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    count = 0
    handles = []

    def hook(i):
        def fn(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            sums[i] += float((1 - torch.cosine_similarity(h_in.float(), h_out.float(), dim=-1)).sum())
        return fn

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(hook(i), with_kwargs=True))
    try:
        device = next(model.parameters()).device
        for start in range(0, len(input_ids), batch_size):
            ids = input_ids[start : start + batch_size]
            model(input_ids=ids.to(device), use_cache=False)
            count += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return [s / count for s in sums]


def choose_layers(depth: int, keep: int, selection: LayerSelection = "uniform",
                  importance: list[float] | None = None) -> list[int]:
    check_student_layers(depth, keep)
    if selection == "uniform":
        return uniform_layers(depth, keep)
    if importance is None or len(importance) != depth:
        raise ValueError("importance selection needs one score per layer")
    ranked = sorted(range(depth), key=lambda i: importance[i], reverse=True)
    return sorted(ranked[:keep])


def check_student_layers(depth: int, keep: int) -> None:
    if keep < 1 or keep > depth:
        raise UserError(
            f"--student-layers {keep} is not possible: the teacher has {depth} layers; choose between 1 and {depth}"
        )


def drop_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of `model` with only the decoder layers `keep` (in order); the input is untouched."""
    depth = depth_of(model)
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= depth:
        raise UserError(f"layers to keep must be increasing indices in [0, {depth}), got {keep}")
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise UserError("this GPT-2 scales attention by 1/layer index, which renumbering layers would change; "
                        "layer dropping does not support scale_attn_by_inverse_layer_idx=True")
    student = copy.deepcopy(model)
    parent, attr, layers = decoder_layers(student)
    kept = nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    setattr(parent, attr, kept)
    renumber_layer_config(student.config, keep)
    return student


def renumber_layer_config(config, kept: list[int]) -> None:
    """The config of a model that keeps layers `kept` (old indices, in order): depth and per-layer settings."""
    depth = config.num_hidden_layers
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == depth:
        config.layer_types = [layer_types[i] for i in kept]
    pruned = getattr(config, "pruned_heads", None)
    if pruned:  # an encoder whose heads were pruned (transformers' pruned_heads is keyed by layer index)
        config.pruned_heads = {new: list(pruned[old]) for new, old in enumerate(kept) if pruned.get(old)}


def layer_map_for(student_depth: int, teacher_depth: int, kept: list[int] | None = None) -> list[int]:
    """Teacher hidden-state index imitated by each student hidden state 1..student_depth.

    A layer-dropped student maps layer j to the teacher layer it was copied
    from; otherwise the student's layers are spread evenly over the teacher's,
    last onto last.
    """
    if kept is not None:
        return [k + 1 for k in kept]
    return [round(j * teacher_depth / student_depth) for j in range(1, student_depth + 1)]


def check_compatible(teacher_artifact, student_artifact, hidden: bool = False) -> None:
    """Refuse a student that cannot learn from this teacher's distributions."""
    t_tok, s_tok = teacher_artifact.tokenizer, student_artifact.tokenizer
    if t_tok is not None and s_tok is not None and t_tok.get_vocab() != s_tok.get_vocab():
        t_v, s_v = t_tok.get_vocab(), s_tok.get_vocab()
        differ = len(set(t_v.items()) ^ set(s_v.items()))
        raise UserError(
            f"the student's tokenizer differs from the teacher's ({len(s_v)} vs {len(t_v)} tokens, "
            f"{differ} entries differ); distillation compares next-token distributions, so the student must "
            "share the teacher's tokenizer"
        )
    t_out = teacher_artifact.model.get_output_embeddings().weight.shape[0]
    s_out = student_artifact.model.get_output_embeddings().weight.shape[0]
    if t_out != s_out:
        raise UserError(f"the student predicts over {s_out} tokens and the teacher over {t_out}; "
                        "they must have the same vocabulary size")
    if hidden:
        t_h, s_h = teacher_artifact.model.config.hidden_size, student_artifact.model.config.hidden_size
        if t_h != s_h:
            raise UserError(f"hidden-state alignment needs equal hidden sizes (student {s_h}, teacher {t_h}); "
                            "set the hidden weight to 0")
