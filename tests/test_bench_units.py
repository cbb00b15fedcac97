"""compress bench, the parts that need no worker process: statistics, schema, planning, variants, CLI errors."""

from __future__ import annotations

import copy
import math
import shutil

import pytest
import torch

from compress.bench.metrics import latency_percentiles, percentile, summarize
from compress.bench.report import pareto_front
from compress.bench.schema import load_schema, validate
from compress.bench.spec import Suite, VariantSpec, default_suite_path, parse_variant_arg
from compress.cli import main


def test_percentiles_interpolate_between_order_statistics():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert math.isnan(percentile([], 50))
    s = summarize(xs)
    assert (s["n"], s["min"], s["median"], s["max"], s["mean"]) == (4, 1.0, 2.5, 4.0, 2.5)
    lat = latency_percentiles([0.001, 0.002, 0.003])
    assert lat["p50"] == pytest.approx(2.0) and lat["p99"] == pytest.approx(2.98)


def test_a_workers_peak_memory_is_its_own_not_its_parents():
    """A worker started by a parent that holds a big model must not report the parent's peak."""
    import subprocess
    import sys

    ballast = bytearray(1 << 30)  # the parent now holds 1 GiB, more than the child's own imports (torch) take
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page so it is resident
    child = subprocess.run([sys.executable, "-c", "from compress.bench.metrics import peak_rss_bytes as p; print(p())"],
                           capture_output=True, text=True, check=True)
    assert 1e6 < int(child.stdout) < 0.8 * (1 << 30)
    del ballast


def test_pareto_front_keeps_only_undominated_points():
    # (speed, perplexity): faster and lower is better.
    pts = [(10, 20.0), (20, 25.0), (15, 30.0), (5, 19.0), (20, 24.0)]
    assert pareto_front(pts, maximize_x=True) == [3, 0, 4]
    # (memory, perplexity): smaller and lower is better.
    assert pareto_front([(100, 20.0), (50, 30.0), (60, 31.0)], maximize_x=False) == [1, 0]


def test_default_suite_parses_and_uses_the_builtin_model():
    suite = Suite.from_yaml(default_suite_path())
    assert suite.base == "smollm2-135m-instruct"
    assert suite.settings.prompt_lens == [128] and suite.settings.new_tokens == 64 and suite.settings.repeats >= 5
    from compress.passes.base import REGISTRY, build_pass
    from compress.passes import _load_all  # noqa: F401

    used = set()
    for variant in suite.variants:
        for entry in variant.passes or []:
            (name, config), = (entry.items() if isinstance(entry, dict) else [(entry, {})])
            build_pass(name, config)  # every default pass exists and its config validates
            used.add(name)
    # Across runtimes: optimum's ONNX Runtime, the fused onnxruntime-genai graph, llama.cpp (GGUF),
    # and structured pruning exported to one of them.
    assert {"channel_prune", "onnx_export", "ort_quantize", "ort_genai_export", "gguf_export"} <= used <= set(REGISTRY)


@pytest.mark.parametrize("arg, expected", [
    ("out/pruned", {"name": "pruned", "model": "out/pruned"}),
    ("mine=out/pruned", {"name": "mine", "model": "out/pruned"}),
    ("mag=magnitude_prune: {sparsity: 0.3}", {"name": "mag", "passes": [{"magnitude_prune": {"sparsity": 0.3}}]}),
    ("magnitude_prune", {"name": "magnitude_prune", "passes": ["magnitude_prune"]}),
    ("configs/default.yaml", {"name": "default", "recipe": "configs/default.yaml"}),
    ("HuggingFaceTB/SmolLM2-135M", {"name": "SmolLM2-135M", "model": "HuggingFaceTB/SmolLM2-135M"}),
])
def test_variant_arguments_become_models_recipes_or_passes(arg, expected):
    spec = parse_variant_arg(arg, 0).model_dump(exclude_none=True)
    assert spec == expected


