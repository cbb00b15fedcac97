"""Teacher-student distillation: the loss, student construction and the training loop.

`distill_into` is the one entry point the CLI (`compress distill`) and the recipe
pass (`distill`) share: it checks that the student can learn from the teacher,
trains it in place and returns what it measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact import Artifact
from ..data import TextSpec, Windows, WindowSpec, load_windows
from .loss import LossConfig, distillation_loss, divergence
from .students import (check_compatible, check_student_layers, choose_layers, depth_of, drop_layers,
                       layer_importance, layer_map_for, uniform_layers)
from .train import TrainConfig, Trainer, checkpoints

DROP_LAYERS_PASS = "drop_layers"


def kept_layers_of(student: Artifact) -> list[int] | None:
    """The teacher layers a layer-dropped student kept, from its provenance (None if not layer-dropped)."""
    for record in reversed(student.passes):
        if record.get("name") == DROP_LAYERS_PASS:
            return list(record["metrics"]["kept_layers"])
    return None


def student_layer_map(student: Artifact, teacher: Artifact) -> list[int]:
    s_depth, t_depth = depth_of(student.model), depth_of(teacher.model)
    kept = kept_layers_of(student)
    if kept is not None and len(kept) == s_depth and max(kept) < t_depth:
        return layer_map_for(s_depth, t_depth, kept)
    return layer_map_for(s_depth, t_depth)


def training_windows(tokenizer, text: TextSpec, seq_len: int, windows: int | None = None) -> Windows:
    """Non-overlapping training windows of `text` (its calibration part, by the spec's split)."""
    spec = text.text_only()
    return load_windows(tokenizer, spec, WindowSpec(seq_len=seq_len, max_windows=windows))


def distill_into(student: Artifact, teacher: Artifact | None, train_windows: Windows, config: TrainConfig,
                 eval_windows: Windows | None = None, checkpoint_dir: str | Path | None = None,
                 resume: bool = False, device: str = "cpu", final_eval: bool = True) -> dict[str, Any]:
    """Train `student.model` in place against `teacher.model` (frozen); return the training record."""
    if config.needs_teacher:
        if teacher is None:
            raise ValueError("this loss needs a teacher")
        check_compatible(teacher, student, hidden=config.hidden_weight > 0)
    layer_map = student_layer_map(student, teacher) if config.hidden_weight > 0 else None
    trainer = Trainer(student.model, teacher.model if teacher is not None else None, train_windows, config,
                      eval_windows=eval_windows, checkpoint_dir=checkpoint_dir, layer_map=layer_map, device=device)
    result = trainer.run(resume=resume, final_eval=final_eval)
    student.model = trainer.model
    return result


def summarize(result: dict[str, Any], every: int = 10) -> dict[str, Any]:
    """The training record for a manifest: losses every `every` steps rather than every step."""
    history = result["history"]
    kept = [h for h in history if h["step"] % every == 0 or h["step"] in (1, len(history))]
    return {**{k: v for k, v in result.items() if k != "history"},
            "loss_curve": [{"step": h["step"], **{k: round(h[k], 5) for k in ("loss", "ce", "embedding") if k in h}}
                           for h in kept]}


__all__ = [
    "LossConfig", "TrainConfig", "Trainer", "checkpoints", "distillation_loss", "divergence", "check_compatible",
    "check_student_layers", "choose_layers", "depth_of", "drop_layers", "layer_importance", "layer_map_for",
    "uniform_layers", "distill_into", "kept_layers_of", "student_layer_map", "summarize", "training_windows", "DROP_LAYERS_PASS",
]
