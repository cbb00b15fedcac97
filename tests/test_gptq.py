"""GPTQ onto runtime grids: lower layer-wise error than round-to-nearest on the same grid, blocks that decode
(with the runtime's own decoder, and with an actual MatMulNBits node) to exactly the weights GPTQ set, act-order,
the sidecar file that carries the blocks through save and reload, and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.cli import main
from compress.errors import UserError
from compress.layers import weight_matrices
from compress.passes.base import CalibrationData, PassContext, build_pass
from compress.passes.gptq import GptqQuantize, gptq_quantize_matrix, output_error
from compress.quant_grids import (GGUF_TYPES, Grid, dequantize_entry, dequantize_matmulnbits,
                                  runtime_round_to_nearest, unpack_gguf, unpack_matmulnbits)

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")

# Every grid the pass can write: the GGUF types, and MatMulNBits 4/8-bit, symmetric or not, blocks of 32/64/128.
GRIDS = [Grid.named(kind) for kind in GGUF_TYPES] + [
    Grid.named(kind, block, symmetric) for kind in ("int4", "int8") for block in (32, 64, 128)
    for symmetric in (True, False)
]
GRID_IDS = [g.label for g in GRIDS]


def correlated_layer(rows: int = 48, cols: int = 256, tokens: int = 2048, seed: int = 0):
    """A weight matrix and calibration inputs whose features are correlated and of very different scales,
    as real activations are (the case where compensating rounding errors pays)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=g) / cols**0.5
    scales = torch.exp(torch.randn(cols, generator=g))
    X = (torch.randn(tokens, cols, generator=g) @ mixing + 0.3 * torch.randn(tokens, cols, generator=g)) * scales
    W = torch.randn(rows, cols, generator=g) * 0.05
    return W, X, X.T @ X / tokens


def runtime_decoded(grid: Grid, w: torch.Tensor) -> torch.Tensor:
    """What the runtime's own round-to-nearest quantizer makes of w, decoded."""
    return torch.from_numpy(dequantize_entry(runtime_round_to_nearest(grid, w.numpy())))


@pytest.fixture
def ctx():
    return PassContext(CalibrationData(samples=2, seq_len=64))


@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
def test_gptq_has_a_lower_output_error_than_round_to_nearest_on_the_same_grid(grid):
    W, X, H = correlated_layer(cols=320 if grid.runtime == "gguf" else 300)  # 300: a partial last block
    chosen = gptq_quantize_matrix(W, H, grid)
    rtn = runtime_decoded(grid, W)
    gptq_error = ((W - chosen.values) @ X.T).pow(2).sum()
    rtn_error = ((W - rtn) @ X.T).pow(2).sum()
    assert gptq_error < 0.8 * rtn_error, f"{grid.label}: GPTQ {gptq_error:.4g} vs round-to-nearest {rtn_error:.4g}"
    assert output_error(W, chosen.values, H) == pytest.approx(float(gptq_error / (W @ X.T).pow(2).sum()), rel=1e-4)


