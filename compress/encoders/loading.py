"""The load path for encoders: `AutoModel` plus the sentence-transformers pooling, chosen from the config.

`compress.models.load_artifact` reads the config first and hands encoders
here; decoders keep `AutoModelForCausalLM`. The artifact carries the pooling
(`Artifact.pooling`), which every writer saves next to the weights (see
`compress.saving.save_artifact`), so outputs reload in sentence-transformers
and in stock `AutoModel` the same way.
"""

from __future__ import annotations

from pathlib import Path

from .pooling import Pooling, hub_locator, local_locator, read_pooling


def read_config(load_dir, trust_remote_code: bool = False, cache_dir=None):
    """The model's config, or None when it cannot be read (the model load then reports why)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(load_dir, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except Exception:  # the model load right after gives the one-line reason
        return None


def pooling_of(load_dir, cache_dir=None) -> Pooling:
    """The pooling config next to a local directory's weights, or in a hub repo."""
    if Path(str(load_dir)).is_dir():
        return read_pooling(local_locator(load_dir))
    return read_pooling(hub_locator(str(load_dir), cache_dir))


def auto_class(model_or_config):
    """`AutoModel` for an encoder, `AutoModelForCausalLM` otherwise (for passes that reload a model)."""
    from transformers import AutoModel, AutoModelForCausalLM

    from .architecture import is_encoder_config

    config = getattr(model_or_config, "config", model_or_config)
    return AutoModel if is_encoder_config(config) else AutoModelForCausalLM


def without_missing_pooler(model, fresh: list[str]) -> list[str]:
    """Weights the checkpoint lacks, once an absent pooler is dropped rather than left random.

    A checkpoint saved from a masked-LM head (``BertForMaskedLM``) has no
    pooler (the dense + tanh over [CLS] of ``BertModel``). A sentence embedding
    pools the token states and never uses it, so the model goes on without
    one; its outputs then carry no pooler either, as the source did.
    """
    from ..progress import log

    pooler = [k for k in fresh if k.startswith("pooler.")]
    if pooler and len(pooler) == len(fresh) and getattr(model, "pooler", None) is not None:
        model.pooler = None
        log.info("the checkpoint has no pooler weights; the encoder goes on without a pooler, which its sentence "
                 "embedding does not use")
        return []
    return fresh
