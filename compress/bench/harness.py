"""Run a suite: check every variant, build the recipes, time them round-robin, measure quality.

Order of work, chosen so that a bad variant costs as little as possible and
never stops the others:

1. *Plan* (seconds, no model loaded): resolve each variant's model, validate its
   passes, pick its backend, check that the backend can run here and that the
   prompt fits the model's context. A variant that fails here is marked failed
   with one line and skipped from then on.
2. *Build*: each recipe variant is applied to its model in its own process and
   saved to a work directory, then planned again like a saved output.
3. *Speed*: ``repeats`` rounds; in each round every variant runs once, each in
   a fresh process, the order rotated by one each round. Interleaving spreads
   slow drift of the machine (other jobs, thermal state) over all variants
   instead of loading it onto whichever ran last. Where they fit in memory,
   the round's processes also take turns (turns.py): loaded one after the
   other, then timed a segment each in turn, so drift within seconds cancels
   in the ratios too.
4. *Quality*: one process computes the base's logits once and compares every
   variant with them on the same windows; if it dies, the variant it was on is
   marked failed and a fresh process carries on with the rest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..progress import log, progress
from .spec import BASE_NAME, Suite, VariantSpec

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Variant:
    """A variant as the run sees it: its spec, where it is, and everything measured."""

    spec: VariantSpec
    model_ref: str
    backend: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    path: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    build: dict[str, Any] | None = None
    speed_runs: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, Any] | None = None
    size: dict[str, int] | None = None
    _failed_early: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def runnable(self) -> bool:
        return not self._failed_early

    def fail(self, stage: str, message: str, fatal: bool = True, say: bool = True) -> None:
        self.errors.append({"stage": stage, "error": message})
        if fatal:
            self._failed_early = True
        if say:
            log.warning(f"{self.name}: {stage} failed: {message}")

    @property
    def status(self) -> str:
        if not self.errors:
            return "ok"
        measured = bool(self.speed_runs) or self.quality is not None
        return "partial" if measured else "failed"


# --------------------------------------------------------------------------- workers


class WorkerResult:
    def __init__(self, events: list[dict], returncode: int | None, stderr_tail: str, timed_out: bool):
        self.events, self.returncode, self.stderr_tail, self.timed_out = events, returncode, stderr_tail, timed_out

    def result_for(self, name: str | None) -> dict | None:
        return next((e for e in self.events if e["event"] == "result" and e.get("name") == name), None)

    def error_for(self, name: str | None) -> str | None:
        found = next((e for e in self.events if e["event"] == "error" and e.get("name") == name), None)
        if found is None:  # a job-level failure applies to every variant of the job
            found = next((e for e in self.events if e["event"] == "error" and e.get("name") is None), None)
        return found["error"] if found else None

    def crash_message(self, timeout: float) -> str:
        if self.timed_out:
            return f"the worker ran longer than {timeout:.0f} s and was stopped (raise settings.timeout_s)"
        lines = [ln for ln in self.stderr_tail.strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        return f"the worker process died (exit code {self.returncode}): {last[:300]}"


@contextlib.contextmanager
def bench_workspace(work_dir: str | os.PathLike | None, prefix: str):
    """(work, scratch) for one bench run: `work` holds the built variants (`work_dir`, kept, made absolute
    because workers start in `scratch` and a relative path would miss; else a temporary folder, removed),
    `scratch` inside it holds the workers' job and event files and is always removed."""
    keep = work_dir is not None
    work = Path(work_dir).expanduser().resolve() if keep else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="jobs-", dir=work))
    try:
        yield work, scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


