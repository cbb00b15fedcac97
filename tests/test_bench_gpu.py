"""The bench's GPU measurements: batches, CUDA-event timing, bitsandbytes and 2:4 sparse kernels on CUDA.

The first part runs everywhere: batches on the CPU, the refusals a CPU machine
must give in one line, a recipe measured several ways built once. Tests marked
`gpu` need a CUDA GPU and are skipped cleanly where there is none (CI has
none); benchmarks/gpu/ runs them on the lent GPU machine.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from compress.bench import Suite, run_bench
from compress.errors import UserError

EVAL = {"source": "builtin", "split": "evaluation", "windows": 2, "seq_len": 32}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PRUNE_2_4 = [{"magnitude_prune": {"pattern": "2:4"}}]


def _v(report, name):
    return next(v for v in report["variants"] if v["name"] == name)


# --------------------------------------------------------------------------- everywhere


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, tiny_llama_dir):
    """One CPU bench: batch 1 and batch 3 of the base, a 2:4 recipe measured three ways."""
    root = tmp_path_factory.mktemp("bench-batch")
    suite = Suite.from_dict({
        "base": str(tiny_llama_dir),
        "settings": {"prompt_lens": [8], "new_tokens": 4, "repeats": 1, "warmup_tokens": 1, "threads": 1,
                     "prefill_repeats": 1, "interleave": "processes", "quality": False},
        "evaluation": EVAL,
        "variants": [
            {"name": "batch-3", "batch_size": 3},
            {"name": "pruned", "passes": PRUNE_2_4},
            {"name": "pruned-batch-2", "passes": PRUNE_2_4, "batch_size": 2},
            {"name": "pruned-sparse", "passes": PRUNE_2_4, "backend": "pytorch-sparse24", "dtype": "float16"},
        ],
    })
    return run_bench(suite, root / "report", command="test", isolation="fork"), root / "report"


def test_a_batch_counts_the_tokens_of_every_sequence(batch_run):
    report, out = batch_run
    one, three = _v(report, "base"), _v(report, "batch-3")
    assert (one["batch_size"], three["batch_size"]) == (1, 3)
    run = three["speed"]["runs"][0]
    assert run["batch_size"] == 3 and run["clock"] == "perf_counter"
    steps = run["prompts"][0]["decode_step_s"]
    assert three["speed"]["prompts"][0]["decode_tokens_per_s"]["median"] == pytest.approx(3 * len(steps) / sum(steps))
    assert "/ batch 3 |" in (out / "bench.md").read_text()
    assert json.loads((out / "bench.json").read_text())["settings"]["batch_size"] == 1


def test_the_prompts_of_a_batch_are_different_pieces_of_text(tiny_tokenizer):
    from compress.bench.worker import _prompt_ids
    from compress.data import _builtin_text

    ids = _prompt_ids(tiny_tokenizer, _builtin_text()[:5000], 8, batch=3)
    assert ids.shape == (3, 8)
    assert len({tuple(row.tolist()) for row in ids}) == 3
    with pytest.raises(UserError, match="fewer than 3 prompt"):
        _prompt_ids(tiny_tokenizer, "a few words", 8, batch=3)


def test_a_recipe_measured_several_ways_is_built_once(batch_run):
    report, _ = batch_run
    pruned, batched = _v(report, "pruned"), _v(report, "pruned-batch-2")
    assert batched["path"] == pruned["path"] and batched["build"]["shared_with"] == "pruned"
    assert batched["status"] == "ok" and batched["speed"]["runs"][0]["batch_size"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_sparse_kernels_are_refused_on_the_cpu_in_one_line(batch_run):
    report, _ = batch_run
    sparse = _v(report, "pruned-sparse")
    assert sparse["status"] == "failed" and len(sparse["errors"]) == 1
    error = sparse["errors"][0]["error"]
    assert "pytorch-sparse24" in error and "cannot run on cpu" in error and "\n" not in error


def test_sparse_kernels_need_a_half_precision_dtype(tiny_llama_dir):
    from compress.bench.backends import check_available

    with pytest.raises(UserError, match="needs dtype float16 or bfloat16"):
        check_available("pytorch-sparse24", "cuda", "float32", tiny_llama_dir)


def test_a_backend_that_cannot_batch_refuses_a_batch(tmp_path, tiny_llama_dir):
    from compress.bench.harness import plan

    pytest.importorskip("optimum.onnxruntime")
    onnx_dir = tmp_path / "export"
    onnx_dir.mkdir()
    (onnx_dir / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    (onnx_dir / "model.onnx").write_bytes(b"not parsed at planning")
    planned = plan(Suite.from_dict({"base": str(tiny_llama_dir),
                                    "variants": [{"name": "ort", "model": str(onnx_dir), "batch_size": 2}]}))
    assert "onnxruntime backend times one prompt at a time, not a batch of 2" in planned[1].errors[0]["error"]


def test_two_four_sparsity_is_detected_exactly():
    from compress.bench.sparse24 import is_2_4_sparse

    w = torch.randn(8, 16)
    assert not is_2_4_sparse(w)
    w.view(8, 4, 4)[:, :, :2] = 0
    assert is_2_4_sparse(w)
    w[3, 1] = 1.0  # one group now has a single zero
    assert not is_2_4_sparse(w)
    assert not is_2_4_sparse(torch.zeros(4, 6))  # inputs not a multiple of 4


def test_the_host_stopwatch_syncs_before_each_reading_and_times_the_region():
    from compress.bench.timing import stopwatch

    calls = []
    clock = stopwatch("cpu", sync=lambda: calls.append(1))
    assert clock.name == "perf_counter"
    mark = clock.start()
    time.sleep(0.02)
    seconds = clock.stop(mark)
    assert len(calls) == 2 and 0.015 < seconds < 1.0
    assert stopwatch("cuda", events=False).name == "perf_counter"


# --------------------------------------------------------------------------- CUDA only


@pytest.fixture(scope="module")
def sparse_ready_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama whose projections have shapes the sparse kernels accept (multiples of 64)."""
    from conftest import save_tiny, tiny_llama_config

    config = tiny_llama_config(len(tiny_tokenizer), hidden_size=128, intermediate_size=256, head_dim=32)
    return save_tiny(tmp_path_factory.mktemp("tiny-llama-128"), config, tiny_tokenizer)


