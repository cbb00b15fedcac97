"""`compress bench` for encoders: sentences/s at batch 1 and 32, latency, memory, size and embedding quality.

Reached from `compress bench` when the base is an encoder (see
`encoder_bench_requested`). The order of work follows the decoder bench
(compress/bench/harness.py), whose process runner it reuses:

1. *Plan*: resolve every variant, validate its passes, pick its backend
   (ONNX Runtime for a directory holding model.onnx, PyTorch otherwise);
2. *Build*: each recipe variant is applied to the base in its own process and saved;
3. *Speed*: ``repeats`` rounds; in each, every variant runs once in a fresh
   process, the order rotated by one each round. Each process loads the
   variant, warms up, and embeds the same timing sentences at every batch
   size (sorted by length and padded per batch, as sentence-transformers'
   ``encode`` does), timing each batch; tokenization is done before timing;
4. *Quality*: one process per variant embeds the evaluation sentences; the
   base's embeddings are saved once and every variant is compared with them
   (compress.encoders.quality: cosine, top-10 overlap, Spearman).

Speed ratios are medians of per-round ratios against the base (each round
runs the base and the variant within seconds of each other). The reports are
bench.json (schema: bench_schema.json), bench.csv, bench.md and bench.png, as
for decoders; see docs/encoders.md.
"""

from __future__ import annotations

import datetime as _dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..bench.harness import Variant, Workers, _Process, _build, bench_workspace
from ..bench.spec import BASE_NAME, VariantSpec, parse_variant_arg
from ..errors import UserError
from ..passes.base import CalibrationData, format_validation_error
from ..progress import log, progress
from .sentences import SentenceSpec, load_sentences

REPORT_FORMAT = "compress-encoder-bench/1"


class EncoderSettings(BaseModel):
    """How every encoder variant is measured."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["pytorch", "onnxruntime"] | None = Field(
        None, description="None: ONNX Runtime for a directory holding model.onnx, PyTorch otherwise")
    device: Literal["cpu"] = "cpu"
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32])
    timing_sentences: int = Field(512, ge=1, description="sentences embedded per batch size in each timed run")
    warmup_batches: int = Field(2, ge=0, description="batches run before timing, at each batch size")
    repeats: int = Field(5, ge=1, le=100)
    threads: int | None = Field(None, ge=1, description="torch/ORT intra-op threads; None: all cores")
    timeout_s: float = Field(900.0, gt=0)
    quality: bool = True
    speed: bool = Field(True, description="false: build and measure quality only (no timing)")
    trust_remote_code: bool = Field(False, description="let a model's own code run when building recipe variants")

    @model_validator(mode="after")
    def _batches(self):
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError("batch_sizes must be a non-empty list of positive sizes")
        return self


class EncoderSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = "minilm"
    settings: EncoderSettings = Field(default_factory=EncoderSettings)
    evaluation: SentenceSpec = Field(default_factory=SentenceSpec)
    calibration: CalibrationData = Field(default_factory=CalibrationData)
    variants: list[VariantSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_variants(self):
        names = [BASE_NAME] + [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique and not '{BASE_NAME}' (reserved); repeated: {repeated}")
        floats = [v.name for v in self.variants if v.dtype not in (None, "float32")]
        if floats:
            raise ValueError(f"variants {floats}: encoders are measured as saved (float32); quantize them with a pass")
        batched = [v.name for v in self.variants if getattr(v, "batch_size", None)]
        if batched:
            raise ValueError(f"variants {batched}: an encoder is timed at every batch size of settings.batch_sizes; "
                             "drop batch_size")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "suite") -> "EncoderSuite":
        try:
            return cls(**data)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, where)) from None


# ----------------------------------------------------------------------------- entry from `compress bench`


def encoder_bench_requested(suite_path: str | None, base: str | None) -> bool:
    """Whether `compress bench` with this suite / --base measures an encoder (decided from the base's config)."""
    from ..models import load_dir_of, resolve_source
    from ..recipe import read_yaml_mapping
    from .architecture import is_encoder_config
    from .loading import read_config

    if base is None and suite_path is not None:
        base = read_yaml_mapping(suite_path, "suite", "give a YAML suite file", "a YAML mapping").get("base")
    if not base:
        return False
    try:
        return is_encoder_config(read_config(load_dir_of(resolve_source(str(base)))))
    except UserError:  # a base that cannot be found: the decoder bench reports it with its own message
        return False


# Options of `compress bench` that describe decoder generation; refused for encoders.
DECODER_OPTIONS = {"dtype": "--dtype", "prompt_lens": "--prompt-len", "batch_size": "--batch-size",
                   "new_tokens": "--new-tokens",
                   "warmup_tokens": "--warmup-tokens", "prefill_repeats": "--prefill-repeats",
                   "interleave": "--interleave", "eval_windows": "--eval-windows", "eval_seq_len": "--eval-seq-len"}


def suite_from_options(suite_path: str | None, variants: tuple[str, ...], options: dict) -> EncoderSuite:
    from ..recipe import read_yaml_mapping

    given = [flag for key, flag in DECODER_OPTIONS.items() if options.get(key) not in (None, ())]
    if given:
        raise UserError(f"{', '.join(given)} describe decoder generation; an encoder is timed on sentences at the "
                        "batch sizes of the suite's settings (see docs/encoders.md)")
    if options.get("device") == "cuda":
        raise UserError("the encoder bench runs on the CPU only so far; drop --device cuda")
    data = read_yaml_mapping(suite_path, "suite", "give a YAML suite file", "a YAML mapping") if suite_path else {}
    data.setdefault("settings", {})
    data.setdefault("evaluation", {})
    data["variants"] = list(data.get("variants") or [])
    data["variants"] += [parse_variant_arg(a, i + len(data["variants"])).model_dump(exclude_none=True)
                         for i, a in enumerate(variants)]
    if options.get("base"):
        data["base"] = options["base"]
    for key in ("backend", "repeats", "threads"):
        if options.get(key) is not None:
            data["settings"][key] = options[key]
    if options.get("timeout") is not None:
        data["settings"]["timeout_s"] = options["timeout"]
    if options.get("no_quality"):
        data["settings"]["quality"] = False
    if options.get("trust_remote_code"):
        data["settings"]["trust_remote_code"] = True
    for opt, key in (("eval_text", "source"), ("eval_split", "split"), ("text_field", "text_field"),
                     ("encoding", "encoding")):
        if options.get(opt) is not None:
            data["evaluation"][key] = options[opt]
    return EncoderSuite.from_dict(data, where=f"suite {suite_path}" if suite_path else "bench options")


# ----------------------------------------------------------------------------- processes


class EncoderWorkers(Workers):
    """The decoder bench's process runner (events, timeouts, crash reports), starting the encoder worker.

    isolation "exec" (default) starts a new interpreter per measurement; "fork" (for tests) forks this process.
    """

    def _start(self, args, err, pass_fds=()):
        if self.isolation == "fork":
            import multiprocessing

            child = multiprocessing.get_context("fork").Process(target=_forked_worker, args=(args, err.fileno()))
            child.start()
            return _Process(child)
        cmd = [sys.executable, "-m", "compress.encoders.bench_worker", *args]
        return _Process(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=self.env(),
                                         cwd=str(self.scratch)))


