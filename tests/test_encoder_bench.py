"""compress bench with an encoder base: every report file, every metric in range, failures isolated."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
from encoder_fixtures import bert_tokenizer, encoder_text, tiny_bert_dir  # noqa: F401

from compress.cli import main
from compress.encoders.bench import EncoderSuite, run_encoder_bench


@pytest.fixture(scope="module")
def encoder_bench(tmp_path_factory, tiny_bert_dir, encoder_text):
    root = tmp_path_factory.mktemp("encoder-bench")
    recipe = root / "heads.yaml"  # given relative to the working directory, as on a command line
    recipe.write_text(f"calibration: {{source: {encoder_text}, samples: 2, seq_len: 32}}\n"
                      "passes:\n  - head_prune: {ratio: 0.5, importance: magnitude}\n")
    suite = EncoderSuite.from_dict({
        "base": str(tiny_bert_dir),
        "settings": {"batch_sizes": [1, 4], "timing_sentences": 8, "warmup_batches": 1, "repeats": 2, "threads": 1},
        "evaluation": {"source": str(encoder_text), "split": "evaluation", "sentences": 40},
        "calibration": {"source": str(encoder_text), "split": "calibration", "samples": 2, "seq_len": 32},
        "variants": [
            {"name": "onnx", "passes": [{"onnx_export": {}}]},
            {"name": "mag50", "passes": [{"magnitude_prune": {"sparsity": 0.5}}]},
            {"name": "heads", "recipe": os.path.relpath(recipe)},
            {"name": "missing", "model": str(root / "does-not-exist")},
        ],
    })
    report = run_encoder_bench(suite, root / "report", command="test", isolation="fork")
    return report, root / "report"


def by_name(report):
    return {v["name"]: v for v in report["variants"]}


def test_the_report_files_are_written_and_the_json_matches_its_schema(encoder_bench):
    from compress.encoders.bench_report import validate

    report, out = encoder_bench
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.json", "bench.md", "bench.png"]
    validate(json.loads((out / "bench.json").read_text()))
    md = (out / "bench.md").read_text()
    assert "Sent/s b1" in md and "Sent/s b4" in md and "Top-10 overlap" in md and "Pareto" in md
    rows = list(csv.DictReader(io.StringIO((out / "bench.csv").read_text())))
    assert {(r["name"], r["batch_size"]) for r in rows if r["batch_size"]} == {
        (n, b) for n in ("base", "onnx", "mag50", "heads") for b in ("1", "4")}


def test_speed_is_measured_at_every_batch_size_with_ratios_to_the_base(encoder_bench):
    report, _ = encoder_bench
    variants = by_name(report)
    for name in ("base", "onnx", "mag50"):
        speed = variants[name]["speed"]
        assert speed["repeats"] == 2
        for b in speed["batches"]:
            assert b["sentences"] == 8 and b["sentences_per_s"]["median"] > 0
            assert 0 < b["latency_ms"]["p50"] <= b["latency_ms"]["p90"] <= b["latency_ms"]["p99"]
        assert speed["peak_rss_bytes"]["median"] > 0
    assert variants["base"]["ratios"]["speedup"] == {"1": 1.0, "4": 1.0}
    assert variants["onnx"]["backend"] == "onnxruntime" and variants["mag50"]["backend"] == "pytorch"
    assert variants["onnx"]["ratios"]["speedup"]["4"] > 0
    assert variants["mag50"]["ratios"]["size"] == pytest.approx(1.0, rel=0.01)  # zeros are still stored


def test_quality_is_one_for_the_base_and_the_onnx_export_and_lower_for_pruning(encoder_bench):
    report, _ = encoder_bench
    variants = by_name(report)
    base, onnx, pruned = (variants[n]["quality"] for n in ("base", "onnx", "mag50"))
    for key in ("cosine_mean", "cosine_p5", "cosine_min", "top10_overlap", "spearman_pairwise"):
        assert base[key] == pytest.approx(1.0)
        assert onnx[key] == pytest.approx(1.0, abs=1e-4)
    assert pruned["cosine_mean"] < 1.0 and pruned["sentences"] == 40
    assert pruned["nonzero_parameters"] < base["nonzero_parameters"]


def test_a_recipe_variant_is_built_from_its_file_and_measured(encoder_bench):
    heads = by_name(encoder_bench[0])["heads"]
    assert heads["status"] == "ok", heads["errors"]
    assert [p["name"] for p in heads["build"]["passes"]] == ["head_prune"]
    assert heads["quality"]["parameters"] < by_name(encoder_bench[0])["base"]["quality"]["parameters"]


def test_a_variant_that_cannot_run_fails_alone_with_one_line(encoder_bench):
    report, _ = encoder_bench
    missing = by_name(report)["missing"]
    assert missing["status"] == "failed" and missing["speed"] is None
    assert missing["errors"][0]["stage"] == "plan" and "does not exist" in missing["errors"][0]["error"]


def test_compress_bench_refuses_decoder_options_for_an_encoder_base(tiny_bert_dir, tmp_path, capsys):
    code = main(["bench", "--base", str(tiny_bert_dir), "--prompt-len", "64", "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--prompt-len" in err and "encoder" in err
    assert not (tmp_path / "r").exists()


def test_a_relative_recipe_path_reaches_the_build_worker_whole(tmp_path, monkeypatch):
    from compress.bench.harness import Variant, WorkerResult, _build
    from compress.bench.spec import VariantSpec

    class Capture:
        timeout = 1.0

        def run(self, mode, job):
            self.job = job
            return WorkerResult([], 0, "", False)

    monkeypatch.chdir(tmp_path)  # a worker started elsewhere (its scratch directory) must still find the file
    workers = Capture()
    variant = Variant(spec=VariantSpec(name="r", recipe="recipes/r.yaml"), model_ref="m", build={"input": "m"})
    _build([variant], EncoderSuite(), workers, tmp_path, check=lambda v: None)
    assert workers.job["recipe"] == str(tmp_path / "recipes" / "r.yaml")


def test_a_relative_work_dir_reaches_the_workers_whole(tmp_path, monkeypatch, tiny_bert_dir, encoder_text,
                                                       stop_at_workers):
    import compress.encoders.bench as bench
    from conftest import WorkersStarted

    seen = stop_at_workers(bench, "EncoderWorkers")
    monkeypatch.chdir(tmp_path)  # workers start in their scratch directory, so a relative path would miss
    suite = EncoderSuite.from_dict({
        "base": str(tiny_bert_dir),
        "evaluation": {"source": str(encoder_text), "split": "evaluation", "sentences": 10},
        "variants": [{"name": "mag", "passes": [{"magnitude_prune": {"sparsity": 0.5}}]}],
    })
    with pytest.raises(WorkersStarted):
        run_encoder_bench(suite, tmp_path / "report", work_dir="work")
    assert seen["scratch"].is_absolute() and seen["scratch"].parent == tmp_path / "work"
