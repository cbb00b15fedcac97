"""Quantization: bitsandbytes and ONNX Runtime passes, ONNX export, the quality guard, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from compress.data import WindowSpec, make_windows
from compress.errors import QualityError, UserError
from compress.evaluate import logits_of
from compress.passes import BnbQuantize, OnnxExport, OrtQuantize, PassContext
from compress.passes.quantization import quality_guard
from compress.saving import save_artifact

from conftest import assert_same_weights, state_dict_copy

IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 31, 8, 64, 120, 3, 77]])


def tiny_windows(n: int = 2, seq_len: int = 32):
    tokens = list(torch.randint(3, 300, (n * seq_len,), generator=torch.Generator().manual_seed(0)).tolist())
    return make_windows(tokens, WindowSpec(seq_len=seq_len, max_windows=n))


def bnb_layer_types(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if type(m).__module__.startswith("bitsandbytes")}


# ---------------------------------------------------------------- bitsandbytes


@pytest.mark.parametrize("method, layer", [("int8", "Linear8bitLt"), ("nf4", "Linear4bit"), ("fp4", "Linear4bit")])
def test_bnb_output_reloads_quantized_with_stock_from_pretrained(tiny_llama, tmp_path, method, layer):
    from transformers import AutoModelForCausalLM

    before = state_dict_copy(tiny_llama.model)
    result = BnbQuantize(method=method)(tiny_llama)
    assert_same_weights(before, tiny_llama.model.state_dict())  # the input model is untouched
    assert bnb_layer_types(result.model) == {layer}
    out = save_artifact(result, tmp_path / "q")
    reloaded = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32)
    assert bnb_layer_types(reloaded) == {layer}
    torch.testing.assert_close(logits_of(reloaded, IDS), logits_of(result.model, IDS))
    manifest = json.loads((out / "compress.json").read_text())
    assert manifest["passes"][-1]["name"] == "bnb_quantize"


def test_bnb_quantizes_gpt2_conv1d_projections(tiny_gpt2):
    result = BnbQuantize(method="nf4")(tiny_gpt2)
    assert result.passes[-1]["metrics"]["quantized_projections"] == 8  # 2 blocks x (c_attn, c_proj, c_fc, c_proj)
    assert bnb_layer_types(result.model) == {"Linear4bit"}


def test_bnb_keeps_chosen_modules_and_edge_blocks_in_float(tiny_llama):
    result = BnbQuantize(method="nf4", keep=["*.mlp.down_proj"])(tiny_llama)
    kept = result.passes[-1]["metrics"]["float_projections"]
    assert set(kept) == {"lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    assert type(result.model.model.layers[0].mlp.down_proj).__name__ == "Linear"
    assert type(result.model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    with pytest.raises(UserError, match="every projection is kept"):
        BnbQuantize(method="nf4", keep_first=1, keep_last=1)(tiny_llama)  # 2 layers: nothing left


def test_bnb_twice_is_refused_in_one_line(tiny_llama):
    once = BnbQuantize(method="int8")(tiny_llama)
    with pytest.raises(UserError, match="already quantized"):
        BnbQuantize(method="nf4")(once)
    with pytest.raises(UserError, match="already quantized"):
        OrtQuantize(method="int8")(once)


def test_bnb_without_a_usable_backend_is_refused(tiny_llama, monkeypatch):
    import bitsandbytes as bnb

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            BnbQuantize(method="int8", device="cuda")(tiny_llama)

    def no_kernel(*args, **kwargs):
        raise RuntimeError("no kernel registered for this device")

    monkeypatch.setattr(bnb.nn, "Linear4bit", no_kernel)
    with pytest.raises(UserError, match="no usable nf4 backend on cpu"):
        BnbQuantize(method="nf4")(tiny_llama)


# ---------------------------------------------------------------- ONNX


def test_onnx_export_matches_pytorch_and_reloads(tiny_model_dir, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM

    from compress.models import load_artifact

    base = load_artifact(str(tiny_model_dir))
    result = OnnxExport()(base)
    metrics = result.passes[-1]["metrics"]
    assert metrics["max_abs_logit_diff"] < 1e-4
    assert metrics["generation_match"] == 1.0  # greedy decoding with past key values agrees
    out = save_artifact(result, tmp_path / "onnx")
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
    ort = ORTModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits_of(ort, IDS), logits_of(base.model, IDS), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method, ops", [("int8", {"DynamicQuantizeMatMul", "MatMulInteger"}), ("int4", {"MatMulNBits"})])
def test_ort_quantization_round_trips_through_save_and_load(tiny_model_dir, tmp_path, method, ops):
    import onnx
    from optimum.onnxruntime import ORTModelForCausalLM

    from compress.models import load_artifact

    base = load_artifact(str(tiny_model_dir))
    result = OrtQuantize(method=method, block_size=16)(base)
    metrics = result.passes[-1]["metrics"]
    assert metrics["quantized_matmuls"] > 0
    assert metrics["onnx_bytes"] < metrics["onnx_bytes_before"]
    out = save_artifact(result, tmp_path / method)
    assert ops & {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    reloaded = ORTModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits_of(reloaded, IDS), logits_of(result.model, IDS))


def test_ort_int8_keeps_mlp_down_projections_and_edge_blocks_in_float_by_default(tiny_llama):
    assert OrtQuantize(method="int8").select([("/model/layers.2/mlp/up_proj/MatMul", "model.layers.2.mlp.up_proj"),
                                              ("/model/layers.2/mlp/down_proj/MatMul", "model.layers.2.mlp.down_proj"),
                                              ("/model/layers.22/mlp/up_proj/MatMul", "model.layers.22.mlp.up_proj")],
                                             n_layers=24) == (["/model/layers.2/mlp/up_proj/MatMul"],
                                                              ["/model/layers.2/mlp/down_proj/MatMul",
                                                               "/model/layers.22/mlp/up_proj/MatMul"])
    result = OrtQuantize(method="int8", keep_first=0, keep_last=1)(tiny_llama)
    metrics = result.passes[-1]["metrics"]
    last_block = {f"model.layers.1.{m}" for m in
                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert set(metrics["float_matmuls"]) == {"model.layers.0.mlp.down_proj"} | last_block
    assert metrics["quantized_matmuls"] == 6  # block 0 without down_proj; rotary and tied head never


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_vnni"}, "int8"),
    ({"avx2", "avx_vnni"}, "int8"),
    ({"avx2", "fma"}, "uint8"),
])
def test_dynamic_int8_weight_type_auto_is_signed_only_where_the_cpu_has_vnni(tiny_llama, monkeypatch, flags, expected):
    import onnx

    from compress import llamacpp_runtime

    monkeypatch.setattr(llamacpp_runtime, "cpu_flags", lambda: set(flags))
    result = OrtQuantize(method="dynamic-int8")(tiny_llama)
    metrics = result.passes[-1]["metrics"]
    assert metrics["weight_type"] == expected and metrics["weight_type_reason"].startswith("auto:")
    graph = onnx.load(str(result.model.onnx_path)).graph
    weights = {i.name: i for i in graph.initializer}
    quantized = [weights[n.input[1]] for n in graph.node if n.op_type == "MatMulInteger" and n.input[1] in weights]
    wanted = onnx.TensorProto.INT8 if expected == "int8" else onnx.TensorProto.UINT8
    assert quantized and all(w.data_type == wanted for w in quantized)


def test_an_asked_weight_type_is_kept_whatever_the_cpu(tiny_llama, monkeypatch):
    from compress import llamacpp_runtime

    monkeypatch.setattr(llamacpp_runtime, "cpu_flags", lambda: {"avx512_vnni"})
    assert OrtQuantize(method="dynamic-int8", weight_type="uint8").resolved_weight_type() == ("uint8", "asked")


def test_ort_int4_leaves_kept_modules_as_float_matmuls(tiny_llama):
    import onnx

    result = OrtQuantize(method="int4", block_size=16, keep=["*.mlp.down_proj"])(tiny_llama)
    assert result.passes[-1]["metrics"]["quantized_matmuls"] == 12
    nodes = onnx.load(str(result.model.onnx_path)).graph.node
    down = [n.op_type for n in nodes if "down_proj" in n.name]
    assert down == ["MatMul", "MatMul"]


def test_ort_int4_hqq_writes_matmulnbits_with_zero_points_and_stays_close(tiny_llama):
    import onnx

    result = OrtQuantize(method="int4", block_size=16, algorithm="hqq")(tiny_llama)
    nodes = [n for n in onnx.load(str(result.model.onnx_path)).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 14  # every block projection; rotary and the tied head stay float
    assert all(len(n.input) >= 4 and n.input[3] for n in nodes)  # HQQ is asymmetric: zero points present
    logits = logits_of(result.model, IDS)
    reference = logits_of(tiny_llama.model, IDS)
    assert torch.isfinite(logits).all()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.5


def test_ort_hqq_is_refused_for_int8(tiny_llama):
    with pytest.raises(UserError, match="algorithm 'hqq' is for method int4"):
        OrtQuantize(method="int8", algorithm="hqq")(tiny_llama)


def test_ort_int4_without_matmulnbits_is_refused(tiny_llama, monkeypatch):
    from compress.passes import ort_quant

    monkeypatch.setattr(ort_quant, "ort_runtime_has_op", lambda op: False)
    with pytest.raises(UserError, match="needs the MatMulNBits operator"):
        OrtQuantize(method="int4")(tiny_llama)


def test_ort_quantize_twice_is_refused(tiny_llama):
    once = OrtQuantize(method="int4", block_size=16)(tiny_llama)
    with pytest.raises(UserError, match="already quantized"):
        OrtQuantize(method="int8")(once)


# ---------------------------------------------------------------- quality guard


def test_quality_guard_flags_a_deliberately_broken_quantization(tiny_llama):
    windows = tiny_windows()
    good = quality_guard(tiny_llama.model, tiny_llama.model, windows, "identity")
    assert good["passed"] and good["kl_mean"] == pytest.approx(0.0, abs=1e-6)

    broken = BnbQuantize(method="int8")(tiny_llama)
    torch.manual_seed(0)
    for module in broken.model.modules():
        if type(module).__name__ == "Linear8bitLt":  # scramble the int8 codes: garbage weights
            module.weight.data.copy_(torch.randint(-127, 128, module.weight.shape, dtype=torch.int8))
    with pytest.warns(UserWarning, match="QUALITY WARNING"):
        verdict = quality_guard(tiny_llama.model, broken.model, windows, "broken int8")
    assert not verdict["passed"] and verdict["problems"]
    with pytest.raises(QualityError, match="failed the quality guard"):
        quality_guard(tiny_llama.model, broken.model, windows, "broken int8", fail=True)


# ---------------------------------------------------------------- CLI and recipes


def test_cli_quantize_records_the_guard_in_the_manifest(tiny_llama_dir, text_file, tmp_path):
    from compress.cli import main

    out = tmp_path / "q"
    code = main(["-q", "quantize", str(tiny_llama_dir), "--method", "ort-int8", "-o", str(out),
                 "--eval-text", str(text_file), "--eval-windows", "2", "--eval-seq-len", "64"])
    assert code == 0
    manifest = json.loads((out / "compress.json").read_text())
    quality = manifest["metrics"]["quality"]
    assert {"kl_mean", "top1_agreement", "limits", "passed"} <= quality.keys()
    # ort-int8 is the fast graph's weight-only int8 (MatMulNBits, int8 compute)
    record = manifest["passes"][-1]
    assert record["name"] == "ort_genai_export" and record["config"]["precision"] == "int8"
    assert record["metrics"]["quantized_ops"]["MatMulNBits/8bit"] > 0 and quality["passed"]


def test_the_former_int8_of_ort_quantize_is_dynamic_int8_under_its_clear_name():
    from compress.commands.quantize import build_quantize_pass

    assert OrtQuantize(method="int8").method == "dynamic-int8"  # old recipes keep working, recorded by the new name
    dynamic = build_quantize_pass("ort-dynamic-int8", (), None, None, "cpu", True, "float32", 32, False)
    assert dynamic.name == "ort_quantize" and dynamic.method == "dynamic-int8"
    assert build_quantize_pass("ort-optimum-int4", (), None, None, "cpu", True, "float32", 32, False).method == "int4"
    with pytest.raises(UserError, match="--keep, --reduce-range are not for ort-int8"):
        build_quantize_pass("ort-int8", ("*.mlp.down_proj",), None, None, "cpu", True, "float32", 32, True)


def test_cli_fail_on_damage_exits_3_and_writes_nothing(tiny_llama_dir, text_file, tmp_path, capsys):
    from compress.cli import main

    out = tmp_path / "q"
    # No 4-bit model has zero divergence from its float base, so a limit of 0 always trips the guard.
    code = main(["-q", "quantize", str(tiny_llama_dir), "--method", "bnb-nf4", "-o", str(out), "--max-kl", "0",
                 "--fail-on-damage", "--eval-text", str(text_file), "--eval-windows", "1", "--eval-seq-len", "64"])
    assert code == 3 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "quality guard" in err[-1]


def test_cli_bad_combinations_are_one_line_errors(tiny_llama_dir, tmp_path, capsys):
    from compress.cli import main

    onnx_dir = tmp_path / "onnx"
    assert main(["-q", "export", "onnx", str(tiny_llama_dir), "-o", str(onnx_dir)]) == 0
    capsys.readouterr()
    code = main(["-q", "quantize", str(onnx_dir), "--method", "bnb-int8", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bitsandbytes needs a PyTorch checkpoint" in err
    code = main(["-q", "quantize", str(tiny_llama_dir), "--method", "ort-int4", "--block-size", "24",
                 "-o", str(tmp_path / "y"), "--eval-text", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "power of two" in err
    code = main(["-q", "quantize", str(onnx_dir), "--method", "ort-int8", "-o", str(tmp_path / "z")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "builds the fast graph from the PyTorch checkpoint" in err


def test_cli_quantizes_an_exported_onnx_directory(tiny_llama_dir, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM

    from compress.cli import main

    onnx_dir = tmp_path / "onnx"
    assert main(["-q", "export", "onnx", str(tiny_llama_dir), "-o", str(onnx_dir)]) == 0
    out = tmp_path / "int4"
    assert main(["-q", "quantize", str(onnx_dir), "--method", "ort-optimum-int4", "--block-size", "16", "-o", str(out),
                 "--eval-text", "none"]) == 0
    assert (onnx_dir / "model.onnx").is_file()  # the input is only read
    ORTModelForCausalLM.from_pretrained(out)
    manifest = json.loads((out / "compress.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["onnx_export", "ort_quantize"]


def test_recipe_prunes_then_quantizes_to_onnx(tiny_llama_dir, text_file, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM

    from compress.recipe import Recipe

    recipe = Recipe.from_dict({
        "evaluation": {"source": str(text_file), "windows": 1, "seq_len": 64},
        "passes": [{"magnitude_prune": {"sparsity": 0.5}}, {"onnx_export": {}}, {"ort_quantize": {"method": "int8"}}],
    })
    result = recipe.run(model=str(tiny_llama_dir), output=tmp_path / "out")
    assert [p["name"] for p in result.passes] == ["magnitude_prune", "onnx_export", "ort_quantize"]
    assert "kl_mean" in result.metrics["evaluation"]
    ORTModelForCausalLM.from_pretrained(tmp_path / "out")


def test_bad_pass_config_is_refused_before_work():
    from compress.passes.base import build_pass

    with pytest.raises(UserError, match="method"):
        build_pass("bnb_quantize", {"method": "int3"})
    with pytest.raises(UserError, match="unknown key"):
        build_pass("ort_quantize", {"bits": 4})
    assert isinstance(PassContext().device, str)


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parents[1].glob("configs/quant-*.yaml")),
                         ids=lambda p: p.name)
def test_quantization_recipes_parse(path):
    from compress.recipe import Recipe

    recipe = Recipe.from_yaml(path)
    assert recipe.passes and recipe.passes[-1].name in ("bnb_quantize", "ort_quantize", "ort_genai_export")


@pytest.mark.integration
def test_bnb_int8_of_the_builtin_model_passes_the_guard():
    from compress.models import load_artifact
    from compress.recipe import EvaluationData

    base = load_artifact("smollm2-135m-instruct")
    windows = EvaluationData(windows=2, seq_len=256).load(base.tokenizer)
    result = BnbQuantize(method="int8")(base)
    verdict = quality_guard(base.model, result.model, windows, "bnb int8")
    assert verdict["passed"], verdict["problems"]
    assert verdict["perplexity"] < verdict["perplexity_base"] * 1.05
