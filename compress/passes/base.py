"""The Pass interface, its registry, and what the runner hands a pass.

A pass is a pydantic model: its fields are its config, validated on
construction (unknown keys and out-of-range values are refused before any
work starts). The registry maps the pass name to its class, so a YAML recipe
entry ``- magnitude_prune: {sparsity: 0.5}`` and the Python call
``MagnitudePrune(sparsity=0.5)`` build the same object.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..artifact import Artifact
from ..data import DEFAULT_CALIBRATION, TextSpec, Windows, WindowSpec, load_windows
from ..errors import UserError
from ..progress import log

REGISTRY: dict[str, type["Pass"]] = {}


class CalibrationData(TextSpec):
    """Calibration text: by default the calibration part of `mixed` (docs/calibration.md), 32 samples of 512 tokens."""

    source: str = DEFAULT_CALIBRATION
    split: str = "calibration"  # type: ignore[assignment]
    seq_len: int = Field(512, ge=2)
    samples: int = Field(32, ge=1)

    def windows(self, tokenizer) -> Windows:
        text = self.text_only()
        return load_windows(tokenizer, text, WindowSpec(seq_len=self.seq_len, max_windows=self.samples))


class PassContext:
    """What a pass may ask the runner for: calibration windows, a device, a seed."""

    def __init__(self, calibration: CalibrationData | None = None, device: str = "cpu", seed: int = 0):
        self.calibration = calibration or CalibrationData()
        self.device = device
        self.seed = seed
        self._calibration_cache: dict[int, Windows] = {}

    def calibration_windows(self, tokenizer) -> Windows:
        key = id(tokenizer)
        if key not in self._calibration_cache:
            self._calibration_cache[key] = self.calibration.windows(tokenizer)
        return self._calibration_cache[key]

    def calibration_record(self) -> dict:
        """The calibration spec, plus what was read (source, licence, hash, tokens) once windows were loaded."""
        record = self.calibration.model_dump()
        loaded = list(self._calibration_cache.values())
        if loaded:
            record["data"] = loaded[-1].provenance
        return record


class Pass(BaseModel):
    """One transformation of an Artifact. Subclasses set `name` and implement `apply`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False
    # A pass whose result is saved as one file (".gguf"): it must be a recipe's last pass,
    # and the output path must end in this suffix.
    output_file_suffix: ClassVar[str | None] = None
    # Set on passes that only make sense for causal LMs (next-token distributions, KV caches):
    # given an encoder, they refuse in one line before any work (see compress.encoders).
    decoder_only: ClassVar[bool] = False
    encoder_alternative: ClassVar[str] = "no pass does this for encoders yet"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            REGISTRY[cls.name] = cls

    def apply(self, artifact: Artifact, ctx: PassContext) -> dict[str, Any]:
        """Transform artifact in place; return what was measured (goes into the manifest)."""
        raise NotImplementedError

    def __call__(self, artifact: Artifact, ctx: PassContext | None = None, inplace: bool = False) -> Artifact:
        """Apply the pass. Works on a copy unless inplace, so the caller's model is never modified."""
        ctx = ctx or PassContext()
        if self.decoder_only:
            from ..encoders.architecture import refuse_encoder

            refuse_encoder(artifact, f"the {self.name} pass", self.encoder_alternative)
        result = artifact if inplace else artifact.copy()
        log.info(f"Applying {self.name}: {self.describe()}")
        start = time.perf_counter()
        metrics = self.apply(result, ctx) or {}
        seconds = time.perf_counter() - start
        if self.needs_calibration:
            metrics.setdefault("calibration", ctx.calibration_record())
        result.record_pass(self.name, self.config(), metrics, seconds)
        return result

    def check_evaluation(self, evaluation: TextSpec) -> None:
        """Refuse, before any work, text of the pass's own that overlaps `evaluation` (most passes read none)."""

    def config(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def format_validation_error(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"{where}: " + "; ".join(parts)


def build_pass(name: str, config: dict[str, Any] | None) -> Pass:
    """Look a pass up by name and validate its config; one-line errors for both."""
    # Importing the pass modules fills the registry.
    from . import _load_all  # noqa: F401

    cls = REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        raise UserError(f"unknown pass '{name}'; known passes: {known}")
    if config is not None and not isinstance(config, dict):
        raise UserError(f"pass {name}: its config must be a mapping of keys to values, got {config!r}")
    try:
        return cls(**(config or {}))
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, f"pass {name}")) from None
