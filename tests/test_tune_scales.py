"""tune_scales: block scales (and norms) trained against the float teacher, the codes left as GPTQ chose them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.errors import UserError
from compress.passes.base import CalibrationData, PassContext, build_pass
from compress.quant_grids import dequantize_entry, unpack_entry

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")

TRAIN = {"steps": 25, "batch_size": 2, "seq_len": 64, "lr": 3e-3, "warmup_steps": 2}


@pytest.fixture
def ctx():
    return PassContext(CalibrationData(samples=4, seq_len=64))


def mean_kl(student, teacher, ids: torch.Tensor) -> float:
    with torch.no_grad():
        s = torch.log_softmax(student(input_ids=ids).logits.float(), -1)
        t = torch.log_softmax(teacher(input_ids=ids).logits.float(), -1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def gptq(artifact, ctx, grid: str):
    config = {"grid": grid} if grid in ("q4_0", "q4_1", "q5_0", "q8_0", "iq4_nl") else {"grid": "int4", "symmetric": False}
    return build_pass("gptq_quantize", config)(artifact, ctx)


def with_scales_shrunk(artifact, factor: float):
    """A copy whose every block scale is `factor` times GPTQ's (the codes unchanged): a known way off."""
    off = artifact.copy()
    for name, entry in off.quantized_blocks.items():
        grid, codes, scales, offsets = unpack_entry(entry)
        shrunk = torch.from_numpy(scales * factor).to(grid.scale_dtype).float()
        off.quantized_blocks[name] = grid.entry(grid.pack(torch.from_numpy(codes), shrunk, torch.from_numpy(offsets)))
        decoded = torch.from_numpy(np.ascontiguousarray(dequantize_entry(off.quantized_blocks[name])))
        weight = off.model.get_parameter(name)
        with torch.no_grad():
            weight.copy_(decoded if weight.shape == decoded.shape else decoded.t())
    return off


def training_ids(artifact, ctx) -> torch.Tensor:
    from compress.distill import training_windows

    return training_windows(artifact.tokenizer, ctx.calibration, TRAIN["seq_len"], None).input_ids[:32]


@pytest.mark.parametrize("grid", ["q4_0", "q4_1", "iq4_nl", "int4-asym"])
def test_tuning_lowers_the_divergence_and_keeps_every_code(tiny_model_dir, ctx, grid):
    from compress.models import load_artifact

    base = load_artifact(str(tiny_model_dir))
    quantized = gptq(base, ctx, grid)
    before = {n: p.detach().clone() for n, p in quantized.model.named_parameters()}
    tuned = build_pass("tune_scales", TRAIN)(quantized, ctx)
    for n, p in quantized.model.named_parameters():
        assert torch.equal(p, before[n]), "the input model changed"

    ids = training_ids(base, ctx)
    assert mean_kl(tuned.model, base.model, ids) < 0.97 * mean_kl(quantized.model, base.model, ids)
    assert set(tuned.quantized_blocks) == set(quantized.quantized_blocks)
    for name, entry in tuned.quantized_blocks.items():
        _, codes, _, offsets = unpack_entry(entry)
        _, codes0, _, offsets0 = unpack_entry(quantized.quantized_blocks[name])
        assert np.array_equal(codes, codes0), f"{name}: a code changed"
        if grid != "q4_1":
            assert np.array_equal(offsets, offsets0), f"{name}: a zero point changed"
        weight = tuned.model.get_parameter(name).detach()
        matrix = weight.t() if type(tuned.model.get_submodule(name.rsplit(".", 1)[0])).__name__ == "Conv1D" else weight
        assert np.array_equal(dequantize_entry(entry), matrix.numpy()), f"{name}: blocks and weights disagree"
    metrics = tuned.passes[-1]["metrics"]
    assert metrics["matrices_tuned"] == len(tuned.quantized_blocks) and metrics["norm_layers_tuned"] > 0
    assert all(p.requires_grad for p in tuned.model.parameters())
    assert not any("parametrizations" in n for n, _ in tuned.model.named_parameters())


