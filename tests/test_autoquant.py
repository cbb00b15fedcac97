"""Mixed precision under a KL budget (auto_quantize, `compress quantize --target-kl`).

The simulation holds what the GGUF file holds and computes what llama.cpp
computes; a forward started at a matrix's block gives what the whole model
gives; the search finds the cheapest assignment within its budget (checked
against brute force) and, on a model where the answer is known, keeps the one
sensitive matrix precise and quantizes the rest; the result measured on
held-out calibration windows is within the budget; bad input is one line.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from compress.cli import main
from encoder_fixtures import bert_tokenizer, tiny_bert, tiny_bert_dir  # noqa: F401  (fixtures)
from compress.errors import UserError
from compress.passes.base import CalibrationData, PassContext, build_pass

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")

TYPES = ("q4_0", "q5_0", "q8_0", "f16")
EVERY_TYPE = ("q4_0", "iq4_nl", "q5_0", "q8_0", "f16")  # iq4_nl: rounded by quant_grids, not the gguf package
SENSITIVE = "blk.1.ffn_down.weight"


def matrices_of(artifact, types=TYPES):
    from compress.autoquant.tensors import model_matrices

    return model_matrices(artifact.model, artifact.passes, types)


def ctx(samples=6, seq_len=64):
    return PassContext(CalibrationData(samples=samples, seq_len=seq_len))


def windows_of(artifact, samples=6, seq_len=64):
    return CalibrationData(samples=samples, seq_len=seq_len).windows(artifact.tokenizer)


# ------------------------------------------------------------------ the simulation


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_round_trip_holds_exactly_what_the_gguf_file_holds(request, arch, tmp_path):
    import gguf
    from gguf import quants

    from compress.autoquant.grid import roundtrip
    from compress.gguf_file.layout import model_layout

    artifact = request.getfixturevalue(f"tiny_{arch}")
    matrices = matrices_of(artifact, EVERY_TYPE)
    assignment = {m.name: EVERY_TYPE[i % len(EVERY_TYPE)] for i, m in enumerate(matrices)}
    default = "q4_0"
    result = build_pass("gguf_export", {"type": default, "check": False,
                                        "overrides": {k: v for k, v in assignment.items() if v != default}})(artifact)
    tensors = {t.name: t for t in gguf.GGUFReader(result.model.path).tensors}
    orders = {t.name: t.row_order for t in model_layout(artifact.model).tensors}
    for m in matrices:
        t = tensors[m.name]
        assert t.tensor_type.name == assignment[m.name].upper()
        in_file = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(m.shape)
        ours = roundtrip(m.rows(), assignment[m.name])
        if orders[m.name] is not None:
            ours = ours[orders[m.name]]
        assert np.array_equal(in_file, ours), m.name


def test_input_rounding_is_q8_0_blocks_of_32_with_a_float16_scale():
    from compress.autoquant.grid import round_input

    x = torch.randn(3, 64)
    x[:, 5] = 40.0  # an outlier sets its block's scale
    y = round_input(x, "q8_0")
    scale = (x[:, :32].abs().amax(-1, keepdim=True) / 127).half().float()
    assert torch.equal(y[:, :32], torch.round(x[:, :32] * (127 / x[:, :32].abs().amax(-1, keepdim=True))) * scale)
    assert (y[:, 32:] - x[:, 32:]).abs().max() <= x[:, 32:].abs().amax() / 127  # its own, smaller scale
    assert torch.equal(round_input(x, "f16"), x.half().float())


def test_simulation_computes_what_llama_cpp_computes(tiny_llama):
    """A mix of every type in llama.cpp against PyTorch: rounding the inputs as ggml does is what closes the gap."""
    pytest.importorskip("llama_cpp")
    from compress.autoquant.grid import roundtrip
    from compress.autoquant.simulate import simulated

    with torch.no_grad():  # one outlier input channel per block of 32, as real LLMs have: q8_0 inputs then lose detail
        for layer in tiny_llama.model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[::32] = 30.0
    matrices = matrices_of(tiny_llama, EVERY_TYPE)
    assignment = {m.name: EVERY_TYPE[i % len(EVERY_TYPE)] for i, m in enumerate(matrices)}
    mixed = build_pass("gguf_export", {"type": "q4_0", "check": False,
                                       "overrides": {k: v for k, v in assignment.items() if v != "q4_0"}})(tiny_llama)
    f32 = build_pass("gguf_export", {"type": "f32", "check": False})(tiny_llama)
    ids = torch.randint(0, 300, (1, 48), generator=torch.Generator().manual_seed(0))
    model = tiny_llama.model
    with torch.inference_mode():
        in_llamacpp = mixed.model(ids).logits[0] - f32.model(ids).logits[0]  # llama.cpp's own f32 noise cancels
        base = model(input_ids=ids, use_cache=False).logits[0]
        with simulated(matrices, assignment):
            simulated_change = model(input_ids=ids, use_cache=False).logits[0] - base
        floats = {m.name: m.param.data for m in matrices}
        for m in matrices:  # the weights alone on their grids, inputs not rounded
            m.param.data = m.as_param(roundtrip(m.rows(), assignment[m.name]))
        weights_only_change = model(input_ids=ids, use_cache=False).logits[0] - base
        for m in matrices:
            m.param.data = floats[m.name]
    error = float((simulated_change - in_llamacpp).abs().max())
    weights_only_error = float((weights_only_change - in_llamacpp).abs().max())
    assert error < 0.05 * float(in_llamacpp.abs().max())
    assert error < 0.5 * weights_only_error


def test_simulation_leaves_the_model_as_it_was(tiny_gpt2):
    from compress.autoquant.simulate import simulated

    before = {k: v.clone() for k, v in tiny_gpt2.model.state_dict().items()}
    matrices = matrices_of(tiny_gpt2)
    with pytest.raises(RuntimeError, match="inside"):
        with simulated(matrices, {m.name: "q4_0" for m in matrices}):
            assert not torch.equal(tiny_gpt2.model.transformer.h[0].attn.c_attn.weight, before["transformer.h.0.attn.c_attn.weight"])
            raise RuntimeError("inside")
    for k, v in tiny_gpt2.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not mod._forward_pre_hooks for m in matrices for mod in m.products)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_forward_from_the_matrix_block_gives_what_the_whole_model_gives(request, arch):
    from compress.autoquant.sensitivity import BlockStates
    from compress.autoquant.simulate import simulated

    artifact = request.getfixturevalue(f"tiny_{arch}")
    windows = windows_of(artifact, samples=2)
    states = BlockStates(artifact.model, windows)
    matrices = {m.name: m for m in matrices_of(artifact)}
    for name in ("blk.1.ffn_down.weight", "token_embd.weight"):
        m = matrices[name]
        with simulated([m], {name: "q4_0"}), torch.inference_mode():
            whole = artifact.model(input_ids=windows.input_ids[1:2], use_cache=False).logits[0]
            partial = states.logits(1, states.start_of(m))
        assert states.start_of(m) == (1 if name.startswith("blk.1") else None)
        assert torch.allclose(whole, partial, atol=1e-5), name


# ------------------------------------------------------------------ the search


def test_the_search_finds_the_cheapest_assignment_within_the_budget():
    from compress.autoquant.search import Option, fastest_within, predicted_cost, predicted_kl

    rng = random.Random(0)
    for trial in range(20):
        options = {f"m{i}": [Option(t, rng.uniform(0, 0.01) / (4 ** k), rng.uniform(1, 2) * (k + 1))
                             for k, t in enumerate(("q4_0", "q5_0", "q8_0"))] for i in range(5)}
        budget = rng.uniform(0.002, 0.03)
        best = None
        for combo in itertools.product(*[[o.type for o in opts] for opts in options.values()]):
            a = dict(zip(options, combo))
            if predicted_kl(options, a) <= budget and (best is None or predicted_cost(options, a) < predicted_cost(options, best)):
                best = a
        found = fastest_within(options, budget)
        if best is None:
            assert found is None
            continue
        assert predicted_kl(options, found) <= budget
        # Rounding KL up to the budget's steps may cost a hair of optimality, never the budget.
        assert predicted_cost(options, found) <= predicted_cost(options, best) * 1.001 + 1e-9


def test_back_off_upgrades_until_a_pessimistic_measurement_is_within_budget():
    from compress.autoquant.search import Option, back_off, fastest_within, predicted_kl

    options = {f"m{i}": [Option("q4_0", 0.004 * (i + 1), 1.0), Option("q8_0", 0.0001, 2.0)] for i in range(6)}
    budget = 0.05
    assignment = fastest_within(options, budget)
    measure = lambda a: 1.6 * predicted_kl(options, a)  # the matrices' errors compound: 60% above additive
    rounds = 0
    while measure(assignment) > budget:
        assignment, upgrades = back_off(options, assignment, measure(assignment), budget)
        assert upgrades
        rounds += 1
    assert measure(assignment) <= budget and rounds >= 1
    assert assignment["m5"] == "q8_0"  # the largest KL per added byte goes first
    assert "q4_0" in assignment.values()  # and not more than needed


# ------------------------------------------------------------------ the pass


@pytest.fixture
def one_sensitive_matrix(tiny_llama):
    """A tiny Llama whose answer is known.

    Every matrix but one already lies on the q4_0 grid (so q4_0 costs it only the
    rounding of its input); the one, blk.1.ffn_down, is off every grid and drives
    the output, and the final norm makes the output sharp. So q4_0 or q5_0 of that
    matrix is far over a small budget while q8_0 of it, with everything else at
    q4_0, is well within.
    """
    from compress.autoquant.grid import roundtrip

    with torch.no_grad():
        for m in matrices_of(tiny_llama):
            rows = m.rows() * (20.0 if m.name == SENSITIVE else 1.0)
            m.param.data = m.as_param(rows if m.name == SENSITIVE else roundtrip(rows, "q4_0"))
        tiny_llama.model.model.norm.weight *= 30.0
    return tiny_llama


def kl_of(artifact, assignment, windows):
    from compress.autoquant.divergence import Reference
    from compress.autoquant.simulate import simulated

    reference = Reference(artifact.model, windows)
    with simulated(matrices_of(artifact), assignment):
        return reference.model_kl(artifact.model)


def test_the_search_keeps_the_sensitive_matrix_precise_and_quantizes_the_rest(one_sensitive_matrix):
    art = one_sensitive_matrix
    budget = 0.003
    names = [m.name for m in matrices_of(art)]
    rest = {n: "q4_0" for n in names if n != SENSITIVE}
    windows = windows_of(art)
    # The known answer holds on these windows (else the test itself is wrong):
    assert kl_of(art, {SENSITIVE: "q5_0"}, windows) > 2 * budget
    assert kl_of(art, {**rest, SENSITIVE: "q8_0"}, windows) < budget / 2

    result = build_pass("auto_quantize", {"target_kl": budget, "curve": [0.003, 0.1], "check": False})(art, ctx())
    m = result.passes[-1]["metrics"]
    assert m["assignment"] == {**rest, SENSITIVE: "q8_0"}
    assert m["predicted_kl"] <= budget
    assert m["measured_kl"] <= budget and m["measured_kl_pytorch"] <= budget
    if m["measured_kl_llamacpp"] is not None:  # llama-cpp-python installed: the file itself, in llama.cpp
        assert m["measured_kl_llamacpp"] <= budget
        assert m["export"]["tensor_types"] == m["assignment"]
    # Measured on windows the search never saw.
    search, check = m["windows"]["search"], m["windows"]["check"]
    assert search["first_window"] + search["windows"] <= check["first_window"]
    assert m["sensitivity"][SENSITIVE]["q4_0"] > 10 * max(m["sensitivity"][n]["q4_0"] for n in rest)
    # The curve: a generous budget lets the sensitive matrix go to q4_0 too, and is predicted faster.
    small, large = m["curve"]
    assert small["type_counts"] == {"q4_0": len(rest), "q8_0": 1}
    assert large["type_counts"] == {"q4_0": len(names)}
    assert large["predicted_speedup_vs_q8_0"] > small["predicted_speedup_vs_q8_0"] > 1
    assert small["measured_kl"] <= budget and m["gguf_bytes"] > 0


def test_a_measured_excess_backs_off_until_within_budget(one_sensitive_matrix, monkeypatch):
    """When additivity underestimates (here: every measurement 10x the true KL), the pass upgrades until it fits."""
    from compress.autoquant import divergence

    true_kl = divergence.Reference.model_kl
    monkeypatch.setattr(divergence.Reference, "model_kl", lambda self, model: 10 * true_kl(self, model))
    result = build_pass("auto_quantize", {"target_kl": 0.003, "curve": [0.003], "measure_curve": False,
                                          "measure_in_llamacpp": False, "check": False})(one_sensitive_matrix, ctx())
    m = result.passes[-1]["metrics"]
    assert len(m["backoff"]) >= 2 and m["backoff"][1]["upgrades"]
    assert m["measured_kl"] <= 0.003 < m["backoff"][0]["measured_kl"]
    assert m["predicted_kl"] < m["backoff"][0]["predicted_kl"]


def test_the_result_is_a_gguf_with_its_manifest(tiny_gpt2, tmp_path):
    import json

    from compress.saving import save_artifact

    result = build_pass("auto_quantize", {"target_kl": 0.05, "curve": [0.05], "measure_curve": False,
                                          "check": False})(tiny_gpt2, ctx())
    path = save_artifact(result, tmp_path / "mix.gguf")
    manifest = json.loads((tmp_path / "mix.gguf.compress.json").read_text())
    record = manifest["passes"][-1]
    assert path.is_file() and record["name"] == "auto_quantize"
    assert set(record["metrics"]["assignment"]) == {m.name for m in matrices_of(tiny_gpt2)}
    for key in ("predicted_kl", "measured_kl", "gguf_bytes", "bytes_per_token", "curve", "sensitivity", "backoff"):
        assert key in record["metrics"], key


TUNE = {"tune_steps": 30, "tune_windows": 64, "tune_seq_len": 64, "tune_lr": 3e-3}


def test_a_trained_mix_diverges_less_and_the_file_holds_its_trained_blocks(one_sensitive_matrix):
    """tune_steps trains the searched mix's 4-bit scales; the check, and the file, are of the trained mix, and the
    search and check windows come after the training text."""
    import gguf

    from compress.autoquant.grid import roundtrip

    art = one_sensitive_matrix
    before = {n: p.detach().clone() for n, p in art.model.named_parameters()}
    result = build_pass("auto_quantize", {"target_kl": 5.0, "types": ["q4_0", "q8_0"], "curve": [5.0],
                                          "measure_curve": False, "check": False, **TUNE})(art, ctx())
    for n, p in art.model.named_parameters():
        assert torch.equal(p, before[n]), "the input model changed"
    m = result.passes[-1]["metrics"]
    tuning = m["tuning"]
    assert set(m["assignment"].values()) == {"q4_0"}  # a generous budget: everything at 4 bits
    assert tuning["matrices_tuned"] == sum(not mat.lookup for mat in matrices_of(art))
    assert tuning["measured_kl_after"] < 0.9 * tuning["measured_kl_before"]
    assert m["measured_kl_pytorch"] == pytest.approx(tuning["measured_kl_after"])
    assert m["windows"]["search"]["first_window"] * 64 >= TUNE["tune_windows"] * TUNE["tune_seq_len"]
    assert m["export"]["given_blocks_written"] == tuning["matrices_tuned"]
    # The file holds trained scales: a tuned matrix's blocks are not round-to-nearest of its float weights.
    tensors = {t.name: t for t in gguf.GGUFReader(result.model.path).tensors}
    in_file = gguf.quants.dequantize(tensors[SENSITIVE].data, tensors[SENSITIVE].tensor_type).reshape(-1)
    float_rows = next(mat for mat in matrices_of(art) if mat.name == SENSITIVE).rows()
    assert not np.array_equal(in_file, roundtrip(float_rows, "q4_0").reshape(-1))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("config, message", [
    ({"target_kl": 0}, "target_kl: Input should be greater than 0"),
    ({"target_kl": -0.1}, "target_kl: Input should be greater than 0"),
    ({"target_kl": 0.02, "types": ["q4_0", "q3_k"]}, "unknown GGUF type 'q3_k'"),
    ({"target_kl": 0.02, "types": []}, "no candidate types"),
    ({"target_kl": 0.02, "curve": [0.01, -1]}, "positive KL"),
    ({"target_kl": 0.02, "search_kl": 0.05}, "search_kl is the budget searched before training, so it needs "
                                             "tune_steps"),
    ({"target_kl": 0.02, "search_kl": 0.01, "tune_steps": 10}, "search_kl 0.01 is below target_kl 0.02"),
])
def test_bad_config_is_one_line(config, message):
    with pytest.raises(UserError, match=message) as exc:
        build_pass("auto_quantize", config)
    assert "\n" not in str(exc.value)


def test_too_few_calibration_windows_and_an_impossible_budget_are_one_line(tiny_llama):
    with pytest.raises(UserError, match="needs search_windows \\+ check_windows = 6 calibration windows"):
        build_pass("auto_quantize", {"target_kl": 0.01})(tiny_llama, ctx(samples=3))
    with pytest.raises(UserError, match="no assignment of the types q8_0 is predicted within KL 1e-12"):
        build_pass("auto_quantize", {"target_kl": 1e-12, "types": ["q8_0"], "check": False})(tiny_llama, ctx())


def test_training_text_that_leaves_no_check_windows_is_refused_in_one_line(tiny_llama):
    with pytest.raises(UserError, match="tune_windows trains on the first .* tokens of the calibration text") as exc:
        build_pass("auto_quantize", {"target_kl": 0.02, **TUNE, "tune_windows": 10 ** 6})(tiny_llama, ctx())
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("args, message", [
    (["--target-kl", "0"], "greater than 0"),
    (["--target-kl", "-1"], "greater than 0"),
    (["--target-kl", "0.02", "--types", "q4_0,int3"], "unknown GGUF type 'int3'"),
    (["--target-kl", "0.02", "--method", "ort-int8"], "give it without --method ort-int8"),
    (["--target-kl", "0.02", "--keep", "*down_proj", "--grid", "q4_0"],
     "--keep, --grid only apply to --method, not to --target-kl"),
    (["--method", "gptq", "--grid", "q4_0", "--types", "q4_0,q8_0"], "--types only applies to --target-kl"),
    (["--method", "gptq", "--grid", "q4_0", "--search-kl", "0.05"], "--search-kl only applies to --target-kl"),
    (["--target-kl", "0.02", "--search-kl", "0.05"], "needs tune_steps"),
    ([], "give --method"),
    (["--target-kl", "0.02", "--calib-samples", "4", "--eval-seq-len", "64"], "raise --calib-samples"),
])
def test_cli_refuses_bad_input_in_one_line(capsys, tiny_llama_dir, tmp_path, args, message):
    code = main(["-q", "quantize", str(tiny_llama_dir), "-o", str(tmp_path / "x.gguf"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_an_encoder_is_refused_in_one_line(capsys, tiny_bert_dir, tiny_bert, tmp_path):
    """A BERT folder loads (compress handles encoders), but a next-token budget and a llama.cpp file are not for it."""
    code = main(["-q", "quantize", str(tiny_bert_dir), "--target-kl", "0.02", "-o", str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and "is a bert encoder; --target-kl writes a GGUF" in err and "ort-weight-int8" in err
    assert len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())
    with pytest.raises(UserError, match="auto_quantize pass is for decoder .* ort-weight-int8"):
        build_pass("auto_quantize", {"target_kl": 0.02})(tiny_bert, ctx())


def test_cli_output_must_be_a_gguf_file(capsys, tiny_llama_dir, tmp_path):
    code = main(["-q", "quantize", str(tiny_llama_dir), "--target-kl", "0.02", "-o", str(tmp_path / "out")])
    assert code == 2 and ".gguf" in capsys.readouterr().err


def test_cli_writes_the_mix_and_says_what_it_chose(capsys, tiny_llama_dir, tmp_path):
    pytest.importorskip("llama_cpp")  # the evaluation after it runs the file in llama.cpp
    code = main(["-q", "quantize", str(tiny_llama_dir), "--target-kl", "0.05", "-o", str(tmp_path / "mix.gguf"),
                 "--calib-samples", "6", "--calib-seq-len", "64", "--eval-windows", "1", "--eval-seq-len", "64"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "matrices: predicted KL" in out and "measured" in out and "quality guard passed" in out
    assert (tmp_path / "mix.gguf").is_file() and (tmp_path / "mix.gguf.compress.json").is_file()