def _forked_worker(args: list[str], err_fd: int) -> None:
    import os

    import torch

    from .bench_worker import main

    os.dup2(err_fd, 2)
    # GNU OpenMP (torch's CPU thread pool) does not survive a fork: once the parent has run a
    # parallel region, the child's first one waits forever for pool threads that were not
    # copied (seen: the test run hung in LayerNorm after the distillation tests). One thread
    # never enters the pool; fork isolation is for tests, where speed does not matter.
    torch.set_num_threads(1)
    code = main(args)
    sys.stderr.flush()
    os._exit(code)


def _backend_for(path: str, asked: str | None) -> str:
    has_onnx = (Path(path) / "model.onnx").is_file()
    backend = asked or ("onnxruntime" if has_onnx else "pytorch")
    if backend == "onnxruntime" and not has_onnx:
        raise UserError(f"{path} has no model.onnx for the onnxruntime backend; export it (onnx_export) or use pytorch")
    if backend == "pytorch" and not (Path(path) / "config.json").is_file():
        raise UserError(f"{path} has no PyTorch checkpoint (config.json); use the onnxruntime backend")
    if backend == "pytorch" and has_onnx and not any(Path(path).glob("*.safetensors")):
        raise UserError(f"{path} holds an ONNX export, not PyTorch weights; run it with --backend onnxruntime")
    return backend


def _set_backend(v: Variant, suite: EncoderSuite) -> None:
    v.backend = _backend_for(v.path, v.spec.backend or suite.settings.backend)


def plan(suite: EncoderSuite) -> list[Variant]:
    from ..data import check_disjoint
    from ..models import load_dir_of, resolve_source
    from ..recipe import Recipe
    from .architecture import is_encoder_config
    from .loading import read_config

    specs = [VariantSpec(name=BASE_NAME, model=suite.base)] + list(suite.variants)
    variants = []
    for spec in specs:
        v = Variant(spec=spec, model_ref=spec.model or suite.base)
        variants.append(v)
        try:
            source = resolve_source(v.model_ref)
            path = str(load_dir_of(source))
            v.source = source.describe()
            if not is_encoder_config(read_config(path)):
                raise UserError(f"{v.model_ref} is not a BERT-family encoder; an encoder bench compares encoders")
            if spec.is_recipe:
                recipe = (Recipe.from_yaml(spec.recipe) if spec.recipe
                          else Recipe.from_dict({"passes": spec.passes, "evaluation": None}, where=f"variant {spec.name}"))
                if any(p.needs_calibration for p in recipe.passes):
                    check_disjoint(recipe.calibration if spec.recipe else suite.calibration, suite.evaluation)
                for p in recipe.passes:
                    p.check_evaluation(suite.evaluation)
                v.source.update(recipe=spec.describe(), passes=[{p.name: p.config()} for p in recipe.passes])
                v.build = {"input": path}
            else:
                v.path = path
                _set_backend(v, suite)
        except UserError as exc:
            v.fail("plan", str(exc))
    return variants


