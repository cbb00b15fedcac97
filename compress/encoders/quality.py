"""How close a compressed encoder's sentence embeddings stay to its base's, on held-out sentences.

Three views, all comparing the variant with the base on the same sentences
(see docs/encoders.md):

* **cosine** between each sentence's pooled embedding from the variant and
  from the base: the mean, the 5th percentile and the minimum over sentences
  (the tail shows the sentences a variant breaks, which a mean hides);
* **top-10 neighbour overlap**: every sentence in turn is a query over all the
  others (a retrieval over the whole set); the share of its 10 nearest
  neighbours by cosine under the base that are also among its 10 nearest under
  the variant, averaged over queries. This is what a search index notices;
* **Spearman correlation** of the pairwise similarities: the rank correlation
  between the base's and the variant's cosine similarity over every pair of
  distinct sentences (what a clustering or a similarity threshold notices).

The base against itself scores 1.0 on each. Computed in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..progress import log
from .sentences import Sentences, embed

NEIGHBOURS = 10
# A variant below these limits is flagged: a warning, or with --fail-on-damage a refusal. Measured on
# all-MiniLM-L6-v2 against itself on 2,000 WikiText-2 sentences (benchmarks/encoders/): ORT int8 keeps mean
# cosine 0.993 and top-10 overlap 90%, ORT int4 (block 32) 0.968 / 86%, int4 with blocks of 128 0.945 / 81%.
# The general limits (any pass) flag embeddings that are clearly broken; the quantization guard is tighter.
MIN_MEAN_COSINE = 0.9
MIN_TOP10_OVERLAP = 0.5
QUANT_MIN_MEAN_COSINE = 0.95
QUANT_MIN_TOP10_OVERLAP = 0.75


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, tied values sharing their average rank (as Spearman's coefficient needs)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rank(a), rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def top_k_overlap(base_sims: torch.Tensor, variant_sims: torch.Tensor, k: int = NEIGHBOURS) -> float:
    """Mean over queries of |top-k(base) ∩ top-k(variant)| / k, each query excluded from its own neighbours."""
    n = base_sims.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    b = base_sims.masked_fill(eye, float("-inf")).topk(k, dim=1).indices
    v = variant_sims.masked_fill(eye, float("-inf")).topk(k, dim=1).indices
    hits = (b.unsqueeze(2) == v.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(hits.double().mean() / k)


def embedding_agreement(base: torch.Tensor, variant: torch.Tensor, k: int = NEIGHBOURS) -> dict[str, Any]:
    """The three measures for (n, d) embeddings of the same n sentences; see the module docstring."""
    if base.shape[0] != variant.shape[0]:
        raise ValueError(f"{base.shape[0]} base embeddings but {variant.shape[0]} variant embeddings")
    n = base.shape[0]
    if n <= k:
        raise ValueError(f"a top-{k} retrieval needs more than {k} sentences, got {n}")
    b = torch.nn.functional.normalize(base.double(), dim=1)
    v = torch.nn.functional.normalize(variant.double(), dim=1)
    cosine = (b * v).sum(1).clamp(-1.0, 1.0).numpy()
    base_sims, variant_sims = b @ b.T, v @ v.T
    upper = torch.triu_indices(n, n, offset=1)
    pairs_b = base_sims[upper[0], upper[1]].numpy()
    pairs_v = variant_sims[upper[0], upper[1]].numpy()
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_p5": float(np.percentile(cosine, 5)),
        "cosine_min": float(cosine.min()),
        f"top{k}_overlap": top_k_overlap(base_sims, variant_sims, k),
        "spearman_pairwise": spearman(pairs_b, pairs_v),
        "sentences": n,
        "pairs": int(len(pairs_b)),
    }


def encoder_quality(base, variant, sentences: Sentences, batch_size: int = 32,
                    base_embeddings: torch.Tensor | None = None) -> dict[str, Any]:
    """Embed `sentences` with both artifacts (each with its own pooling) and compare them."""
    if base_embeddings is None:
        base_embeddings = embed(base.model, base.tokenizer, sentences.texts, base.pooling, batch_size,
                                desc="embedding (base)")
    got = embed(variant.model, variant.tokenizer, sentences.texts, variant.pooling, batch_size,
                desc="embedding (variant)")
    return {**embedding_agreement(base_embeddings, got), "data": sentences.provenance}


def quality_problems(metrics: dict[str, Any], min_mean_cosine: float = MIN_MEAN_COSINE,
                     min_top10: float = MIN_TOP10_OVERLAP) -> list[str]:
    problems = []
    cos, overlap = metrics.get("cosine_mean"), metrics.get("top10_overlap")
    if cos is not None and not cos >= min_mean_cosine:
        problems.append(f"mean cosine to the base's embeddings is {cos:.4f} (limit {min_mean_cosine})")
    if overlap is not None and not overlap >= min_top10:
        problems.append(f"top-10 neighbour overlap with the base is {overlap:.1%} (limit {min_top10:.0%})")
    return problems


def summary_line(metrics: dict[str, Any]) -> str:
    return (f"embeddings vs base: cosine mean {metrics['cosine_mean']:.4f} (p5 {metrics['cosine_p5']:.4f}, "
            f"min {metrics['cosine_min']:.4f}), top-10 overlap {metrics['top10_overlap']:.1%}, "
            f"Spearman {metrics['spearman_pairwise']:.4f} over {metrics['sentences']} sentences")


def check_quality(base, variant, text, what: str, min_mean_cosine: float = MIN_MEAN_COSINE,
                  min_top10: float = MIN_TOP10_OVERLAP, fail: bool = False) -> dict[str, Any]:
    """The three measures on the sentences of `text` (a TextSpec), with a verdict; warn, or raise QualityError."""
    from ..errors import QualityError
    from .sentences import SentenceSpec, load_sentences

    metrics = encoder_quality(base, variant, load_sentences(SentenceSpec.from_text(text)))
    limits = {"min_mean_cosine": min_mean_cosine, "min_top10": min_top10}
    problems = quality_problems(metrics, **limits)
    if problems and fail:
        raise QualityError(f"{what} failed the quality guard: " + "; ".join(problems) + "; nothing was saved")
    if problems:
        log.warning(f"QUALITY WARNING for {what}: " + "; ".join(problems) + ". Its embeddings are likely damaged.")
    return {**metrics, "limits": limits, "problems": problems, "passed": not problems}
