"""What to measure: the variants, the settings, and the suite file that holds both.

A variant is one of

* a model reference: an alias, a local directory (a Hugging Face checkpoint, or
  an ONNX export, which runs on ONNX Runtime), a .gguf file or a hub id;
* a recipe: a list of passes (or a YAML recipe file) applied to the base model
  (or to the variant's own ``model``) and saved to a work directory before it is
  measured.

A suite (YAML, see configs/bench-default.yaml)::

    base: smollm2-135m-instruct
    settings: {prompt_lens: [128], new_tokens: 64, repeats: 5}
    evaluation: {source: builtin, split: evaluation, windows: 4, seq_len: 512}
    variants:
      - name: magnitude-50
        passes:
          - magnitude_prune: {sparsity: 0.5, scope: row}
      - name: base-bf16
        dtype: bfloat16
      - name: base-batch-16
        batch_size: 16

Pass entries stay raw until a variant is prepared, so a pass that does not
exist (yet) fails that variant with a clear message instead of the whole suite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserError
from ..passes.base import CalibrationData, format_validation_error
from ..recipe import EvaluationData

BASE_NAME = "base"
_NAME = re.compile(r"^[A-Za-z0-9][\w.+\-]*$")


def _known_backend(name: str | None) -> str | None:
    from .backends import backend_names

    if name is not None and name not in backend_names():
        raise ValueError(f"unknown backend '{name}'; use one of {', '.join(backend_names())}")
    return name


class BenchEvaluation(EvaluationData):
    """Evaluation windows for perplexity and divergence: by default 4 windows of 512 tokens (fits the 15-minute budget)."""

    seq_len: int = Field(512, ge=2)
    windows: int | None = Field(4, ge=1)


class SampleSettings(BaseModel):
    """The short greedy generation shown for each variant."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = "The most important thing to know about compressing a language model is"
    new_tokens: int = Field(24, ge=1, le=512)


class Settings(BaseModel):
    """How every variant is measured. Defaults follow benchmarks' protocol, except the evaluation size."""

    model_config = ConfigDict(extra="forbid")

    backend: str | None = Field(
        None, description="None: chosen from the model's format (an ONNX export runs on ONNX Runtime, a .gguf file "
        "on llama.cpp, ...); see compress.bench.backends")
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: str = "float32"
    prompt_lens: list[int] = Field(default_factory=lambda: [128])
    batch_size: int = Field(1, ge=1, le=1024, description="prompts timed at once (different text each); decode "
                            "tokens/s then counts every sequence's tokens; backends that batch only (pytorch)")
    new_tokens: int = Field(64, ge=2, le=4096)
    repeats: int = Field(5, ge=1, le=100)
    warmup_tokens: int = Field(8, ge=0, description="decode steps in the warm-up (after a full prefill)")
    prefill_repeats: int = Field(5, ge=1, le=50, description="prefills timed in each process; their median is that run's value")
    interleave: Literal["auto", "turns", "processes"] = Field(
        "auto", description="turns: the round's processes stay alive and time their work in turns (steadier ratios, "
        "all variants resident at once); processes: one process at a time; auto: turns on the CPU where they fit in memory")
    decode_chunk: int = Field(2, ge=1, description="decode steps per turn when taking turns")
    threads: int | None = Field(None, ge=1, description="torch/ORT intra-op threads; None: all cores")
    timeout_s: float = Field(900.0, gt=0, description="a worker spending longer than this on one variant is stopped and that "
                             "variant failed")
    quality: bool = True
    trust_remote_code: bool = Field(False, description="allow a model's own Python code (auto_map) while planning "
                                    "and building variants")
    prompt_text: str = Field("builtin", description="text the prompts are cut from (a TextSpec source); its evaluation split")

    @field_validator("prompt_lens")
    @classmethod
    def _positive(cls, v):
        if not v or any(int(x) < 1 for x in v):
            raise ValueError("prompt_lens must be a non-empty list of positive token counts")
        return [int(x) for x in v]

    @field_validator("backend")
    @classmethod
    def _backend(cls, v):
        return _known_backend(v)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v):
        from .backends import normalize_dtype

        try:
            return normalize_dtype(v)
        except UserError as exc:
            raise ValueError(str(exc)) from None


