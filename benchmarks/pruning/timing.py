"""Side-by-side decode latency for a few models in one process (PyTorch eager, CPU).

Greedy `model.generate`, batch 1, a fixed prompt. Each repeat times every model
once, in turn (interleaved), so background load hits all of them alike; the
first `warmup` repeats are discarded. Prefill is the time of a generate call
that makes one token (the prompt's forward pass); decode speed is the extra
tokens of the full call divided by its extra time.
"""

from __future__ import annotations

import statistics
import time

import torch


def _generate_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    mask = torch.ones_like(prompt)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    seconds = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + new_tokens, "generate stopped early"
    return seconds


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def side_by_side(models: dict, prompt: torch.Tensor, new_tokens: int = 64, repeats: int = 5, warmup: int = 1) -> dict:
    """{name: {"prefill_s", "total_s", "decode_tokens_per_s"}} each as median/min/max over repeats."""
    prefill = {n: [] for n in models}
    total = {n: [] for n in models}
    for r in range(warmup + repeats):
        for name, model in models.items():
            p = _generate_seconds(model, prompt, 1)
            t = _generate_seconds(model, prompt, new_tokens)
            if r >= warmup:
                prefill[name].append(p)
                total[name].append(t)
    result = {}
    for name in models:
        rates = [(new_tokens - 1) / max(t - p, 1e-9) for p, t in zip(prefill[name], total[name])]
        result[name] = {"prefill_s": _summary(prefill[name]), "total_s": _summary(total[name]),
                        "decode_tokens_per_s": _summary(rates)}
    return result
