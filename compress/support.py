"""Which models the passes can handle, and how long a sequence a model takes: decided here alone.

The passes find projections and decoder blocks by three layouts (see layers.py
and passes/structured.py): Llama-style decoders (``model.layers[i]`` with
``self_attn.q/k/v/o_proj`` and ``mlp.gate/up/down_proj``), GPT-2
(``transformer.h[i]`` with Conv1D ``attn.c_attn`` and ``mlp.c_fc/c_proj``), and
BERT-family encoders (``encoder.layer[i]``; loaded with ``AutoModel``, see
compress/encoders/).
A model of another architecture would load (a BERT folder loads as
``BertLMHeadModel`` with a newly initialised head) and pass through them
silently wrong, so every command asks `check_supported` first, on the config
alone, before any weights are read.

To support another architecture, add its ``model_type`` to
``SUPPORTED_ARCHITECTURES`` once the passes handle its layout (and tests say so).
"""

from __future__ import annotations

from typing import Any

from .errors import UserError

# model_type (as in config.json) -> the family whose layout the passes know.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "llama": "Llama",
    "gpt2": "GPT-2",
}
# BERT-family sentence encoders (compress/encoders): loaded with AutoModel, used through a pooled embedding.
ENCODER_ARCHITECTURES: dict[str, str] = {
    "bert": "BERT",
    "roberta": "RoBERTa",
    "xlm-roberta": "XLM-RoBERTa",
}

# Config keys that hold the longest sequence a model takes, by architecture family.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def supported_summary() -> str:
    def listed(families: dict[str, str]) -> str:
        return ", ".join(f"{family} ({model_type})" for model_type, family in families.items())

    return f"{listed(SUPPORTED_ARCHITECTURES)} causal language models; {listed(ENCODER_ARCHITECTURES)} encoders"


def check_supported(config: Any, where: str) -> None:
    """Refuse a model the passes cannot handle, with one line naming what is supported."""
    model_type = _get(config, "model_type")
    if model_type in SUPPORTED_ARCHITECTURES:
        return
    if model_type in ENCODER_ARCHITECTURES:
        if _get(config, "is_decoder"):
            raise UserError(f"{where} is a {ENCODER_ARCHITECTURES[model_type]} configured as a decoder (is_decoder), "
                            "which compress does not support; it handles these as encoders")
        return
    architectures = _get(config, "architectures") or []
    shown = f"{model_type} ({', '.join(architectures)})" if architectures else str(model_type)
    raise UserError(f"{where} is a {shown} model, which compress does not support; supported: {supported_summary()}")


def context_length(config: Any) -> int | None:
    """The longest sequence the model accepts (positions it has embeddings for), or None if its config does not say."""
    for key in _CONTEXT_KEYS:
        value = _get(config, key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_sequence_lengths(config: Any, where: str, lengths: dict[str, int | None]) -> None:
    """Refuse windows longer than the model's context; `lengths` maps what they are for to their tokens."""
    limit = context_length(config)
    if limit is None:
        return
    too_long = {what: n for what, n in lengths.items() if n is not None and n > limit}
    if too_long:
        listed = " and ".join(f"{what} windows have {n} tokens" for what, n in too_long.items())
        raise UserError(f"{where} takes at most {limit} tokens per sequence (its context), but {listed}; "
                        f"use a sequence length of at most {limit}")