class VariantSpec(BaseModel):
    """One row of the report."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: str | None = Field(None, description="model reference; None: the base model")
    passes: list[Any] | None = Field(None, description="pass entries applied to `model` (or the base) before measuring")
    recipe: str | None = Field(None, description="a YAML recipe file whose passes (and calibration) build this variant")
    backend: str | None = None
    device: Literal["cpu", "cuda"] | None = None
    dtype: str | None = None
    batch_size: int | None = Field(None, ge=1, le=1024, description="None: settings.batch_size")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v):
        return _known_backend(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not _NAME.match(v):
            raise ValueError("a variant name uses letters, digits and . _ + - (and starts with a letter or digit)")
        return v

    @model_validator(mode="after")
    def _one_recipe(self):
        if self.passes is not None and self.recipe is not None:
            raise ValueError("give either passes or recipe, not both")
        return self

    @property
    def is_recipe(self) -> bool:
        return bool(self.passes) or self.recipe is not None

    def describe(self) -> str:
        parts = []
        if self.model:
            parts.append(self.model)
        if self.recipe:
            parts.append(f"recipe {self.recipe}")
        if self.passes:
            parts.append(" + ".join(_pass_label(p) for p in self.passes))
        return ", ".join(parts) or "the base model"


def _pass_label(entry: Any) -> str:
    if isinstance(entry, dict) and len(entry) == 1:
        (name, cfg), = entry.items()
        if isinstance(cfg, dict) and cfg:
            return f"{name}(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"
        return str(name)
    return str(entry)


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = "smollm2-135m-instruct"
    settings: Settings = Field(default_factory=Settings)
    evaluation: BenchEvaluation = Field(default_factory=BenchEvaluation)
    calibration: CalibrationData = Field(default_factory=CalibrationData)
    sample: SampleSettings = Field(default_factory=SampleSettings)
    variants: list[VariantSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self):
        seen = {BASE_NAME}
        for v in self.variants:
            if v.name in seen:
                raise ValueError(f"variant name '{v.name}' is used twice (or is the reserved name '{BASE_NAME}')")
            seen.add(v.name)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Suite":
        from ..recipe import read_yaml_mapping

        data = read_yaml_mapping(path, "suite", "give a YAML suite file (see configs/bench-default.yaml)",
                                 "a YAML mapping with 'variants' (and optionally base, settings, evaluation)")
        return cls.from_dict(data, where=f"suite {path}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "suite") -> "Suite":
        try:
            return cls(**data)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, where)) from None


def default_suite_path() -> Path:
    """configs/bench-default.yaml next to the package (an editable install or a checkout)."""
    return Path(__file__).resolve().parents[2] / "configs" / "bench-default.yaml"


def parse_variant_arg(arg: str, index: int) -> VariantSpec:
    """A command-line variant: ``[NAME=]REF``.

    REF is a YAML recipe file (``.yaml``/``.yml``), inline passes in YAML
    (``"magnitude_prune: {sparsity: 0.5}"`` or a ``[...]`` list of them), a pass
    name alone (its defaults), or else a model reference.
    """
    from ..passes import REGISTRY
    from ..passes import _load_all  # noqa: F401

    name, sep, ref = arg.partition("=")
    if not sep or not _NAME.match(name) or "/" in name:
        name, ref = "", arg
    ref = ref.strip()
    if not ref:
        raise UserError(f"variant '{arg}' is empty; give NAME=REF or REF (a model, a recipe .yaml, or passes)")
    auto_name = name or _auto_name(ref, index)
    try:
        if ref.lower().endswith((".yaml", ".yml")):
            return VariantSpec(name=auto_name, recipe=ref)
        if ref.startswith("[") or ": " in ref or ":{" in ref:
            try:
                passes = yaml.safe_load(ref)
            except yaml.YAMLError:
                raise UserError(f"variant '{arg}': inline passes are not valid YAML; e.g. \"magnitude_prune: {{sparsity: 0.5}}\"") from None
            passes = passes if isinstance(passes, list) else [passes]
            return VariantSpec(name=auto_name, passes=passes)
        if ref in REGISTRY:
            return VariantSpec(name=auto_name, passes=[ref])
        return VariantSpec(name=auto_name, model=ref)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, f"variant '{arg}'")) from None


def _auto_name(ref: str, index: int) -> str:
    stem = Path(ref.rstrip("/")).name if not ref.startswith("[") and ": " not in ref else ""
    stem = re.sub(r"\.(ya?ml)$", "", stem)
    stem = re.sub(r"[^\w.+\-]", "-", stem).strip("-.")
    return stem if stem and _NAME.match(stem) and stem != BASE_NAME else f"variant-{index + 1}"
