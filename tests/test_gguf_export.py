"""GGUF export: what is in the file, read back with the gguf package (no llama.cpp needed).

Tensors are where llama.cpp looks for them, in the orientation and row order
it computes with; each type's blocks decode to the model's weights within that
type's rounding; ready-made blocks are stored byte for byte; per-layer widths
become llama.cpp's per-layer form or are refused; the tokenizer keys say what
llama.cpp needs; bad input is refused in one line. Running the files in
llama.cpp is tests/test_llamacpp.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import save_tiny, tiny_gpt2_config, tiny_llama_config

from compress.cli import main
from compress.errors import UserError
from compress.passes.base import CalibrationData, PassContext, build_pass

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")


def read(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def values(t) -> np.ndarray:
    """A GGUF tensor decoded to float32 rows, with the gguf package's own dequantizer."""
    from gguf import quants

    decoded = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    return decoded.reshape(t.data.shape[0], -1) if t.data.ndim == 2 else decoded.ravel()


def rotary_rows(w: torch.Tensor, heads: int) -> np.ndarray:
    """llama.cpp's row order for q/k: within each head, rows i and i + d/2 made adjacent."""
    d = w.shape[0] // heads
    return w.detach().reshape(heads, 2, d // 2, -1).transpose(1, 2).reshape(heads * d, -1).numpy()


def export(artifact, tmp_path, name="out.gguf", **config):
    from compress.saving import save_artifact

    config.setdefault("check", False)
    result = build_pass("gguf_export", config)(artifact)
    return save_artifact(result, tmp_path / name), result


@pytest.fixture
def ctx():
    return PassContext(CalibrationData(samples=1, seq_len=32))


def load(path):
    from compress.models import load_artifact

    return load_artifact(str(path))


# ------------------------------------------------------------------------ layout


def test_llama_f32_holds_every_weight_where_llama_cpp_reads_it(tiny_llama, tmp_path):
    path, _ = export(tiny_llama, tmp_path, type="f32")
    fields, tensors = read(path)
    model, cfg = tiny_llama.model, tiny_llama.model.config
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2 and fields["llama.feed_forward_length"] == 128
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.attention.key_length"] == 16 and fields["llama.rope.dimension_count"] == 16
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    layer = model.model.layers[1]
    np.testing.assert_array_equal(values(tensors["token_embd.weight"]), model.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(values(tensors["blk.1.attn_q.weight"]), rotary_rows(layer.self_attn.q_proj.weight, 4))
    np.testing.assert_array_equal(values(tensors["blk.1.attn_k.weight"]), rotary_rows(layer.self_attn.k_proj.weight, 2))
    np.testing.assert_array_equal(values(tensors["blk.1.attn_v.weight"]), layer.self_attn.v_proj.weight.detach().numpy())
    np.testing.assert_array_equal(values(tensors["blk.1.ffn_down.weight"]), layer.mlp.down_proj.weight.detach().numpy())
    assert tensors["blk.1.ffn_norm.weight"].tensor_type.name == "F32"
    assert len(tensors) == 2 + 9 * cfg.num_hidden_layers


def test_gpt2_conv1d_weights_are_written_one_row_per_output(tiny_gpt2, tmp_path):
    h = tiny_gpt2.model.transformer.h[0]
    with torch.no_grad():
        h.attn.c_attn.bias.normal_()  # initialised to zeros, which would show nothing
    path, _ = export(tiny_gpt2, tmp_path, type="f32")
    fields, tensors = read(path)
    assert fields["general.architecture"] == "gpt2" and fields["gpt2.context_length"] == 512
    np.testing.assert_array_equal(values(tensors["blk.0.attn_qkv.weight"]), h.attn.c_attn.weight.detach().numpy().T)
    np.testing.assert_array_equal(values(tensors["blk.0.ffn_up.weight"]), h.mlp.c_fc.weight.detach().numpy().T)
    np.testing.assert_array_equal(values(tensors["blk.0.attn_qkv.bias"]), h.attn.c_attn.bias.detach().numpy())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_transformers_own_gguf_reader_gives_back_the_same_model(tmp_path, tiny_tokenizer, arch):
    """An independent reader of llama.cpp's layout (it undoes the q/k row order) computes the same logits."""
    from transformers import AutoModelForCausalLM

    # transformers' GPT-2 GGUF reader ignores context_length, so give GPT-2 its default 1024 positions.
    cfg = tiny_llama_config(len(tiny_tokenizer)) if arch == "llama" else tiny_gpt2_config(len(tiny_tokenizer), n_positions=1024)
    art = load(save_tiny(tmp_path / "m", cfg, tiny_tokenizer, seed=3))
    path, _ = export(art, tmp_path, type="f32")
    reread = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    with torch.inference_mode():
        assert torch.allclose(reread(ids).logits, art.model(ids).logits, atol=1e-5)


# ------------------------------------------------------------------------ types


# Largest rounding error of each type relative to its block's largest |value|
# (q4_1 and q5_1 relative to the block's range, at most twice that).
STEP = {"f16": 1e-3, "q8_0": 1 / 127, "q5_0": 1 / 16, "q5_1": 2 / 31, "q4_0": 1 / 8, "q4_1": 2 / 15}


@pytest.mark.parametrize("kind", list(STEP))
def test_each_type_decodes_to_the_weights_within_its_rounding(tiny_llama, tmp_path, kind):
    path, result = export(tiny_llama, tmp_path, type=kind)
    _, tensors = read(path)
    q = tiny_llama.model.model.layers[0].self_attn.q_proj.weight
    for name, want in [("blk.0.attn_q.weight", rotary_rows(q, 4)),
                       ("blk.0.ffn_up.weight", tiny_llama.model.model.layers[0].mlp.up_proj.weight.detach().numpy())]:
        t = tensors[name]
        assert t.tensor_type.name == kind.upper()
        got = values(t)
        blocks = want.reshape(want.shape[0], -1, 32)
        bound = np.abs(blocks).max(-1, keepdims=True) * STEP[kind] * 1.01 + 1e-7
        assert (np.abs(got.reshape(blocks.shape) - blocks) <= bound).all(), name
        assert np.abs(got - want).mean() > 0 or kind == "f16"  # it really was quantized
    assert result.passes[-1]["metrics"]["type_counts"] == {kind: 15}


def test_rows_that_do_not_split_into_blocks_fall_back_to_f16_and_say_so(tmp_path, tiny_tokenizer):
    # hidden 48: every matrix reading the hidden state has rows of 48 values, not a multiple of 32.
    cfg = tiny_llama_config(len(tiny_tokenizer), hidden_size=48, head_dim=16, num_attention_heads=4)
    art = load(save_tiny(tmp_path / "m", cfg, tiny_tokenizer))
    path, result = export(art, tmp_path, type="q8_0")
    _, tensors = read(path)
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "F16"
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "Q8_0"  # rows of 128 split fine
    assert tensors["blk.0.attn_output.weight"].tensor_type.name == "Q8_0"  # rows of 4 x 16
    metrics = result.passes[-1]["metrics"]
    fell_back = {f["tensor"]: f for f in metrics["fallbacks"]}
    assert fell_back["blk.0.attn_q.weight"]["written"] == "f16" and "48" in fell_back["blk.0.attn_q.weight"]["why"]
    assert "blk.0.ffn_down.weight" not in fell_back
    manifest = json.loads((tmp_path / "out.gguf.compress.json").read_text())
    assert manifest["passes"][-1]["metrics"]["tensor_types"]["blk.0.attn_q.weight"] == "f16"


def test_overrides_pick_types_by_gguf_or_model_name_and_a_later_one_wins(tiny_llama, tmp_path):
    overrides = {"token_embd.weight": "f16", "blk.*.ffn_*": "q8_0", "model.layers.1.mlp.down_proj.weight": "f32"}
    path, _ = export(tiny_llama, tmp_path, type="q4_0", overrides=overrides)
    _, tensors = read(path)
    assert tensors["token_embd.weight"].tensor_type.name == "F16"
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "Q8_0"
    assert tensors["blk.1.ffn_down.weight"].tensor_type.name == "F32"
    assert tensors["blk.1.attn_q.weight"].tensor_type.name == "Q4_0"


def test_an_override_that_matches_nothing_is_refused(tiny_llama, tmp_path):
    with pytest.raises(UserError, match="match no weight matrix"):
        export(tiny_llama, tmp_path, overrides={"blk.*.ffn_dwon.weight": "f16"})


# ------------------------------------------------------------------------ ready-made blocks


def _grid_blocks(artifact, name: str, kind: str, heads: int | None = None):
    """Put a weight on the `kind` grid (as a calibrated quantizer would): its blocks, weight set to their values."""
    from gguf import GGMLQuantizationType, quants

    param = artifact.model.get_parameter(name)
    qtype = GGMLQuantizationType[kind.upper()]
    w = param.detach().numpy().astype(np.float32)
    blocks = quants.quantize(w * 1.37, qtype)  # not what plain rounding of the weight would give
    with torch.no_grad():
        param.copy_(torch.from_numpy(quants.dequantize(blocks, qtype).reshape(w.shape)))
    return blocks


def test_quantized_blocks_are_written_byte_for_byte(tiny_llama, tmp_path):
    art = tiny_llama.copy()
    up = _grid_blocks(art, "model.layers.0.mlp.up_proj.weight", "q4_0")
    q = _grid_blocks(art, "model.layers.1.self_attn.q_proj.weight", "q5_1")
    art.quantized_blocks = {"model.layers.0.mlp.up_proj.weight": ("q4_0", up),
                            "model.layers.1.self_attn.q_proj.weight": ("q5_1", q)}
    path, result = export(art, tmp_path, type="f16")
    _, tensors = read(path)
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == "Q4_0"
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.ffn_up.weight"].data), up)
    order = np.arange(64).reshape(4, 2, 8).transpose(0, 2, 1).reshape(-1)  # whole rows move, bytes stay
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_q.weight"].data), q[order])
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "F16"
    assert result.passes[-1]["metrics"]["quantized_blocks_written"] == ["blk.0.ffn_up.weight", "blk.1.attn_q.weight"]


def test_quantized_blocks_that_no_longer_match_the_weights_are_refused(tiny_llama, tmp_path):
    art = tiny_llama.copy()
    blocks = _grid_blocks(art, "model.layers.0.mlp.up_proj.weight", "q8_0")
    art.quantized_blocks = {"model.layers.0.mlp.up_proj.weight": ("q8_0", blocks)}
    with torch.no_grad():
        art.model.model.layers[0].mlp.up_proj.weight.mul_(0.5)  # a later pass changed the weights
    with pytest.raises(UserError, match="quantize last"):
        export(art, tmp_path)
    art.quantized_blocks = {"model.layers.0.mlp.up_proj.weight": ("q8_0", blocks[:, :10])}
    with pytest.raises(UserError, match="does not fit"):
        export(art, tmp_path)
    art.quantized_blocks = {"model.layers.0.mlp.up_proj.weight": ("iq2_xs", blocks)}
    with pytest.raises(UserError, match="unknown GGUF type 'iq2_xs'"):
        export(art, tmp_path)


# ------------------------------------------------------------------------ pruned and distilled outputs


@pytest.fixture(scope="module")
def deep_llama_dir(tmp_path_factory, tiny_tokenizer):
    return save_tiny(tmp_path_factory.mktemp("deep"), tiny_llama_config(len(tiny_tokenizer), num_hidden_layers=4,
                                                                         num_attention_heads=6, num_key_value_heads=2),
                     tiny_tokenizer)


def test_per_layer_mlp_widths_become_llama_cpps_per_layer_form(deep_llama_dir, ctx, tmp_path):
    art = load(deep_llama_dir)
    pruned = build_pass("channel_prune", {"ratio": 0.5, "skip_first_last": True, "importance": "magnitude"})(art, ctx)
    path, result = export(pruned, tmp_path, type="f32")
    fields, tensors = read(path)
    assert fields["general.architecture"] == "deci"  # the Llama graph with per-layer widths
    assert list(fields["deci.feed_forward_length"]) == [128, 64, 64, 128]
    assert values(tensors["blk.1.ffn_up.weight"]).shape == (64, 64)
    assert values(tensors["blk.1.ffn_down.weight"]).shape == (64, 64)
    assert result.passes[-1]["metrics"]["arch"] == "deci"


def test_a_saved_zero_padded_checkpoint_exports_at_its_real_widths(deep_llama_dir, ctx, tmp_path):
    from compress.saving import save_artifact

    art = load(deep_llama_dir)
    pruned = build_pass("channel_prune", {"ratio": 0.5, "skip_first_last": True, "importance": "magnitude"})(art, ctx)
    saved = load(save_artifact(pruned, tmp_path / "padded"))
    assert saved.model.config.intermediate_size == 128  # padded back to one width on disk
    path, _ = export(saved, tmp_path, type="f32")
    fields, tensors = read(path)
    assert list(fields["deci.feed_forward_length"]) == [128, 64, 64, 128]
    np.testing.assert_array_equal(values(tensors["blk.2.ffn_gate.weight"]),
                                  pruned.model.model.layers[2].mlp.gate_proj.weight.detach().numpy())


def test_gpt2_per_layer_widths_are_refused_in_one_line(tiny_gpt2, ctx, tmp_path):
    pruned = build_pass("channel_prune", {"ratio": 0.5, "layer_ratios": {0: 0.25}, "importance": "magnitude"})(tiny_gpt2, ctx)
    with pytest.raises(UserError, match="GPT-2 loader reads one feed_forward_length"):
        export(pruned, tmp_path)


def test_head_pruned_layer_dropped_and_uniformly_pruned_models_export(deep_llama_dir, ctx, tmp_path):
    art = load(deep_llama_dir)
    heads = build_pass("head_prune", {"ratio": 0.5, "mode": "groups", "importance": "magnitude"})(art, ctx)
    dropped = build_pass("drop_layers", {"layers": 2})(art, ctx)  # a distillation student before training
    channels = build_pass("channel_prune", {"ratio": 0.25, "importance": "magnitude"})(art, ctx)
    fields, tensors = read(export(heads, tmp_path, "h.gguf", type="f32")[0])
    assert fields["llama.attention.head_count"] == 3 and fields["llama.attention.head_count_kv"] == 1
    assert fields["llama.attention.key_length"] == 16  # no longer hidden / heads: written explicitly
    assert values(tensors["blk.0.attn_q.weight"]).shape == (48, 64)
    fields, tensors = read(export(dropped, tmp_path, "d.gguf", type="f32")[0])
    assert fields["llama.block_count"] == 2 and "blk.2.attn_q.weight" not in tensors
    fields, _ = read(export(channels, tmp_path, "c.gguf", type="f32")[0])
    assert fields["general.architecture"] == "llama" and fields["llama.feed_forward_length"] == 96


# ------------------------------------------------------------------------ tokenizer


def test_a_hf_tokenizer_is_written_as_byte_level_bpe(tiny_llama, tiny_tokenizer, tmp_path):
    path, result = export(tiny_llama, tmp_path)
    fields, _ = read(path)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"] == tiny_tokenizer.convert_ids_to_tokens(list(range(len(tiny_tokenizer))))
    assert fields["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # the added special tokens are CONTROL
    assert set(fields["tokenizer.ggml.token_type"][3:]) == {1}
    assert fields["tokenizer.ggml.merges"][0].count(" ") == 1
    assert fields["tokenizer.ggml.bos_token_id"] == tiny_tokenizer.bos_token_id
    assert fields["tokenizer.ggml.eos_token_id"] == tiny_tokenizer.eos_token_id
    assert result.passes[-1]["metrics"]["tokenizer"] == "written from the Hugging Face tokenizer"


def test_the_tokenizer_of_an_origin_gguf_is_carried_over(tiny_llama, tmp_path):
    first, _ = export(tiny_llama, tmp_path, "first.gguf")
    origin_fields, _ = read(first)
    art = tiny_llama.copy()
    art.source = {"kind": "local", "ref": "x", "derived_from": {"kind": "gguf", "ref": str(first), "path": str(first)}}
    path, result = export(art, tmp_path, "second.gguf")
    fields, _ = read(path)
    assert {k: v for k, v in fields.items() if k.startswith("tokenizer.")} == \
        {k: v for k, v in origin_fields.items() if k.startswith("tokenizer.")}
    assert result.passes[-1]["metrics"]["tokenizer"] == "carried over from first.gguf"


def test_an_origin_gguf_with_another_vocabulary_is_not_carried(tiny_llama, tmp_path, tiny_tokenizer):
    import gguf

    other = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(other, "llama")
    w.add_token_list([f"t{i}" for i in range(len(tiny_tokenizer))])
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    art = tiny_llama.copy()
    art.source = {"kind": "gguf", "ref": str(other), "path": str(other)}
    path, result = export(art, tmp_path)
    assert result.passes[-1]["metrics"]["tokenizer"] == "written from the Hugging Face tokenizer"


def test_a_tokenizer_llama_cpp_would_split_differently_is_refused(tiny_llama, tmp_path):
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = tiny_llama.tokenizer.backend_tokenizer
    clone = type(backend).from_str(backend.to_str())
    clone.pre_tokenizer = pre_tokenizers.Whitespace()
    art = tiny_llama.copy()
    art.tokenizer = PreTrainedTokenizerFast(tokenizer_object=clone, bos_token="<|im_start|>", eos_token="<|endoftext|>")
    with pytest.raises(UserError, match=r"pre-tokenizer \(Whitespace\) has no llama.cpp equivalent"):
        export(art, tmp_path)


# ------------------------------------------------------------------------ outputs, provenance, refusals


def test_provenance_is_in_the_file_and_in_the_manifest_beside_it(tiny_llama, ctx, tmp_path):
    pruned = build_pass("magnitude_prune", {"sparsity": 0.5})(tiny_llama, ctx)
    path, _ = export(pruned, tmp_path, type="q8_0")
    fields, _ = read(path)
    inside = json.loads(fields["compress.manifest"])
    assert [p["name"] for p in inside["passes"]] == ["magnitude_prune", "gguf_export"]
    assert inside["versions"]["gguf"] and inside["source"]["kind"] == "local"
    assert fields["general.quantized_by"] == "compress" and "magnitude_prune -> gguf_export" in fields["general.description"]
    beside = json.loads((tmp_path / "out.gguf.compress.json").read_text())
    assert beside["file"] == "out.gguf" and beside["bytes"] == path.stat().st_size
    assert beside["passes"][-1]["metrics"]["type_counts"] == {"q8_0": 15}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf", "out.gguf.compress.json"]  # no partial files


def test_a_recipe_prunes_then_exports_one_gguf_file(tiny_llama_dir, tmp_path):
    from compress.recipe import Recipe, run_recipe

    recipe = Recipe.from_dict({"evaluation": None, "calibration": {"samples": 1, "seq_len": 32},
                               "passes": [{"channel_prune": {"ratio": 0.25}}, {"gguf_export": {"type": "q8_0", "check": False}}]})
    run_recipe(recipe, model=str(tiny_llama_dir), output=tmp_path / "pruned.gguf")
    fields, _ = read(tmp_path / "pruned.gguf")
    assert fields["llama.feed_forward_length"] == 96
    manifest = json.loads((tmp_path / "pruned.gguf.compress.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["channel_prune", "gguf_export"]
    with pytest.raises(UserError, match="ending in .gguf"):
        run_recipe(recipe, model=str(tiny_llama_dir), output=tmp_path / "dir-out")
    with pytest.raises(UserError, match="already exists"):
        run_recipe(recipe, model=str(tiny_llama_dir), output=tmp_path / "pruned.gguf")


def test_gguf_export_must_be_the_last_pass():
    from compress.recipe import Recipe

    with pytest.raises(UserError, match="must be the last pass"):
        Recipe.from_dict({"passes": [{"gguf_export": {}}, {"magnitude_prune": {}}]})


@pytest.mark.parametrize("args, message", [
    (["--type", "q3_k"], "unknown GGUF type 'q3_k'"),
    (["--override", "token_embd.weight"], "must be PATTERN=TYPE"),
    (["--override", "token_embd.weight=int3"], "unknown GGUF type 'int3'"),
])
def test_cli_refuses_bad_types_in_one_line(capsys, tiny_llama_dir, tmp_path, args, message):
    code = main(["-q", "export", "gguf", str(tiny_llama_dir), "-o", str(tmp_path / "x.gguf"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_an_architecture_it_cannot_export_is_refused_in_one_line(capsys, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from compress.artifact import Artifact

    cfg = GPTNeoXConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    model_dir = save_tiny(tmp_path / "neox", cfg, tiny_tokenizer)
    code = main(["-q", "export", "gguf", str(model_dir), "-o", str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and "gpt_neox" in err  # the command refuses it from the config, before loading weights
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.gguf").exists()
    # A model handed over in Python is refused by the export itself.
    art = Artifact(model=AutoModelForCausalLM.from_config(cfg), tokenizer=tiny_tokenizer)
    with pytest.raises(UserError, match="GGUF export supports Llama-family .* this one is gpt_neox"):
        export(art, tmp_path)


def test_cli_exports_and_reports_what_it_wrote(capsys, tiny_gpt2_dir, tmp_path):
    code = main(["-q", "export", "gguf", str(tiny_gpt2_dir), "--type", "q4_1", "--no-check",
                 "--override", "token_embd.weight=q8_0", "-o", str(tmp_path / "g.gguf")])
    out = capsys.readouterr().out
    assert code == 0 and "wrote gpt2 GGUF: 8 q4_1, 1 q8_0 matrices" in out and "saved to" in out
    _, tensors = read(tmp_path / "g.gguf")
    assert tensors["position_embd.weight"].tensor_type.name == "F32"  # llama.cpp keeps it float too
    code = main(["-q", "export", "gguf", str(tiny_gpt2_dir), "-o", str(tmp_path / "g.gguf"), "--no-check"])
    assert code == 2 and "--force" in capsys.readouterr().err


def test_without_llama_cpp_the_export_is_saved_unchecked_and_running_it_is_one_line(tiny_llama, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    path, result = export(tiny_llama, tmp_path, check=True)
    assert path.is_file()
    assert result.passes[-1]["metrics"]["check"] == {"checked": False, "reason": "llama-cpp-python is not installed"}
    with pytest.raises(UserError, match="llama.cpp is not installed") as exc:
        result.model(torch.tensor([[1, 2, 3]]))
    assert "\n" not in str(exc.value)


def test_force_replaces_only_a_gguf_file_compress_wrote(tiny_llama, tmp_path):
    from compress.saving import check_output_file

    theirs = tmp_path / "theirs.gguf"
    theirs.write_bytes(b"a GGUF the user made")
    with pytest.raises(UserError, match="--force will not replace .* not an output of compress"):
        check_output_file(theirs, force=True)
    assert theirs.read_bytes() == b"a GGUF the user made"
    path, _ = export(tiny_llama, tmp_path, "ours.gguf")
    before = path.stat().st_mtime_ns
    from compress.saving import save_artifact

    save_artifact(build_pass("gguf_export", {"type": "f16", "check": False})(tiny_llama), path, force=True)
    assert path.stat().st_mtime_ns != before and read(path)[1]["blk.0.attn_q.weight"].tensor_type.name == "F16"
    (tmp_path / "folder.gguf").mkdir()
    with pytest.raises(UserError, match="exists and is not a plain file"):
        check_output_file(tmp_path / "folder.gguf", force=True)


def test_leftovers_of_a_killed_export_are_removed_by_the_next_one(tiny_llama, tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as a killed export's would be
    leftover = tmp_path / f".out.gguf.partial-{dead.pid}"
    leftover.write_bytes(b"half a file")
    export(tiny_llama, tmp_path, "out.gguf")
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf", "out.gguf.compress.json"]