def _speed(variants: list[Variant], suite: EncoderSuite, workers: EncoderWorkers, texts: list[str]) -> None:
    s = suite.settings
    runnable = [v for v in variants if v.runnable]
    log.info(f"Timing {len(runnable)} variants x {s.repeats} repeats at batch sizes {s.batch_sizes}, "
             f"{len(texts)} sentences each, every run in a fresh process")
    bar = progress(total=s.repeats * len(runnable), desc="speed", unit="run")
    try:
        for r in range(s.repeats):
            order = runnable[r % len(runnable):] + runnable[: r % len(runnable)]
            for v in order:
                if not v.runnable:
                    bar.update(1)
                    continue
                bar.set_postfix_str(f"{v.name} (repeat {r + 1})")
                job = {"name": v.name, "path": v.path, "backend": v.backend, "texts": texts,
                       "batch_sizes": s.batch_sizes, "warmup_batches": s.warmup_batches}
                res = workers.run("speed", job)
                done = res.result_for(v.name)
                if done is None:
                    v.fail("speed", res.error_for(v.name) or res.crash_message(workers.timeout))
                else:
                    v.speed_runs.append({"repeat": r + 1, **{k: x for k, x in done.items() if k not in ("event", "name")}})
                bar.update(1)
    finally:
        bar.close()


def _quality(variants: list[Variant], suite: EncoderSuite, workers: EncoderWorkers, texts: list[str],
             scratch: Path) -> None:
    todo = [v for v in variants if v.path and (v.runnable or v.speed_runs)]
    reference = scratch / "base_embeddings.pt"
    for v in progress(todo, desc="quality", unit="variant"):
        job = {"name": v.name, "path": v.path, "backend": v.backend, "texts": texts, "is_base": v is variants[0],
               "base_embeddings": str(reference)}
        res = workers.run("quality", job)
        done = res.result_for(v.name)
        if done is None:
            v.fail("quality", res.error_for(v.name) or res.crash_message(workers.timeout), fatal=False)
        else:
            v.quality = {k: x for k, x in done.items() if k not in ("event", "name")}


def run_encoder_bench(suite: EncoderSuite, output: str | Path, force: bool = False, work_dir: str | Path | None = None,
                      command: str | None = None, isolation: str = "exec") -> dict:
    """Measure every variant of an encoder suite and write the reports to `output`. Returns the JSON report.

    `isolation="fork"` forks workers from this process instead of starting new interpreters (for tests).
    """
    from ..bench.metrics import directory_size, environment, load_average
    from ..saving import check_output_path
    from .bench_report import add_ratios, summarize_speed, write_reports

    output = check_output_path(output, force)
    started = time.time()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    s = suite.settings
    variants = plan(suite)
    if not any(v.runnable for v in variants):
        raise UserError("no variant can run: " + "; ".join(f"{v.name}: {v.errors[-1]['error']}" for v in variants))
    sentences = load_sentences(suite.evaluation)
    timing = sentences.texts[: s.timing_sentences]
    with bench_workspace(work_dir, "compress-encoder-bench-") as (work, scratch):
        workers = EncoderWorkers(scratch, s.threads, s.timeout_s, isolation=isolation)
        _build(variants, suite, workers, work, check=lambda v: _set_backend(v, suite))
        if s.speed:
            _speed(variants, suite, workers, timing)
        if s.quality:
            _quality(variants, suite, workers, sentences.texts, scratch)
        for v in variants:
            if v.path and Path(v.path).exists():
                v.size = directory_size(v.path)
    report = {
        "format": REPORT_FORMAT,
        "created": created,
        "command": command,
        "seconds": round(time.time() - started, 1),
        "isolation": isolation,
        "base": BASE_NAME,
        "settings": {**s.model_dump(mode="json"),
                     "order": "round-robin: every repeat runs each variant once, in a fresh process; the order rotates "
                              "by one each repeat",
                     "timing_sentences_used": len(timing),
                     "evaluation": suite.evaluation.model_dump(mode="json"),
                     "evaluation_data": sentences.provenance},
        "environment": {**environment(), "load_average_start": load_start, "load_average_end": load_average()},
        "variants": [{
            "name": v.name, "status": v.status, "errors": v.errors, "description": v.spec.describe(),
            "source": v.source, "backend": v.backend, "path": v.path, "build": v.build, "size": v.size,
            "speed": summarize_speed(v.speed_runs) if v.speed_runs else None, "quality": v.quality,
        } for v in variants],
    }
    add_ratios(report)
    write_reports(report, output, force=force)
    return report
