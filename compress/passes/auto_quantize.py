"""Mixed precision under a divergence budget: one GGUF type per matrix, written as a GGUF for llama.cpp.

1. Sensitivity: KL(base || model with only that matrix at that type) for every
   matrix and candidate type, on the first `search_windows` calibration
   windows, the matrix on the type's exact grid and its input rounded as
   llama.cpp's products do (compress.autoquant.sensitivity).
2. Search: the assignment with the fewest bytes read per decoded token (the
   cost model, compress.autoquant.cost) whose summed (additive) KL is within
   `target_kl` (compress.autoquant.search).
3. Check: the assignment's KL measured on the next `check_windows` calibration
   windows, which the search never saw; while it exceeds the budget, the
   search backs off (upgrades matrices) and measures again.
4. Export through `gguf_export` with one override per matrix; when
   llama-cpp-python is installed, the file's KL is measured again in llama.cpp
   on the check windows, and the back-off continues on that measurement.

With `blocks_from` (a GPTQ output of the same model, saved), a matrix that
output holds as blocks of type T takes those blocks whenever it is given T,
instead of round-to-nearest, in every measurement and in the file
(compress.autoquant.given_blocks).

With `tune_steps`, the search's assignment (for `search_kl`, a budget above
`target_kl`) is trained before it is checked: the block scales of every 4- and
5-bit matrix (their codes fixed: given blocks, else round-to-nearest) and the
norms, against the float model, for that many steps of tune_scales on the
first `tune_windows` windows of the calibration text (compress/passes/
tune_scales.py). Tuned blocks fit each other, so they do not add up matrix by
matrix as the search predicts; the check and the back-off measure the trained
mix itself (an upgrade puts a matrix back at a more precise type of its float
weights), and the search and check windows come after the training text.

The manifest records the assignment, its predicted and measured KL, the cost
model's bytes per token and the file's size, the back-off rounds, every
matrix's sensitivity, and the curve of budget against predicted bytes/speed
(and measured KL) for `curve`'s budgets. See docs/autoquant.md.

Config (YAML)::

    - auto_quantize: {target_kl: 0.02, types: [q4_0, q5_0, q8_0, f16]}
    - auto_quantize: {target_kl: 0.02, types: [q4_0, q8_0, f16], blocks_from: out/gptq-q4_0}
    - auto_quantize: {target_kl: 0.02, search_kl: 0.05, tune_steps: 150, types: [iq4_nl, q8_0, f16],
                      blocks_from: out/gptq-iq4_nl}
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from ..data import Windows
from ..errors import QualityError, UserError
from ..progress import log, progress
from .base import Pass, PassContext

DEFAULT_CURVE = (0.005, 0.01, 0.02, 0.05, 0.1)
ENCODER_ALTERNATIVE = "quantize an encoder with --method ort-weight-int8 (or ort-dynamic-int8, ort-optimum-int4)"
REFERENCE_TYPE = "q8_0"  # speed-ups are predicted against every matrix at q8_0
# With tune_steps, the matrices whose block scales are trained: the types whose rounding costs most. q8_0 and f16
# stay as they are (their error is mostly llama.cpp's rounding of the inputs, which no scale can undo).
TUNED_TYPES = ("q5_1", "q5_0", "q4_1", "iq4_nl", "q4_0")
_SENSITIVITY_CACHE: "OrderedDict[tuple, dict]" = OrderedDict()
_SENSITIVITY_CACHE_SIZE = 2


def window_subset(windows: Windows, start: int, stop: int, role: str) -> Windows:
    """Windows[start:stop] with provenance that says which ones and what for."""
    part = Windows(windows.input_ids[start:stop], windows.score_from[start:stop], {})
    part.provenance = {**windows.provenance, "windows": stop - start, "first_window": start, "role": role,
                       "scored_tokens": part.scored_tokens}
    return part


class AutoQuantize(Pass):
    """Choose a GGUF type per matrix (fastest within a KL budget) and write the GGUF."""

    name: ClassVar[str] = "auto_quantize"
    needs_calibration: ClassVar[bool] = True
    output_file_suffix: ClassVar[str | None] = ".gguf"
    decoder_only: ClassVar[bool] = True  # next-token KL, and a GGUF that llama.cpp runs as a causal LM
    encoder_alternative: ClassVar[str] = ENCODER_ALTERNATIVE

    target_kl: float = Field(..., gt=0, description="budget: mean KL(base || result) per token on held-out "
                             "calibration windows")
    types: list[str] = Field(default_factory=lambda: ["q4_0", "q5_0", "q8_0", "f16"],
                             description="candidate GGUF types: f16, q8_0, q5_1, q5_0, q4_1, iq4_nl, q4_0")
    search_windows: int = Field(2, ge=1, description="calibration windows the sensitivities are measured on")
    check_windows: int = Field(4, ge=1, description="the calibration windows after those, for the measured KL")
    curve: list[float] = Field(default_factory=lambda: list(DEFAULT_CURVE),
                               description="budgets of the recorded budget/speed curve")
    measure_curve: bool = Field(True, description="also measure each curve point's KL on the check windows")
    measure_in_llamacpp: bool = Field(True, description="measure the written file in llama.cpp (when installed) "
                                      "and back off further if it exceeds the budget")
    max_rounds: int = Field(30, ge=1, description="back-off rounds before giving up")
    check: bool = Field(True, description="gguf_export's check in llama.cpp (tokenizer; top-1 agreement)")
    blocks_from: str | None = Field(None, description="a saved GPTQ output of this model: its blocks stand for "
                                    "their type (e.g. q4_0) instead of round-to-nearest")
    tune_steps: int = Field(0, ge=0, description="train the searched mix's 4- and 5-bit block scales and the norms "
                            "against the model for this many steps (tune_scales) before the check; 0: no training")
    search_kl: float | None = Field(None, gt=0, description="with tune_steps: the budget the search aims at before "
                                    "training, which brings the measured KL down (default: target_kl)")
    tune_windows: int = Field(512, ge=1, description="with tune_steps: training windows of tune_seq_len tokens from "
                              "the start of the calibration text; the search and check windows come after them")
    tune_seq_len: int = Field(256, ge=2, description="with tune_steps: tokens per training window")
    tune_lr: float = Field(1e-3, gt=0, description="with tune_steps: peak learning rate of the scale and norm gains")

    @model_validator(mode="after")
    def _search_kl_needs_training(self):
        if self.search_kl is not None and not self.tune_steps:
            raise ValueError("search_kl is the budget searched before training, so it needs tune_steps")
        if self.search_kl is not None and self.search_kl < self.target_kl:
            raise ValueError(f"search_kl {self.search_kl} is below target_kl {self.target_kl}; training only "
                             "lowers the KL, so search at target_kl or above")
        return self

    @field_validator("types", mode="before")
    @classmethod
    def _known_types(cls, v):  # a list, or a comma-separated string (the command line's form)
        from ..autoquant.grid import check_candidate_types

        try:
            return list(check_candidate_types(v))
        except UserError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("curve")
    @classmethod
    def _positive_budgets(cls, v):
        if any(not b > 0 for b in v):
            raise ValueError("every budget of the curve must be a positive KL")
        return sorted(set(float(b) for b in v))

    # ------------------------------------------------------------------ the pass

    def apply(self, artifact, ctx: PassContext) -> dict[str, Any]:
        from ..autoquant.divergence import Reference
        from ..autoquant.tensors import model_matrices

        if artifact.quantized_blocks:
            raise UserError("auto_quantize chooses types for a float model, and this one already carries quantized "
                            "blocks (from GPTQ); give it the float model")
        model = artifact.model
        matrices = model_matrices(model, artifact.passes, tuple(self.types))
        given = None
        if self.blocks_from:
            from ..autoquant.given_blocks import attach_given_blocks

            given = attach_given_blocks(model, matrices, self.blocks_from, tuple(self.types))
            log.info(f"candidate blocks: {given['matrices']} matrices' {', '.join(given['types'])} from "
                     f"{self.blocks_from}")
        search, check = self._windows(artifact, ctx, given)
        sensitivity = self._sensitivity(model, matrices, search, given)
        options = self._options(matrices, sensitivity["kl"])
        reference = Reference(model, check, desc="check windows: base logits")

        def measure(assignment: dict[str, str]) -> float:
            from ..autoquant.simulate import simulated

            with simulated(matrices, assignment):
                return reference.model_kl(model)

        curve = self._curve(model, matrices, options, measure)  # of the untrained candidates, before any training
        tuning = None
        start = None
        if self.tune_steps:
            start = self._searched(options, self.search_kl or self.target_kl)
            tuning = self._tune(artifact, ctx, matrices, start, measure)
        assignment, rounds = self._choose(options, measure, self.target_kl, "pytorch", start=start,
                                          start_measured=tuning["measured_kl_after"] if tuning else None)
        metrics = self._export(artifact, matrices, options, assignment, rounds, reference, measure)
        metrics.update(self._summary(model, matrices, options, sensitivity, search, check, curve))
        metrics["given_blocks"] = given
        metrics["tuning"] = tuning
        return metrics

    def _windows(self, artifact, ctx: PassContext, given: dict | None) -> tuple[Windows, Windows]:
        """The search windows, then the check windows; past whatever text the given blocks were fitted on."""
        windows = ctx.calibration_windows(artifact.tokenizer)
        needed = self.search_windows + self.check_windows
        skip_given, fitted = self._windows_read_by_blocks(windows, given)
        trained = self.tune_windows * self.tune_seq_len if self.tune_steps else 0
        stride = windows.provenance.get("stride") or windows.provenance.get("seq_len")
        skip_trained = math.ceil(trained / stride)
        read = max(fitted, trained)
        skip = max(skip_given, skip_trained)
        if skip:
            more = ctx.calibration.model_copy(update={"samples": skip + needed}).windows(artifact.tokenizer)
            if len(more) < skip + needed:
                by = "the given blocks were fitted on" if fitted >= trained else "tune_windows trains on"
                raise UserError(f"{by} the first {read} tokens of the calibration text, which leaves "
                                f"{max(len(more) - skip, 0)} of its windows unseen where auto_quantize needs {needed}; "
                                "give a longer calibration text (--calib-text), fewer tune_windows or shorter windows")
            log.info(f"search and check windows start after the {skip} calibration windows the given blocks were "
                     "fitted on or the tuning trains on")
            windows = more
        elif len(windows) < needed:
            raise UserError(f"auto_quantize needs search_windows + check_windows = {needed} calibration windows and the "
                            f"calibration text gives {len(windows)}; raise the calibration samples (--calib-samples) "
                            "or lower the window counts")
        search = window_subset(windows, skip, skip + self.search_windows, "search")
        check = window_subset(windows, skip + self.search_windows, skip + needed, "check")
        for part in (search, check):
            part.provenance["windows_skipped_as_fitted_on_by_given_blocks"] = skip_given
            part.provenance["windows_skipped_as_trained_on"] = skip_trained
        return search, check

    @staticmethod
    def _windows_read_by_blocks(windows: Windows, given: dict | None) -> tuple[int, int]:
        """(leading windows of this text, tokens) that the given blocks' passes read; 0s for none or another text."""
        tokens = given["fitted_on"].get(windows.provenance.get("sha256"), 0) if given else 0
        stride = windows.provenance.get("stride") or windows.provenance.get("seq_len")
        return (math.ceil(tokens / stride) if tokens else 0), tokens

    def _sensitivity(self, model, matrices, search: Windows, given: dict | None) -> dict:
        """measure_sensitivity, cached per (weights, windows, types, given blocks): several budgets on one model
        measure once."""
        from ..autoquant.sensitivity import measure_sensitivity
        from .calibration import _fingerprint

        key = (_fingerprint(model, search), tuple(self.types), given["sha256"] if given else None)
        if key not in _SENSITIVITY_CACHE:
            _SENSITIVITY_CACHE[key] = measure_sensitivity(model, matrices, search, tuple(self.types))
            while len(_SENSITIVITY_CACHE) > _SENSITIVITY_CACHE_SIZE:
                _SENSITIVITY_CACHE.popitem(last=False)
        else:
            log.info("sensitivity: reusing the measurement of this model on these windows")
        return _SENSITIVITY_CACHE[key]

    @staticmethod
    def _options(matrices, kl: dict[str, dict[str, float]]):
        from ..autoquant.cost import matrix_cost
        from ..autoquant.search import Option

        return {m.name: [Option(t, kl[m.name][t], matrix_cost(m, t)) for t in m.types] for m in matrices}

    def _searched(self, options, budget: float) -> dict[str, str]:
        """The search's assignment for `budget`; a one-line error when no assignment is predicted within it."""
        from ..autoquant.search import fastest_within, most_precise, predicted_kl

        assignment = fastest_within(options, budget)
        if assignment is None:
            best = most_precise(options)
            raise UserError(f"no assignment of the types {', '.join(self.types)} is predicted within KL {budget}: "
                            f"the most precise one is predicted at {predicted_kl(options, best):.3g}; raise the "
                            "budget or add more precise types")
        return assignment

    def _choose(self, options, measure, budget: float, measured_by: str, start: dict | None = None,
                rounds: list | None = None, start_measured: float | None = None) -> tuple[dict[str, str], list[dict]]:
        """The search's assignment for `budget` (or `start`, whose measurement may be given), backed off until
        `measure` says it is within it."""
        from ..autoquant.search import back_off, predicted_kl

        assignment = start or self._searched(options, budget)
        rounds = rounds if rounds is not None else []
        measured = start_measured if start is not None and start_measured is not None else measure(assignment)
        rounds.append({"measured_by": measured_by, "predicted_kl": predicted_kl(options, assignment),
                       "measured_kl": measured, "upgrades": []})
        while measured > budget:
            if len(rounds) >= self.max_rounds:
                raise QualityError(f"auto_quantize: after {len(rounds)} back-off rounds the measured KL is still "
                                   f"{measured:.4g} (budget {budget}); nothing was saved")
            assignment, upgrades = back_off(options, assignment, measured, budget)
            if not upgrades:
                raise QualityError(f"auto_quantize: with every matrix at its most precise type the measured KL is "
                                   f"{measured:.4g}, above the budget {budget}; raise it; nothing was saved")
            measured = measure(assignment)
            log.info(f"back-off ({measured_by}): {len(upgrades)} upgrade(s), measured KL now {measured:.4g}")
            rounds.append({"measured_by": measured_by, "predicted_kl": predicted_kl(options, assignment),
                           "measured_kl": measured, "upgrades": upgrades})
        return assignment, rounds

    def _curve(self, model, matrices, options, measure) -> list[dict]:
        """Budget against predicted bytes/speed-up/size (and measured KL): the search alone, no back-off."""
        from ..autoquant.search import fastest_within, predicted_kl

        points = []
        for budget in progress(self.curve, desc="budget curve", unit="budget"):
            assignment = fastest_within(options, budget)
            if assignment is None:
                points.append({"budget": budget, "feasible": False})
                continue
            point = {"budget": budget, "feasible": True, "predicted_kl": predicted_kl(options, assignment),
                     **self._costs(model, matrices, assignment)}
            if self.measure_curve:
                point["measured_kl"] = measure(assignment)
            points.append(point)
        return points

    def _tune(self, artifact, ctx: PassContext, matrices, assignment: dict[str, str], measure) -> dict[str, Any]:
        """Train the block scales of the assignment's 4- and 5-bit matrices and the norms against the float model.

        In place: the model's norms become the trained ones, and each trained matrix's blocks become the
        candidate of its type (`Matrix.given`), so every later measurement and the file use them. The matrices'
        float weights stay as they were (an upgrade in the back-off is made from them)."""
        import copy

        import numpy as np

        from ..artifact import Artifact
        from ..distill import training_windows
        from ..gguf_file.types import encode
        from ..quant_grids import dequantize_entry
        from .tune_scales import TuneScales

        model = artifact.model
        # A tied embedding is also the head; tune_scales leaves a tied head frozen, so it stays as it is.
        chosen = [m for m in matrices if assignment[m.name] in TUNED_TYPES and not m.lookup]
        measured_untrained = measure(assignment)
        if not chosen:
            return {"matrices_tuned": 0, "measured_kl_before": measured_untrained,
                    "why": "the searched assignment has no 4- or 5-bit matrix to train"}
        teacher = Artifact(model=copy.deepcopy(model).eval(), tokenizer=artifact.tokenizer,
                           source={"ref": "auto_quantize's input model (float)"})
        floats = {m.name: m.param.data.clone() for m in chosen}
        blocks = {}
        for m in chosen:
            kind = assignment[m.name]
            # The untrained candidate the search measured: the given blocks, else the writer's own rounding.
            entry = m.given[kind][0] if kind in m.given else (kind, encode(m.rows(), kind))
            m.param.data = m.as_param(dequantize_entry(entry).astype(np.float32).reshape(m.shape))
            blocks[m.source] = entry
        student = Artifact(model=model, tokenizer=artifact.tokenizer, source=artifact.source,
                           quantized_blocks=blocks)
        tuner = TuneScales(steps=self.tune_steps, seq_len=self.tune_seq_len, train_windows=self.tune_windows,
                           lr=self.tune_lr, warmup_steps=min(10, self.tune_steps - 1))
        windows = training_windows(artifact.tokenizer, ctx.calibration, self.tune_seq_len, self.tune_windows)
        log.info(f"training the block scales of {len(chosen)} matrices and the norms: {self.tune_steps} steps on "
                 f"{len(windows)} calibration windows")
        record = tuner.tune(student, teacher, windows)
        for m in chosen:
            entry = student.quantized_blocks[m.source]
            m.given[assignment[m.name]] = (entry, dequantize_entry(entry).astype(np.float32).reshape(m.shape))
            m.param.data = floats[m.name]
        del teacher
        record.pop("teacher", None)
        return {"matrices_tuned": len(chosen), "searched_kl": self.search_kl or self.target_kl,
                "measured_kl_before": measured_untrained, "measured_kl_after": measure(assignment), **record}

    @staticmethod
    def _costs(model, matrices, assignment: dict[str, str]) -> dict[str, Any]:
        from ..autoquant.cost import assignment_cost, uniform_assignment
        from ..gguf_file.types import type_counts

        cost = assignment_cost(model, matrices, assignment)
        reference = assignment_cost(model, matrices, uniform_assignment(matrices, REFERENCE_TYPE))
        counts: dict[str, int] = {}
        for t in assignment.values():
            counts[t] = counts.get(t, 0) + 1
        return {**cost, f"predicted_speedup_vs_{REFERENCE_TYPE}": reference["bytes_per_token"] / cost["bytes_per_token"],
                "type_counts": dict(sorted(counts.items()))}

    # ------------------------------------------------------------------ writing the file

    def _write(self, artifact, matrices, assignment: dict[str, str]) -> dict[str, Any]:
        from ..autoquant.given_blocks import holding_given_blocks
        from .gguf_export import GgufExport

        counts: dict[str, int] = {}
        for t in assignment.values():
            counts[t] = counts.get(t, 0) + 1
        default = max(counts, key=lambda t: counts[t])
        overrides = {name: t for name, t in assignment.items() if t != default}
        exporter = GgufExport(type=default, overrides=overrides, check=self.check)
        with holding_given_blocks(artifact, matrices, assignment) as given:
            written = exporter.export(artifact, {"name": self.name, "config": self.config()})
        written["given_blocks_written"] = given
        return written

    def _export(self, artifact, matrices, options, assignment, rounds, reference, measure) -> dict[str, Any]:
        """Write the GGUF; measure it in llama.cpp and keep backing off while that exceeds the budget."""
        from ..autoquant.search import predicted_kl

        torch_model, writer = artifact.model, artifact.writer
        written: dict[str, Any] = {"assignment": None, "export": None}

        def write(candidate: dict[str, str]) -> None:
            if written["assignment"] != candidate:  # each file is written from the float model
                artifact.model, artifact.writer = torch_model, writer
                written["export"] = self._write(artifact, matrices, candidate)
                written["assignment"] = candidate

        def measure_file(candidate: dict[str, str]) -> float:
            write(candidate)
            try:
                return reference.model_kl(artifact.model)
            finally:
                artifact.model.close()

        write(assignment)
        in_llamacpp = {"measured": False, "reason": "measure_in_llamacpp is off"}
        if self.measure_in_llamacpp:
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                log.warning("llama-cpp-python is not installed: the file's KL was not measured in llama.cpp")
                in_llamacpp = {"measured": False, "reason": "llama-cpp-python is not installed"}
            else:
                assignment, rounds = self._choose(options, measure_file, self.target_kl, "llamacpp",
                                                  start=assignment, rounds=rounds)
                write(assignment)
                in_llamacpp = {"measured": True, "kl": rounds[-1]["measured_kl"]}
        last_torch = next(r for r in reversed(rounds) if r["measured_by"] == "pytorch")
        upgraded_later = any(r["measured_by"] == "llamacpp" and r["upgrades"] for r in rounds)
        if upgraded_later:  # the PyTorch number above is of an earlier assignment: measure this one too
            measured_torch = measure(assignment)  # on the float model the matrices belong to
        else:
            measured_torch = last_torch["measured_kl"]
        return {
            "target_kl": self.target_kl,
            "assignment": assignment,
            "predicted_kl": predicted_kl(options, assignment),
            "measured_kl": in_llamacpp["kl"] if in_llamacpp["measured"] else measured_torch,
            "measured_kl_pytorch": measured_torch,
            "measured_kl_llamacpp": in_llamacpp.get("kl"),
            "llamacpp_measurement": in_llamacpp,
            "backoff": rounds,
            **self._costs(torch_model, matrices, assignment),
            "gguf_bytes": written["export"]["gguf_bytes"],
            "export": written["export"],
        }

    def _summary(self, model, matrices, options, sensitivity, search, check, curve) -> dict[str, Any]:
        from ..autoquant.cost import __doc__ as cost_doc

        return {
            "curve": curve,
            "sensitivity": sensitivity["kl"],
            "sensitivity_measured_alone": sensitivity["measured"],
            "sensitivity_shared": sensitivity["shared"],
            "windows": {"search": search.provenance, "check": check.provenance},
            "cost_model": cost_doc.strip().splitlines()[0] + " (bytes read per decoded token; docs/autoquant.md)",
        }
