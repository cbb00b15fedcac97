"""Recipe passes for distillation: `drop_layers` makes a shallower student, `distill` trains one.

A recipe chains them with the other families, e.g. prune -> recover -> quantize::

    passes:
      - drop_layers: {layers: 15}                    # optional: a shallower student
      - distill: {steps: 200, batch_size: 4, seq_len: 256, lr: 1e-4}

`distill` trains the incoming artifact (the student) against a teacher, by
default the model the recipe started from (``teacher: source``), on the
recipe's calibration text (never its evaluation text).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from ..artifact import Artifact
from ..devices import check_device_name
from ..distill import DROP_LAYERS_PASS, TrainConfig, distill_into, summarize, training_windows
from ..distill.students import LayerSelection, choose_layers, depth_of, drop_layers, layer_importance
from ..errors import UserError
from ..layers import count_parameters
from .base import Pass, PassContext


class DropLayers(Pass):
    """Keep `layers` of the model's decoder layers (evenly spaced, or the most important)."""

    name = DROP_LAYERS_PASS
    needs_calibration = True

    layers: int = Field(..., ge=1, description="decoder layers the student keeps")
    selection: LayerSelection = Field("uniform", description="uniform (first and last included) or importance")
    importance_samples: int = Field(8, ge=1, description="calibration windows used to score layers (importance)")

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict[str, Any]:
        depth = depth_of(artifact.model)
        importance = None
        if self.selection == "importance":
            windows = ctx.calibration_windows(artifact.tokenizer)
            importance = layer_importance(artifact.model, windows.input_ids[: self.importance_samples])
        kept = choose_layers(depth, self.layers, self.selection, importance)
        before = count_parameters(artifact.model)["parameters"]
        artifact.model = drop_layers(artifact.model, kept)
        metrics: dict[str, Any] = {"teacher_layers": depth, "kept_layers": kept,
                                   "parameters_before": before, **count_parameters(artifact.model)}
        if importance is not None:
            metrics["layer_importance"] = [round(x, 5) for x in importance]
        return metrics


class TeacherTraining(BaseModel):
    """What a training pass inside a recipe needs beyond its training settings: the teacher, a device, checkpoints.

    Shared by `distill` and the encoders' `embedding_distill`.
    """

    teacher: str = Field("source", description="teacher model; 'source' is the model the recipe started from")
    device: str = Field("cpu", description="cpu or cuda")
    checkpoint_dir: str | None = Field(None, description="where checkpoints go (with checkpoint_every)")
    resume: bool = Field(False, description="continue from the newest checkpoint in checkpoint_dir")

    @field_validator("device")
    @classmethod
    def _known_device(cls, v):
        return check_device_name(v)

    @model_validator(mode="after")
    def _no_eval_in_pass(self):
        if getattr(self, "eval_every", 0):
            raise ValueError("eval_every is not available inside a recipe; the recipe's evaluation section "
                             "measures the result")
        return self

    def load_teacher(self, artifact: Artifact) -> Artifact:
        from ..models import load_artifact

        ref = self.teacher
        if ref == "source":
            ref = artifact.source.get("ref")  # an alias, hub id or path, as the recipe's model was given
            if not ref:
                raise UserError(f"{self.name}: the artifact has no recorded source to use as teacher; set 'teacher'")
        return load_artifact(str(ref))


class Distill(TrainConfig, TeacherTraining, Pass):
    """Train the artifact against a frozen teacher on the calibration text."""

    name = "distill"
    needs_calibration = True
    decoder_only = True  # it matches next-token distributions
    encoder_alternative = "use embedding_distill, which matches the teacher's sentence embeddings and hidden states"

    train_windows: int | None = Field(None, ge=1, description="training windows of seq_len tokens (None: all)")

    def training_config(self) -> TrainConfig:
        return TrainConfig(**{k: getattr(self, k) for k in TrainConfig.model_fields})

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict[str, Any]:
        config = self.training_config()
        teacher = self.load_teacher(artifact) if config.needs_teacher else None
        windows = training_windows(artifact.tokenizer, ctx.calibration, self.seq_len, self.train_windows)
        result = distill_into(artifact, teacher, windows, config, checkpoint_dir=self.checkpoint_dir,
                              resume=self.resume, device=self.device, final_eval=False)
        return {**summarize(result), "teacher": teacher.source if teacher else None,
                "train_data": windows.provenance}
