"""Quality measurements shared by every pass and the benchmark.

Perplexity is token-level: exp(total negative log-likelihood / number of
predicted tokens), summed over windows, never an average of per-window
perplexities or of per-window mean losses (those weight short windows wrongly).
Position j of a window is the prediction of token j from tokens < j, so a
window of L tokens with no BOS predicts L - 1 tokens, not L (the usual
off-by-one). Which positions count is decided by `compress.data.Windows`.

Divergence from the base model (as llama.cpp's perplexity tool reports it):
mean KL(base || variant) per scored token, top-1 agreement (share of scored
positions where both models' most likely next token is the same), and the mean
change in the probability of the correct token.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .data import Windows
from .progress import log, progress


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device(getattr(model, "device", "cpu"))


@torch.no_grad()
def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Float32 logits on the CPU for a batch of windows, from a torch or ONNX Runtime model (no autograd graph:
    a caller that keeps them, such as the bench's replayed base logits, keeps only the logits)."""
    if isinstance(model, torch.nn.Module):
        out = model(input_ids=input_ids.to(_device_of(model)), use_cache=False)
    else:  # ORTModelForCausalLM and other callables taking input_ids/attention_mask
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    logits = out.logits if hasattr(out, "logits") else out
    return logits.float().cpu()


def _scored_mask(windows_batch: torch.Tensor, score_from: torch.Tensor) -> torch.Tensor:
    """Mask over target positions 1..L-1 (shape (b, L-1)) of the tokens that count."""
    positions = torch.arange(1, windows_batch.shape[1]).unsqueeze(0)
    return positions >= score_from.unsqueeze(1)


@torch.inference_mode()
def perplexity(model, windows: Windows, batch_size: int = 1, desc: str = "perplexity") -> dict[str, Any]:
    total_nll = 0.0
    total_tokens = 0
    for start in progress(range(0, len(windows), batch_size), desc=desc, unit="batch"):
        ids = windows.input_ids[start : start + batch_size]
        mask = _scored_mask(ids, windows.score_from[start : start + batch_size])
        logits = logits_of(model, ids)[:, :-1]
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        total_nll += float(nll[mask].double().sum())
        total_tokens += int(mask.sum())
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "mean_nll": mean, "tokens": total_tokens}


@torch.inference_mode()
def compare(base, variant, windows: Windows, batch_size: int = 1, desc: str = "divergence") -> dict[str, Any]:
    """Perplexity of both models and the variant's divergence from the base, same windows."""
    kl_sum = nll_base = nll_var = dp_sum = 0.0
    agree = tokens = 0
    for start in progress(range(0, len(windows), batch_size), desc=desc, unit="batch"):
        ids = windows.input_ids[start : start + batch_size]
        mask = _scored_mask(ids, windows.score_from[start : start + batch_size])
        targets = ids[:, 1:][mask]
        lp_base = F.log_softmax(logits_of(base, ids)[:, :-1][mask], dim=-1)
        lp_var = F.log_softmax(logits_of(variant, ids)[:, :-1][mask], dim=-1)
        kl_sum += float((lp_base.exp() * (lp_base - lp_var)).sum(-1).double().sum())
        agree += int((lp_base.argmax(-1) == lp_var.argmax(-1)).sum())
        tgt_base = lp_base.gather(1, targets[:, None]).squeeze(1)
        tgt_var = lp_var.gather(1, targets[:, None]).squeeze(1)
        nll_base -= float(tgt_base.double().sum())
        nll_var -= float(tgt_var.double().sum())
        dp_sum += float((tgt_var.exp() - tgt_base.exp()).double().sum())
        tokens += int(mask.sum())
    return {
        "perplexity_base": math.exp(nll_base / tokens),
        "perplexity": math.exp(nll_var / tokens),
        "kl_mean": kl_sum / tokens,
        "top1_agreement": agree / tokens,
        "delta_p_correct": dp_sum / tokens,
        "tokens": tokens,
    }


# Defaults for the quality guard: measured on SmolLM2-135M, a model that keeps
# its quality (int8, 50% activation-aware pruning) stays well inside these,
# while garbage output (perplexity > 10^5) is far outside.
DEFAULT_MAX_KL = 1.0
DEFAULT_MIN_TOP1 = 0.5


def quality_verdict(metrics: dict[str, Any], max_kl: float = DEFAULT_MAX_KL, min_top1: float = DEFAULT_MIN_TOP1) -> list[str]:
    """Problems with a variant's divergence metrics, as human-readable lines (empty: fine)."""
    problems = []
    kl, top1 = metrics.get("kl_mean"), metrics.get("top1_agreement")
    if kl is not None and (not math.isfinite(kl) or kl > max_kl):
        problems.append(f"mean KL from the base is {kl:.3g} (limit {max_kl})")
    if top1 is not None and top1 < min_top1:
        problems.append(f"top-1 agreement with the base is {top1:.1%} (limit {min_top1:.0%})")
    ppl = metrics.get("perplexity")
    if ppl is not None and not math.isfinite(ppl):
        problems.append("perplexity is not finite")
    return problems


def warn_if_damaged(metrics: dict[str, Any], what: str, **limits) -> list[str]:
    problems = quality_verdict(metrics, **limits)
    if problems:
        message = f"QUALITY WARNING for {what}: " + "; ".join(problems) + ". The model's output is likely damaged."
        log.warning(message)
        warnings.warn(message, stacklevel=2)
    return problems
