"""benchmarks/gpu: the kit that carries compress to the lent GPU machine, proven here before GPU time is spent.

The dry run is the whole kit on this CPU machine: a tiny model's carry cut
across two calls, staged call by call, a wheel installed into a target folder,
the model's hashes checked, then `compress bench --device cpu` on the GPU
suite's own variants, cut down, and the reports written. The other tests pin
down the pieces the GPU run relies on and the dry run cannot reach.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import assemble  # noqa: E402
import runner  # noqa: E402
import summary  # noqa: E402
from kit import KitError, join_parts, read_manifest, split_into, weights_digest  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry-out")
    code = runner.main(["--dry-run", "--out", str(out)])
    return code, out


def test_the_dry_run_measures_the_suite_and_writes_every_report(dry_run):
    code, out = dry_run
    assert code == 0, (out / "runner.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.json", "bench.md", "bench.png",
                                                     "runner.log", "summary.md"]
    report = json.loads((out / "bench.json").read_text())
    status = {v["name"]: v["status"] for v in report["variants"]}
    assert status == {"base": "ok", "fp16": "ok", "fp16-b16": "ok", "wanda-2-4-fp16": "ok", "wanda-2-4-sparse": "failed"}
    sparse = next(v for v in report["variants"] if v["name"] == "wanda-2-4-sparse")
    assert "cannot run on cpu" in sparse["errors"][0]["error"]
    assert next(v for v in report["variants"] if v["name"] == "fp16-b16")["speed"]["runs"][0]["batch_size"] == 2


def test_the_dry_run_checked_the_model_and_used_the_cpus_windows(dry_run):
    _, out = dry_run
    log = (out / "runner.log").read_text()
    assert "installed 1 wheels" in log and "tiny-model.tar.part2 (call2); run call 2 now" in log
    assert "same tensors and token ids as on the CPU" in log
    report = json.loads((out / "bench.json").read_text())
    from compress.data import TextSpec, load_text

    builtin = load_text(TextSpec(source="builtin", split="evaluation")).provenance["sha256"]
    assert report["settings"]["evaluation_data"]["sha256"] == builtin


def test_the_reports_say_what_is_not_measured_and_pair_the_variants(dry_run):
    _, out = dry_run
    text = (out / "summary.md").read_text()
    assert "ONNX Runtime's CUDA provider" in text and "255 MB" in text
    assert "| float16 against float32 | fp16 / base |" in text
    assert "(n=1)" in text  # one round in the dry run: its paired ratio
    assert "ONNX Runtime's CUDA provider" in (out / "bench.md").read_text()


def test_a_second_call_on_a_fresh_machine_says_to_run_the_first_again(tmp_path, tiny_llama_dir):
    carry = tmp_path / "carry"
    assemble.assemble_tiny(carry, tiny_llama_dir, budget=runner.DRY_BUDGET)
    out = tmp_path / "out"
    code = runner.main(["bench", "--carry", str(carry / "call2"), "--store", str(tmp_path / "fresh"), "--out", str(out)])
    assert code == 3
    last = (out / "runner.log").read_text().strip().splitlines()[-1]
    assert "parts missing on this machine" in last and "run call 1 again, then call 2 at once" in last


def test_the_gpu_suite_is_valid_and_names_what_the_summary_pairs(tmp_path):
    import yaml

    from compress.bench import Suite
    from compress.passes import _load_all  # noqa: F401
    from compress.passes.base import build_pass

    raw = yaml.safe_load(runner.SUITE.read_text())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("text\n")
    suite = Suite.from_dict(runner.effective_suite(raw, corpus, "smollm2-135m-instruct"))
    assert suite.settings.device == "cuda" and suite.settings.interleave == "turns"
    assert suite.evaluation.source == suite.calibration.source == suite.settings.prompt_text == str(corpus)
    for v in suite.variants:
        for entry in v.passes or []:
            (name, cfg), = entry.items()
            build_pass(name, cfg)
    names = {"base"} | {v.name for v in suite.variants}
    assert {n for _, a, b in summary.PAIRS for n in (a, b)} <= names
    assert set(runner.DRY_VARIANTS) <= names
    assert {v.backend for v in suite.variants} == {None, "pytorch-sparse24"}


def test_parts_join_back_to_the_file_and_a_changed_part_is_refused(tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(bytes(range(256)) * 40)
    parts = split_into(src, [(tmp_path / "a" / "p1", 4000), (tmp_path / "b" / "p2", 0)])
    assert [p["size"] for p in parts] == [4000, 6240]
    from kit import sha256_file

    whole = sha256_file(src)
    assert join_parts([tmp_path / "a" / "p1", tmp_path / "b" / "p2"], tmp_path / "joined", whole).read_bytes() == src.read_bytes()
    (tmp_path / "b" / "p2").write_bytes(b"x" * 6240)
    with pytest.raises(KitError, match="reassembled from 2 parts has sha256"):
        join_parts([tmp_path / "a" / "p1", tmp_path / "b" / "p2"], tmp_path / "joined2", whole)
    assert not (tmp_path / "joined2").exists()


def test_calls_are_filled_wheels_first_and_the_model_is_cut_across_them():
    items = [{"name": "wheel-a", "size": 30}, {"name": "model", "size": 120, "splittable": True},
             {"name": "wheel-b", "size": 50}]
    assemble.plan_calls(items, budget=100)
    assert items[0]["pieces"] == [("call1", 30)] and items[2]["pieces"] == [("call1", 50)]
    assert items[1]["pieces"] == [("call1", 20), ("call2", 100)]
    with pytest.raises(KitError, match="too big for 2 calls"):
        assemble.plan_calls([{"name": "model", "size": 201, "splittable": True}], budget=100)
    with pytest.raises(KitError, match="fits in no call"):
        assemble.plan_calls([{"name": "wheel", "size": 101}], budget=100)


def test_a_wheel_is_installed_only_where_the_machine_does_not_meet_its_requirement():
    import transformers

    assert runner.unmet("torch>=2.0") is None
    assert runner.unmet("transformers==0.1") == f"{transformers.__version__} installed"
    assert runner.unmet("no-such-distribution-here==1.0") == "not installed"


def test_repacking_keeps_only_the_named_libraries_and_a_record_that_matches(tmp_path):
    src = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(src, "w") as z:
        for name in ("pkg/__init__.py", "pkg/libpkg_cuda130.so", "pkg/libpkg_cuda118.so", "pkg/libpkg_cpu.so"):
            z.writestr(name, name)
        z.writestr("pkg-1.0.dist-info/RECORD", "".join(f"{n},sha256=x,1\n" for n in
                   ("pkg/__init__.py", "pkg/libpkg_cuda130.so", "pkg/libpkg_cuda118.so", "pkg/libpkg_cpu.so")))
    dropped = assemble.repack_without_libraries(src, tmp_path / "out" / src.name, ("libpkg_cuda130.so", "libpkg_cpu.so"))
    assert dropped == ["libpkg_cuda118.so"]
    with zipfile.ZipFile(tmp_path / "out" / src.name) as z:
        assert "pkg/libpkg_cuda118.so" not in z.namelist() and "pkg/libpkg_cuda130.so" in z.namelist()
        assert "cuda118" not in z.read("pkg-1.0.dist-info/RECORD").decode()
    with pytest.raises(KitError, match="has no libpkg_cuda132.so"):
        assemble.repack_without_libraries(src, tmp_path / "x.whl", ("libpkg_cuda132.so",))


def test_the_weights_digest_sees_values_not_file_layout(tmp_path):
    from safetensors.torch import save_file

    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(4)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "three").mkdir()
    save_file({"a": a, "b": b}, tmp_path / "one" / "model.safetensors", metadata={"format": "pt"})
    save_file({"b": b}, tmp_path / "two" / "model-00002.safetensors")
    save_file({"a": a}, tmp_path / "two" / "model-00001.safetensors")
    save_file({"a": a, "b": b * 2}, tmp_path / "three" / "model.safetensors")
    assert weights_digest(tmp_path / "one") == weights_digest(tmp_path / "two") != weights_digest(tmp_path / "three")


def test_the_manifest_is_refused_when_it_is_not_the_kits(tmp_path):
    with pytest.raises(KitError, match="has no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(KitError, match="not a compress-gpu-kit/1 manifest"):
        read_manifest(tmp_path)
