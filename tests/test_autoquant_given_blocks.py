"""auto_quantize with a GPTQ output's blocks as candidates (`blocks_from`, `--blocks-from`).

A matrix given its blocks' type holds exactly those blocks: in the simulation
the search measures, and byte for byte in the written GGUF. Its other types
are made from the float weights, never from the GPTQ ones. The float input
model is left as it was. The search and check windows are text the blocks
were not fitted on. Blocks that cannot belong to the model, or cannot go into
a GGUF, are refused in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.cli import main
from compress.errors import UserError
from compress.passes.base import CalibrationData, PassContext, build_pass

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")


def ctx(samples=6, seq_len=64, source=None):
    calibration = CalibrationData(samples=samples, seq_len=seq_len, **({"source": source} if source else {}))
    return PassContext(calibration)


@pytest.fixture
def gptq_dir(tiny_llama, tmp_path):
    """A saved GPTQ q4_0 output of tiny_llama (blocks for every projection)."""
    from compress.saving import save_artifact

    result = build_pass("gptq_quantize", {"grid": "q4_0"})(tiny_llama, ctx(samples=2))
    return save_artifact(result, tmp_path / "gptq")


@pytest.fixture
def gptq_builtin_dir(tiny_llama, tmp_path):
    """The same, calibrated on another text than the pass's (the built-in corpus): no windows to skip."""
    from compress.saving import save_artifact

    result = build_pass("gptq_quantize", {"grid": "q4_0"})(tiny_llama, ctx(samples=2, source="builtin"))
    return save_artifact(result, tmp_path / "gptq-builtin")


def file_tensors(path):
    import gguf

    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_given_blocks_are_what_the_search_measures_and_what_the_file_holds(tiny_llama, gptq_dir):
    from compress.autoquant.given_blocks import attach_given_blocks
    from compress.autoquant.grid import roundtrip
    from compress.autoquant.tensors import model_matrices
    from compress.gguf_file.layout import model_layout
    from compress.models import load_artifact

    gptq = load_artifact(str(gptq_dir))
    before = {n: p.detach().clone() for n, p in tiny_llama.model.named_parameters()}
    config = {"types": ["q4_0", "q8_0"], "blocks_from": str(gptq_dir), "curve": [1.0], "measure_curve": False,
              "measure_in_llamacpp": False, "check": False}
    # A budget of half what every matrix at q4_0 is predicted to cost, so the file mixes given q4_0 blocks with
    # q8_0 of the float weights (the sensitivities are measured once and cached).
    sensitivity = build_pass("auto_quantize", {"target_kl": 1.0, **config})(tiny_llama, ctx())
    half = sum(kl["q4_0"] for kl in sensitivity.passes[-1]["metrics"]["sensitivity"].values()) / 2
    result = build_pass("auto_quantize", {"target_kl": half, **config})(tiny_llama, ctx())
    for n, p in tiny_llama.model.named_parameters():
        assert torch.equal(p, before[n]), f"the input model changed: {n}"
    m = result.passes[-1]["metrics"]
    assert m["given_blocks"]["matrices"] == len(gptq.quantized_blocks) and m["given_blocks"]["types"] == ["q4_0"]
    assignment = m["assignment"]
    assert set(assignment.values()) == {"q4_0", "q8_0"}, "the budget should make a mix; the test needs one"

    matrices = model_matrices(tiny_llama.model, tiny_llama.passes, ("q4_0", "q8_0"))
    attach_given_blocks(tiny_llama.model, matrices, str(gptq_dir), ("q4_0", "q8_0"))
    orders = {t.name: t.row_order for t in model_layout(tiny_llama.model).tensors}
    tensors = file_tensors(result.model.path)
    given = 0
    for mat in matrices:
        t = tensors[mat.name]
        assert t.tensor_type.name == assignment[mat.name].upper()
        if mat.source in gptq.quantized_blocks and assignment[mat.name] == "q4_0":
            given += 1
            raw = gptq.quantized_blocks[mat.source][1]
            want = raw if orders[mat.name] is None else raw[orders[mat.name]]
            assert np.array_equal(np.asarray(t.data).reshape(want.shape), want), mat.name  # GPTQ's own bytes
            assert np.array_equal(mat.on_grid("q4_0"), gptq.model.get_parameter(mat.source).detach().numpy())
        else:  # any other type comes from the float weights, not from GPTQ's
            from gguf import quants

            decoded = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32).reshape(mat.shape)
            ours = roundtrip(mat.rows(), assignment[mat.name])
            assert np.array_equal(decoded, ours if orders[mat.name] is None else ours[orders[mat.name]]), mat.name
    assert given == m["export"]["given_blocks_written"] > 0