class Workers:
    """Starts `python -m compress.bench.worker` processes and collects their events."""

    def __init__(self, scratch: Path, threads: int | None, timeout: float, verbose: bool = False,
                 isolation: str = "exec"):
        if isolation not in ("exec", "fork"):
            raise ValueError(f"isolation must be 'exec' or 'fork', got {isolation!r}")
        self.scratch = scratch
        self.threads = threads
        self.timeout = timeout
        self.verbose = verbose
        # exec: a new interpreter per measurement (the default; nothing is inherited).
        # fork: a forked child of this process, which inherits its imports: a fresh process
        # without the import cost, for the test suite; peak RSS then includes what the parent held.
        self.isolation = isolation
        self._count = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The child imports the same compress as this process, wherever it is run from.
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def start(self, mode: str, job: dict, pass_fds: tuple[int, ...] = ()) -> "LiveWorker":
        """Start a worker and return at once; `pass_fds` are pipe ends the child keeps (turn-taking)."""
        self._count += 1
        stem = self.scratch / f"{self._count:04d}-{mode}"
        job_path, events_path, log_path = stem.with_suffix(".json"), stem.with_suffix(".jsonl"), stem.with_suffix(".log")
        job_path.write_text(json.dumps({**job, "threads": self.threads, "progress": self.verbose}, default=str))
        events_path.write_text("")
        err = open(log_path, "w")
        proc = self._start([mode, str(job_path), str(events_path)], err, pass_fds)
        return LiveWorker(proc, events_path, log_path, err)

    def run(self, mode: str, job: dict, on_event: Callable[[dict], None] | None = None) -> WorkerResult:
        """Run one worker to its end. The timeout is per variant: a worker that goes through several
        (the quality worker takes them all in turn) gets the full timeout again at each one's start."""
        live = self.start(mode, job)
        clock = {"start": time.monotonic()}

        def seen(event: dict) -> None:
            if event.get("event") == "start":
                clock["start"] = time.monotonic()
            if on_event is not None:
                on_event(event)

        while True:
            done = live.proc.finished(0.5)
            live.poll(seen)
            if done:
                break
            if time.monotonic() - clock["start"] > self.timeout:
                live.proc.kill()  # only the worker this call started
                live.timed_out = True
                live.poll(on_event)
                break
        return live.result()

    def _start(self, args: list[str], err, pass_fds: tuple[int, ...] = ()) -> "_Process":
        if self.isolation == "exec":
            cmd = [sys.executable, "-m", "compress.bench.worker", *args]
            return _Process(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=self.env(),
                                             cwd=str(self.scratch), pass_fds=pass_fds))
        import multiprocessing

        # A forked child inherits every descriptor, pipe ends included.
        child = multiprocessing.get_context("fork").Process(target=_forked_worker, args=(args, err.fileno(), self.threads))
        child.start()
        return _Process(child)

    @staticmethod
    def _read_events(path: Path, events: list[dict], seen: int, on_event) -> int:
        lines = path.read_text().splitlines()
        for line in lines[seen:]:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line being written; read it next time
                return seen
            events.append(event)
            if on_event:
                on_event(event)
            seen += 1
        return seen


class LiveWorker:
    """A started worker: its process, and the events it has written so far."""

    def __init__(self, proc: "_Process", events_path: Path, log_path: Path, err):
        self.proc, self.events_path, self.log_path, self._err = proc, events_path, log_path, err
        self.events: list[dict] = []
        self._seen = 0
        self.timed_out = False

    def poll(self, on_event: Callable[[dict], None] | None = None) -> None:
        self._seen = Workers._read_events(self.events_path, self.events, self._seen, on_event)

    def result(self) -> WorkerResult:
        self.poll()
        self._err.close()
        tail = self.log_path.read_text(errors="replace")[-4000:]
        return WorkerResult(self.events, self.proc.returncode, tail, self.timed_out)


class _Process:
    """The same three calls over a subprocess.Popen or a multiprocessing.Process."""

    def __init__(self, proc):
        self.proc = proc

    def finished(self, wait: float) -> bool:
        if isinstance(self.proc, subprocess.Popen):
            try:
                self.proc.wait(timeout=wait)
                return True
            except subprocess.TimeoutExpired:
                return False
        self.proc.join(wait)
        return not self.proc.is_alive()

    def kill(self) -> None:
        self.proc.kill()
        if isinstance(self.proc, subprocess.Popen):
            self.proc.wait()
        else:
            self.proc.join()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if isinstance(self.proc, subprocess.Popen) else self.proc.exitcode


def _forked_worker(args: list[str], err_fd: int, threads: int | None) -> None:
    os.dup2(err_fd, 2)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from .worker import main

    code = main(args)
    sys.stderr.flush()
    os._exit(code)


# --------------------------------------------------------------------------- planning


