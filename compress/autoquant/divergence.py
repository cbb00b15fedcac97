"""KL(base || model) on fixed windows, the base's logits computed once.

The base's logits for every scored position are kept (float32: positions x
vocabulary x 4 bytes, about 100 MB per 512-token window of a 49k vocabulary);
each model compared with it is run window by window and KL is summed in
float64, so the divergences of single matrices (1e-6 and below) are not lost
to rounding. Positions follow compress.evaluate: a window's logit at position
p predicts token p + 1 and counts when that token is scored.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..data import Windows
from ..evaluate import logits_of
from ..progress import progress

CHUNK = 256  # positions per float64 log-softmax (memory: CHUNK x vocabulary x 8 bytes, twice)


def kl_sum(base_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Sum over rows of KL(softmax(base) || softmax(logits)), in float64."""
    total = 0.0
    for start in range(0, base_logits.shape[0], CHUNK):
        lp = F.log_softmax(base_logits[start : start + CHUNK].double(), dim=-1)
        lq = F.log_softmax(logits[start : start + CHUNK].double(), dim=-1)
        total += float((lp.exp() * (lp - lq)).sum())
    return max(total, 0.0)


class Reference:
    """The base model's logits on `windows`, to measure how far other models (or forwards) drift from it."""

    def __init__(self, model, windows: Windows, desc: str = "base logits"):
        self.windows = windows
        self.first = [int(s) - 1 for s in windows.score_from]
        self.logits = [self.scored(i, logits_of(model, windows.input_ids[i : i + 1])[0])
                       for i in progress(range(len(windows)), desc=desc, unit="window")]
        self.tokens = sum(x.shape[0] for x in self.logits)

    def __len__(self) -> int:
        return len(self.logits)

    def scored(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """The rows of one window's (length, vocabulary) logits that predict scored tokens."""
        return logits[self.first[i] : -1].float()

    def mean_kl(self, window_logits: Callable[[int], torch.Tensor]) -> float:
        """Mean KL per scored token; `window_logits(i)` gives window i's full (length, vocabulary) logits."""
        with torch.inference_mode():
            return sum(kl_sum(self.logits[i], self.scored(i, window_logits(i))) for i in range(len(self))) / self.tokens

    def model_kl(self, model) -> float:
        """Mean KL per scored token of a whole model (PyTorch, ONNX Runtime or llama.cpp) on these windows."""
        return self.mean_kl(lambda i: logits_of(model, self.windows.input_ids[i : i + 1])[0])
