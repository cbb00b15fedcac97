"""Perplexity and divergence agree with brute-force computations on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from compress import MagnitudePrune
from compress.data import WindowSpec, make_windows
from compress.evaluate import compare, perplexity, quality_verdict


def brute_force_nll(model, tokens: list[int], seq_len: int, stride: int) -> tuple[float, int]:
    """Score token t once, from the prefix a sliding window gives it, one forward per token."""
    total, count = 0.0, 0
    start = 0
    scored_until = 1
    while start + seq_len <= len(tokens):
        for t in range(max(scored_until, start + 1), start + seq_len):
            context = torch.tensor([tokens[start:t]])
            with torch.no_grad():
                logp = torch.log_softmax(model(context).logits[0, -1].double(), -1)
            total -= float(logp[tokens[t]])
            count += 1
        scored_until = start + seq_len
        start += stride
    return total, count


@pytest.mark.parametrize("stride", [16, 6])
def test_perplexity_equals_brute_force(tiny_llama, stride):
    tokens = torch.randint(0, tiny_llama.model.config.vocab_size, (60,), generator=torch.Generator().manual_seed(0)).tolist()
    windows = make_windows(tokens, WindowSpec(seq_len=16, stride=stride, max_windows=None))
    nll, count = brute_force_nll(tiny_llama.model, tokens, 16, stride)
    result = perplexity(tiny_llama.model, windows, batch_size=2)
    assert result["tokens"] == count
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_perplexity_is_token_weighted_not_a_mean_of_window_perplexities(tiny_llama):
    tokens = list(range(40))
    windows = make_windows(tokens, WindowSpec(seq_len=10, max_windows=None))
    per_window = [perplexity(tiny_llama.model, make_windows(tokens[i : i + 10], WindowSpec(seq_len=10)))
                  for i in range(0, 40, 10)]
    pooled = math.exp(sum(r["mean_nll"] * r["tokens"] for r in per_window) / sum(r["tokens"] for r in per_window))
    assert perplexity(tiny_llama.model, windows)["perplexity"] == pytest.approx(pooled, rel=1e-6)


def test_a_model_compared_with_itself_has_zero_kl_and_full_agreement(tiny_gpt2):
    windows = make_windows(list(range(64)), WindowSpec(seq_len=32))
    result = compare(tiny_gpt2.model, tiny_gpt2.model, windows)
    assert result["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert result["top1_agreement"] == 1.0
    assert result["perplexity"] == pytest.approx(result["perplexity_base"])


def test_a_changed_model_diverges(tiny_llama):
    windows = make_windows(list(range(64)), WindowSpec(seq_len=32))
    pruned = MagnitudePrune(sparsity=0.9)(tiny_llama)
    result = compare(tiny_llama.model, pruned.model, windows)
    assert result["kl_mean"] > 1e-4
    assert result["perplexity_base"] == pytest.approx(perplexity(tiny_llama.model, windows)["perplexity"])


def test_quality_verdict_flags_garbage_and_passes_a_faithful_model():
    assert quality_verdict({"kl_mean": 0.05, "top1_agreement": 0.93, "perplexity": 13.0}) == []
    problems = quality_verdict({"kl_mean": 7.5, "top1_agreement": 0.02, "perplexity": 1e7})
    assert len(problems) == 2 and "KL" in problems[0] and "top-1" in problems[1]
    assert quality_verdict({"kl_mean": float("nan")})


def test_replayed_base_logits_keep_no_autograd_graph(tiny_llama):
    from compress.bench.worker import ReplayLogits

    tokens = torch.randint(0, tiny_llama.model.config.vocab_size, (48,), generator=torch.Generator().manual_seed(1)).tolist()
    windows = make_windows(tokens, WindowSpec(seq_len=16, stride=16, max_windows=None))
    replay = ReplayLogits(tiny_llama.model, windows, 1)
    assert all(logits.grad_fn is None and not logits.requires_grad for _, logits in replay.batches)
    assert compare(replay, tiny_llama.model, windows)["kl_mean"] == pytest.approx(0.0, abs=1e-6)
