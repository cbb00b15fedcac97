"""Unstructured pruning (magnitude, Wanda, SparseGPT; the last two one-shot and sequential): exact sparsity,
N:M groups, untouched sources, no leftover hooks, and block-by-block calibration on the pruned blocks' outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_weights, state_dict_copy

from compress.cli import main
from compress.errors import UserError
from compress.layers import output_head_names, weight_matrices
from compress.passes import MagnitudePrune, WandaPrune
from compress.passes.sparsegpt import SparseGPTPrune, sparsegpt_prune_matrix
from compress.passes.base import CalibrationData, PassContext, build_pass
from compress.passes.calibration import decoder_blocks, hooked, run_calibration
from compress.passes.sequential import prune_block_by_block

# Every unstructured pass, with both calibration modes of the activation-aware ones.
PASSES = [
    pytest.param(MagnitudePrune, {}, id="magnitude"),
    pytest.param(WandaPrune, {"sequential": False}, id="wanda-one-shot"),
    pytest.param(WandaPrune, {"sequential": True}, id="wanda-sequential"),
    pytest.param(SparseGPTPrune, {"sequential": False}, id="sparsegpt-one-shot"),
    pytest.param(SparseGPTPrune, {"sequential": True}, id="sparsegpt-sequential"),
]
CALIBRATED = PASSES[1:]

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")


@pytest.fixture
def ctx():
    # Small calibration so the suite stays fast; the built-in corpus's calibration half.
    return PassContext(CalibrationData(samples=2, seq_len=64))


def all_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("cls, config", PASSES)
def test_row_scope_zeroes_exactly_the_share_of_every_row(tiny_model_dir, ctx, cls, config):
    from compress.models import load_artifact

    result = cls(sparsity=0.5, scope="row", **config)(load_artifact(str(tiny_model_dir)), ctx)
    for t in weight_matrices(result.model):
        zeros_per_row = (t.weight == 0).sum(1)
        assert torch.all(zeros_per_row == round(0.5 * t.in_features)), t.name
    assert result.passes[-1]["metrics"]["sparsity_reached"] == pytest.approx(0.5)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_layer_and_global_scopes_reach_the_exact_sparsity(tiny_llama, ctx, scope):
    result = MagnitudePrune(sparsity=0.3, scope=scope)(tiny_llama, ctx)
    targets = list(weight_matrices(result.model))
    zeros = sum(int((t.weight == 0).sum()) for t in targets)
    total = sum(t.weight.numel() for t in targets)
    if scope == "global":
        assert zeros == round(0.3 * total)
    else:
        for t in targets:
            assert int((t.weight == 0).sum()) == round(0.3 * t.weight.numel()), t.name
    per_layer = result.passes[-1]["metrics"]["sparsity_per_layer"]
    assert set(per_layer) == {t.name for t in targets}


@pytest.mark.parametrize("cls, config", PASSES)
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_m_pattern_holds_in_every_group(tiny_model_dir, ctx, cls, config, pattern):
    from compress.models import load_artifact

    n, m = map(int, pattern.split(":"))
    result = cls(pattern=pattern, **config)(load_artifact(str(tiny_model_dir)), ctx)
    for t in weight_matrices(result.model):
        groups = (t.weight != 0).reshape(t.out_features, -1, m).sum(-1)
        assert torch.all(groups == n), f"{t.name}: a group of {m} keeps {groups.min()}..{groups.max()}"
    assert result.passes[-1]["metrics"]["sparsity_reached"] == pytest.approx(1 - n / m)


def test_embeddings_and_lm_head_are_untouched_by_default(tiny_gpt2, ctx):
    result = MagnitudePrune(sparsity=0.9)(tiny_gpt2, ctx)
    emb = result.model.get_input_embeddings().weight
    assert int((emb == 0).sum()) == 0
    assert not output_head_names(result.model) & set(result.passes[-1]["metrics"]["sparsity_per_layer"])


def test_include_selects_which_modules_are_pruned(tiny_llama, ctx):
    result = MagnitudePrune(sparsity=0.5, include=["*.mlp.*"])(tiny_llama, ctx)
    for t in weight_matrices(result.model):
        zeros = int((t.weight == 0).sum())
        assert (zeros > 0) == (".mlp." in t.name), t.name


@pytest.mark.parametrize("cls, config", PASSES)
def test_source_model_is_never_modified(tiny_model_dir, ctx, cls, config):
    from compress.models import load_artifact

    source = load_artifact(str(tiny_model_dir))
    before = state_dict_copy(source.model)
    cls(sparsity=0.5, **config)(source, ctx)
    assert_same_weights(before, state_dict_copy(source.model))
    assert all_hooks(source.model) == 0


def test_wanda_keeps_small_weights_that_carry_loud_activations(tiny_llama, ctx):
    # Make input channel 5 of layer 0's attention 100x louder and its weights 100x
    # smaller: the function is unchanged, so Wanda (|W|*||X||) must choose as before,
    # while magnitude now drops the whole channel.
    def q_mask(art, cls):
        return cls(sparsity=0.5)(art, ctx).model.model.layers[0].self_attn.q_proj.weight != 0

    before = q_mask(tiny_llama, WandaPrune)
    attn, norm = tiny_llama.model.model.layers[0].self_attn, tiny_llama.model.model.layers[0].input_layernorm
    with torch.no_grad():
        norm.weight[5] *= 100
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[:, 5] /= 100
    assert not q_mask(tiny_llama, MagnitudePrune)[:, 5].any()
    after = q_mask(tiny_llama, WandaPrune)
    assert after[:, 5].float().mean() > 0.3
    assert (after == before).float().mean() > 0.99


@pytest.mark.parametrize("cls, config", CALIBRATED)
def test_calibration_hooks_are_removed_afterwards(tiny_model_dir, ctx, cls, config):
    from compress.models import load_artifact

    art = load_artifact(str(tiny_model_dir))
    result = cls(sparsity=0.5, **config)(art, ctx)
    assert all_hooks(result.model) == 0


@pytest.mark.parametrize("sequential", [True, False])
def test_calibration_hooks_are_removed_when_calibration_fails(tiny_llama, ctx, monkeypatch, sequential):
    model = tiny_llama.model
    # Hooks are registered on the model that is pruned, so break the copy the pass works on.
    original = type(model).forward

    def failing(self, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(type(model), "forward", failing)
    art = tiny_llama.copy()
    with pytest.raises(RuntimeError, match="boom"):
        WandaPrune(sparsity=0.5, sequential=sequential)(art, ctx, inplace=True)
    monkeypatch.setattr(type(model), "forward", original)
    assert all_hooks(art.model) == 0


@pytest.mark.parametrize("cls", [WandaPrune, SparseGPTPrune])
def test_sequential_hooks_are_removed_when_a_block_fails_midway(tiny_llama, ctx, monkeypatch, cls):
    # Block 0's inputs are captured (the capture stops before any MLP runs), then running
    # block 0 for its statistics fails inside the MLP while the statistics hooks are registered.
    art = tiny_llama.copy()
    mlp = type(art.model.model.layers[0].mlp)

    def failing(self, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(mlp, "forward", failing)
    with pytest.raises(RuntimeError, match="boom"):
        cls(sparsity=0.5, sequential=True)(art, ctx, inplace=True)
    assert all_hooks(art.model) == 0


def test_pattern_that_does_not_divide_the_width_is_refused_before_calibration(tiny_llama):
    class NoCalibration(PassContext):
        def calibration_windows(self, tokenizer):
            raise AssertionError("calibration started before the pattern was checked")

    with pytest.raises(UserError, match="divisible by 5"):
        WandaPrune(pattern="2:5")(tiny_llama, NoCalibration())


def test_bad_configs_are_refused_with_a_clear_message():
    with pytest.raises(UserError, match="pattern"):
        build_pass("wanda_prune", {"pattern": "4:2"})
    with pytest.raises(UserError, match="sparsity"):
        build_pass("magnitude_prune", {"sparsity": 1.5})


def test_cli_prune_wanda_saves_a_checkpoint_with_the_reported_sparsity(tiny_llama_dir, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    code = main(["-q", "prune", str(tiny_llama_dir), "--method", "wanda", "--sparsity", "0.5",
                 "--calib-text", str(text_file), "--calib-samples", "2", "--calib-seq-len", "64",
                 "--eval-text", str(text_file), "--eval-windows", "1", "--eval-seq-len", "64", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sparsity reached 50.00%" in printed and "perplexity" in printed
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[0].mlp.down_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)


def test_cli_refuses_a_pattern_with_structure_in_one_line(tiny_llama_dir, tmp_path, capsys):
    code = main(["prune", str(tiny_llama_dir), "--structure", "channels", "--pattern", "2:4", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_calibration_runs_once_per_model_and_again_when_its_weights_change(tiny_llama, ctx, monkeypatch):
    from compress.passes import calibration

    runs = []
    original = calibration.run_calibration
    monkeypatch.setattr(calibration, "run_calibration", lambda *a, **k: (runs.append(1), original(*a, **k)))
    WandaPrune(sparsity=0.5, sequential=False)(tiny_llama, ctx)
    WandaPrune(pattern="2:4", sequential=False)(tiny_llama, ctx)  # same weights, same windows: cached
    assert len(runs) == 1
    pruned = MagnitudePrune(sparsity=0.5)(tiny_llama, ctx)
    WandaPrune(sparsity=0.5, sequential=False)(pruned, ctx)  # different weights: calibrated again
    assert len(runs) == 2


def test_sparsegpt_update_reduces_the_layer_error_on_calibration_inputs():
    torch.manual_seed(0)
    x = torch.randn(1000, 32) @ torch.randn(32, 32)
    w = torch.randn(16, 32)
    hessian = x.t() @ x / len(x)
    pruned = sparsegpt_prune_matrix(w, hessian, 0.5, "row", None)

    def error(a):
        return float(((x @ (a - w).t()) ** 2).mean())

    assert torch.all((pruned == 0).sum(1) == 16)
    assert error(pruned) < 0.9 * error(w * (pruned != 0))  # same zeros, without the update: worse


def test_sparsegpt_refuses_global_scope():
    with pytest.raises(UserError, match="scope"):
        build_pass("sparsegpt_prune", {"scope": "global"})


# Sequential (block-by-block) calibration.


@pytest.mark.parametrize("sequential", [True, False])
def test_sequential_wanda_layer_scope_reaches_the_exact_sparsity(tiny_model_dir, ctx, sequential):
    from compress.models import load_artifact

    result = WandaPrune(sparsity=0.3, scope="layer", sequential=sequential)(load_artifact(str(tiny_model_dir)), ctx)
    for t in weight_matrices(result.model):
        assert int((t.weight == 0).sum()) == round(0.3 * t.weight.numel()), t.name


def test_each_block_is_calibrated_on_the_outputs_of_the_blocks_already_pruned(tiny_model_dir, ctx):
    from compress.models import load_artifact

    art = load_artifact(str(tiny_model_dir))
    model, windows = art.model, ctx.calibration_windows(art.tokenizer)
    blocks = decoder_blocks(model)

    def block_inputs(run) -> list[torch.Tensor]:
        """What each block receives as hidden states while run() runs."""
        fed = [[] for _ in blocks]

        def recorder(i):
            return lambda module, args, kwargs: fed[i].append((args[0] if args else kwargs["hidden_states"]).clone())

        with hooked(*(lambda i=i, b=b: b.register_forward_pre_hook(recorder(i), with_kwargs=True)
                      for i, b in enumerate(blocks))):
            run()
        return [torch.cat(f) if f else None for f in fed]

    unpruned = block_inputs(lambda: run_calibration(model, windows))
    seen = []

    def prune(group, run):  # record what this block is fed, then zero half of its weights by magnitude
        seen.append(block_inputs(run)[len(seen)])
        with torch.no_grad():
            for t in group:
                t.weight.mul_((t.weight.abs() > t.weight.abs().median()).to(t.weight.dtype))

    prune_block_by_block(model, list(weight_matrices(model)), windows, prune)
    assert len(seen) == len(blocks)
    # The finished model feeds every block exactly what that block was calibrated on...
    for i, x in enumerate(block_inputs(lambda: run_calibration(model, windows))):
        torch.testing.assert_close(seen[i], x, rtol=1e-5, atol=1e-5)
    # ...which, past block 0, is not what the unpruned model fed it.
    torch.testing.assert_close(seen[0], unpruned[0])
    assert not torch.allclose(seen[-1], unpruned[-1], atol=1e-3)
    assert all_hooks(model) == 0


@pytest.mark.parametrize("cls", [WandaPrune, SparseGPTPrune])
def test_sequential_matches_one_shot_on_block_0_and_differs_after_it(tiny_llama, ctx, cls):
    def pruned(sequential):
        return [[t.weight.clone() for t in weight_matrices(b)]
                for b in decoder_blocks(cls(sparsity=0.5, sequential=sequential)(tiny_llama, ctx).model)]

    one_shot, sequential = pruned(False), pruned(True)
    for a, b in zip(one_shot[0], sequential[0]):  # block 0 sees the same inputs in both modes
        torch.testing.assert_close(a, b)
    last = [torch.equal(a != 0, b != 0) for a, b in zip(one_shot[-1], sequential[-1])]
    assert not all(last), "the last block was pruned the same way from unpruned and pruned inputs"


def test_sequential_prunes_the_output_head_last(tiny_gpt2, ctx):
    result = WandaPrune(sparsity=0.5, include_lm_head=True, sequential=True)(tiny_gpt2, ctx)
    head = result.model.get_output_embeddings().weight
    assert torch.all((head == 0).sum(1) == round(0.5 * head.shape[1]))
    assert all_hooks(result.model) == 0


def test_sequential_refuses_models_that_mix_layer_types(tiny_llama, ctx):
    tiny_llama.model.config.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(UserError, match="layer types"):
        WandaPrune(sparsity=0.5, sequential=True)(tiny_llama, ctx)
    WandaPrune(sparsity=0.5, sequential=False)(tiny_llama, ctx)  # one-shot still works


def test_global_scope_is_one_shot_and_refuses_sequential():
    assert WandaPrune(scope="global").sequential is False
    assert WandaPrune().sequential is True
    with pytest.raises(UserError, match="global"):
        build_pass("wanda_prune", {"scope": "global", "sequential": True})


def test_cli_sequential_and_one_shot_flags(tiny_llama_dir, tmp_path, capsys):
    from compress.commands.prune import build_prune_pass

    common = dict(sparsity=0.5, pattern=None, scope="row", structure=None, head_mode="groups", skip_first_last=False,
                  bias_compensation=False, include=(), exclude=(), include_lm_head=False)
    assert build_prune_pass(method="sparsegpt", sequential=False, **common).sequential is False
    assert build_prune_pass(method="wanda", sequential=None, **common).sequential is True
    for refused in (["--method", "magnitude", "--one-shot"], ["--structure", "channels", "--sequential"]):
        code = main(["prune", str(tiny_llama_dir), *refused, "-o", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, refused