def _resolve_path(ref: str, backend: str | None = None, recipe: bool = False) -> tuple[str, dict]:
    """A loadable path (or hub id) and a description, for any model reference.

    A .gguf file stays a file for llama.cpp (the backend chosen for it, or asked for); the
    built-in model's GGUF too when llamacpp is asked for. Otherwise, and for recipes (whose
    passes need PyTorch), a GGUF is converted to a float checkpoint.
    """
    from ..models import load_dir_of, resolve_source

    source = resolve_source(ref)
    gguf = source.kind == "gguf" or (source.kind == "builtin" and str(source.path).endswith(".gguf"))
    keep_file = not recipe and (backend == "llamacpp" or (backend is None and source.kind == "gguf"))
    if gguf and keep_file:
        return str(source.path), source.describe()
    return str(load_dir_of(source)), source.describe()


def _check_model(ref: str, path: str | None, suite: Suite) -> None:
    """The model exists (a hub id is reachable), is an architecture the toolkit supports, and takes the
    evaluation windows; read from its config alone, so a bad variant fails before anything is timed."""
    from ..models import load_config, resolve_source
    from ..support import check_sequence_lengths, check_supported

    if path is not None and Path(path).is_dir():
        if not (Path(path) / "config.json").is_file():
            return  # a runtime's own format (no Hugging Face config): its backend checks it
        config = json.loads((Path(path) / "config.json").read_text())
        check_supported(config, path)
    elif path is not None and Path(path).suffix.lower() == ".gguf":
        # Run as it is by llama.cpp, which reads the architecture from the file (its backend checked
        # that llama.cpp runs here); converting it to a float checkpoint to read a config would take a minute.
        from ..llamacpp import gguf_config

        config = gguf_config(path)
    else:
        config = load_config(resolve_source(ref), trust_remote_code=suite.settings.trust_remote_code)
    if suite.settings.quality:
        check_sequence_lengths(config, ref, {"evaluation": suite.evaluation.seq_len})


def _check_runnable(v: Variant, suite: Suite) -> None:
    """Backend availability and context length; raises UserError with the variant's one line."""
    from .backends import check_available, context_length, detect_backend, get_backend

    local = v.path if v.path and Path(v.path).exists() else None
    if v.backend is None:
        v.backend = detect_backend(local)
    check_available(v.backend, v.device, v.dtype, local)
    if v.batch_size > 1 and not get_backend(v.backend).batched:
        raise UserError(f"the {v.backend} backend times one prompt at a time, not a batch of {v.batch_size}; "
                        "remove batch_size for this variant or use the pytorch backend")
    ctx = context_length(local, v.backend)
    needed = max(suite.settings.prompt_lens) + suite.settings.new_tokens
    if ctx is not None and needed > ctx:
        raise UserError(
            f"a prompt of {max(suite.settings.prompt_lens)} tokens plus {suite.settings.new_tokens} new tokens "
            f"needs {needed} positions but the model's context is {ctx} tokens; use a shorter --prompt-len or --new-tokens"
        )
    _check_model(v.model_ref, local, suite)


def plan(suite: Suite) -> list[Variant]:
    """Every variant, base first, each checked without loading a model."""
    from ..data import check_disjoint, domain_relation
    from ..recipe import Recipe
    from .backends import normalize_dtype

    s = suite.settings
    specs = [VariantSpec(name=BASE_NAME, model=suite.base)] + list(suite.variants)
    variants = []
    for spec in specs:
        v = Variant(spec=spec, model_ref=spec.model or suite.base, backend=spec.backend or s.backend,
                    device=spec.device or s.device, dtype=s.dtype, batch_size=spec.batch_size or s.batch_size)
        variants.append(v)
        try:
            v.dtype = normalize_dtype(spec.dtype or s.dtype)
            path, source = _resolve_path(v.model_ref, v.backend, recipe=spec.is_recipe)
            v.source = {**source, "recipe": spec.describe()} if spec.is_recipe else source
            if spec.is_recipe:
                recipe = (Recipe.from_yaml(spec.recipe) if spec.recipe
                          else Recipe.from_dict({"passes": spec.passes, "evaluation": None}, where=f"variant {spec.name}"))
                calibration = recipe.calibration if spec.recipe else suite.calibration
                if any(p.needs_calibration for p in recipe.passes):
                    check_disjoint(calibration, suite.evaluation)
                    v.source["calibration"] = {**calibration.text_only().model_dump(mode="json"),
                                               "samples": calibration.samples, "seq_len": calibration.seq_len,
                                               "relation_to_evaluation": domain_relation(calibration, suite.evaluation)}
                for p in recipe.passes:
                    p.check_evaluation(suite.evaluation)
                v.source["passes"] = [{p.name: p.config()} for p in recipe.passes]
                v.path = None  # set once built
                if not Path(path).exists():
                    raise UserError(f"recipes need a local model to apply passes to; {v.model_ref} is not local")
                _check_model(v.model_ref, path, suite)
                v.build = {"input": path}
            else:
                v.path = path
                _check_runnable(v, suite)
        except UserError as exc:
            v.fail("plan", str(exc), say=False)  # said by run_bench: once, in one line, if nothing can run
    return variants


