"""Structured pruning: smaller tensors, a consistent config, and a stock reload that runs."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_weights, save_tiny, state_dict_copy, tiny_gpt2_config, tiny_llama_config

from compress.cli import main
from compress.errors import UserError
from compress.passes.base import CalibrationData, PassContext, build_pass
from compress.passes.structured import ChannelPrune, HeadPrune, LayerDrop, model_layout, valid_head_ratios
from compress.saving import save_artifact


pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")


@pytest.fixture
def ctx():
    return PassContext(CalibrationData(samples=1, seq_len=32))


@pytest.fixture(scope="module")
def deep_dirs(tmp_path_factory, tiny_tokenizer):
    """Four-layer tiny Llama (6 query heads in 2 groups) and GPT-2: room for first/last and layer dropping."""
    base = tmp_path_factory.mktemp("deep")
    n = len(tiny_tokenizer)
    return {
        "llama": save_tiny(base / "llama", tiny_llama_config(n, num_hidden_layers=4, num_attention_heads=6,
                                                             num_key_value_heads=2), tiny_tokenizer),
        "gpt2": save_tiny(base / "gpt2", tiny_gpt2_config(n, n_layer=4), tiny_tokenizer),
    }


def load(path):
    from compress.models import load_artifact

    return load_artifact(str(path))


def reload_and_check(result, tmp_path):
    """Save, reload with stock transformers, compare logits with the in-memory model, generate."""
    from transformers import AutoModelForCausalLM

    out = save_artifact(result, tmp_path / "out")
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    with torch.inference_mode():
        assert torch.allclose(stock(ids).logits, result.model(ids).logits, atol=1e-5)
        cached = stock.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                pad_token_id=0)
        uncached = stock.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                  pad_token_id=0, use_cache=False)
    assert cached.shape == (1, 14)
    assert torch.equal(cached, uncached)  # the KV cache is indexed right
    return stock


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch,importance", [("llama", "activation"), ("gpt2", "magnitude")])
def test_channel_prune_shrinks_the_mlp_and_reloads_with_stock_transformers(deep_dirs, ctx, tmp_path, arch, importance):
    art = load(deep_dirs[arch])
    result = ChannelPrune(ratio=0.25, importance=importance)(art, ctx)
    stock = reload_and_check(result, tmp_path)
    width = stock.config.intermediate_size if arch == "llama" else stock.config.n_inner
    assert width == 96 if arch == "llama" else width == 192
    assert n_params(stock) < n_params(art.model)
    assert result.passes[-1]["metrics"]["uniform"] is True


@pytest.mark.parametrize("mode,ratio,heads,kv,importance", [
    ("groups", 0.5, 3, 1, "activation"), ("query", 1 / 3, 4, 2, "magnitude"), ("query", 2 / 3, 2, 2, "activation")])
def test_head_prune_keeps_the_grouped_query_layout_and_reloads(deep_dirs, ctx, tmp_path, mode, ratio, heads, kv,
                                                             importance):
    art = load(deep_dirs["llama"])
    result = HeadPrune(ratio=ratio, mode=mode, importance=importance)(art, ctx)
    stock = reload_and_check(result, tmp_path)
    assert (stock.config.num_attention_heads, stock.config.num_key_value_heads) == (heads, kv)
    assert stock.config.head_dim == 16
    attn = stock.model.layers[0].self_attn
    assert attn.q_proj.out_features == heads * 16 and attn.k_proj.out_features == kv * 16


def test_head_prune_removes_the_heads_that_matter_least(deep_dirs, ctx):
    art = load(deep_dirs["llama"])
    with torch.no_grad():  # query head 4 (group 1) writes nothing: it must be the one removed from its group
        art.model.model.layers[0].self_attn.o_proj.weight[:, 4 * 16 : 5 * 16] = 0
    result = HeadPrune(ratio=1 / 3, mode="query")(art, ctx)
    assert 4 in result.passes[-1]["metrics"]["removed_query_heads_per_layer"][0]


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_invalid_head_ratio_is_refused_naming_the_valid_ones(deep_dirs, ratio):
    art = load(deep_dirs["llama"])  # 6 query heads in 2 groups: groups -> 0.5, query -> 1/3, 2/3

    class NoCalibration(PassContext):
        def calibration_windows(self, tokenizer):
            raise AssertionError("work started before the ratio was checked")

    mode = "query" if ratio == 0.5 else "groups"
    with pytest.raises(UserError) as err:
        HeadPrune(ratio=ratio, mode=mode)(art, NoCalibration())
    message = str(err.value)
    assert "valid ratios are" in message
    assert ("0.333, 0.667" in message) and ("0.5" in message)
    assert valid_head_ratios(6, 2) == {"groups": [0.5], "query": [0.3333, 0.6667]}


@pytest.mark.parametrize("mode,ratio", [("groups", 0.5), ("query", 1 / 3)])
def test_the_head_refit_brings_the_pruned_model_closer_to_the_base_and_reloads(deep_dirs, ctx, tmp_path, mode, ratio):
    from compress.evaluate import compare

    art = load(deep_dirs["llama"])
    windows = ctx.calibration_windows(art.tokenizer)
    plain = HeadPrune(ratio=ratio, mode=mode, refit=False)(art, ctx)
    refit = HeadPrune(ratio=ratio, mode=mode)(art, ctx)  # refit is the default
    record = refit.passes[-1]["metrics"]["refit"]
    assert record["attention_output_error_refit"] < record["attention_output_error_removed"]
    assert "refit" not in plain.passes[-1]["metrics"]
    assert (plain.passes[-1]["metrics"]["removed_query_heads_per_layer"]
            == refit.passes[-1]["metrics"]["removed_query_heads_per_layer"])
    assert compare(art.model, refit.model, windows)["kl_mean"] < compare(art.model, plain.model, windows)["kl_mean"]
    for a_plain, a_refit in zip(plain.model.model.layers, refit.model.model.layers):
        assert torch.equal(a_plain.self_attn.q_proj.weight, a_refit.self_attn.q_proj.weight)  # only o_proj changes
        assert not torch.equal(a_plain.self_attn.o_proj.weight, a_refit.self_attn.o_proj.weight)
    reload_and_check(refit, tmp_path)


def test_head_prune_is_refused_on_gpt2(tiny_gpt2, ctx):
    with pytest.raises(UserError, match="GPT-2"):
        HeadPrune(ratio=0.5)(tiny_gpt2, ctx)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_layer_drop_removes_blocks_and_reloads_with_a_working_kv_cache(deep_dirs, ctx, tmp_path, arch):
    art = load(deep_dirs[arch])
    result = LayerDrop(count=2)(art, ctx)
    stock = reload_and_check(result, tmp_path)
    assert stock.config.num_hidden_layers == 2
    metrics = result.passes[-1]["metrics"]
    assert metrics["layers_after"] == 2 and len(metrics["dropped_layers"]) == 2


def test_layer_drop_removes_the_block_that_changes_its_input_least(deep_dirs, ctx):
    art = load(deep_dirs["llama"])
    block = art.model.model.layers[2]
    with torch.no_grad():  # block 2 becomes the identity: its output equals its input
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    result = LayerDrop(count=1)(art, ctx)
    assert result.passes[-1]["metrics"]["dropped_layers"] == [2]


def test_layer_drop_can_leave_the_first_and_last_blocks_alone(deep_dirs, ctx):
    art = load(deep_dirs["llama"])
    with torch.no_grad():  # make the last block the least important one
        art.model.model.layers[3].self_attn.o_proj.weight.zero_()
        art.model.model.layers[3].mlp.down_proj.weight.zero_()
    result = LayerDrop(count=1, skip_first_last=True)(art, ctx)
    assert result.passes[-1]["metrics"]["dropped_layers"][0] in (1, 2)
    with pytest.raises(UserError, match="choose between 1 and 2"):
        LayerDrop(count=3, skip_first_last=True)(art, ctx)


def test_activation_importance_drops_a_silent_channel_that_magnitude_keeps(deep_dirs, ctx):
    art = load(deep_dirs["llama"])
    mlp = art.model.model.layers[1].mlp
    with torch.no_grad():  # channel 7 never fires (up row is zero) but has large outgoing weights
        mlp.up_proj.weight[7] = 0
        mlp.down_proj.weight[:, 7] *= 20
    marker = mlp.down_proj.weight[:, 7].clone()

    def keeps_channel_7(importance):
        down = ChannelPrune(ratio=0.5, importance=importance, refit=False)(art, ctx).model.model.layers[1].mlp.down_proj.weight
        return any(torch.equal(down[:, j], marker) for j in range(down.shape[1]))

    assert keeps_channel_7("magnitude")
    assert not keeps_channel_7("activation")


@pytest.mark.parametrize("arch,compensate", [("llama", True), ("gpt2", False)])
def test_non_uniform_channels_are_saved_zero_padded_and_reload_to_the_same_outputs(deep_dirs, ctx, tmp_path, arch,
                                                                                   compensate):
    art = load(deep_dirs[arch])
    result = ChannelPrune(ratio=0.5, skip_first_last=True, importance="magnitude", bias_compensation=compensate)(art, ctx)
    metrics = result.passes[-1]["metrics"]
    assert metrics["uniform"] is False and metrics["mlp_width_after"][1] < metrics["mlp_width_after"][0]
    stock = reload_and_check(result, tmp_path)
    extra = n_params(stock) - n_params(art.model)  # padded back: same size (plus the MLP biases if compensated)
    assert extra == (4 * (128 + 128 + 64) if compensate else 0)


def test_per_layer_ratios_are_applied_per_layer(deep_dirs, ctx):
    result = ChannelPrune(ratio=0.25, layer_ratios={0: 0.5, 3: 0.0}, importance="magnitude")(load(deep_dirs["llama"]), ctx)
    assert result.passes[-1]["metrics"]["mlp_width_after"] == [64, 96, 96, 128]
    with pytest.raises(UserError, match="layers 0..3"):
        ChannelPrune(layer_ratios={7: 0.5}, importance="magnitude")(load(deep_dirs["llama"]), ctx)


@pytest.mark.parametrize("p", [ChannelPrune(ratio=0.25), HeadPrune(ratio=0.5), LayerDrop(count=1)], ids=lambda p: p.name)
def test_source_model_and_config_are_never_modified(deep_dirs, ctx, p):
    art = load(deep_dirs["llama"])
    weights, config = state_dict_copy(art.model), art.model.config.to_dict()
    p(art, ctx)
    assert_same_weights(weights, state_dict_copy(art.model))
    assert art.model.config.to_dict() == config


@pytest.mark.parametrize("p", [ChannelPrune(ratio=0.25), HeadPrune(ratio=0.5), LayerDrop(count=1)], ids=lambda p: p.name)
def test_calibration_hooks_are_removed_afterwards(deep_dirs, ctx, p):
    result = p(load(deep_dirs["llama"]), ctx)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in result.model.modules()) == 0


def test_passes_build_from_recipe_entries():
    assert isinstance(build_pass("channel_prune", {"ratio": 0.25, "importance": "magnitude"}), ChannelPrune)
    assert build_pass("layer_drop", {"count": 2}).needs_calibration
    assert build_pass("channel_prune", {"importance": "magnitude"}).needs_calibration  # the refit reads calibration text
    assert not build_pass("channel_prune", {"importance": "magnitude", "refit": False}).needs_calibration
    with pytest.raises(UserError, match="mode"):
        build_pass("head_prune", {"ratio": 0.5, "mode": "sideways"})


def test_cli_prunes_layers_and_refuses_a_bad_head_ratio(deep_dirs, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    data = ["--calib-text", str(text_file), "--calib-samples", "2", "--calib-seq-len", "64", "--eval-text", "none"]
    out = tmp_path / "depth"
    assert main(["-q", "prune", str(deep_dirs["llama"]), "--structure", "layers", "--sparsity", "0.25", *data,
                 "-o", str(out)]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3
    capsys.readouterr()
    code = main(["prune", str(deep_dirs["llama"]), "--structure", "heads", "--sparsity", "0.25", *data,
                 "-o", str(tmp_path / "heads")])
    err = capsys.readouterr().err
    assert code == 2 and "valid ratios are 0.5" in err
    assert err.startswith("error: ") and err.count("\n") == 1  # refused before the model was even loaded
    assert not (tmp_path / "heads").exists()


@pytest.mark.integration
def test_real_model_head_ratio_is_refused_before_loading_and_mlp_pruning_reloads(tmp_path, capsys):
    """SmolLM2-135M: 9 query heads in 3 groups; 25% of MLP channels removed by magnitude reloads and generates."""
    from transformers import AutoModelForCausalLM

    from compress.models import load_artifact

    code = main(["prune", "smollm2-135m-instruct", "--structure", "heads", "--sparsity", "0.25", "-o", str(tmp_path / "h")])
    err = capsys.readouterr().err
    assert code == 2 and "valid ratios are 0.333, 0.667" in err
    result = ChannelPrune(ratio=0.25, importance="magnitude")(load_artifact("smollm2-135m-instruct"))
    out = save_artifact(result, tmp_path / "mlp")
    stock = AutoModelForCausalLM.from_pretrained(out)
    assert stock.config.intermediate_size == 1152
    ids = torch.tensor([[1, 504, 3458, 314]])
    assert stock.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False).shape == (1, 8)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bias_compensation_brings_the_output_closer_to_the_base_and_reloads(deep_dirs, ctx, tmp_path, arch):
    from compress.evaluate import compare

    art = load(deep_dirs[arch])
    windows = ctx.calibration_windows(art.tokenizer)
    plain = ChannelPrune(ratio=0.5, importance="magnitude", refit=False)(art, ctx)
    compensated = ChannelPrune(ratio=0.5, importance="magnitude", bias_compensation=True, refit=False)(art, ctx)
    kl_plain = compare(art.model, plain.model, windows)["kl_mean"]
    kl_comp = compare(art.model, compensated.model, windows)["kl_mean"]
    assert kl_comp < kl_plain
    stock = reload_and_check(compensated, tmp_path)
    if arch == "llama":
        assert stock.config.mlp_bias is True


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_refit_brings_the_pruned_model_closer_to_the_base_and_reloads(deep_dirs, ctx, tmp_path, arch):
    from compress.evaluate import compare

    art = load(deep_dirs[arch])
    windows = ctx.calibration_windows(art.tokenizer)
    plain = ChannelPrune(ratio=0.5, refit=False)(art, ctx)
    refit = ChannelPrune(ratio=0.5)(art, ctx)  # refit is the default
    record = refit.passes[-1]["metrics"]["refit"]
    assert record["mlp_output_error_refit"] < record["mlp_output_error_removed"]
    assert "refit" not in plain.passes[-1]["metrics"]
    assert compare(art.model, refit.model, windows)["kl_mean"] < compare(art.model, plain.model, windows)["kl_mean"]
    for b_plain, b_refit in zip(model_layout(plain.model).blocks, model_layout(refit.model).blocks):
        assert b_plain.mlp_out.weight.shape == b_refit.mlp_out.weight.shape  # same channels removed
        assert torch.equal(b_plain.mlp_in[0].weight, b_refit.mlp_in[0].weight)  # only the down projection changes
    stock = reload_and_check(refit, tmp_path)
    if arch == "llama":
        assert not getattr(stock.config, "mlp_bias", False)  # a Llama MLP without biases stays without


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_reconstruction_selection_leaves_less_output_error_than_scores(deep_dirs, ctx, tmp_path, arch):
    art = load(deep_dirs[arch])
    scored = ChannelPrune(ratio=0.5)(art, ctx).passes[-1]["metrics"]["refit"]
    chosen = ChannelPrune(ratio=0.5, selection="reconstruction")(art, ctx)
    assert chosen.passes[-1]["metrics"]["refit"]["mlp_output_error_refit"] <= scored["mlp_output_error_refit"]
    reload_and_check(chosen, tmp_path)


def test_reconstruction_selection_without_the_refit_is_refused_in_one_line(deep_dirs, ctx):
    with pytest.raises(UserError, match="needs refit: true") as err:
        ChannelPrune(ratio=0.5, selection="reconstruction", refit=False)(load(deep_dirs["llama"]), ctx)
    assert "\n" not in str(err.value)


def test_the_command_line_turns_the_refit_off_for_channels_and_heads_and_refuses_it_elsewhere():
    from compress.commands.prune import build_prune_pass

    common = dict(method="activation", sparsity=0.25, pattern=None, scope="row", head_mode="groups",
                  skip_first_last=False, bias_compensation=False, include=(), exclude=(), include_lm_head=False)
    for structure in ("channels", "heads"):
        assert build_prune_pass(structure=structure, **common).refit is True
        assert build_prune_pass(structure=structure, refit=False, **common).refit is False
    for structure in ("layers", None):
        with pytest.raises(UserError, match="--refit / --no-refit apply to --structure channels"):
            build_prune_pass(structure=structure, refit=False, **{**common, "sparsity": 0.5})
