"""A PyTorch model as llama.cpp lays it out: architecture, hyperparameters, tensors.

Names come from the gguf package's own table (`gguf.get_tensor_name_map`), so
``model.layers.3.mlp.up_proj.weight`` becomes ``blk.3.ffn_up.weight`` exactly
as llama.cpp's converter names it. What this module adds is what the names do
not say:

* Llama's q and k rows are reordered for llama.cpp's rotary embedding, which
  rotates adjacent pairs (x0, x1), (x2, x3), ... where Hugging Face rotates
  halves (x0, x[d/2]), ...; within each head the rows are interleaved so the
  same pairs rotate together;
* GPT-2's ``Conv1D`` weights are stored transposed (in, out) and are turned
  back to one row per output feature, the orientation GGUF stores;
* MLP widths that differ per layer (``channel_prune`` with ``layer_ratios`` or
  ``skip_first_last``) are written as llama.cpp's ``deci`` architecture: the
  Llama graph with per-layer ``feed_forward_length`` (its ``llama`` loader reads
  one width for every layer). A checkpoint saved from such a model is padded
  with zero channels to one width (see compress.passes.structured); when the
  provenance says so, the zero channels at the end of each layer are cut off
  again, which changes no output. GPT-2's loader has no per-layer form: refused.

Anything the runtime would compute differently (another activation, rope
scaling it does not read, attention scaled by layer index) is refused with one
line instead of being written wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import UserError

LLAMA_ACTIVATIONS = ("silu",)
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # ggml's GELU is the tanh approximation


@dataclass
class Tensor:
    name: str  # GGUF name
    source: str  # the model's parameter name
    data: np.ndarray  # float32, as GGUF stores it: one row per output feature
    row_order: np.ndarray | None = None  # rows of the model's weight, in the order written (q/k)
    matrix: bool = False  # a 2-D weight matrix (can be quantized); vectors stay F32


@dataclass
class Layout:
    arch: str  # llama.cpp architecture: "llama", "deci" or "gpt2"
    hparams: dict[str, Any]
    tensors: list[Tensor]
    vocab_rows: int  # rows of the token embedding: the vocabulary llama.cpp will expect
    notes: list[str] = field(default_factory=list)

    @property
    def mlp_widths(self) -> list[int]:
        width = self.hparams["feed_forward_length"]
        return width if isinstance(width, list) else [width] * self.hparams["block_count"]


def rotary_row_order(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order that makes Hugging Face's half-split rotary pairs adjacent, as llama.cpp rotates them."""
    if head_dim % 2:
        raise UserError(f"head size {head_dim} is odd; rotary embeddings need an even head size")
    return np.arange(n_heads * head_dim).reshape(n_heads, 2, head_dim // 2).transpose(0, 2, 1).reshape(-1)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _gguf_named(model, arch, what: str):
    """(model name, GGUF name, float32 data) for every parameter, in the gguf package's naming for `arch`."""
    import gguf

    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    for source, param in model.named_parameters():
        name = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"parameter {source} has no place in llama.cpp's {what} layout; this model cannot be exported")
        yield source, name, _numpy(param)


def model_layout(model, passes: list[dict] | None = None) -> Layout:
    """The layout for a Llama-family or GPT-2 model, or a one-line refusal."""
    from ..passes.quantization import quantization_state
    from ..artifact import Artifact

    if not isinstance(model, torch.nn.Module):
        raise UserError(f"GGUF export needs a PyTorch model, got {type(model).__name__}; export the PyTorch "
                        "model (before ONNX export)")
    state = quantization_state(Artifact(model=model, tokenizer=None))
    if state is not None:
        raise UserError(f"the model is quantized with {state}, which GGUF cannot hold; export the float model "
                        "and choose a GGUF type instead")
    kind = getattr(model.config, "model_type", None)
    if kind == "llama":
        return _llama_layout(model, passes or [])
    if kind == "gpt2":
        return _gpt2_layout(model)
    raise UserError(
        f"GGUF export supports Llama-family (model_type llama) and GPT-2 models; this one is "
        f"{kind or type(model).__name__} ({type(model).__name__})"
    )