@pytest.mark.gpu
@needs_cuda
def test_cuda_events_time_device_work_like_the_synchronised_host_clock():
    from compress.bench.timing import HostStopwatch, stopwatch

    a = torch.randn(2048, 2048, device="cuda")
    events, host = stopwatch("cuda"), HostStopwatch(torch.cuda.synchronize)
    assert events.name == "cuda-events"
    (a @ a).sum().item()  # warm-up: kernels loaded, handles created
    timed = {}
    for name, clock in (("events", events), ("host", host)):
        mark = clock.start()
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        timed[name] = clock.stop(mark)
    assert 0 < timed["events"] <= timed["host"] * 1.2 and timed["host"] < 10 * timed["events"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_pytorch_on_cuda_decodes_a_batch_in_every_dtype(tiny_llama_dir, dtype):
    from compress.bench.backends import load_model, make_runner

    ids = torch.randint(3, 300, (4, 8))
    model = load_model("pytorch", str(tiny_llama_dir), "cuda", dtype)
    runner = make_runner("pytorch", model, "cuda")
    token, state = runner.prefill(runner.to_device(ids))
    token, state = runner.step(token, state)
    assert token.shape == (4, 1) and token.is_cuda
    if dtype == "float32":  # the same function as on the CPU
        cpu = load_model("pytorch", str(tiny_llama_dir), "cpu", dtype)
        with torch.inference_mode():
            on_cpu, on_gpu = cpu(input_ids=ids).logits, model(input_ids=ids.cuda()).logits.cpu()
        assert (on_gpu - on_cpu).norm() / on_cpu.norm() < 1e-3


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["int8", "nf4"])
def test_bitsandbytes_checkpoints_load_and_decode_on_cuda(tiny_llama, tmp_path, method):
    from compress.bench.backends import load_model, make_runner
    from compress.passes import BnbQuantize
    from compress.saving import save_artifact

    quantized = BnbQuantize(method=method, compute_dtype="float16", device="cuda")(tiny_llama)
    save_artifact(quantized, tmp_path / method)
    model = load_model("pytorch", str(tmp_path / method), "cuda", "float16")  # placed by from_pretrained
    tokens = make_runner("pytorch", model, "cuda").generate(torch.randint(3, 300, (1, 8)), 4)
    assert len(tokens) == 4


