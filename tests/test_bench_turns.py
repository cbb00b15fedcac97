"""Turn-taking: the speed workers of a round stay loaded and time their work one segment at a time.

Why it exists: on a shared CPU the machine's speed drifts over seconds, so a
variant timed 15 s after the base is compared with a different machine. Taking
turns puts the base's and each variant's segments within a second of each
other. These tests pin down what makes that valid: one worker computes at a
time, every worker still does exactly the timed work of a lone process, and a
worker that dies in the middle fails only its own variant.
"""

from __future__ import annotations

import os
import shutil

import pytest

from compress.bench import Suite, run_bench
from compress.bench.harness import Variant, choose_interleave
from compress.bench.spec import Settings, VariantSpec
from compress.bench.worker import TurnGate, speed_segments


def test_segments_time_each_prefill_alone_then_the_decode_in_chunks():
    assert speed_segments([16], prefill_repeats=3, new_tokens=20, decode_chunk=8) == [
        ("prefill", 16, 1), ("prefill", 16, 1), ("prefill", 16, 1),
        ("decode", 16, 8), ("decode", 16, 8), ("decode", 16, 3),  # 19 steps follow the first token
    ]
    two = speed_segments([8, 32], prefill_repeats=1, new_tokens=3, decode_chunk=8)
    assert two == [("prefill", 8, 1), ("decode", 8, 2), ("prefill", 32, 1), ("decode", 32, 2)]