def test_search_and_check_windows_are_text_the_blocks_were_not_fitted_on(tiny_llama, gptq_dir, tmp_path):
    """GPTQ read the first 2 windows of 64 tokens of the same calibration text, so the pass starts after them."""
    import json
    import shutil

    config = {"target_kl": 1.0, "types": ["q4_0", "q8_0"], "curve": [1.0], "measure_curve": False,
              "measure_in_llamacpp": False, "check": False}
    m = build_pass("auto_quantize", {**config, "blocks_from": str(gptq_dir)})(tiny_llama, ctx()).passes[-1]["metrics"]
    assert m["given_blocks"]["fitted_on"] and list(m["given_blocks"]["fitted_on"].values()) == [2 * 64]
    search, check = m["windows"]["search"], m["windows"]["check"]
    assert search["first_window"] == 2 and check["first_window"] == 4 and check["windows"] == 4
    assert search["windows_skipped_as_fitted_on_by_given_blocks"] == 2

    # Blocks fitted on the whole text (here: a manifest saying so) leave nothing to check on: refused.
    greedy = tmp_path / "greedy"
    shutil.copytree(gptq_dir, greedy)
    manifest = json.loads((greedy / "compress.json").read_text())
    manifest["passes"][-1]["metrics"]["calibration"]["data"]["windows"] = 10**6
    (greedy / "compress.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="fitted on the first .* tokens of the calibration text.*--calib-text") as exc:
        build_pass("auto_quantize", {**config, "blocks_from": str(greedy)})(tiny_llama, ctx())
    assert "\n" not in str(exc.value)


def test_given_blocks_change_the_measured_sensitivity_at_their_type_only(tiny_llama, gptq_builtin_dir):
    common = {"target_kl": 1.0, "types": ["q4_0", "q8_0"], "curve": [1.0], "measure_curve": False,
              "measure_in_llamacpp": False, "check": False}
    plain = build_pass("auto_quantize", common)(tiny_llama, ctx()).passes[-1]["metrics"]["sensitivity"]
    given = build_pass("auto_quantize", {**common, "blocks_from": str(gptq_builtin_dir)})(tiny_llama, ctx())
    assert given.passes[-1]["metrics"]["windows"]["search"]["first_window"] == 0  # the same windows as plain's
    given = given.passes[-1]["metrics"]["sensitivity"]
    projections = [n for n in plain if n.startswith("blk.")]
    assert all(given[n]["q8_0"] == plain[n]["q8_0"] for n in plain)
    assert any(given[n]["q4_0"] != plain[n]["q4_0"] for n in projections)
    # GPTQ minimises each layer's output error on (other) calibration text, so in total it moves the model less.
    assert sum(given[n]["q4_0"] for n in projections) < sum(plain[n]["q4_0"] for n in projections)


def test_blocks_that_cannot_be_the_models_are_refused_in_one_line(tiny_llama, tiny_llama_dir, tiny_gpt2, gptq_dir,
                                                                  tmp_path):
    from compress.saving import save_artifact

    def run(config):
        with pytest.raises(UserError) as exc:
            build_pass("auto_quantize", {"target_kl": 0.05, "check": False, "measure_in_llamacpp": False,
                                         **config})(tiny_llama, ctx())
        assert "\n" not in str(exc.value)
        return str(exc.value)

    assert "holds no quantized blocks" in run({"blocks_from": str(tiny_llama_dir)})
    assert "not among the candidate types" in run({"blocks_from": str(gptq_dir), "types": ["q5_0", "q8_0"]})
    other = build_pass("gptq_quantize", {"grid": "q4_0"})(tiny_gpt2, ctx(samples=2))
    assert "is not a quantized copy of the model" in run({"blocks_from": str(save_artifact(other, tmp_path / "o"))})
    ort = build_pass("gptq_quantize", {"grid": "int4", "block_size": 32})(tiny_llama, ctx(samples=2))
    assert "MatMulNBits" in run({"blocks_from": str(save_artifact(ort, tmp_path / "ort"))})


def test_a_changed_copy_is_refused(tiny_llama, gptq_dir, tmp_path):
    from compress.models import load_artifact
    from compress.saving import save_artifact

    changed = load_artifact(str(gptq_dir))
    with torch.no_grad():
        changed.model.model.norm.weight.mul_(1.5)  # not a quantized matrix: must be the float model's own
    path = save_artifact(changed, tmp_path / "changed")
    with pytest.raises(UserError, match="not a quantized copy of the model: its model.norm.weight differs"):
        build_pass("auto_quantize", {"target_kl": 0.05, "blocks_from": str(path), "check": False})(tiny_llama, ctx())


def test_the_command_line_takes_blocks_from_and_only_with_target_kl(capsys, tiny_llama_dir, gptq_dir, tmp_path):
    capsys.readouterr()  # the fixture's progress bars
    code = main(["-q", "quantize", str(tiny_llama_dir), "--method", "bnb-int8", "--blocks-from", str(gptq_dir),
                 "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--blocks-from only applies to --target-kl" in err and len(err.strip().splitlines()) == 1
    code = main(["-q", "quantize", str(tiny_llama_dir), "--target-kl", "0.05", "--types", "q4_0,q8_0",
                 "--blocks-from", str(gptq_dir), "-o", str(tmp_path / "mix.gguf"), "--calib-samples", "6",
                 "--calib-seq-len", "64", "--eval-text", "none"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"taking the blocks of {gptq_dir}" in out and (tmp_path / "mix.gguf").is_file()