def bench_inputs(variants: list[Variant]) -> list[Path]:
    """Every file and directory the run reads a model or recipe from."""
    paths = []
    for v in variants:
        candidates = [v.path, v.source.get("path"), (v.build or {}).get("input"), v.spec.recipe]
        paths += [Path(p) for p in candidates if p and Path(p).exists()]
    return paths


# --------------------------------------------------------------------------- the run


def _short_sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prompt_text(suite: Suite) -> tuple[str, dict]:
    """Text the prompts are cut from: the evaluation part of settings.prompt_text."""
    from ..data import TextSpec, load_text

    loaded = load_text(TextSpec(source=suite.settings.prompt_text, split="evaluation"))
    batch = max([suite.settings.batch_size] + [v.batch_size for v in suite.variants if v.batch_size])
    # Enough characters for the longest batch of prompts (tokens are rarely under 2 characters), not the whole text.
    return loaded.text[: 16 * max(suite.settings.prompt_lens) * batch + 2000], loaded.provenance


def run_bench(suite: Suite, output: str | Path, force: bool = False, work_dir: str | Path | None = None,
              command: str | None = None, verbose: bool = False, isolation: str = "exec") -> dict:
    """Measure every variant of `suite` and write the reports to `output`. Returns the JSON report.

    `isolation="fork"` forks workers from this process instead of starting new
    interpreters: faster, meant for tests (see `Workers`).
    """
    from ..saving import check_output_path, overlapping_input, probe_writable
    from .metrics import directory_size, environment, load_average
    from .report import write_reports

    output = Path(output).expanduser().resolve()
    if output.exists() and not force:  # the cheap refusals first; the full check needs the variants' paths
        raise UserError(f"output directory {output} already exists; pass --force to replace it")
    probe_writable(output.parent)
    started = time.time()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    s = suite.settings

    suite = with_absolute_text_paths(suite)
    if s.quality:  # a missing or unreadable evaluation file is found now, not after the timing
        from ..data import load_text

        load_text(suite.evaluation.text_only())
    variants = plan(suite)
    # The report may not be, hold or lie inside anything measured (replacing it would delete a model).
    check_output_path(output, force, bench_inputs(variants))
    if work_dir is not None:
        if overlapping_input(Path(work_dir).expanduser().resolve(), [output]) is not None:
            raise UserError(f"--work-dir {work_dir} overlaps the report directory {output}; keep them apart")
        probe_writable(Path(work_dir).expanduser().resolve())
    if isolation == "fork" and any(v.device == "cuda" for v in variants):
        raise UserError("isolation 'fork' cannot measure CUDA variants (CUDA does not survive a fork); use exec")
    if not any(v.runnable for v in variants):
        lines = "; ".join(f"{v.name}: {v.errors[-1]['error']}" for v in variants)
        raise UserError(f"no variant can run: {lines}")
    for v in variants:
        for e in v.errors:
            log.warning(f"{v.name}: {e['stage']} failed: {e['error']}")
    text, text_provenance = prompt_text(suite)

    with bench_workspace(work_dir, "compress-bench-") as (work, scratch):
        workers = Workers(scratch, s.threads, s.timeout_s, verbose, isolation)
        if isolation == "fork":
            _import_before_forking(variants)
        _build(variants, suite, workers, work)
        interleaved = _speed(variants, suite, workers, text)
        evaluation_data = _quality(variants, suite, workers) if s.quality else None
        for v in variants:
            if v.path and Path(v.path).exists():
                v.size = directory_size(v.path)

    report = {
        "format": "compress-bench/1",
        "created": created,
        "command": command,
        "seconds": round(time.time() - started, 1),
        "isolation": isolation,
        "base": BASE_NAME,
        "settings": {
            **s.model_dump(mode="json"),
            "order": "round-robin: every repeat runs each variant once, in a fresh process; the order rotates by one each repeat"
                     + ("; the round's processes take turns, one timed segment (a prefill or "
                        f"{s.decode_chunk} decode steps) each, in a shuffled order each time round, each turn ending "
                        "when its process's threads are quiet" if interleaved and interleaved.startswith("turns") else ""),
            "interleaved": interleaved,
            "prompt_source": text_provenance,
            "evaluation": suite.evaluation.model_dump(mode="json"),
            "calibration": calibration_groups(variants),
            "sample": suite.sample.model_dump(mode="json"),
        },
        "environment": {**environment(), "load_average_start": load_start, "load_average_end": load_average()},
        "variants": [variant_record(v) for v in variants],
    }
    if evaluation_data:
        report["settings"]["evaluation_data"] = evaluation_data
    from .report import add_ratios

    add_ratios(report)
    write_reports(report, output, force=force)
    return report