@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
def test_every_weight_gptq_sets_is_a_point_of_the_runtime_grid(grid):
    W, _, H = correlated_layer(rows=8, cols=192)
    chosen = gptq_quantize_matrix(W, H, grid, act_order=True)
    entry = chosen.entry()
    decoded = dequantize_entry(entry)  # GGUF: the gguf package's own decoder
    assert decoded.dtype == np.float32
    assert np.array_equal(decoded, chosen.values.numpy()), "the packed blocks decode to other values"
    if grid.runtime == "gguf":
        assert entry[0] == grid.kind and entry[1].dtype == np.uint8 and entry[1].shape[0] == 8
        _, scales, offsets = unpack_gguf(grid.kind, entry[1])
        # d (and m) are what float16 can hold: the runtime stores them so.
        assert np.array_equal(scales.astype(np.float16).astype(np.float32), scales)
        assert np.array_equal(offsets.astype(np.float16).astype(np.float32), offsets)
    else:
        payload = entry[1]
        assert entry[0] == "matmulnbits" and payload["q"].shape == (8, grid.blocks(192), grid.block_size * grid.bits // 8)
        assert payload["scales"].shape == (8, grid.blocks(192)) and payload["scales"].dtype == np.float32
        assert (payload["zero_points"] is None) == grid.symmetric


@pytest.mark.parametrize("grid", GRIDS, ids=GRID_IDS)
def test_our_packing_reproduces_the_runtime_quantizers_own_bytes(grid):
    """Unpacking what gguf / ONNX Runtime write and packing it again gives their bytes: the layouts agree."""
    w = torch.randn(6, 160 if grid.runtime == "gguf" else 200) * 0.1
    kind, payload = runtime_round_to_nearest(grid, w.numpy())
    if grid.runtime == "gguf":
        codes, scales, offsets = unpack_gguf(kind, payload)
        assert np.array_equal(grid.pack(*map(torch.from_numpy, (codes.astype(np.float32), scales, offsets))), payload)
    else:
        codes, scales, zeros = unpack_matmulnbits(payload)
        offsets = zeros
        repacked = grid.pack(*map(torch.from_numpy, (codes.astype(np.float32), scales, zeros.astype(np.float32))))
        assert np.array_equal(repacked["q"], payload["q"])
        if not grid.symmetric:
            assert np.array_equal(repacked["zero_points"], payload["zero_points"])
    # Our own round-to-nearest fits the block parameters the runtime's quantizer fits, and its codes are at
    # least as near: gguf picks codes with d before its float16 rounding, we with d as stored.
    values, _, our_scales, our_offsets = grid.round_to_nearest(w)
    assert np.array_equal(our_scales.numpy(), scales)
    assert np.array_equal(our_offsets.numpy(), offsets.astype(np.float32))
    assert torch.all((values - w).abs() <= (runtime_decoded(grid, w) - w).abs() + 1e-7)


IQ4_NL = Grid.named("iq4_nl")


def test_iq4_nl_rounds_normal_weights_closer_than_q4_0_at_the_same_size():
    """Its levels are denser near 0, where most weights are: the reason to have the grid at all."""
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(1)) * 0.05
    iq4_error = (IQ4_NL.round_to_nearest(w)[0] - w).pow(2).sum()
    q4_error = (Grid.named("q4_0").round_to_nearest(w)[0] - w).pow(2).sum()
    assert iq4_error < 0.9 * q4_error
    assert len(runtime_round_to_nearest(Grid.named("q4_0"), w.numpy())[1][0]) == 16 * 18  # 18 bytes a block, as iq4_nl


