"""compress bench end to end on tiny models: every metric produced and in range, failures isolated.

One bench run (module-scoped) covers a base, a recipe variant, an exact copy of
the base, an ONNX export, and three variants that fail in different ways (a
corrupt checkpoint, a worker that dies, a path that does not exist). Workers are
forked from the test process (isolation="fork") so each measurement is still a
process of its own without paying for a fresh interpreter's imports.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from compress.bench import Suite, run_bench
from compress.bench.schema import validate
from compress.recipe import EvaluationData

EVAL = {"source": "builtin", "split": "evaluation", "windows": 2, "seq_len": 32}


@pytest.fixture(scope="module")
def tiny_onnx_dir(tmp_path_factory, tiny_llama_dir):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-llama-onnx")
    ORTModelForCausalLM.from_pretrained(tiny_llama_dir, export=True).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_llama_dir, tiny_onnx_dir):
    root = tmp_path_factory.mktemp("bench")
    copy_dir = shutil.copytree(tiny_llama_dir, root / "copy")
    corrupt = shutil.copytree(tiny_llama_dir, root / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    crash = shutil.copytree(tiny_llama_dir, root / "crash")
    crash_speed = shutil.copytree(tiny_llama_dir, root / "crash-speed")
    suite = Suite.from_dict({
        "base": str(tiny_llama_dir),
        "settings": {"prompt_lens": [8, 16], "new_tokens": 6, "repeats": 2, "warmup_tokens": 2, "threads": 1,
                     "prefill_repeats": 2},
        "evaluation": EVAL,
        "sample": {"new_tokens": 5},
        "variants": [
            {"name": "mag50", "passes": [{"magnitude_prune": {"sparsity": 0.5}}]},
            {"name": "crash", "model": str(crash)},
            {"name": "copy", "model": str(copy_dir)},
            {"name": "onnx", "model": str(tiny_onnx_dir)},
            {"name": "corrupt", "model": str(corrupt)},
            {"name": "crash-speed", "model": str(crash_speed)},
            {"name": "missing", "model": str(root / "does-not-exist")},
        ],
    })

    # Workers that die outright, as a segfault would: "crash" in the quality process (which
    # loads with io_binding=False), "crash-speed" in its timing process.
    import compress.bench.backends as backends

    real_load = backends.load_model

    def load_or_die(backend, path, *args, **kwargs):
        quality = kwargs.get("io_binding") is False
        if (str(path) == str(crash) and quality) or (str(path) == str(crash_speed) and not quality):
            os._exit(7)
        return real_load(backend, path, *args, **kwargs)

    backends.load_model = load_or_die
    try:
        report = run_bench(suite, root / "report", command="test", isolation="fork")
    finally:
        backends.load_model = real_load
    return report, root / "report"


def _v(report, name):
    return next(v for v in report["variants"] if v["name"] == name)


def test_report_files_are_written_and_the_json_matches_its_schema(bench_run):
    report, out = bench_run
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.json", "bench.md", "bench.png"]
    on_disk = json.loads((out / "bench.json").read_text())
    assert validate(on_disk) == []
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(io.StringIO((out / "bench.csv").read_text())))
    assert {r["name"] for r in rows} == {v["name"] for v in report["variants"]}
    assert len([r for r in rows if r["name"] == "base"]) == 2  # one row per prompt length
    # The human reports are a pure function of bench.json: re-rendering gives the same Markdown.
    from compress.bench.report import render

    md = (out / "bench.md").read_text()
    render(out)
    assert (out / "bench.md").read_text() == md and "**Noise**" in md


def test_every_metric_is_produced_and_in_range_for_working_variants(bench_run):
    report, _ = bench_run
    for name in ("base", "mag50", "copy", "onnx"):
        v = _v(report, name)
        assert v["status"] == "ok", v["errors"]
        sp, q = v["speed"], v["quality"]
        assert sp["repeats"] == 2 and len(sp["runs"]) == 2
        assert 0 < sp["load_s"]["min"] <= sp["load_s"]["median"] <= sp["load_s"]["max"] < 120
        assert sp["peak_rss_bytes"]["min"] > 50e6  # torch alone is bigger than that
        assert [p["prompt_len"] for p in sp["prompts"]] == [8, 16]
        for p in sp["prompts"]:
            assert 0 < p["prefill_ms"]["min"] <= p["prefill_ms"]["median"] <= p["prefill_ms"]["max"]
            assert p["decode_tokens_per_s"]["min"] > 0 and p["decode_steps"] == 5
            assert 0 < p["per_token_ms"]["p50"] <= p["per_token_ms"]["p90"] <= p["per_token_ms"]["p99"]
        assert all(len(r["prompts"][0]["decode_step_s"]) == 5 for r in sp["runs"])
        assert all(len(p["prefill_all_s"]) == 2 for r in sp["runs"] for p in r["prompts"])
        assert 1 < q["perplexity"] < 1e4 and q["tokens"] == 2 * 31
        assert -1e-6 <= q["kl_mean"] and 0 <= q["top1_agreement"] <= 1
        assert isinstance(q["sample"], str) and q["sample"]
        assert v["size"]["weights_bytes"] > 0 and v["size"]["total_bytes"] >= v["size"]["weights_bytes"]
        assert v["ratios"]["decode_speedup"] > 0 and v["ratios"]["prefill_speedup"] > 0
    base = _v(report, "base")
    assert base["ratios"]["decode_speedup"] == 1.0 and base["ratios"]["peak_rss"] == 1.0
    mag = _v(report, "mag50")
    assert mag["quality"]["parameters"] == base["quality"]["parameters"]
    assert mag["quality"]["nonzero_parameters"] < 0.8 * base["quality"]["nonzero_parameters"]
    assert mag["quality"]["kl_mean"] > 0 and mag["build"]["passes"][0]["name"] == "magnitude_prune"
    assert _v(report, "onnx")["backend"] == "onnxruntime" and _v(report, "onnx")["quality"]["parameters"] is None


def test_same_model_has_zero_kl_and_full_top1_agreement(bench_run):
    report, _ = bench_run
    for name in ("base", "copy"):  # the reference itself, and the same weights loaded separately
        q = _v(report, name)["quality"]
        assert q["kl_mean"] == pytest.approx(0.0, abs=1e-7)
        assert q["top1_agreement"] == 1.0
        assert q["perplexity"] == pytest.approx(_v(report, "base")["quality"]["perplexity"], rel=1e-6)
    # The ONNX export computes the same function up to float rounding.
    onnx = _v(report, "onnx")["quality"]
    assert onnx["kl_mean"] < 1e-4 and onnx["top1_agreement"] > 0.95


def test_greedy_generation_is_the_same_on_pytorch_and_onnxruntime(bench_run):
    report, _ = bench_run
    torch_tokens = [r["prompts"][0]["first_tokens"] for r in _v(report, "base")["speed"]["runs"]]
    onnx_tokens = [r["prompts"][0]["first_tokens"] for r in _v(report, "onnx")["speed"]["runs"]]
    assert torch_tokens[0] == torch_tokens[1] == onnx_tokens[0]


def test_perplexity_in_the_report_equals_a_hand_computation(bench_run, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report, _ = bench_run
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    windows = EvaluationData(**EVAL).load(tok)
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in windows.input_ids:
            logits = model(input_ids=row[None]).logits[0]
            for j in range(1, len(row)):  # token j predicted from tokens < j
                nll -= float(F.log_softmax(logits[j - 1].double(), -1)[row[j]])
                count += 1
    assert count == _v(report, "base")["quality"]["tokens"]
    assert _v(report, "base")["quality"]["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_failing_variants_are_marked_with_one_line_and_the_others_still_run(bench_run):
    report, out = bench_run
    missing, corrupt = _v(report, "missing"), _v(report, "corrupt")
    crash, crash_speed = _v(report, "crash"), _v(report, "crash-speed")
    assert missing["status"] == "failed" and "does not exist" in missing["errors"][0]["error"]
    assert corrupt["status"] == "failed" and corrupt["speed"] is None and corrupt["quality"] is None
    assert corrupt["errors"][0]["stage"] == "speed" and "could not load" in corrupt["errors"][0]["error"]
    assert crash_speed["status"] == "failed" and [e["stage"] for e in crash_speed["errors"]] == ["speed"]
    assert "died (exit code 7)" in crash_speed["errors"][0]["error"]
    # Timed fine, then killed its quality process: its speed numbers stay, quality is marked failed.
    assert crash["status"] == "partial" and crash["speed"] and crash["quality"] is None
    assert [e["stage"] for e in crash["errors"]] == ["quality"] and "died (exit code 7)" in crash["errors"][0]["error"]
    for v in (missing, corrupt, crash, crash_speed):
        assert all("\n" not in e["error"] for e in v["errors"])
    # The variants after the crash were measured by a fresh quality process.
    assert _v(report, "copy")["quality"] and _v(report, "onnx")["quality"]
    md = (out / "bench.md").read_text()
    assert "## Failures" in md and "**crash** (quality)" in md and "**missing** (plan)" in md


@pytest.mark.integration
def test_builtin_model_and_its_bf16_copy_are_measured_end_to_end(tmp_path):
    suite = Suite.from_dict({
        "settings": {"prompt_lens": [16], "new_tokens": 4, "repeats": 1, "warmup_tokens": 1, "threads": 1},
        "evaluation": {"windows": 1, "seq_len": 64},
        "sample": {"new_tokens": 4},
        "variants": [{"name": "bf16", "dtype": "bfloat16"}],
    })
    report = run_bench(suite, tmp_path / "report", isolation="fork")
    base, bf16 = _v(report, "base"), _v(report, "bf16")
    assert base["status"] == bf16["status"] == "ok"
    assert base["quality"]["parameters"] == bf16["quality"]["parameters"] > 100e6
    assert 1 < base["quality"]["perplexity"] < 100
    assert bf16["quality"]["kl_mean"] < 0.05 and bf16["quality"]["top1_agreement"] > 0.9
    assert bf16["size"] == base["size"]  # the same checkpoint, loaded in another dtype
    assert validate(report) == []