def with_absolute_text_paths(suite: Suite) -> Suite:
    """The suite with local text files (evaluation, calibration, prompts) as absolute paths.

    Workers run in a scratch directory, so a relative path such as
    ../shared/data/wikitext-2/wiki.valid.tokens must be resolved here, against the directory
    the user ran the command from.
    """
    from .. import corpora

    def absolute(source: str) -> str:
        if corpora.corpus(source) or source.startswith("hf:") or source == "none":
            return source
        path = Path(source).expanduser()
        return str(path.resolve()) if path.exists() else source

    updates = {"evaluation": suite.evaluation.model_copy(update={"source": absolute(suite.evaluation.source)}),
               "calibration": suite.calibration.model_copy(update={"source": absolute(suite.calibration.source)}),
               "settings": suite.settings.model_copy(update={"prompt_text": absolute(suite.settings.prompt_text)})}
    return suite.model_copy(update=updates)


def _import_before_forking(variants: list[Variant]) -> None:
    """Load each backend's tokenizer once here, so forked workers inherit the modules it imports.

    transformers imports its tokenizer modules lazily, on first use: without this,
    every forked worker imported them again (9 s each on a loaded 2-core machine,
    against 0.1 s once the parent had).
    """
    from .backends import get_backend

    seen = set()
    for v in variants:
        if v.runnable and v.path and Path(v.path).exists() and v.backend not in seen:
            seen.add(v.backend)
            try:
                get_backend(v.backend or "pytorch").load_tokenizer(v.path)
            except Exception:  # the worker meets the same problem and reports it in one line
                pass


def _build_key(v: Variant, suite: Suite) -> str:
    """Variants with the same key build the same model: same input, passes (or recipe) and calibration."""
    return json.dumps([v.build["input"], v.spec.passes, v.spec.recipe, suite.calibration.model_dump(mode="json")],
                      sort_keys=True, default=str)


def calibration_groups(variants: list[Variant]) -> list[dict[str, Any]]:
    """The calibration texts the variants read, each with the variants that read it and how it relates to evaluation."""
    groups: dict[str, dict[str, Any]] = {}
    for v in variants:
        cal = v.source.get("calibration")
        if cal:
            key = json.dumps(cal, sort_keys=True)
            groups.setdefault(key, {**cal, "used_by": []})["used_by"].append(v.name)
    return list(groups.values())


