"""Sparsity-preserving recovery: a pruned student keeps exactly its zeros (unstructured and N:M) through
distillation, whatever the optimizer does, across a resume, and the manifest counts them."""

from __future__ import annotations

import json

import pytest
import torch

from compress.cli import main
from compress.data import TextSpec
from compress.distill import TrainConfig, Trainer, checkpoints, training_windows
from compress.distill.sparsity import SparsityMasks, nm_pattern
from compress.errors import UserError
from compress.layers import weight_matrices
from compress.models import load_artifact
from compress.passes import MagnitudePrune
from compress.passes.base import CalibrationData, PassContext
from conftest import run_killed_in_step, save_tiny, tiny_llama_config

SEQ = 32


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    # A wide initialisation makes the teacher's distributions peaked, so the student has something to learn.
    return save_tiny(tmp_path_factory.mktemp("teacher"),
                     tiny_llama_config(len(tiny_tokenizer), initializer_range=0.2), tiny_tokenizer)


@pytest.fixture(scope="module")
def windows(tiny_tokenizer):
    return training_windows(tiny_tokenizer, TextSpec(split="calibration"), SEQ, 16)


def pruned(teacher_dir, **prune):
    """The teacher pruned by magnitude (50 % per row, or an N:M pattern): the student to recover."""
    return MagnitudePrune(**prune)(load_artifact(str(teacher_dir)), PassContext(CalibrationData(samples=2, seq_len=SEQ)))


def zero_positions(model) -> dict[str, torch.Tensor]:
    return {t.name: (t.weight == 0).clone() for t in weight_matrices(model)}


def trainer(student, teacher_dir, windows, ckpt=None, **overrides):
    # A high learning rate and weight decay: the settings most likely to revive a zero.
    values = dict(steps=6, batch_size=4, seq_len=SEQ, lr=1e-2, warmup_steps=0, weight_decay=0.1)
    values.update(overrides)
    return Trainer(student.model, load_artifact(str(teacher_dir)).model, windows, TrainConfig(**values),
                   checkpoint_dir=ckpt)


def test_a_half_pruned_student_keeps_exactly_its_zeros(teacher_dir, windows):
    student = pruned(teacher_dir, sparsity=0.5)
    before = zero_positions(student.model)
    weights_before = {t.name: t.weight.clone() for t in weight_matrices(student.model)}
    result = trainer(student, teacher_dir, windows).run(final_eval=False)
    after = zero_positions(student.model)
    for name in before:
        assert torch.equal(before[name], after[name]), f"{name}: zeros moved"
    # ... and the weights that were not pruned did train.
    assert any(not torch.equal(t.weight, weights_before[t.name]) for t in weight_matrices(student.model))
    sparsity = result["sparsity"]
    assert sparsity["keep_sparsity"] == "auto" and sparsity["masked_matrices"] == len(before)
    assert sparsity["zeros_before"] == sparsity["zeros_after"] == sum(int(z.sum()) for z in before.values())
    assert sparsity["sparsity_after"] == pytest.approx(0.5) and sparsity["pruned_weights_revived"] == 0
    assert all(v["before"] == v["after"] == 0.5 for v in sparsity["per_matrix"].values())
    assert "pattern" not in sparsity  # unstructured: no N:M claim


def test_without_the_masks_training_revives_pruned_weights(teacher_dir, windows):
    """What keep_sparsity prevents: the same run with it off loses the zeros."""
    student = pruned(teacher_dir, sparsity=0.5)
    result = trainer(student, teacher_dir, windows, keep_sparsity=False).run(final_eval=False)
    sparsity = result["sparsity"]
    assert sparsity["masked_matrices"] == 0 and sparsity["pruned_weights_revived"] > 0
    assert sparsity["sparsity_after"] < 0.1


def test_a_2_4_student_keeps_the_pattern_in_every_group(teacher_dir, windows):
    student = pruned(teacher_dir, pattern="2:4")
    result = trainer(student, teacher_dir, windows).run(final_eval=False)
    for t in weight_matrices(student.model):
        groups = (t.weight != 0).reshape(t.out_features, -1, 4).sum(-1)
        assert int(groups.max()) <= 2, t.name
    pattern = result["sparsity"]["pattern"]
    assert pattern["n_m"] == "2:4" and pattern["groups_breaking_it_after"] == 0
    assert pattern["groups"] == sum(t.weight.numel() // 4 for t in weight_matrices(student.model))


def test_resuming_from_a_checkpoint_keeps_the_masks(teacher_dir, windows, tmp_path, monkeypatch):
    full_student = pruned(teacher_dir, pattern="2:4")
    full = trainer(full_student, teacher_dir, windows, steps=4).run(final_eval=False)

    student = pruned(teacher_dir, pattern="2:4")
    before = zero_positions(student.model)
    run_killed_in_step(monkeypatch, trainer(student, teacher_dir, windows, tmp_path, steps=4, checkpoint_every=2), 4)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000002"]
    state = torch.load(tmp_path / "step-000002" / "training_state.pt", weights_only=False)
    assert set(state["sparsity_masks"]) == {f"{name}.weight" for name in before}

    fresh = pruned(teacher_dir, pattern="2:4")
    resumed = trainer(fresh, teacher_dir, windows, tmp_path, steps=4, checkpoint_every=2).run(resume=True,
                                                                                                final_eval=False)
    assert resumed["resumed_from_step"] == 2
    for name, zeros in zero_positions(fresh.model).items():
        assert torch.equal(zeros, before[name]), name
    assert resumed["sparsity"]["pattern"]["groups_breaking_it_after"] == 0
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-6)