def test_a_turn_ends_only_when_the_workers_threads_are_quiet():
    import threading
    import time

    # ONNX Runtime's pool keeps a core spinning for tens of milliseconds after a run;
    # the next worker's turn must not start while it does.
    def spin(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    read_end, write_end = os.pipe()
    try:
        gate = TurnGate({"cmd_fd": read_end, "ack_fd": write_end})
        spinner = threading.Thread(target=spin, args=(0.15,))
        spinner.start()
        waited = gate.settle()
        spinner.join()
        assert waited >= 0.1
        assert gate.settle() < 0.1  # nothing busy: a few milliseconds
    finally:
        os.close(read_end)
        os.close(write_end)
    assert TurnGate(None).settle() == 0.0  # one process at a time: no waiting


def _variant(name, path, device="cpu"):
    return Variant(spec=VariantSpec(name=name), model_ref=str(path), device=device, path=str(path))


def test_auto_takes_turns_on_the_cpu_when_the_models_fit_in_memory(tiny_llama_dir, monkeypatch):
    import compress.bench.metrics as metrics

    cpu = [_variant("base", tiny_llama_dir), _variant("copy", tiny_llama_dir)]
    assert choose_interleave(cpu, Settings())[0] == "turns"
    # Not enough memory for every variant at once: one process at a time, and the report says why.
    monkeypatch.setattr(metrics, "meminfo_bytes", lambda field: 1000)
    mode, why = choose_interleave(cpu, Settings())
    assert mode == "processes" and "do not fit in the available memory" in why
    monkeypatch.undo()
    # CUDA: one process at a time (several contexts and models could exhaust the GPU).
    assert choose_interleave(cpu + [_variant("gpu", tiny_llama_dir, "cuda")], Settings())[0] == "processes"
    # Asked for explicitly: as asked.
    assert choose_interleave(cpu, Settings(interleave="processes")) == ("processes", "as asked")


@pytest.fixture(scope="module")
def turns_run(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("turns")
    copy_dir = shutil.copytree(tiny_llama_dir, root / "copy")
    dies = shutil.copytree(tiny_llama_dir, root / "dies-mid-timing")
    suite = Suite.from_dict({
        "base": str(tiny_llama_dir),
        "settings": {"prompt_lens": [8], "new_tokens": 12, "repeats": 2, "warmup_tokens": 2, "threads": 1,
                     "prefill_repeats": 3, "decode_chunk": 4, "interleave": "turns", "quality": False},
        "variants": [{"name": "copy", "model": str(copy_dir)}, {"name": "dies", "model": str(dies)}],
    })
    import compress.bench.backends as backends

    real_load = backends.load_model

    def load(backend, path, *args, **kwargs):
        model = real_load(backend, path, *args, **kwargs)
        if str(path) == str(dies):
            # Warm-up is 3 forwards (a prefill and 2 steps); the 5th forward is the second timed
            # prefill, by which time the other workers are loaded and waiting for their turns.
            forward, calls = model.forward, [0]

            def forward_or_die(*a, **kw):
                calls[0] += 1
                if calls[0] == 5:
                    os._exit(9)
                return forward(*a, **kw)

            model.forward = forward_or_die
        return model

    backends.load_model = load
    try:
        report = run_bench(suite, root / "report", command="test", isolation="fork")
    finally:
        backends.load_model = real_load
    return report


def _v(report, name):
    return next(v for v in report["variants"] if v["name"] == name)


def test_the_report_says_the_rounds_took_turns(turns_run):
    settings = turns_run["settings"]
    assert settings["interleaved"].startswith("turns") and "take turns" in settings["order"]


def test_only_one_worker_computes_at_a_time_and_each_round_alternates(turns_run):
    for r in range(2):
        spans = sorted((start, end, name) for name in ("base", "copy")
                       for _, _, start, end, _ in _v(turns_run, name)["speed"]["runs"][r]["segments"])
        for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
            assert end <= start  # no two segments overlap
        owners = [name for _, _, name in spans]
        # Segments go round the workers: each time round, every worker runs one segment
        # (who goes first rotates, so the same worker may end one round and start the next).
        assert all(sorted(owners[i:i + 2]) == ["base", "copy"] for i in range(0, len(owners), 2))


def test_each_worker_does_the_same_timed_work_as_a_lone_process(turns_run):
    for name in ("base", "copy"):
        v = _v(turns_run, name)
        assert v["status"] == "ok", v["errors"]
        for run in v["speed"]["runs"]:
            (p,) = run["prompts"]
            assert len(p["prefill_all_s"]) == 3 and len(p["decode_step_s"]) == 11
            assert [kind for kind, *_ in run["segments"]] == ["prefill"] * 3 + ["decode"] * 3
    # The same greedy tokens as each other: the copy computes what the base computes.
    first = [r["prompts"][0]["first_tokens"] for r in _v(turns_run, "base")["speed"]["runs"]]
    assert first == [r["prompts"][0]["first_tokens"] for r in _v(turns_run, "copy")["speed"]["runs"]]


def test_a_worker_dying_mid_turn_fails_only_its_variant(turns_run):
    dies = _v(turns_run, "dies")
    assert dies["status"] == "failed" and dies["speed"] is None
    (error,) = dies["errors"]
    assert error["stage"] == "speed" and "exit code 9" in error["error"] and "\n" not in error["error"]
    assert len(_v(turns_run, "base")["speed"]["runs"]) == 2  # both rounds, the first with the dying worker in it


def test_one_process_at_a_time_when_asked(tmp_path, tiny_llama_dir):
    suite = Suite.from_dict({
        "base": str(tiny_llama_dir),
        "settings": {"prompt_lens": [8], "new_tokens": 4, "repeats": 1, "warmup_tokens": 1, "threads": 1,
                     "prefill_repeats": 2, "decode_chunk": 8, "interleave": "processes", "quality": False},
        "variants": [{"name": "copy", "model": str(tiny_llama_dir)}],
    })
    report = run_bench(suite, tmp_path / "report", command="test", isolation="fork")
    assert report["settings"]["interleaved"] == "processes (as asked)"
    base, copy = (_v(report, n)["speed"]["runs"][0]["segments"] for n in ("base", "copy"))
    # The base's process timed all its segments before the copy's process started timing.
    assert base[-1][3] <= copy[0][2]
    assert [kind for kind, *_ in copy] == ["prefill", "prefill", "decode"]
