"""One measurement in a fresh process: ``python -m compress.bench.worker MODE JOB.json EVENTS.jsonl``.

Modes:

* ``build``: apply a variant's passes to its model and save it (so the
  measuring processes load a plain saved output, like any other variant);
* ``speed``: load one variant, warm up, then time the prefill (time to first
  token; ``prefill_repeats`` times, the median kept) and every decode step at
  each prompt length; report load time and
  memory. One process per (variant, repeat), so no variant inherits another's
  caches, allocator state or page cache warmth inside the process. With
  ``turns`` in the job, the timed work is cut into segments and each segment
  waits for the parent's go, so the live workers of one round take turns
  (see turns.run_round);
* ``quality``: perplexity, divergence from the base on the same windows, a
  greedy sample, and parameter counts, for a list of variants. The base's
  logits are computed once and replayed for every variant.

The worker writes JSON lines: ``{"event": "start", "name": ...}`` before a
variant, then ``{"event": "result", ...}`` or ``{"event": "error", "error":
one line}``. A worker that dies leaves a ``start`` with no result, which tells
the parent which variant crashed.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import UserError

# Above this, the base's logits are recomputed for each variant instead of kept in memory.
LOGITS_CACHE_LIMIT = 2 * 1024**3


class Events:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def emit(self, event: str, name: str | None = None, **data: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, "name": name, **data}, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, UserError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}"[:500] if first else type(exc).__name__


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def _load_tokenizer(path: str, backend: str = "pytorch"):
    from .backends import get_backend

    return get_backend(backend).load_tokenizer(path)


def _config_value(config, key: str):
    return config.get(key) if isinstance(config, dict) else getattr(config, key)


def _prompt_ids(tokenizer, text: str, length: int, batch: int = 1):
    """(batch, length) prompt ids: consecutive pieces of the text, so every row of a batch is different text."""
    import torch

    from ..data import tokenize

    ids = tokenize(tokenizer, text)
    if len(ids) < length * batch:
        raise UserError(f"the prompt text has only {len(ids)} tokens, fewer than {batch} prompt(s) of {length}; "
                        "use a longer text, a shorter prompt or a smaller batch")
    return torch.tensor([ids[i * length:(i + 1) * length] for i in range(batch)], dtype=torch.long)


def _first_id(token) -> int:
    """The token id of the first sequence of a batch (a (b, 1) tensor), or of a single token."""
    return int(token.reshape(-1)[0]) if hasattr(token, "reshape") else int(token)


def check_context(model_config, tokens: int, what: str) -> None:
    from .backends import context_from_config

    ctx = context_from_config(model_config)
    if ctx is not None and tokens > ctx:
        raise UserError(f"{what} needs {tokens} positions but the model's context is {ctx} tokens; use a shorter length")


# --------------------------------------------------------------------------- build


def run_build(job: dict, events: Events) -> None:
    from ..models import load_artifact
    from ..passes.base import CalibrationData, PassContext
    from ..recipe import Recipe
    from ..saving import save_artifact

    name = job["name"]
    events.emit("start", name)
    start = time.perf_counter()
    if job.get("recipe"):
        recipe = Recipe.from_yaml(job["recipe"])
        passes, calibration = recipe.passes, recipe.calibration
    else:
        recipe = Recipe.from_dict({"passes": job["passes"], "evaluation": None}, where=f"variant {name}")
        passes, calibration = recipe.passes, CalibrationData(**job["calibration"])
    artifact = load_artifact(job["model"], trust_remote_code=job.get("trust_remote_code", False))
    ctx = PassContext(calibration=calibration)
    for p in passes:
        artifact = p(artifact, ctx, inplace=True)
    suffix = getattr(artifact.writer, "file_suffix", None)  # a one-file output (a .gguf) is saved as OUTPUT.gguf
    path = save_artifact(artifact, job["output"] + (suffix or ""), force=True)
    events.emit("result", name, seconds=round(time.perf_counter() - start, 2), path=str(path),
                passes=[{"name": r["name"], "config": r["config"], "seconds": r["seconds"]} for r in artifact.passes])


# --------------------------------------------------------------------------- speed


def speed_segments(prompt_lens: list[int], prefill_repeats: int, new_tokens: int,
                   decode_chunk: int) -> list[tuple[str, int, int]]:
    """The timed work of one speed process, cut into segments: ``(kind, prompt_len, count)``.

    For each prompt length: ``prefill_repeats`` prefills (one segment each), then
    the ``new_tokens - 1`` decode steps after the last of them, ``decode_chunk`` a
    segment. In turn-taking mode every live worker runs one segment in turn, so
    the parent computes the same list to know how many turns there are.
    """
    segments = []
    for n in prompt_lens:
        segments += [("prefill", int(n), 1)] * max(1, int(prefill_repeats))
        left = int(new_tokens) - 1
        while left > 0:
            k = min(max(1, int(decode_chunk)), left)
            segments.append(("decode", int(n), k))
            left -= k
    return segments


class TurnGate:
    """Lets a speed worker run only on its turn: ``wait()`` blocks until the parent says go.

    The parent passes two pipe ends (see turns.run_round); without them (one
    process at a time) the gate never blocks. Time spent waiting is never inside
    a timed region.
    """

    def __init__(self, turns: dict | None):
        self.cmd_fd = turns["cmd_fd"] if turns else None
        self.ack_fd = turns["ack_fd"] if turns else None

    def tell(self, word: str) -> None:
        if self.ack_fd is not None:
            os.write(self.ack_fd, word.encode() + b"\n")

    def settle(self, quiet_s: float = 0.005, limit_s: float = 1.0) -> float:
        """Wait until this process's threads stop using the CPU; return the seconds waited.

        ONNX Runtime's thread pool spins for 40-70 ms after each run (measured on the
        2-core machine: a full core), and the worker whose turn comes next would pay
        for it. Waiting here until the process used less than a tenth of a core over
        `quiet_s` keeps each turn to its own worker. Nothing to do without turns.
        """
        if self.cmd_fd is None:
            return 0.0
        start = time.perf_counter()
        while time.perf_counter() - start < limit_s:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            time.sleep(quiet_s)
            if time.process_time() - cpu0 < 0.1 * (time.perf_counter() - wall0):
                break
        return time.perf_counter() - start

    def wait(self) -> None:
        if self.cmd_fd is None:
            return
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(self.cmd_fd, 1)
            if not chunk:  # the parent is gone: nothing left to measure for
                raise SystemExit(0)
            line += chunk


def run_speed(job: dict, events: Events) -> None:
    import torch

    from .backends import get_backend, load_model, make_runner
    from .metrics import current_rss_bytes, page_faults, peak_rss_bytes, percentile, rss_parts
    from .timing import stopwatch

    name = job["name"]
    gate = TurnGate(job.get("turns"))
    events.emit("start", name)
    _set_threads(job.get("threads"))
    backend, device, dtype = job["backend"], job["device"], job["dtype"]
    batch = int(job.get("batch_size") or 1)
    tokenizer = _load_tokenizer(job["path"], backend)
    prompts = {n: _prompt_ids(tokenizer, job["prompt_text"], n, batch) for n in job["prompt_lens"]}

    rss_before = current_rss_bytes()
    start = time.perf_counter()
    model = load_model(backend, job["path"], device, dtype, threads=job.get("threads"))
    runner = make_runner(backend, model, device)
    new_tokens = int(job["new_tokens"])
    # The warm-up decodes warmup_tokens after the first prompt; each timed run new_tokens - 1 after its prompt.
    runner.reserve(max(job["prompt_lens"]) + max(new_tokens, int(job.get("warmup_tokens", 8)) + 1))
    runner.sync()
    load_s = time.perf_counter() - start
    rss_after = current_rss_bytes()
    for n in prompts:
        check_context(get_backend(backend).config(model), n + new_tokens, f"a prompt of {n} tokens plus {new_tokens} new tokens")
    prompts = {n: runner.to_device(ids) for n, ids in prompts.items()}  # copies happen before any timing
    # CUDA events on CUDA for runtimes on PyTorch's stream, else the host clock after a sync (timing.py).
    clock = stopwatch(device, runner.sync, events=get_backend(backend).torch_cuda)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # Warm-up: one full prefill and a few decode steps on the first prompt.
    token, state = runner.prefill(prompts[job["prompt_lens"][0]])
    for _ in range(int(job.get("warmup_tokens", 8))):
        token, state = runner.step(token, state)
    runner.sync()
    del token, state
    gate.tell("ready")

    segments = speed_segments(job["prompt_lens"], job.get("prefill_repeats", 1), new_tokens,
                              job.get("decode_chunk", 2))
    timings = {n: {"prefill_all_s": [], "decode_step_s": [], "generated": []} for n in prompts}
    token = state = None
    # Wall-clock bounds of every segment: they show in the report when this worker ran,
    # and let a test check that turns never overlap.
    spans = []
    faults_before = page_faults()
    for kind, n, count in segments:
        gate.wait()
        began = time.time()
        t = timings[n]
        if kind == "prefill":
            token = state = None  # free the previous generation's cache before timing the next
            runner.sync()
            mark = clock.start()
            token, state = runner.prefill(prompts[n])
            t["prefill_all_s"].append(clock.stop(mark))
            t["generated"] = [token]
        else:
            for _ in range(count):
                mark = clock.start()
                token, state = runner.step(token, state)
                t["decode_step_s"].append(clock.stop(mark))
                t["generated"].append(token)
        ended = time.time()
        spans.append([kind, n, began, ended, gate.settle()])
        gate.tell("done")
    token = state = None
    faults_after = page_faults()
    # Report and exit only when every worker of the round is done: a process tearing down
    # (freeing a model's memory) would otherwise slow the segment another worker is timing.
    gate.wait()

    # The process's prefill time is the median of its timed prefills (robust to one preempted run).
    measured = [{"prompt_len": n, "prefill_s": percentile(t["prefill_all_s"], 50), "prefill_all_s": t["prefill_all_s"],
                 "decode_step_s": t["decode_step_s"], "first_tokens": [_first_id(x) for x in t["generated"][:8]]}
                for n, t in timings.items()]
    result = {
        "batch_size": batch,
        "clock": clock.name,
        "load_s": load_s,
        "rss_before_load_bytes": rss_before,
        "rss_after_load_bytes": rss_after,
        "peak_rss_bytes": peak_rss_bytes(),
        "torch_threads": torch.get_num_threads(),
        "prompts": measured,
        "segments": spans,
        # Page faults while timing: a model whose weights are mapped from its file can have pages
        # taken back by the kernel while it waits, and each fault then lands inside a timing.
        "timed_page_faults": {k: faults_after[k] - faults_before[k] for k in faults_before},
        "rss_at_end": rss_parts(),
    }
    if device == "cuda" and get_backend(backend).torch_cuda:
        result["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        result["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    info = get_backend(backend).describe(model)
    if info is not None:
        result["backend_info"] = info
    events.emit("result", name, **result)


# --------------------------------------------------------------------------- quality


class ReplayLogits:
    """Stands in for the base model in `compress.evaluate`: returns the base's logits, computed once.

    `perplexity` and `compare` visit the windows in order, batch by batch; each
    call here must receive the same input ids as when the logits were recorded.
    """

    def __init__(self, model, windows, batch_size: int):
        from ..evaluate import logits_of
        from ..progress import progress

        self.batches = []
        for start in progress(range(0, len(windows), batch_size), desc="base logits", unit="batch"):
            ids = windows.input_ids[start : start + batch_size]
            self.batches.append((ids, logits_of(model, ids)))
        self._next = 0

    def rewind(self) -> "ReplayLogits":
        self._next = 0
        return self

    def __call__(self, input_ids, attention_mask=None):
        import torch

        ids, logits = self.batches[self._next]
        if not torch.equal(ids, input_ids):
            raise RuntimeError("replayed base logits were asked for different windows than recorded")
        self._next += 1
        return logits


def _same_vocab(tok_a, tok_b) -> bool:
    return tok_a.get_vocab() == tok_b.get_vocab()


def _sample(model, backend: str, device: str, tokenizer, sample: dict) -> str:
    from .backends import make_runner

    ids = tokenizer(sample["prompt"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    tokens = make_runner(backend, model, device).generate(ids, int(sample["new_tokens"]))
    return tokenizer.decode(tokens, skip_special_tokens=False)


def run_quality(job: dict, events: Events) -> None:
    import torch

    from ..evaluate import compare, perplexity
    from .backends import get_backend, load_model
    from .spec import BenchEvaluation

    _set_threads(job.get("threads"))
    ref = job["reference"]
    evaluation = BenchEvaluation(**job["evaluation"])
    batch = evaluation.batch_size
    base_backend = get_backend(ref["backend"])
    base_tok = _load_tokenizer(ref["path"], ref["backend"])
    base = load_model(ref["backend"], ref["path"], "cpu", "float32", threads=job.get("threads"))
    check_context(base_backend.config(base), evaluation.seq_len, f"evaluation windows of {evaluation.seq_len} tokens")
    windows = evaluation.load(base_tok)
    vocab = int(_config_value(base_backend.config(base), "vocab_size"))
    cache_bytes = windows.input_ids.numel() * vocab * 4
    reference = ReplayLogits(base, windows, batch) if cache_bytes <= job.get("cache_limit", LOGITS_CACHE_LIMIT) else None
    events.emit("windows", None, data=windows.provenance, cached_base_logits=reference is not None)

    for v in job["variants"]:
        name = v["name"]
        events.emit("start", name)
        try:
            is_reference = (v["path"], v["backend"], v["device"], v["dtype"]) == (ref["path"], ref["backend"], "cpu", "float32")
            if is_reference:
                model, tok = base, base_tok
                if reference is not None:
                    q = perplexity(reference.rewind(), windows, batch, desc=f"{name}: perplexity")
                else:
                    q = perplexity(base, windows, batch, desc=f"{name}: perplexity")
                # The reference compared with itself: zero divergence by construction.
                q.update(kl_mean=0.0, top1_agreement=1.0, delta_p_correct=0.0)
            else:
                backend = get_backend(v["backend"])
                tok = _load_tokenizer(v["path"], v["backend"])
                if not _same_vocab(tok, base_tok):
                    raise UserError("its tokenizer differs from the base model's, so perplexity and divergence on the same windows cannot be compared")
                model = load_model(v["backend"], v["path"], v["device"], v["dtype"], io_binding=False, threads=job.get("threads"))
                check_context(backend.config(model), evaluation.seq_len, f"evaluation windows of {evaluation.seq_len} tokens")
                other = reference.rewind() if reference is not None else base
                q = compare(other, model, windows, batch, desc=f"{name}: divergence")
                q.pop("perplexity_base", None)
            result = {
                "perplexity": q["perplexity"],
                "kl_mean": q["kl_mean"],
                "top1_agreement": q["top1_agreement"],
                "delta_p_correct": q["delta_p_correct"],
                "tokens": q["tokens"],
                **get_backend(v["backend"]).parameters(model),
            }
            try:
                result["sample"] = _sample(model, v["backend"], v["device"] if not is_reference else "cpu", tok, job["sample"])
            except Exception as exc:  # a sample is for people; its failure should not hide the numbers
                result["sample"] = None
                result["sample_error"] = error_line(exc)
            events.emit("result", name, **result)
        except Exception as exc:
            events.emit("error", name, error=error_line(exc))
        finally:
            model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


MODES = {"build": run_build, "speed": run_speed, "quality": run_quality}


def main(argv: list[str] | None = None, modes: dict | None = None, module: str = "compress.bench.worker") -> int:
    """Run one mode; `modes` / `module`: another worker's (the encoder bench's) with this same protocol."""
    modes = MODES if modes is None else modes
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] not in modes:
        print(f"usage: python -m {module} {{{','.join(modes)}}} JOB.json EVENTS.jsonl", file=sys.stderr)
        return 2
    mode, job_path, events_path = argv
    job = json.loads(Path(job_path).read_text())
    events = Events(events_path)
    from ..progress import configure

    configure(quiet=not job.get("progress", False))
    try:
        modes[mode](job, events)
    except Exception as exc:
        # Expected failures (bad input, a backend that cannot run the model) end as one line for the report.
        if not isinstance(exc, UserError):
            traceback.print_exc()
        events.emit("error", job.get("name"), error=error_line(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
