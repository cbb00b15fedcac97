"""The distillation loss: soft teacher targets, hard token targets, hidden-state alignment.

``total = kl_weight * D(teacher, student; T) * T^2 + ce_weight * CE(student, tokens)
        + hidden_weight * mean over mapped layers of H(student_j, teacher_map[j])``

* ``D`` is the divergence between the temperature-softened distributions:
  ``forward`` KL(p_teacher || p_student) (the classic choice; mass-covering),
  ``reverse`` KL(p_student || p_teacher) (mode-seeking), or ``jsd`` (the
  Jensen-Shannon divergence, symmetric and bounded). Multiplying by T^2 keeps
  its gradient on the same scale as the cross-entropy's when T changes.
* ``CE`` is the usual next-token cross-entropy on the text.
* ``H`` is ``cosine`` (1 - cosine similarity) or ``mse`` between hidden states;
  ``layer_map[j]`` says which teacher hidden state the student's j-th one
  imitates (index 0 is the embeddings, index i the output of layer i).

Every term is a mean over the scored token positions, so the numbers do not
depend on the batch size or window length.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

Divergence = Literal["forward", "reverse", "jsd"]
HiddenLoss = Literal["cosine", "mse"]


class LossConfig(BaseModel):
    """Weights and shape of the loss; validated before any work starts."""

    model_config = ConfigDict(extra="forbid")

    kl_weight: float = Field(1.0, ge=0.0, description="weight of the divergence from the teacher's soft targets")
    ce_weight: float = Field(0.0, ge=0.0, description="weight of the cross-entropy on the text's next tokens")
    hidden_weight: float = Field(0.0, ge=0.0, description="weight of the hidden-state alignment")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature of both models in the divergence")
    divergence: Divergence = "forward"
    hidden_loss: HiddenLoss = "cosine"

    @model_validator(mode="after")
    def _something_to_learn(self):
        if self.kl_weight == 0 and self.ce_weight == 0 and self.hidden_weight == 0:
            raise ValueError("kl_weight, ce_weight and hidden_weight are all 0: nothing to train on")
        return self

    @property
    def needs_teacher(self) -> bool:
        return self.kl_weight > 0 or self.hidden_weight > 0


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               kind: Divergence = "forward") -> torch.Tensor:
    """Per-position divergence (shape: leading dims of the logits) at `temperature`, times T^2."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward":
        d = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    elif kind == "reverse":
        d = F.kl_div(log_t, log_s, log_target=True, reduction="none").sum(-1)
    else:
        # log of the mixture m = (p_s + p_t) / 2, computed stably in log space.
        log_m = torch.logsumexp(torch.stack([log_s, log_t]), dim=0) - torch.log(torch.tensor(2.0))
        d = 0.5 * (F.kl_div(log_m, log_t, log_target=True, reduction="none").sum(-1)
                   + F.kl_div(log_m, log_s, log_target=True, reduction="none").sum(-1))
    return d * temperature**2


def hidden_alignment(student_hidden, teacher_hidden, layer_map: list[int], mask: torch.Tensor,
                     kind: HiddenLoss = "cosine") -> torch.Tensor:
    """Mean alignment loss between student hidden state j (j >= 1) and teacher state layer_map[j - 1].

    `mask` (batch, seq) selects the positions that count.
    """
    if len(layer_map) != len(student_hidden) - 1:
        raise ValueError(f"layer_map has {len(layer_map)} entries for a student with {len(student_hidden) - 1} layers")
    losses = []
    for j, t in enumerate(layer_map, start=1):
        s_h, t_h = student_hidden[j][mask].float(), teacher_hidden[t][mask].float()
        if kind == "cosine":
            losses.append((1 - F.cosine_similarity(s_h, t_h, dim=-1)).mean())
        else:
            losses.append(F.mse_loss(s_h, t_h))
    return torch.stack(losses).mean()


def distillation_loss(student_out, teacher_out, input_ids: torch.Tensor, config: LossConfig,
                      layer_map: list[int] | None = None, score_from: torch.Tensor | None = None):
    """The combined loss and its parts (detached floats) for one batch of windows.

    Position i of the logits predicts token i + 1; `score_from` (per window)
    excludes positions whose target was already scored by an earlier window.
    """
    logits = student_out.logits[:, :-1]
    targets = input_ids[:, 1:]
    positions = torch.arange(1, input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    if score_from is None:
        score_from = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    mask = positions >= score_from.to(input_ids.device).unsqueeze(1)

    total = logits.new_zeros((), dtype=torch.float32)
    parts: dict[str, float] = {}
    # The cross-entropy is always reported (it is the training perplexity); it counts only if weighted.
    ce = F.cross_entropy(logits[mask].float(), targets[mask])
    parts["ce"] = float(ce.detach())
    if config.ce_weight > 0:
        total = total + config.ce_weight * ce
    if config.kl_weight > 0:
        d = divergence(logits[mask], teacher_out.logits[:, :-1][mask], config.temperature, config.divergence).mean()
        parts["kl"] = float(d.detach())
        total = total + config.kl_weight * d
    if config.hidden_weight > 0:
        full_mask = torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1)
        h = hidden_alignment(student_out.hidden_states, teacher_out.hidden_states, layer_map or [],
                             full_mask, config.hidden_loss)
        parts["hidden"] = float(h.detach())
        total = total + config.hidden_weight * h
    parts["loss"] = float(total.detach())
    return total, parts