@pytest.mark.gpu
@needs_cuda
def test_sparse_kernels_run_a_2_4_model_close_to_its_dense_self(sparse_ready_dir, tmp_path):
    from compress.bench.backends import get_backend, load_model
    from compress.models import load_artifact
    from compress.passes import MagnitudePrune
    from compress.saving import save_artifact

    save_artifact(MagnitudePrune(pattern="2:4")(load_artifact(str(sparse_ready_dir))), tmp_path / "pruned")
    dense = load_model("pytorch", str(tmp_path / "pruned"), "cuda", "float16")
    sparse = load_model("pytorch-sparse24", str(tmp_path / "pruned"), "cuda", "float16")
    info = get_backend("pytorch-sparse24").describe(sparse)
    assert info["converted_linears"] == 7 * 2  # q, k, v, o, gate, up, down in each of 2 layers
    ids = torch.randint(3, 300, (2, 16), device="cuda")
    with torch.inference_mode():
        a, b = dense(input_ids=ids).logits.float(), sparse(input_ids=ids).logits.float()
    assert (a - b).norm() / a.norm() < 1e-2
    assert get_backend("pytorch-sparse24").parameters(sparse)["nonzero_parameters"] < \
        get_backend("pytorch").parameters(dense)["nonzero_parameters"]
    with pytest.raises(UserError, match="no Linear weight .* is 2:4 sparse"):
        load_model("pytorch-sparse24", str(sparse_ready_dir), "cuda", "float16")


@pytest.mark.gpu
@needs_cuda
def test_a_cuda_bench_times_with_events_and_records_gpu_memory(sparse_ready_dir, tmp_path):
    """End to end on the GPU, in fresh interpreters (CUDA does not survive a fork)."""
    suite = Suite.from_dict({
        "base": str(sparse_ready_dir),
        "settings": {"device": "cuda", "prompt_lens": [8], "new_tokens": 4, "repeats": 2, "warmup_tokens": 1,
                     "prefill_repeats": 1, "interleave": "turns"},
        "evaluation": EVAL,
        "variants": [{"name": "fp16-batch-4", "dtype": "float16", "batch_size": 4},
                     {"name": "pruned", "passes": PRUNE_2_4, "dtype": "float16"},
                     {"name": "pruned-sparse", "passes": PRUNE_2_4, "dtype": "float16", "backend": "pytorch-sparse24"}],
    })
    report = run_bench(suite, tmp_path / "report", isolation="exec")
    assert all(v["status"] == "ok" for v in report["variants"]), [v["errors"] for v in report["variants"]]
    for v in report["variants"]:
        assert v["speed"]["runs"][0]["clock"] == "cuda-events"
        assert v["speed"]["cuda_max_allocated_bytes"]["median"] > 0
        if v["name"] != "base":
            assert len(v["speed"]["prompts"][0]["decode_speedup_rounds"]) == 2  # turns: paired round by round
    assert _v(report, "pruned-sparse")["speed"]["runs"][0]["backend_info"]["converted_linears"] == 14
    assert report["environment"]["gpu"]["capability"]