def _build(variants: list[Variant], suite: Suite, workers: Workers, work: Path,
           check: Callable[[Variant], None] | None = None) -> None:
    """Build every recipe variant in its own process; `check` (default: the decoder checks) plans the result."""
    todo = [v for v in variants if v.runnable and v.spec.is_recipe]
    # A recipe measured several ways (dtypes, batch sizes, backends) is built once and shared.
    built: dict[str, Variant] = {}
    for i, v in enumerate(todo, 1):
        first = built.get(_build_key(v, suite))
        if first is not None:
            if first.path is None:
                v.fail("build", f"the same recipe failed to build for {first.name}")
                continue
            log.info(f"[build {i}/{len(todo)}] {v.name}: the model built for {first.name}")
            v.build.update(seconds=0.0, passes=first.build["passes"], shared_with=first.name)
            v.path = first.path
        else:
            built[_build_key(v, suite)] = v
            log.info(f"[build {i}/{len(todo)}] {v.name}: {v.spec.describe()}")
            out = work / v.name
            # The worker runs in a scratch directory: a recipe path relative to here must reach it whole.
            recipe = str(Path(v.spec.recipe).resolve()) if v.spec.recipe else None
            job = {"name": v.name, "model": v.build["input"], "passes": v.spec.passes, "recipe": recipe,
                   "calibration": suite.calibration.model_dump(mode="json"), "output": str(out),
                   "trust_remote_code": suite.settings.trust_remote_code}
            res = workers.run("build", job)
            done = res.result_for(v.name)
            if done is None:
                v.fail("build", res.error_for(v.name) or res.crash_message(workers.timeout))
                continue
            v.build.update(seconds=done["seconds"], passes=done["passes"])
            v.path = done.get("path", str(out))
        try:
            check(v) if check is not None else _check_runnable(v, suite)
        except UserError as exc:
            v.fail("plan", str(exc))


def choose_interleave(variants: list[Variant], settings) -> tuple[str, str]:
    """'turns' or 'processes' for this run, and why (for the log and the report)."""
    from .metrics import directory_size, meminfo_bytes

    if settings.interleave != "auto":
        return settings.interleave, "as asked"
    if any(v.device != "cpu" for v in variants):
        # Several CUDA contexts and models at once could run the GPU out of memory (and turns
        # have not been measured on a GPU).
        return "processes", "a variant runs on CUDA"
    weights = sum((directory_size(v.path) or {}).get("total_bytes", 0) for v in variants if v.path)
    available = meminfo_bytes("MemAvailable")
    # float32 weights take about their file size in memory; twice that leaves room for activations and caches.
    if available is not None and 2 * weights > available:
        return "processes", (f"the variants' weights ({weights / 2**30:.1f} GiB, twice that resident) do not fit "
                             f"in the available memory ({available / 2**30:.1f} GiB)")
    return "turns", "all variants fit in memory at once"


def _speed(variants: list[Variant], suite: Suite, workers: Workers, text: str) -> str:
    """Time every runnable variant `repeats` times; returns how the rounds were interleaved (for the report)."""
    s = suite.settings
    runnable = [v for v in variants if v.runnable]
    mode, why = choose_interleave(runnable, s)
    log.info(f"Timing {len(runnable)} variants x {s.repeats} repeats, each in a fresh process "
             f"(prompt {', '.join(map(str, s.prompt_lens))} tokens, {s.new_tokens} new tokens); "
             f"{'processes take turns' if mode == 'turns' else 'one process at a time'}: {why}")
    bar = progress(total=s.repeats * len(runnable), desc="speed", unit="run")

    def job_for(v: Variant) -> dict:
        return {"name": v.name, "path": v.path, "backend": v.backend, "device": v.device, "dtype": v.dtype,
                "batch_size": v.batch_size,
                "prompt_text": text, "prompt_lens": s.prompt_lens, "new_tokens": s.new_tokens,
                "warmup_tokens": s.warmup_tokens, "prefill_repeats": s.prefill_repeats,
                "decode_chunk": s.decode_chunk}

    def record(v: Variant, r: int, res: WorkerResult) -> None:
        done = res.result_for(v.name)
        if done is None:
            v.fail("speed", res.error_for(v.name) or res.crash_message(workers.timeout))
            return
        done = {k: val for k, val in done.items() if k not in ("event", "name")}
        v.speed_runs.append({"repeat": r + 1, **done})
        p = done["prompts"][0]
        rate = (len(p["decode_step_s"]) / sum(p["decode_step_s"])) if p["decode_step_s"] else float("nan")
        log.debug(f"{v.name} repeat {r + 1}: prefill {p['prefill_s'] * 1000:.0f} ms, decode {rate:.1f} tok/s")

    try:
        for r in range(s.repeats):
            order = runnable[r % len(runnable):] + runnable[: r % len(runnable)] if runnable else []
            order = [v for v in order if v.runnable]
            bar.update(len(runnable) - len(order))
            if mode == "turns":
                from .turns import run_round

                bar.set_postfix_str(f"repeat {r + 1}: loading")
                results = run_round(workers, [(v.name, job_for(v)) for v in order], workers.timeout,
                                    lambda kind, i, n: bar.set_postfix_str(f"repeat {r + 1}: {kind} turn {i}/{n}"),
                                    seed=r)
                for v in order:
                    record(v, r, results[v.name])
                    bar.update(1)
                continue
            for v in order:
                bar.set_postfix_str(f"{v.name} (repeat {r + 1})")
                record(v, r, workers.run("speed", job_for(v)))
                bar.update(1)
    finally:
        bar.close()
    return f"{mode} ({why})"


