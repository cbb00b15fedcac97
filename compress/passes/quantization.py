"""What every quantization pass shares: refusing double quantization, and the quality guard.

The guard compares a quantized model with its base on evaluation text
(`compress.evaluate.compare`: mean KL(base || variant) per token and top-1
agreement) and warns loudly, or raises `QualityError`, when the variant has
drifted too far. The `compress quantize` command and the quantization benchmark
both call `quality_guard`, so a number in the table and a warning on the
command line come from the same code.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import QualityError, UserError
from ..evaluate import compare, quality_verdict, warn_if_damaged

# Limits for quantized models, tighter than the general defaults in
# compress.evaluate (which also serve heavy pruning). Calibrated on
# SmolLM2-135M, WikiText-2 valid (tokenized), 1024-token windows
# (see benchmarks/quantization/): variants that keep quality (ORT int8 with the
# MLP down projections in float, bnb int8) sit below KL 0.06 with top-1
# agreement above 85%; dynamic int8 of every projection (+54% perplexity) sits
# at KL 0.44 / top-1 67%, and garbage output (perplexity > 10^5) is far beyond.
QUANT_MAX_KL = 0.25
QUANT_MIN_TOP1 = 0.75


_BLOCK_INDEX = re.compile(r"\.(\d+)\.")


def block_index(name: str) -> int | None:
    """The decoder block a module belongs to ('model.layers.3.mlp.up_proj' -> 3), or None."""
    match = _BLOCK_INDEX.search(name + ".")
    return int(match.group(1)) if match else None


def edge_blocks(n_layers: int, first: int, last: int) -> set[int]:
    """Indices of the first `first` and last `last` decoder blocks."""
    return set(range(min(first, n_layers))) | set(range(max(n_layers - last, 0), n_layers))


def quantization_state(artifact) -> str | None:
    """How the artifact's model is already quantized ('bitsandbytes', 'onnx-int8', ...), or None."""
    from ..genai_model import is_genai
    from ..onnx_utils import is_onnx

    if is_genai(artifact):
        for record in reversed(artifact.passes):
            if record.get("name") == "ort_genai_export" and record["config"].get("precision") != "fp32":
                return f"onnxruntime-genai-{record['config']['precision']}"
        return None
    if is_onnx(artifact):
        for record in artifact.passes:
            if record.get("name") == "ort_quantize":
                return f"onnx-{record['config'].get('method')}"
        return None
    model = artifact.model
    if getattr(model, "is_quantized", False) or getattr(getattr(model, "config", None), "quantization_config", None):
        method = getattr(getattr(model, "config", None), "quantization_config", None)
        kind = getattr(method, "quant_method", None) or (method.get("quant_method") if isinstance(method, dict) else None)
        return str(getattr(kind, "value", kind) or "quantized")
    return None


def refuse_if_quantized(artifact, what: str) -> None:
    state = quantization_state(artifact)
    if state is not None:
        raise UserError(
            f"{what}: the model is already quantized ({state}); quantize the float model instead "
            "(quantizing twice compounds the error and is not supported)"
        )


def quality_guard(
    base_model,
    variant_model,
    windows,
    what: str,
    max_kl: float = QUANT_MAX_KL,
    min_top1: float = QUANT_MIN_TOP1,
    fail: bool = False,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Compare variant with base on `windows`; warn loudly (or raise QualityError) if damaged.

    Returns compare()'s metrics plus the limits used and the problems found
    (empty list: the variant passed), ready to go into a manifest.
    """
    metrics = compare(base_model, variant_model, windows, batch_size, desc=f"checking {what} against the base")
    limits = {"max_kl": max_kl, "min_top1": min_top1}
    problems = quality_verdict(metrics, **limits)
    if problems and fail:
        raise QualityError(f"{what} failed the quality guard: " + "; ".join(problems) + "; nothing was saved")
    if problems:
        warn_if_damaged(metrics, what, **limits)
    return {**metrics, "limits": limits, "problems": problems, "passed": not problems, "data": windows.provenance}
