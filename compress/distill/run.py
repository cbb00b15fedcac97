"""What `compress distill` does, as a function (the CLI is a thin wrapper around it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..artifact import Artifact
from ..data import check_disjoint
from ..errors import UserError
from ..evaluate import compare, perplexity, warn_if_damaged
from ..devices import check_device
from ..models import load_artifact, load_config, resolve_source
from ..passes.base import CalibrationData, PassContext, format_validation_error
from ..progress import log
from ..saving import check_output_path, overlapping_input, save_artifact
from ..support import check_sequence_lengths
from . import check_compatible, distill_into, summarize, training_windows
from .students import check_student_layers, depth_of
from .train import TrainConfig, checkpoints, remove_checkpoints

_TRAIN_KEYS = set(TrainConfig.model_fields)


def train_config(options: dict[str, Any]) -> TrainConfig:
    """Validate the training options (unknown or out-of-range values are one-line errors)."""
    values = {k: v for k, v in options.items() if k in _TRAIN_KEYS}
    if values.get("clip_norm") == 0:
        values["clip_norm"] = None
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, "distill options")) from None


def refuse_encoder_source(source) -> None:
    """compress distill matches next-token distributions; an encoder teacher gets one line pointing elsewhere."""
    from ..encoders.architecture import is_encoder_config
    from ..encoders.loading import read_config
    from ..models import load_dir_of

    if is_encoder_config(read_config(load_dir_of(source))):
        raise UserError("compress distill trains causal LMs on next-token distributions, and this teacher is an "
                        "encoder; distil encoders with the embedding_distill pass in a recipe "
                        "(compress run configs/encoders/mlp25-distill.yaml -m TEACHER -o OUT; see docs/encoders.md)")


def default_checkpoint_dir(output: Path) -> Path:
    return output.parent / f"{output.name}.checkpoints"


def run_distill_command(teacher: str, output: str, calibration: CalibrationData, evaluation=None,
                        student: str | None = None, student_layers: int | None = None,
                        layer_selection: str = "uniform", train_windows: int | None = None, force: bool = False,
                        device: str = "cpu", checkpoint_dir: str | None = None, resume: bool = False,
                        keep_checkpoints: bool = False, trust_remote_code: bool = False, **options) -> Artifact | None:
    """Returns the saved student (None in the non-main processes of a multi-process run)."""
    start = time.perf_counter()
    config = train_config(options)
    unknown = set(options) - _TRAIN_KEYS
    if unknown:
        raise TypeError(f"unknown options: {sorted(unknown)}")
    if (student is None) == (student_layers is None):
        raise UserError("give exactly one of --student (a model) or --student-layers (a count of teacher layers)")
    if config.eval_every and evaluation is None:
        raise UserError("--eval-every needs evaluation text; drop --eval-text none or set --eval-every 0")
    if evaluation is not None:
        check_disjoint(calibration, evaluation)
    check_device(device)
    teacher_source = resolve_source(teacher)
    refuse_encoder_source(teacher_source)
    student_source = resolve_source(student) if student else None
    inputs = [s.path for s in (teacher_source, student_source) if s is not None and s.path is not None]
    out = check_output_path(output, force, inputs)
    ckpt_dir = Path(checkpoint_dir).expanduser().resolve() if checkpoint_dir else default_checkpoint_dir(out)
    if overlapping_input(ckpt_dir, inputs + [out]) is not None:
        raise UserError(f"checkpoint directory {ckpt_dir} overlaps the output or an input model; "
                        "choose --checkpoint-dir elsewhere")
    lengths = {"training": config.seq_len, "evaluation": evaluation.seq_len if evaluation is not None else None}
    for source in (teacher_source, student_source):
        if source is not None:
            check_sequence_lengths(load_config(source, trust_remote_code=trust_remote_code),
                                   source.path or source.ref, lengths)
    if checkpoints(ckpt_dir) and not resume and not force:
        raise UserError(f"{ckpt_dir} holds checkpoints of an earlier run; pass --resume to continue it, "
                        "or --force to start over")
    if not resume and force:
        remove_checkpoints(ckpt_dir)

    teacher_art = load_artifact(teacher, trust_remote_code=trust_remote_code)
    if student_layers is not None:
        from ..passes.distillation import DropLayers

        check_student_layers(depth_of(teacher_art.model), student_layers)
        ctx = PassContext(calibration=calibration)
        student_art = DropLayers(layers=student_layers, selection=layer_selection)(teacher_art, ctx)
    else:
        student_art = load_artifact(student, trust_remote_code=trust_remote_code)
        check_compatible(teacher_art, student_art, hidden=config.hidden_weight > 0)
    tokenizer = student_art.tokenizer
    train = training_windows(tokenizer, calibration, config.seq_len, train_windows)
    eval_windows = evaluation.load(tokenizer) if evaluation is not None else None

    from accelerate import PartialState

    main = PartialState(cpu=not device.startswith("cuda")).is_main_process
    before = None
    if eval_windows is not None and main:
        before = perplexity(student_art.model, eval_windows, evaluation.batch_size, desc="student before")
    train_start = time.perf_counter()
    result = distill_into(student_art, teacher_art, train, config, eval_windows=eval_windows,
                          checkpoint_dir=ckpt_dir if config.checkpoint_every or resume else None,
                          resume=resume, device=device, final_eval=False)
    if not main:
        return None
    student_art.model.to("cpu")
    teacher_art.model.to("cpu")
    record = {**config.model_dump(mode="json"), "teacher": teacher_source.describe(),
              "student": student_source.describe() if student_source else {"layers": student_layers,
                                                                             "selection": layer_selection},
              "device": device}
    metrics = {**summarize(result), "train_data": train.provenance}
    student_art.record_pass("distill", record, metrics, time.perf_counter() - train_start)
    if eval_windows is not None:
        quality = compare(teacher_art.model, student_art.model, eval_windows, evaluation.batch_size,
                          desc="evaluating teacher vs student")
        student_art.metrics["evaluation"] = {
            "data": eval_windows.provenance,
            "perplexity_teacher": quality["perplexity_base"],
            "perplexity_student_before": before["perplexity"],
            "perplexity_after": quality["perplexity"],
            "kl_mean": quality["kl_mean"],
            "top1_agreement": quality["top1_agreement"],
        }
        warn_if_damaged(quality, "the distilled student")
    student_art.metrics["seconds"] = round(time.perf_counter() - start, 1)
    save_artifact(student_art, out, force=force)
    log.info(f"Saved to {out}")
    if not keep_checkpoints:
        remove_checkpoints(ckpt_dir)
    return student_art