def _quality(variants: list[Variant], suite: Suite, workers: Workers) -> dict | None:
    """Perplexity, divergence and a sample for every variant; returns the windows' provenance."""
    base = variants[0]
    todo = [v for v in variants if v.runnable or v.speed_runs]
    data: dict = {}
    if not todo:
        return None
    if base.path is None or base.errors and base.errors[0]["stage"] == "plan":
        for v in todo:
            v.fail("quality", "the base model could not be loaded, so there is nothing to compare with", fatal=False)
        return None
    reference = {"path": base.path, "backend": base.backend or "pytorch"}
    log.info(f"Quality: {len(todo)} variants on {suite.evaluation.windows or 'all'} windows of "
             f"{suite.evaluation.seq_len} tokens from {suite.evaluation.source} ({suite.evaluation.split} split)")
    bar = progress(total=len(todo), desc="quality", unit="variant")

    def on_event(e: dict) -> None:
        if e["event"] == "start":
            bar.set_postfix_str(e["name"])
        elif e["event"] in ("result", "error") and e.get("name"):
            bar.update(1)
        elif e["event"] == "windows":
            data.update(e["data"], cached_base_logits=e.get("cached_base_logits"))

    try:
        while todo:
            job = {"reference": reference, "evaluation": suite.evaluation.model_dump(mode="json"),
                   "sample": suite.sample.model_dump(mode="json"),
                   "variants": [{"name": v.name, "path": v.path, "backend": v.backend, "device": v.device,
                                 "dtype": v.dtype} for v in todo]}
            res = workers.run("quality", job, on_event)
            finished = set()
            for v in todo:
                done = res.result_for(v.name)
                err = next((e["error"] for e in res.events if e["event"] == "error" and e.get("name") == v.name), None)
                if done is not None:
                    v.quality = {k: val for k, val in done.items() if k not in ("event", "name")}
                    finished.add(v.name)
                elif err is not None:
                    v.fail("quality", err, fatal=False)
                    finished.add(v.name)
            job_error = res.error_for(None)
            started = [e["name"] for e in res.events if e["event"] == "start"]
            crashed = next((n for n in started if n not in finished), None)
            if job_error is not None and crashed is None:
                # The base itself could not be evaluated: no variant can be compared.
                for v in todo:
                    if v.name not in finished:
                        v.fail("quality", job_error, fatal=False)
                return data or None
            if crashed is not None:
                victim = next(v for v in todo if v.name == crashed)
                victim.fail("quality", res.crash_message(workers.timeout), fatal=False)
                finished.add(crashed)
                bar.update(1)
            remaining = [v for v in todo if v.name not in finished]
            if len(remaining) == len(todo):  # no progress at all: stop rather than loop
                for v in remaining:
                    v.fail("quality", res.crash_message(workers.timeout), fatal=False)
                break
            todo = remaining
    finally:
        bar.close()
    return data or None


def variant_record(v: Variant) -> dict[str, Any]:
    """The JSON form of one variant: raw runs plus summaries (see schema.json)."""
    from .report import summarize_speed

    return {
        "name": v.name,
        "status": v.status,
        "errors": v.errors,
        "description": v.spec.describe(),
        "source": v.source,
        "backend": v.backend,
        "device": v.device,
        "dtype": v.dtype,
        "batch_size": v.batch_size,
        "path": v.path,
        "build": v.build,
        "size": v.size,
        "speed": summarize_speed(v.speed_runs) if v.speed_runs else None,
        "quality": v.quality,
    }
