"""`compress bench` with GGUF variants: the llamacpp backend reports every metric the others do.

One bench run (module-scoped, workers forked as in tests/test_bench.py) with a
tiny Llama as the base, its f32 GGUF export given as a file, and a recipe
variant that prunes and exports to q8_0 in one go. GGUF variants need no
backend named: a .gguf file chooses llama.cpp. Refusals are one line.
"""

from __future__ import annotations

import pytest

from compress.bench import Suite, run_bench
from compress.bench.schema import validate
from compress.errors import UserError

pytest.importorskip("llama_cpp")

EVAL = {"source": "builtin", "split": "evaluation", "windows": 2, "seq_len": 32}


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, tiny_llama_dir):
    from compress.models import load_artifact
    from compress.passes.base import build_pass
    from compress.saving import save_artifact

    out = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    return save_artifact(build_pass("gguf_export", {"type": "f32", "check": False})(load_artifact(str(tiny_llama_dir))),
                         out)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_llama_dir, gguf_file):
    root = tmp_path_factory.mktemp("bench-llamacpp")
    suite = Suite.from_dict({
        "base": str(tiny_llama_dir),
        "settings": {"prompt_lens": [8, 16], "new_tokens": 6, "repeats": 2, "warmup_tokens": 2, "threads": 1,
                     "prefill_repeats": 2},
        "evaluation": EVAL,
        "calibration": {"samples": 1, "seq_len": 32},
        "sample": {"new_tokens": 5},
        "variants": [
            {"name": "f32-gguf", "model": str(gguf_file)},
            {"name": "mlp25-q8", "passes": [{"channel_prune": {"ratio": 0.25}},
                                            {"gguf_export": {"type": "q8_0", "check": False}}]},
        ],
    })
    return run_bench(suite, root / "report", command="test", isolation="fork")


def _v(report, name):
    return next(v for v in report["variants"] if v["name"] == name)


def test_gguf_variants_run_on_llama_cpp_and_report_every_metric(bench_run):
    assert validate(bench_run) == []
    for name in ("f32-gguf", "mlp25-q8"):
        v = _v(bench_run, name)
        assert v["status"] == "ok", v["errors"]
        assert v["backend"] == "llamacpp"
        sp, q = v["speed"], v["quality"]
        assert sp["repeats"] == 2 and len(sp["runs"]) == 2
        assert 0 < sp["load_s"]["min"] <= sp["load_s"]["max"] < 120
        assert sp["peak_rss_bytes"]["min"] > 10e6
        assert [p["prompt_len"] for p in sp["prompts"]] == [8, 16]
        for p in sp["prompts"]:
            assert 0 < p["prefill_ms"]["min"] <= p["prefill_ms"]["median"] <= p["prefill_ms"]["max"]
            assert p["decode_tokens_per_s"]["min"] > 0 and p["decode_steps"] == 5
            assert 0 < p["per_token_ms"]["p50"] <= p["per_token_ms"]["p90"] <= p["per_token_ms"]["p99"]
        assert 1 < q["perplexity"] < 1e4 and q["tokens"] == 2 * 31
        assert isinstance(q["sample"], str) and q["sample"]
        assert q["parameters"] > 0
        assert v["size"]["weights_bytes"] > 0
        assert v["ratios"]["decode_speedup"] > 0 and v["ratios"]["prefill_speedup"] > 0
    built = _v(bench_run, "mlp25-q8")
    assert [p["name"] for p in built["build"]["passes"]] == ["channel_prune", "gguf_export"]
    assert _v(bench_run, "mlp25-q8")["size"]["weights_bytes"] < _v(bench_run, "f32-gguf")["size"]["weights_bytes"] / 3


def test_the_f32_gguf_agrees_with_its_pytorch_base(bench_run):
    q = _v(bench_run, "f32-gguf")["quality"]
    assert q["kl_mean"] < 1e-4 and q["top1_agreement"] == 1.0
    assert q["perplexity"] == pytest.approx(_v(bench_run, "base")["quality"]["perplexity"], rel=1e-3)
    base_tokens = _v(bench_run, "base")["speed"]["runs"][0]["prompts"][0]["first_tokens"]
    gguf_tokens = _v(bench_run, "f32-gguf")["speed"]["runs"][0]["prompts"][0]["first_tokens"]
    assert gguf_tokens == base_tokens  # same greedy tokens from the same prompt
    assert _v(bench_run, "f32-gguf")["quality"]["parameters"] == _v(bench_run, "base")["quality"]["parameters"]


def test_a_gguf_file_given_to_a_pytorch_only_backend_is_refused_in_one_line(gguf_file):
    from compress.bench.backends import check_available

    for backend in ("pytorch", "onnxruntime"):
        with pytest.raises(UserError, match=f"GGUF file, which the {backend} backend cannot run") as exc:
            check_available(backend, "cpu", "float32", gguf_file)
        assert "\n" not in str(exc.value)


def test_the_llamacpp_backend_refuses_what_it_cannot_run(gguf_file, tiny_llama_dir):
    from compress.bench.backends import check_available, detect_backend

    assert detect_backend(gguf_file) == "llamacpp" and detect_backend(tiny_llama_dir) == "pytorch"
    with pytest.raises(UserError, match="is not a .gguf file"):
        check_available("llamacpp", "cpu", "float32", tiny_llama_dir)
    with pytest.raises(UserError, match="--dtype bfloat16 applies to the pytorch backend only"):
        check_available("llamacpp", "cpu", "bfloat16", gguf_file)
    with pytest.raises(UserError, match="runs on cpu, not cuda"):
        check_available("llamacpp", "cuda", "float32", gguf_file)