def test_gptq_on_iq4_nl_beats_its_round_to_nearest_and_its_blocks_decode_in_gguf_to_the_weights_it_set():
    W, X, H = correlated_layer(cols=320)
    chosen = gptq_quantize_matrix(W, H, IQ4_NL, act_order=True)
    rtn = IQ4_NL.round_to_nearest(W)[0]
    assert ((W - chosen.values) @ X.T).pow(2).sum() < 0.8 * ((W - rtn) @ X.T).pow(2).sum()
    kind, raw = chosen.entry()
    assert kind == "iq4_nl" and raw.dtype == np.uint8 and raw.shape == (W.shape[0], 320 // 32 * 18)
    assert np.array_equal(dequantize_entry((kind, raw)), chosen.values.numpy()), "the gguf decoder disagrees"
    codes, scales, offsets = unpack_gguf(kind, raw)
    assert codes.min() >= 0 and codes.max() <= 15 and not offsets.any()
    assert np.array_equal(scales.astype(np.float16).astype(np.float32), scales)
    levels = np.array(IQ4_NL.levels)
    assert set(np.unique(chosen.values.numpy() / np.repeat(scales, 32, axis=1))) <= set(levels.astype(np.float32))


def test_iq4_nl_has_no_zero_so_keep_sparsity_is_refused():
    with pytest.raises(ValueError, match="0 is exact"):
        GptqQuantize(grid="iq4_nl", keep_sparsity=True)


def matmulnbits_session(payload: dict):
    """A one-node ONNX model: Y = A @ B^T with B the MatMulNBits payload."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inputs = ["A", "B", "scales"]
    initializers = [numpy_helper.from_array(payload["q"], "B"), numpy_helper.from_array(payload["scales"], "scales")]
    if payload["zero_points"] is not None:
        inputs.append("zero_points")
        initializers.append(numpy_helper.from_array(payload["zero_points"], "zero_points"))
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=payload["K"], N=payload["N"],
                            bits=payload["bits"], block_size=payload["block_size"])
    graph = helper.make_graph([node], "matmulnbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, payload["K"]])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, payload["N"]])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("grid", [g for g in GRIDS if g.runtime == "matmulnbits"],
                         ids=[g.label for g in GRIDS if g.runtime == "matmulnbits"])
def test_an_onnx_runtime_matmulnbits_node_runs_exactly_the_weights_gptq_set(grid):
    pytest.importorskip("onnxruntime")
    W, _, H = correlated_layer(rows=10, cols=200)  # K = 200: a partial last block for every block size
    chosen = gptq_quantize_matrix(W, H, grid)
    payload = chosen.entry()[1]
    session = matmulnbits_session(payload)
    # The identity as input: every output is one weight times 1 plus zeros, so the node's weights come out exactly.
    Y = session.run(None, {"A": np.eye(200, dtype=np.float32)})[0]
    assert np.array_equal(Y.T, chosen.values.numpy())
    assert np.array_equal(dequantize_matmulnbits(payload), chosen.values.numpy())
    x = np.random.default_rng(0).standard_normal((3, 200)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"A": x})[0], x @ chosen.values.numpy().T, rtol=1e-4, atol=1e-4)


def test_act_order_does_better_where_a_few_inputs_carry_most_of_the_energy():
    """Act-order rounds the high-energy inputs first, so the most columns are left to absorb their errors."""
    g = torch.Generator().manual_seed(1)
    cols = 256
    scales = torch.ones(cols)
    loud = torch.randperm(cols, generator=g)[:16]
    scales[loud] = 30.0  # a few outlier features, scattered through the blocks (as in real LM activations)
    X = (torch.randn(4096, cols, generator=g) @ (torch.eye(cols) + 0.2 * torch.randn(cols, cols, generator=g) / 16)) * scales
    W = torch.randn(32, cols, generator=g) * 0.05
    H = X.T @ X / X.shape[0]
    grid = Grid.named("q4_0")
    plain = output_error(W, gptq_quantize_matrix(W, H, grid).values, H)
    ordered = gptq_quantize_matrix(W, H, grid, act_order=True)
    assert output_error(W, ordered.values, H) < plain
    # The blocks stay the runtime's contiguous ones: every block of 32 decodes with one scale.
    assert np.array_equal(dequantize_entry(ordered.entry()), ordered.values.numpy())


@pytest.mark.parametrize("kind", ["q4_0", "q8_0", "int4"])
def test_keep_sparsity_keeps_every_zero_of_a_pruned_matrix(kind):
    W, _, H = correlated_layer(rows=16, cols=256)
    W = W * (torch.rand(16, 64, 4, generator=torch.Generator().manual_seed(2)).argsort(-1) < 2).reshape(16, 256)
    grid = Grid.named(kind, symmetric=False if kind == "int4" else None)
    kept = gptq_quantize_matrix(W, H, grid, zeros=W == 0)
    assert bool((kept.values[W == 0] == 0).all())
    assert np.array_equal(dequantize_entry(kept.entry()), kept.values.numpy())
    filled = gptq_quantize_matrix(W, H, grid)
    assert int((filled.values[W == 0] != 0).sum()) > 0  # without it, the updates fill the zeros
    with pytest.raises(ValueError, match="no exact zero"):
        gptq_quantize_matrix(W, H, Grid.named("q4_1"), zeros=W == 0)


def test_lazy_batches_do_not_change_the_result_beyond_rounding():
    W, _, H = correlated_layer(rows=16, cols=256)
    grid = Grid.named("q4_1")
    for act_order in (False, True):
        one = gptq_quantize_matrix(W, H, grid, act_order=act_order, block=256).values
        many = gptq_quantize_matrix(W, H, grid, act_order=act_order, block=24).values
        changed = (one != many).float().mean()
        assert changed < 0.01, f"act_order={act_order}: {changed:.2%} of weights differ"


def test_clip_search_never_raises_the_rounding_error_of_a_block():
    w = torch.randn(64, 32) * torch.exp(torch.randn(64, 1))
    w[:, 0] *= 8  # an outlier per row: a narrower range serves the other 31 weights better
    for kind in ("q4_0", "q4_1", "int4"):
        grid = Grid.named(kind)
        plain = grid.round_to_nearest(w)[0]
        clipped = grid.round_to_nearest(w, clip_search=True)[0]
        assert torch.all((clipped - w).pow(2).sum(1) <= (plain - w).pow(2).sum(1) + 1e-12)
        assert (clipped - w).pow(2).sum() < (plain - w).pow(2).sum()


@pytest.mark.parametrize("config", [
    {"grid": "q4_0"},
    {"grid": "q4_1", "act_order": False},
    {"grid": "int4", "block_size": 64, "symmetric": False, "sequential": False},
], ids=["q4_0", "q4_1-left-to-right", "int4-asym-64-one-shot"])
def test_the_pass_sets_grid_weights_and_records_their_blocks(tiny_model_dir, ctx, config):
    from compress.models import load_artifact

    base = load_artifact(str(tiny_model_dir))
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    result = GptqQuantize(**config)(base, ctx)
    for n, p in base.model.named_parameters():
        assert torch.equal(p, before[n]), "the input model changed"
    targets = list(weight_matrices(result.model))
    assert set(result.quantized_blocks) == {f"{t.name}.weight" for t in targets}
    for t in targets:
        decoded = dequantize_entry(result.quantized_blocks[f"{t.name}.weight"])
        assert np.array_equal(decoded, t.weight.detach().numpy()), t.name  # Conv1D: the (out, in) view
    metrics = result.passes[-1]["metrics"]
    assert metrics["matrices"] == len(targets)
    assert metrics["output_error_mean"]["gptq"] < metrics["output_error_mean"]["round_to_nearest"]


def test_saved_blocks_come_back_on_reload_and_stale_ones_are_dropped(tiny_llama, ctx, tmp_path):
    from compress.models import load_artifact
    from compress.quantized_blocks import BLOCKS_FILE
    from compress.saving import save_artifact

    result = GptqQuantize(grid="q5_0")(tiny_llama, ctx)
    out = save_artifact(result, tmp_path / "gptq")
    assert (out / BLOCKS_FILE).is_file()
    reloaded = load_artifact(str(out))
    assert set(reloaded.quantized_blocks) == set(result.quantized_blocks)
    for name, (kind, raw) in result.quantized_blocks.items():
        assert reloaded.quantized_blocks[name][0] == kind
        assert np.array_equal(reloaded.quantized_blocks[name][1], raw)

    # A pass that changes weights after quantization: their blocks no longer describe them and are not saved.
    changed = reloaded.copy()
    first = next(iter(changed.quantized_blocks))
    with torch.no_grad():
        changed.model.get_parameter(first).mul_(1.5)
    again = load_artifact(str(save_artifact(changed, tmp_path / "changed")))
    assert first not in again.quantized_blocks and len(again.quantized_blocks) == len(result.quantized_blocks) - 1


def test_matmulnbits_blocks_survive_save_and_reload(tiny_gpt2, ctx, tmp_path):
    from compress.models import load_artifact
    from compress.saving import save_artifact

    result = GptqQuantize(grid="int4", symmetric=False, block_size=32)(tiny_gpt2, ctx)
    reloaded = load_artifact(str(save_artifact(result, tmp_path / "gptq")))
    assert set(reloaded.quantized_blocks) == set(result.quantized_blocks)
    for name, (tag, payload) in reloaded.quantized_blocks.items():
        assert tag == "matmulnbits"
        original = result.quantized_blocks[name][1]
        for key in ("q", "scales", "zero_points"):
            assert np.array_equal(payload[key], original[key]), (name, key)
        assert {k: payload[k] for k in ("bits", "block_size", "symmetric", "K", "N")} == \
               {k: original[k] for k in ("bits", "block_size", "symmetric", "K", "N")}


def test_bad_configurations_are_refused_before_any_work(tiny_llama, ctx, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from conftest import tiny_llama_config
    from compress.artifact import Artifact

    with pytest.raises(UserError, match="32 weights"):
        build_pass("gptq_quantize", {"grid": "q4_0", "block_size": 64})
    with pytest.raises(UserError, match="symmetric applies to int4/int8"):
        build_pass("gptq_quantize", {"grid": "q4_1", "symmetric": False})
    with pytest.raises(UserError, match="power of two"):
        build_pass("gptq_quantize", {"grid": "int8", "block_size": 48})
    with pytest.raises(UserError, match="keep_sparsity needs a grid on which 0 is exact"):
        build_pass("gptq_quantize", {"grid": "q5_1", "keep_sparsity": True})
    narrow = AutoModelForCausalLM.from_config(tiny_llama_config(len(tiny_tokenizer), hidden_size=48, head_dim=12,
                                                                intermediate_size=96))
    with pytest.raises(UserError, match="divisible by 32; these are not: model.layers.0.self_attn.q_proj"):
        GptqQuantize(grid="q4_0")(Artifact(model=narrow, tokenizer=tiny_tokenizer), ctx)
    quantized = GptqQuantize(grid="q8_0")(tiny_llama, ctx)
    with pytest.raises(UserError, match="already on a runtime grid"):
        GptqQuantize(grid="q4_0")(quantized, ctx)


def test_the_command_line_writes_grid_weights_and_blocks(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "gptq"
    code = main(["-q", "quantize", str(tiny_llama_dir), "--method", "gptq", "--grid", "q4_0", "--act-order",
                 "-o", str(out), "--calib-samples", "2", "--calib-seq-len", "64", "--eval-windows", "1",
                 "--eval-seq-len", "64"])
    assert code == 0
    assert (out / "quantized_blocks.safetensors").is_file()
    assert "on the q4_0 grid" in capsys.readouterr().out


def test_the_command_line_quantizes_the_head_with_head(tiny_llama_dir, tmp_path):
    from compress.models import load_artifact

    out = tmp_path / "gptq-head"
    assert main(["-q", "quantize", str(tiny_llama_dir), "--method", "gptq", "--grid", "q8_0", "--head", "-o", str(out),
                 "--calib-samples", "2", "--calib-seq-len", "64", "--eval-windows", "1", "--eval-seq-len", "64"]) == 0
    reloaded = load_artifact(str(out))
    assert "lm_head.weight" in reloaded.quantized_blocks
    assert reloaded.model.lm_head.weight is not reloaded.model.get_input_embeddings().weight


@pytest.mark.parametrize("args, message", [
    (["--method", "gptq"], "needs --grid"),
    (["--method", "gptq", "--grid", "q4_1", "--asymmetric"], "--asymmetric applies to the int4/int8 grids"),
    (["--method", "gptq", "--grid", "int4", "--keep-first", "1"], "--keep-first/--keep-last"),
    (["--method", "ort-int4", "--act-order"], "--act-order/--no-act-order only applies to --method gptq"),
    (["--method", "bnb-nf4", "--no-act-order"], "--act-order/--no-act-order only applies to --method gptq"),
    (["--method", "gptq", "--grid", "q4_0", "--int4-algorithm", "hqq"], "--int4-algorithm"),
    (["--method", "ort-int8", "--head"], "--head only applies to --method gptq"),
    (["--method", "gptq", "--grid", "q4_0", "--head-grid", "q5_0"], "--head-grid is the output head's grid"),
    (["--method", "gptq", "--grid", "q4_0", "--head", "--head-grid", "int8"], "belong to different runtimes"),
])
def test_bad_option_combinations_are_one_line_errors(tiny_llama_dir, tmp_path, capsys, args, message):
    assert main(["quantize", str(tiny_llama_dir), *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_head_option_unties_a_tied_head_and_leaves_the_embeddings_float(tiny_llama, ctx, tmp_path):
    """head: true puts the output head on the grid; the embedding table it was tied to keeps its values,
    through save and reload, and a GGUF export writes the head's blocks as output.weight next to a
    token_embd at the export's own type."""
    import gguf

    from compress.models import load_artifact
    from compress.saving import save_artifact

    embeddings = tiny_llama.model.get_input_embeddings().weight.detach().clone()
    result = GptqQuantize(grid="q4_0", head=True)(tiny_llama, ctx)
    model = result.model
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert not model.config.tie_word_embeddings
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    head_blocks = result.quantized_blocks["lm_head.weight"]
    assert np.array_equal(dequantize_entry(head_blocks), model.lm_head.weight.detach().numpy())
    metrics = result.passes[-1]["metrics"]
    assert metrics["head_untied"] is True
    assert "lm_head" in metrics["output_error_per_matrix"]
    assert tiny_llama.model.lm_head.weight is tiny_llama.model.get_input_embeddings().weight, "the input changed"

    reloaded = load_artifact(str(save_artifact(result, tmp_path / "gptq-head")))
    assert torch.equal(reloaded.model.get_input_embeddings().weight, embeddings)
    assert torch.equal(reloaded.model.lm_head.weight, model.lm_head.weight)

    exported = build_pass("gguf_export", {"type": "q8_0", "check": False})(reloaded)
    path = save_artifact(exported, tmp_path / "head.gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert np.array_equal(np.asarray(tensors["output.weight"].data).reshape(-1), head_blocks[1].reshape(-1))
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_head_grid_puts_the_head_on_its_own_grid_and_the_gguf_writes_both_types(tiny_llama, ctx, tmp_path):
    """head_grid: q5_0 on a q4_0 model: every projection is on q4_0, the head on q5_0, the blocks of each decode to
    the weights GPTQ set, and the GGUF file holds each matrix at its own blocks' type."""
    import gguf

    from compress.saving import save_artifact

    result = GptqQuantize(grid="q4_0", head=True, head_grid="q5_0")(tiny_llama, ctx)
    types = {name: entry[0] for name, entry in result.quantized_blocks.items()}
    assert types.pop("lm_head.weight") == "q5_0"
    assert types and set(types.values()) == {"q4_0"}
    for name, entry in result.quantized_blocks.items():
        weight = result.model.get_parameter(name).detach().numpy()
        assert np.array_equal(dequantize_entry(entry), weight), name
    assert result.passes[-1]["metrics"]["head_grid"] == "q5_0"

    exported = build_pass("gguf_export", {"type": "q4_0", "check": False})(result)
    tensors = {t.name: t for t in gguf.GGUFReader(save_artifact(exported, tmp_path / "mixed.gguf")).tensors}
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q5_0
    assert tensors["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0


@pytest.mark.parametrize("config, message", [
    ({"grid": "q4_0", "head_grid": "q5_0"}, "needs head: true"),
    ({"grid": "q4_0", "head": True, "head_grid": "int8"}, "different runtimes"),
    ({"grid": "q4_0", "head": True, "head_grid": "q4_1", "keep_sparsity": True}, "0 is exact"),
])
def test_a_head_grid_that_cannot_apply_is_refused(config, message):
    with pytest.raises(ValueError, match=message):
        GptqQuantize(**config)


def test_head_option_on_an_untied_head_quantizes_it_in_place(tiny_llama_dir, ctx, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from conftest import tiny_llama_config
    from compress.artifact import Artifact

    untied = AutoModelForCausalLM.from_config(tiny_llama_config(len(tiny_tokenizer), tie_word_embeddings=False))
    result = GptqQuantize(grid="q8_0", head=True)(Artifact(model=untied, tokenizer=tiny_tokenizer), ctx)
    assert result.passes[-1]["metrics"]["head_untied"] is False
    assert "lm_head.weight" in result.quantized_blocks
    assert torch.equal(result.model.get_input_embeddings().weight, untied.get_input_embeddings().weight)