def test_a_resumed_run_enforces_the_masks_of_its_checkpoint(teacher_dir, windows, tmp_path):
    """The masks come from the checkpoint, not from the zeros of the student given at resume."""
    student = pruned(teacher_dir, sparsity=0.5)
    masks = {n: k.clone() for n, k in SparsityMasks.of(student.model, "auto").keep.items()}
    trainer(student, teacher_dir, windows, tmp_path, steps=2, checkpoint_every=2).run(final_eval=False)
    other = pruned(teacher_dir, sparsity=0.6)  # other zeros, same pruned matrices
    resumed = trainer(other, teacher_dir, windows, tmp_path, steps=2, checkpoint_every=2)
    assert any(not torch.equal(resumed.sparsity.keep[n], k) for n, k in masks.items())
    assert resumed.resume()
    for name, keep in masks.items():
        assert torch.equal(resumed.sparsity.keep[name], keep), name


def test_auto_leaves_a_dense_student_alone_and_on_refuses_it(teacher_dir, windows):
    dense = load_artifact(str(teacher_dir))
    assert trainer(dense, teacher_dir, windows, steps=1).run(final_eval=False)["sparsity"] is None
    with pytest.raises(UserError, match="no projection of the student"):
        trainer(load_artifact(str(teacher_dir)), teacher_dir, windows, keep_sparsity=True)


def test_n_m_patterns_are_recognised_and_unstructured_zeros_are_not():
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    two_four = w * (torch.rand(8, 8, 4).argsort(-1) < 2).reshape(8, 32)
    assert nm_pattern([two_four]) == (2, 4)
    unstructured = w * (torch.rand(8, 32) < 0.5)
    assert nm_pattern([unstructured]) is None
    assert nm_pattern([w]) is None


@pytest.mark.filterwarnings("ignore:QUALITY WARNING")
def test_cli_recovers_a_pruned_student_and_records_its_sparsity(teacher_dir, tmp_path, capsys):
    from compress.saving import save_artifact

    student_dir = save_artifact(pruned(teacher_dir, pattern="2:4"), tmp_path / "pruned")
    out = tmp_path / "recovered"
    code = main(["-q", "distill", "--teacher", str(teacher_dir), "--student", str(student_dir), "-o", str(out),
                 "--steps", "2", "--batch-size", "2", "--seq-len", str(SEQ), "--calib-samples", "8",
                 "--eval-windows", "1", "--eval-seq-len", "64"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "2:4 holds in every group" in captured.out
    manifest = json.loads((out / "compress.json").read_text())
    sparsity = manifest["passes"][-1]["metrics"]["sparsity"]
    assert sparsity["zeros_before"] == sparsity["zeros_after"] and sparsity["pattern"]["n_m"] == "2:4"
    reloaded = load_artifact(str(out))
    assert all(int((t.weight != 0).reshape(t.out_features, -1, 4).sum(-1).max()) <= 2
               for t in weight_matrices(reloaded.model))


@pytest.mark.filterwarnings("ignore:QUALITY WARNING")
def test_prune_recover_quantize_is_one_recipe_that_keeps_the_2_4_pattern(teacher_dir, tmp_path):
    from pathlib import Path

    import numpy as np

    from compress.quant_grids import dequantize_entry
    from compress.recipe import Recipe

    shipped = Recipe.from_yaml(Path(__file__).parents[1] / "configs" / "prune-recover-quantize.yaml")
    assert [p.name for p in shipped.passes] == ["wanda_prune", "distill", "gptq_quantize"]
    recipe = Recipe.from_dict({
        "calibration": {"source": "builtin", "samples": 4, "seq_len": SEQ},
        "evaluation": {"source": "builtin", "windows": 1, "seq_len": 64},
        "passes": [{"wanda_prune": {"pattern": "2:4"}},
                   {"distill": {"steps": 2, "batch_size": 2, "seq_len": SEQ, "train_windows": 8}},
                   {"gptq_quantize": {"grid": "q4_0", "keep_sparsity": True}}],
    })
    result = recipe.run(model=str(teacher_dir), output=tmp_path / "out")
    distill, gptq = result.passes[1]["metrics"], result.passes[2]["metrics"]
    assert distill["sparsity"]["pattern"] == {"n_m": "2:4", "groups": distill["sparsity"]["pattern"]["groups"],
                                              "groups_breaking_it_after": 0}
    # Every zero stays; a few more weights round to the code of 0.
    assert gptq["sparsity_before"] == pytest.approx(0.5) and gptq["sparsity_after"] >= gptq["sparsity_before"]
    reloaded = load_artifact(str(tmp_path / "out"))
    assert len(reloaded.quantized_blocks) == len(list(weight_matrices(reloaded.model)))
    for t in weight_matrices(reloaded.model):
        assert int((t.weight != 0).reshape(t.out_features, -1, 4).sum(-1).max()) <= 2, t.name
        assert np.array_equal(dequantize_entry(reloaded.quantized_blocks[f"{t.name}.weight"]), t.weight.numpy())
