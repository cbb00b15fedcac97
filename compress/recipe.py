"""Recipes: an ordered list of passes plus the data they use, from YAML or Python.

YAML form (see configs/)::

    model: smollm2-135m-instruct        # optional; the CLI's --model wins
    calibration: {source: mixed, samples: 32, seq_len: 512}     # the default; see docs/calibration.md
    evaluation: {source: builtin, windows: 16, seq_len: 1024}   # or null to skip
    passes:
      - magnitude_prune: {sparsity: 0.5, scope: row}

Python form::

    Recipe(passes=[MagnitudePrune(sparsity=0.5)]).run("smollm2-135m-instruct", "out/")

Both build the same objects and run through `run_recipe`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .artifact import Artifact
from .data import TextSpec, WindowSpec, check_disjoint, load_windows
from .encoders.architecture import is_encoder, is_encoder_config
from .errors import UserError
from .evaluate import compare, perplexity, warn_if_damaged
from .models import DEFAULT_MODEL, load_artifact
from .passes.base import CalibrationData, Pass, PassContext, build_pass, format_validation_error
from .progress import log
from .saving import save_artifact
from .startup import started


def read_yaml_mapping(path: str | Path, what: str, missing_hint: str, expected: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; one-line UserErrors for a missing file, bad YAML, wrong shape."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; {missing_hint}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be {expected}")
    return data


class EvaluationData(TextSpec):
    """Evaluation text: by default the built-in corpus's evaluation half, 16 windows of 1024 tokens."""

    seq_len: int = Field(1024, ge=2)
    windows: int | None = Field(16, ge=1)  # None: every window of the text
    stride: int | None = Field(None, ge=1)
    add_bos: bool = False
    batch_size: int = Field(1, ge=1)

    def load(self, tokenizer):
        text = self.text_only()
        spec = WindowSpec(seq_len=self.seq_len, stride=self.stride, max_windows=self.windows, add_bos=self.add_bos)
        return load_windows(tokenizer, text, spec)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str | None = None
    calibration: CalibrationData = Field(default_factory=CalibrationData)
    evaluation: EvaluationData | None = Field(default_factory=EvaluationData)
    passes: list[Pass] = Field(default_factory=list)

    @field_validator("passes", mode="before")
    @classmethod
    def _build_passes(cls, value):
        if not isinstance(value, list):
            raise ValueError("passes must be a list of '- pass_name: {config}' entries")
        built = []
        for i, entry in enumerate(value):
            if isinstance(entry, Pass):
                built.append(entry)
                continue
            if isinstance(entry, str):
                built.append(build_pass(entry, {}))
                continue
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError(f"entry {i + 1} must be one 'pass_name: {{config}}' mapping, got {entry!r}")
            (name, config), = entry.items()
            built.append(build_pass(str(name), config))
        for p in built[:-1]:
            if p.output_file_suffix:
                raise ValueError(f"{p.name} writes a {p.output_file_suffix} file and must be the last pass")
        return built

    @property
    def output_file_suffix(self) -> str | None:
        """The suffix of a one-file output (".gguf") when the last pass makes one, else None (a directory)."""
        return self.passes[-1].output_file_suffix if self.passes else None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        data = read_yaml_mapping(path, "recipe", "give the path of a YAML recipe (see configs/)",
                                 "a YAML mapping with a 'passes' list")
        return cls.from_dict(data, where=f"recipe {path}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "recipe") -> "Recipe":
        try:
            return cls(**data)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, where)) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "calibration": self.calibration.model_dump(),
            "evaluation": self.evaluation.model_dump() if self.evaluation else None,
            "passes": [{p.name: p.config()} for p in self.passes],
        }

    def run(self, model: str | None = None, output: str | Path | None = None, force: bool = False) -> Artifact:
        return run_recipe(self, model=model, output=output, force=force)


def window_lengths(recipe: Recipe) -> dict[str, int | None]:
    """Tokens per window the recipe will feed the model: calibration, training (distill), evaluation."""
    training = [p.seq_len for p in recipe.passes if p.needs_calibration and isinstance(getattr(p, "seq_len", None), int)]
    calibrated = any(p.needs_calibration and not isinstance(getattr(p, "seq_len", None), int) for p in recipe.passes)
    return {"calibration": recipe.calibration.seq_len if calibrated else None,
            "training": max(training) if training else None,
            "evaluation": recipe.evaluation.seq_len if recipe.evaluation else None}


def run_recipe(
    recipe: Recipe,
    model: str | None = None,
    output: str | Path | None = None,
    force: bool = False,
    base: Artifact | None = None,
    trust_remote_code: bool = False,
) -> Artifact:
    """Load the model, measure it, apply every pass, measure again, save.

    The output path, the model's architecture and every window length are checked
    before any work so a doomed run fails at once.
    """
    started()  # the imports are done: a Ctrl-C held back during them stops here
    from .saving import check_output
    from .models import load_config, resolve_source
    from .support import check_sequence_lengths

    ref = model or recipe.model or DEFAULT_MODEL
    source = resolve_source(ref) if base is None else None
    if output is not None:
        check_output(output, force, source.path if source else base.source_path, recipe.output_file_suffix)
    if recipe.evaluation is not None and any(p.needs_calibration for p in recipe.passes):
        check_disjoint(recipe.calibration, recipe.evaluation)
    if recipe.evaluation is not None:
        for p in recipe.passes:
            p.check_evaluation(recipe.evaluation)  # text a pass reads beyond the calibration text (extra_text)
    config = load_config(source, trust_remote_code=trust_remote_code) if source else base.model.config
    lengths = window_lengths(recipe)
    if is_encoder_config(config):  # evaluated on sentences, each cut at the model's own limit, not on windows
        lengths["evaluation"] = None
    check_sequence_lengths(config, ref, lengths)

    start = time.perf_counter()
    base = base or load_artifact(ref, trust_remote_code=trust_remote_code)
    ctx = PassContext(calibration=recipe.calibration)
    encoder = is_encoder(base)  # measured on sentence embeddings, not token windows (compress.encoders)
    windows = recipe.evaluation.load(base.tokenizer) if recipe.evaluation and not encoder else None
    if not recipe.passes:
        log.warning("the recipe has no passes: the output is an unchanged copy of the model")

    current = base
    for i, p in enumerate(recipe.passes):
        # The first pass copies the base (kept for comparison); later ones work in place.
        current = p(current, ctx, inplace=i > 0)

    if encoder and recipe.evaluation is not None and recipe.passes:
        from .encoders.quality import check_quality

        current.metrics["evaluation"] = check_quality(base, current, recipe.evaluation, "the recipe's result")
    if windows is not None:
        batch = recipe.evaluation.batch_size
        if recipe.passes:
            quality = compare(base.model, current.model, windows, batch, desc="evaluating base vs result")
            current.metrics["evaluation"] = {
                "data": windows.provenance,
                "perplexity_before": quality["perplexity_base"],
                "perplexity_after": quality["perplexity"],
                "kl_mean": quality["kl_mean"],
                "top1_agreement": quality["top1_agreement"],
                "delta_p_correct": quality["delta_p_correct"],
            }
            warn_if_damaged(quality, "the recipe's result")
        else:
            ppl = perplexity(base.model, windows, batch)
            current.metrics["evaluation"] = {"data": windows.provenance, "perplexity_before": ppl["perplexity"],
                                             "perplexity_after": ppl["perplexity"]}
    current.metrics["recipe"] = recipe.to_dict()
    current.metrics["seconds"] = round(time.perf_counter() - start, 1)
    if output is not None:
        path = save_artifact(current, output, force=force)
        log.info(f"Saved to {path}")
    return current