# ----------------------------------------------------------------------------------- Llama


def _llama_checks(cfg) -> None:
    act = getattr(cfg, "hidden_act", "silu")
    if act not in LLAMA_ACTIVATIONS:
        raise UserError(f"hidden_act {act}: llama.cpp's Llama graph uses SiLU only; this model cannot be exported")
    scaling = getattr(cfg, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if rope_type not in (None, "default", "linear"):
        raise UserError(f"rope_scaling type {rope_type} is not written by this exporter (only none and linear); "
                        "the model cannot be exported as it would compute other positions")
    if getattr(cfg, "partial_rotary_factor", 1.0) not in (None, 1.0):
        raise UserError("partial rotary embeddings: llama.cpp's Llama graph rotates whole heads; cannot export")


def _padded_widths(passes: list[dict]) -> bool:
    """Whether the provenance says a saved checkpoint holds per-layer MLP widths padded with zero channels."""
    return any(p.get("name") == "channel_prune" and (p.get("metrics") or {}).get("uniform") is False for p in passes)


def _live_width(mlp) -> int:
    """Channels up to the last one that is not all zero (gate row, up row, down column and their biases)."""
    used = mlp.down_proj.weight.detach().abs().sum(0) != 0
    for m in (mlp.gate_proj, mlp.up_proj):
        used |= m.weight.detach().abs().sum(1) != 0
        if m.bias is not None:
            used |= m.bias.detach() != 0
    nonzero = torch.nonzero(used).flatten()
    return int(nonzero[-1]) + 1 if len(nonzero) else 1


def _llama_layout(model, passes: list[dict]) -> Layout:
    import gguf

    cfg = model.config
    _llama_checks(cfg)
    layers = model.model.layers
    n_layers = len(layers)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    for i, layer in enumerate(layers):
        a = layer.self_attn
        if a.q_proj.out_features != heads * head_dim or a.k_proj.out_features != kv_heads * head_dim:
            raise UserError(f"layer {i} has {a.q_proj.out_features // head_dim} query / {a.k_proj.out_features // head_dim} "
                            f"key-value heads but the config says {heads} / {kv_heads}; per-layer head counts are not exported")
    widths = [layer.mlp.down_proj.in_features for layer in layers]
    notes = []
    if _padded_widths(passes) and len(set(widths)) == 1:
        live = [_live_width(layer.mlp) for layer in layers]
        if live != widths:
            notes.append(f"per-layer MLP widths {min(live)}..{max(live)} restored from the zero-padded checkpoint")
            widths = live
    arch = "llama" if len(set(widths)) == 1 else "deci"
    if arch == "deci":
        notes.append("MLP widths differ per layer: written as llama.cpp's 'deci' architecture (the Llama graph "
                     "with per-layer feed_forward_length)")
    q_order = rotary_row_order(heads, head_dim)
    k_order = rotary_row_order(kv_heads, head_dim)
    tensors = []
    arch_id = gguf.MODEL_ARCH.DECI if arch == "deci" else gguf.MODEL_ARCH.LLAMA
    for source, name, data in _gguf_named(model, arch_id, "Llama"):
        order = q_order if ".attn_q." in name else k_order if ".attn_k." in name else None
        if order is not None:
            data = data[order]
        layer = _block_of(name)
        if layer is not None and widths[layer] != data.shape[0] and name.endswith((".ffn_gate.weight", ".ffn_up.weight",
                                                                                    ".ffn_gate.bias", ".ffn_up.bias")):
            data = data[: widths[layer]]
        if layer is not None and name.endswith(".ffn_down.weight") and widths[layer] != data.shape[1]:
            data = data[:, : widths[layer]]
        tensors.append(Tensor(name, source, np.ascontiguousarray(data), order, matrix=data.ndim == 2))
    scaling = getattr(cfg, "rope_scaling", None) or {}
    hparams = {
        "context_length": int(cfg.max_position_embeddings),
        "embedding_length": int(cfg.hidden_size),
        "block_count": n_layers,
        "feed_forward_length": widths[0] if arch == "llama" else widths,
        "head_count": int(heads),
        "head_count_kv": int(kv_heads),
        "key_length": int(head_dim),
        "value_length": int(head_dim),
        "rope_dimension_count": int(head_dim),
        "rope_freq_base": float(getattr(cfg, "rope_theta", 10000.0)),
        "layer_norm_rms_eps": float(cfg.rms_norm_eps),
        "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
    }
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        hparams["rope_scaling_linear"] = float(scaling["factor"])
    return Layout(arch, hparams, tensors, hparams["vocab_size"], notes)


def _block_of(gguf_name: str) -> int | None:
    parts = gguf_name.split(".")
    return int(parts[1]) if parts[0] == "blk" else None


# ----------------------------------------------------------------------------------- GPT-2


def _gpt2_layout(model) -> Layout:
    import gguf
    from transformers.pytorch_utils import Conv1D

    cfg = model.config
    act = getattr(cfg, "activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise UserError(f"activation_function {act}: llama.cpp's GPT-2 graph uses the tanh GELU only "
                        f"({', '.join(GPT2_ACTIVATIONS)}); this model cannot be exported")
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or not getattr(cfg, "scale_attn_weights", True):
        raise UserError("this GPT-2 config scales attention differently from llama.cpp's GPT-2 graph "
                        "(scale_attn_by_inverse_layer_idx / scale_attn_weights); it cannot be exported")
    blocks = model.transformer.h
    widths = [b.mlp.c_fc.nf for b in blocks]
    if len(set(widths)) != 1:
        raise UserError(
            f"MLP widths differ per layer ({min(widths)}..{max(widths)}) and llama.cpp's GPT-2 loader reads one "
            "feed_forward_length for every layer; prune with one ratio for every layer, or save the model first "
            "(the saved checkpoint pads every layer to one width) and export that"
        )
    transposed = {n for n, m in model.named_modules() if isinstance(m, Conv1D)}
    tensors = []
    for source, name, data in _gguf_named(model, gguf.MODEL_ARCH.GPT2, "GPT-2"):
        if source.rsplit(".", 1)[0] in transposed and source.endswith(".weight"):
            data = data.T  # Conv1D keeps (in, out); GGUF rows are output features
        # llama.cpp's quantizer leaves position embeddings in float; so does this export.
        matrix = data.ndim == 2 and name != "position_embd.weight"
        tensors.append(Tensor(name, source, np.ascontiguousarray(data), None, matrix=matrix))
    hparams = {
        "context_length": int(cfg.n_positions),
        "embedding_length": int(cfg.n_embd),
        "block_count": len(blocks),
        "feed_forward_length": widths[0],
        "head_count": int(cfg.n_head),
        "layer_norm_eps": float(cfg.layer_norm_epsilon),
        "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
    }
    return Layout("gpt2", hparams, tensors, hparams["vocab_size"], [])


def write_hparams(writer, layout: Layout) -> None:
    """The architecture's keys (``llama.context_length`` and so on), through the gguf writer's own helpers."""
    import gguf

    h = layout.hparams
    writer.add_context_length(h["context_length"])
    writer.add_embedding_length(h["embedding_length"])
    writer.add_block_count(h["block_count"])
    writer.add_feed_forward_length(h["feed_forward_length"])
    writer.add_head_count(h["head_count"])
    writer.add_vocab_size(h["vocab_size"])
    if layout.arch == "gpt2":
        writer.add_layer_norm_eps(h["layer_norm_eps"])
        return
    writer.add_head_count_kv(h["head_count_kv"])
    writer.add_key_length(h["key_length"])
    writer.add_value_length(h["value_length"])
    writer.add_rope_dimension_count(h["rope_dimension_count"])
    writer.add_rope_freq_base(h["rope_freq_base"])
    writer.add_layer_norm_rms_eps(h["layer_norm_rms_eps"])
    if "rope_scaling_linear" in h:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(h["rope_scaling_linear"])