def test_suite_rejects_duplicate_names_and_the_reserved_base_name():
    from compress.errors import UserError

    with pytest.raises(UserError, match="used twice"):
        Suite.from_dict({"variants": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(UserError, match="reserved"):
        Suite.from_dict({"variants": [{"name": "base", "dtype": "bf16"}]})
    with pytest.raises(UserError, match="unknown key"):
        Suite.from_dict({"settings": {"repeat": 3}})


def _plan(suite_dict):
    from compress.bench.harness import plan

    return {v.name: v for v in plan(Suite.from_dict(suite_dict))}


def test_bad_variants_fail_at_planning_with_one_line_each(tiny_llama_dir, tmp_path):
    short = tmp_path / "short-context"
    shutil.copytree(tiny_llama_dir, short)
    cfg = (short / "config.json").read_text().replace('"max_position_embeddings": 512', '"max_position_embeddings": 16')
    (short / "config.json").write_text(cfg)
    planned = _plan({
        "base": str(tiny_llama_dir),
        "settings": {"prompt_lens": [8], "new_tokens": 12},
        "variants": [
            {"name": "missing", "model": str(tmp_path / "nope")},
            {"name": "ort-not-exported", "model": str(tiny_llama_dir), "backend": "onnxruntime"},
            {"name": "no-such-pass", "passes": [{"wanda_prune_v9": {"sparsity": 0.5}}]},
            {"name": "bad-config", "passes": [{"magnitude_prune": {"sparsity": 1.5}}]},
            {"name": "short", "model": str(short)},
            {"name": "fine", "passes": [{"magnitude_prune": {"sparsity": 0.5}}]},
        ],
    })
    errors = {name: v.errors[0]["error"] if v.errors else None for name, v in planned.items()}
    assert errors["base"] is None and errors["fine"] is None
    assert "does not exist" in errors["missing"]
    assert "no ONNX export" in errors["ort-not-exported"]
    assert "unknown pass 'wanda_prune_v9'" in errors["no-such-pass"]
    assert "sparsity" in errors["bad-config"]
    assert "context is 16 tokens" in errors["short"]
    for message in filter(None, errors.values()):
        assert "\n" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_a_cpu_machine_fails_that_variant_only(tiny_llama_dir):
    planned = _plan({"base": str(tiny_llama_dir), "variants": [{"name": "gpu", "device": "cuda"},
                                                              {"name": "gpu-ort", "device": "cuda", "backend": "onnxruntime"}]})
    assert not planned["base"].errors
    assert "CUDA is not available" in planned["gpu"].errors[0]["error"]
    assert "CUDA provider is not available" in planned["gpu-ort"].errors[0]["error"]


def _minimal_report():
    summary = {"n": 1, "min": 1.0, "median": 1.0, "max": 1.0, "mean": 1.0, "values": [1.0]}
    prompt = {"prompt_len": 8, "prefill_ms": summary, "decode_tokens_per_s": summary,
              "per_token_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0}, "decode_steps": 3}
    run = {"repeat": 1, "load_s": 1.0, "peak_rss_bytes": 1, "rss_before_load_bytes": 0, "rss_after_load_bytes": 1,
           "prompts": []}
    variant = {
        "name": "base", "status": "ok", "errors": [], "description": "x", "source": {}, "backend": "pytorch",
        "device": "cpu", "dtype": "float32", "path": None, "build": None, "size": None,
        "speed": {"repeats": 1, "load_s": summary, "peak_rss_bytes": summary, "load_rss_bytes": summary,
                  "cuda_max_allocated_bytes": None, "cuda_max_reserved_bytes": None, "prompts": [prompt], "runs": [run]},
        "quality": {"perplexity": 10.0, "kl_mean": 0.0, "top1_agreement": 1.0, "delta_p_correct": 0.0, "tokens": 5,
                    "parameters": 10, "nonzero_parameters": 9, "sample": "hi"},
        "ratios": {k: 1.0 for k in ("prefill_speedup", "decode_speedup", "load_time", "peak_rss", "size",
                                   "nonzero_parameters", "perplexity")},
    }
    return {
        "format": "compress-bench/1", "created": "now", "command": None, "seconds": 1.0, "isolation": "exec",
        "base": "base",
        "settings": {"prompt_lens": [8], "new_tokens": 4, "repeats": 1, "warmup_tokens": 0, "device": "cpu",
                     "dtype": "float32", "threads": None, "order": "x",
                     "evaluation": {"source": "builtin", "split": "evaluation", "seq_len": 8, "windows": 1}},
        "environment": {"cpu_model": "x", "cpu_count": 2, "usable_cores": 2, "gpu": None,
                        "versions": {"python": "3", "torch": "2", "transformers": "4"}},
        "variants": [variant],
    }


def test_schema_validator_accepts_a_good_report_and_names_each_problem_in_a_bad_one():
    good = _minimal_report()
    assert validate(good) == []
    bad = copy.deepcopy(good)
    del bad["environment"]
    bad["variants"][0]["status"] = "great"
    bad["variants"][0]["quality"]["top1_agreement"] = 1.5
    bad["variants"][0]["speed"]["prompts"][0]["prefill_ms"]["median"] = "fast"
    problems = validate(bad)
    assert any("missing required key 'environment'" in p for p in problems)
    assert any("$.variants[0].status" in p for p in problems)
    assert any("top1_agreement" in p and "maximum" in p for p in problems)
    assert any("prefill_ms.median" in p for p in problems)


def test_schema_is_valid_json_schema_when_jsonschema_is_installed():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(load_schema())
    jsonschema.validate(_minimal_report(), load_schema())


def test_cli_refuses_an_existing_output_before_any_work(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "report"
    out.mkdir()
    code = main(["bench", "-m", str(tiny_llama_dir), "magnitude_prune", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err
    assert err.count("error:") == 1 and "Traceback" not in err


def test_cli_says_in_one_line_when_no_variant_can_run(tmp_path, capsys):
    code = main(["bench", "-m", str(tmp_path / "missing-model"), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "no variant can run" in err and "does not exist" in err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_variant_spec_refuses_both_passes_and_recipe():
    with pytest.raises(ValueError, match="either passes or recipe"):
        VariantSpec(name="x", passes=["magnitude_prune"], recipe="r.yaml")


def _runs(prefill_ms, step_ms):
    return [{"repeat": i + 1, "prompts": [{"prompt_len": 8, "prefill_s": pre / 1000, "decode_step_s": [step / 1000] * 4}]}
            for i, (pre, step) in enumerate(zip(prefill_ms, step_ms))]


def _speed(prefill_ms, step_ms):
    from compress.bench.metrics import summarize

    return {"prompts": [{"prompt_len": 8, "prefill_ms": summarize(prefill_ms),
                         "decode_tokens_per_s": summarize(1000 / s for s in step_ms)}],
            "runs": _runs(prefill_ms, step_ms), "peak_rss_bytes": None, "load_s": None}


@pytest.mark.parametrize("interleaved, prefill, decode", [
    # Turns: each round's variant is compared with the base timed beside it, so the round in
    # which the machine slowed both (the third) does not move the ratio.
    ("turns (all variants fit in memory at once)", 1.0, 1.0),
    # One process at a time: no pairing; the ratio of the medians feels the slow round.
    ("processes (as asked)", 0.75, 0.75),
])
def test_speed_ratios_pair_rounds_only_when_the_run_took_turns(interleaved, prefill, decode):
    from compress.bench.report import add_ratios

    base = {"name": "base", "speed": _speed([100, 200, 150], [10, 20, 15]), "quality": None, "size": None}
    variant = {"name": "v", "speed": _speed([100, 200, 300], [10, 20, 30]), "quality": None, "size": None}
    report = {"base": "base", "settings": {"interleaved": interleaved}, "variants": [base, variant]}
    add_ratios(report)
    (p,) = variant["speed"]["prompts"]
    assert p["prefill_speedup"] == pytest.approx(prefill) and p["decode_speedup"] == pytest.approx(decode)
    assert variant["ratios"]["prefill_speedup"] == pytest.approx(prefill)
    if interleaved.startswith("turns"):
        assert p["prefill_speedup_rounds"] == pytest.approx([1.0, 1.0, 0.5])


def test_an_unknown_backend_name_is_refused_in_one_line():
    from compress.bench.spec import Suite
    from compress.errors import UserError

    with pytest.raises(UserError, match="unknown backend 'nope'; use one of .*pytorch"):
        Suite.from_dict({"variants": [{"name": "x", "backend": "nope"}]})


def test_a_backend_in_its_own_module_is_found_by_name_and_chosen_by_format(tmp_path, monkeypatch):
    """A new runtime is one module that registers a Backend; the harness finds it by name and by format."""
    import sys
    import types

    from compress.bench import backends

    module = types.ModuleType("fake_backend_module")

    class FakeBackend(backends.Backend):
        name, priority = "fake", 50

        def handles(self, path):
            return path is not None and str(path).endswith(".fake")

    module.register_it = lambda: backends.register(FakeBackend())
    monkeypatch.setitem(sys.modules, "fake_backend_module", module)
    monkeypatch.setitem(backends.BACKEND_MODULES, "fake", "fake_backend_module")
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    module.register_it()
    model = tmp_path / "m.fake"
    model.write_text("x")
    assert "fake" in backends.backend_names()
    assert backends.detect_backend(model) == "fake"
    assert backends.detect_backend(tmp_path) == "pytorch"  # nothing there: the default
    with pytest.raises(Exception, match="runs on cpu, not cuda"):
        backends.check_available("fake", "cuda", "float32", model)


def test_a_faster_copy_at_the_same_perplexity_pushes_its_source_off_the_pareto_front():
    # The base (10 tok/s, 12.880) and an exported copy (20 tok/s, 12.881: float rounding only):
    # the copy is better on speed and equal on quality, so the base is dominated.
    pts = [(10.0, 12.880), (20.0, 12.881), (30.0, 14.0)]
    assert pareto_front(pts, maximize_x=True) == [1, 2]
    # A real quality difference (1%) keeps the slower, better point on the front.
    assert pareto_front([(10.0, 12.75), (20.0, 12.881)], maximize_x=True) == [0, 1]


def test_report_rows_are_grouped_by_runtime_with_the_base_first():
    from compress.bench.report import grouped_by_runtime

    variants = [{"name": "gguf-q8", "backend": "llamacpp"}, {"name": "base", "backend": "pytorch"},
                {"name": "ort", "backend": "onnxruntime"}, {"name": "mlp", "backend": "pytorch"},
                {"name": "gguf-q4", "backend": "llamacpp"}]
    assert [v["name"] for v in grouped_by_runtime(variants, "base")] == ["base", "mlp", "ort", "gguf-q8", "gguf-q4"]


@pytest.mark.parametrize("calibration, relation, said", [
    ({"source": "builtin", "split": "calibration"}, "same corpus", "the other part of the evaluation corpus"),
    ({"source": "mixed", "split": "calibration"}, "shares a corpus", "a mix that holds the other part"),
    ({"source": "wikipedia-leads", "split": "calibration"}, "different corpora", "a different corpus"),
])
def test_the_report_says_when_calibration_and_evaluation_share_a_corpus(tiny_llama_dir, calibration, relation, said):
    from compress.bench.harness import calibration_groups
    from compress.bench.report import calibration_note

    planned = _plan({"base": str(tiny_llama_dir), "calibration": {**calibration, "samples": 2, "seq_len": 16},
                     "evaluation": {"source": "builtin", "split": "evaluation", "windows": 2, "seq_len": 32},
                     "variants": [{"name": "wanda", "passes": [{"wanda_prune": {"sparsity": 0.5}}]},
                                  {"name": "magnitude", "passes": [{"magnitude_prune": {"sparsity": 0.5}}]}]})
    groups = calibration_groups(list(planned.values()))
    assert [(g["source"], g["used_by"], g["relation_to_evaluation"]) for g in groups] == [
        (calibration["source"], ["wanda"], relation)]  # magnitude pruning reads no calibration text
    note = calibration_note({"calibration": groups})
    assert note.startswith("Calibration of wanda:") and said in note
    assert calibration_note({"calibration": []}) == "No variant read calibration text."


def test_relative_text_paths_are_resolved_where_the_command_runs(tmp_path, monkeypatch):
    # Workers start in a scratch directory: a relative evaluation file must reach them as an absolute path.
    from compress.bench.harness import with_absolute_text_paths

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.txt").write_text("some text\n" * 10)
    monkeypatch.chdir(tmp_path)
    suite = Suite.from_dict({"evaluation": {"source": "data/eval.txt", "split": "all"},
                             "calibration": {"source": "builtin"}})
    resolved = with_absolute_text_paths(suite)
    assert resolved.evaluation.source == str(tmp_path / "data" / "eval.txt")
    assert resolved.evaluation.split == "all" and resolved.calibration.source == "builtin"


def test_a_missing_evaluation_file_is_refused_before_anything_is_built_or_timed(tmp_path, tiny_llama_dir, capsys):
    code = main(["bench", "-m", str(tiny_llama_dir), "magnitude_prune", "--eval-text", str(tmp_path / "nope.txt"),
                 "-o", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.txt does not exist" in err and err.count("error:") == 1
    assert not (tmp_path / "report").exists()


def _scripted_worker(monkeypatch, seconds_per_variant: list[float]):
    """Workers whose process announces each variant, works `seconds` on it, and reports it done."""
    import subprocess
    import sys

    from compress.bench import harness

    def start(self, args, err, pass_fds=()):
        events_path = args[2]
        script = (
            "import json, sys, time\n"
            f"for i, s in enumerate({seconds_per_variant!r}):\n"
            f"    with open({events_path!r}, 'a') as f: f.write(json.dumps({{'event': 'start', 'name': f'v{{i}}'}}) + '\\n')\n"
            "    time.sleep(s)\n"
            f"    with open({events_path!r}, 'a') as f: f.write(json.dumps({{'event': 'result', 'name': f'v{{i}}'}}) + '\\n')\n"
        )
        return harness._Process(subprocess.Popen([sys.executable, "-c", script], stderr=err))

    monkeypatch.setattr(harness.Workers, "_start", start)


def test_a_worker_taking_several_variants_gets_the_timeout_for_each_not_for_all(monkeypatch, tmp_path):
    from compress.bench.harness import Workers

    _scripted_worker(monkeypatch, [1.2, 1.2, 1.2])  # 3.6 s in all, each under the 2 s timeout
    result = Workers(tmp_path, threads=1, timeout=2.0).run("quality", {})
    assert not result.timed_out
    assert [e["name"] for e in result.events if e["event"] == "result"] == ["v0", "v1", "v2"]


def test_a_variant_past_the_timeout_stops_the_worker(monkeypatch, tmp_path):
    from compress.bench.harness import Workers

    _scripted_worker(monkeypatch, [0.1, 30.0])
    result = Workers(tmp_path, threads=1, timeout=1.5).run("quality", {})
    assert result.timed_out
    assert [e["name"] for e in result.events if e["event"] == "result"] == ["v0"]


def test_a_relative_work_dir_reaches_the_decoder_bench_workers_whole(tmp_path, monkeypatch, tiny_llama_dir,
                                                                    stop_at_workers):
    """Workers start in their scratch directory, so the kept work directory must reach them absolute."""
    import compress.bench.harness as harness
    from conftest import WorkersStarted

    seen = stop_at_workers(harness, "Workers")
    monkeypatch.chdir(tmp_path)
    suite = Suite.from_dict({"base": str(tiny_llama_dir), "settings": {"quality": False},
                             "variants": [{"name": "mag", "passes": [{"magnitude_prune": {"sparsity": 0.5}}]}]})
    with pytest.raises(WorkersStarted):
        harness.run_bench(suite, tmp_path / "report", work_dir="work")
    assert seen["scratch"].is_absolute() and seen["scratch"].parent == tmp_path / "work"
    assert not seen["scratch"].exists(), "the scratch directory is removed even when the run stops"