def test_scales_set_a_fifth_too_small_are_pulled_back_towards_their_fit(tiny_llama, ctx):
    quantized = gptq(tiny_llama, ctx, "q4_0")
    off = with_scales_shrunk(quantized, 0.8)
    tuned = build_pass("tune_scales", {**TRAIN, "steps": 60, "lr": 5e-3})(off, ctx)
    ids = training_ids(tiny_llama, ctx)
    assert mean_kl(tuned.model, tiny_llama.model, ids) < 0.5 * mean_kl(off.model, tiny_llama.model, ids)
    # Upwards (1.25 would undo the shrinking alone; the norms' gains take part of it, a norm being scale-free).
    assert tuned.passes[-1]["metrics"]["scale_gain"]["median"] > 1.02


def test_a_weight_whose_code_decodes_to_zero_stays_exactly_zero(tiny_llama, ctx):
    quantized = gptq(tiny_llama, ctx, "q4_0")
    zeros = {n: tiny.eq(0) for n, tiny in ((n, quantized.model.get_parameter(n).detach())
                                          for n in quantized.quantized_blocks)}
    tuned = build_pass("tune_scales", TRAIN)(quantized, ctx)
    for name, was_zero in zeros.items():
        assert was_zero.any()
        assert torch.all(tuned.model.get_parameter(name).detach()[was_zero] == 0), name


def test_tuned_blocks_survive_save_reload_and_gguf_export(tiny_llama, ctx, tmp_path):
    from compress.models import load_artifact
    from compress.saving import save_artifact

    tuned = build_pass("tune_scales", {**TRAIN, "steps": 3})(gptq(tiny_llama, ctx, "q4_0"), ctx)
    reloaded = load_artifact(str(save_artifact(tuned, tmp_path / "tuned")))
    assert set(reloaded.quantized_blocks) == set(tuned.quantized_blocks)
    for name, (kind, raw) in tuned.quantized_blocks.items():
        assert np.array_equal(reloaded.quantized_blocks[name][1], raw)
    exported = build_pass("gguf_export", {"type": "q4_0"})(reloaded, ctx)
    written = exported.passes[-1]["metrics"]["quantized_blocks_written"]
    assert len(written) == len(tuned.quantized_blocks)  # the tuned bytes, not a new round-to-nearest


def test_a_model_without_grid_blocks_is_refused_in_one_line(tiny_llama, ctx):
    with pytest.raises(UserError, match="put gptq_quantize before it"):
        build_pass("tune_scales", TRAIN)(tiny_llama, ctx)


def test_keep_sparsity_is_refused_because_zeros_stay_zeros_anyway(tiny_llama, ctx):
    with pytest.raises(UserError, match="drop keep_sparsity"):
        build_pass("tune_scales", {**TRAIN, "keep_sparsity": True})(gptq(tiny_llama, ctx, "q8_0"), ctx)


def test_the_command_line_tunes_after_gptq_with_tune_steps(tiny_llama_dir, tmp_path):
    import json

    from compress.cli import main
    from compress.models import load_artifact

    out = tmp_path / "tuned"
    code = main(["-q", "quantize", str(tiny_llama_dir), "--method", "gptq", "--grid", "q4_0", "--tune-steps", "2",
                 "--calib-samples", "2", "--calib-seq-len", "64", "--eval-windows", "1", "--eval-seq-len", "64",
                 "-o", str(out)])
    assert code == 0
    passes = [p["name"] for p in json.loads((out / "compress.json").read_text())["passes"]]
    assert passes[-2:] == ["gptq_quantize", "tune_scales"]
    assert len(load_artifact(str(out)).quantized_blocks) > 0


def test_tune_steps_with_another_method_is_a_one_line_error(tiny_llama_dir, tmp_path, capsys):
    from compress.cli import main

    code = main(["-q", "quantize", str(tiny_llama_dir), "--method", "bnb-int8", "--tune-steps", "5", "-o",
                 str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0 and "--tune-steps only applies to --method gptq" in err and "Traceback" not in err
