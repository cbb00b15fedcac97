"""Which models are encoders, decided from the config alone.

BERT-family encoders (BERT, MiniLM, which is a BERT, RoBERTa, XLM-RoBERTa)
share one layout: ``embeddings``, ``encoder.layer[i]`` with
``attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense``, and an optional ``pooler``. They
load with ``AutoModel`` (never ``AutoModelForCausalLM``, which would bolt a
randomly initialised language-model head onto them) and are used through a
pooled sentence embedding (see pooling.py).

A config is an encoder when its ``model_type`` is one of these and it is not
configured as a decoder (``is_decoder``: a BERT used for generation).
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..support import ENCODER_ARCHITECTURES

ENCODER_MODEL_TYPES = tuple(ENCODER_ARCHITECTURES)  # compress.support says which architectures are supported


def _get(config: Any, key: str, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def is_encoder_config(config: Any) -> bool:
    """True for a BERT-family encoder config (an object or a config.json dict)."""
    return _get(config, "model_type") in ENCODER_MODEL_TYPES and not _get(config, "is_decoder", False)


def is_encoder_model(model: Any) -> bool:
    config = getattr(model, "config", None)
    return config is not None and is_encoder_config(config)


def is_encoder(artifact) -> bool:
    """An encoder artifact: loaded through the encoder path, so it carries a pooling."""
    return getattr(artifact, "pooling", None) is not None


def refuse_encoder(artifact, what: str, instead: str) -> None:
    """One line for a decoder-only operation given an encoder."""
    if is_encoder(artifact):
        kind = _get(getattr(artifact.model, "config", {}), "model_type", "encoder")
        raise UserError(f"{what} is for decoder (causal) language models, and this model is a {kind} encoder; {instead}")
