"""Distillation: the loss, layer-dropped students, the training loop, resume, CLI and recipe pass."""

from __future__ import annotations

import json
import math

import pytest
import torch

from compress.cli import main
from compress.data import TextSpec
from compress.distill import (TrainConfig, Trainer, checkpoints, distill_into, divergence, drop_layers,
                              layer_map_for, training_windows, uniform_layers)
from compress.distill.students import choose_layers, decoder_layers
from compress.distill.train import lr_factor, sample_indices
from compress.errors import UserError
from compress.models import load_artifact
from compress.passes.base import CalibrationData, PassContext, build_pass
from compress.passes.distillation import DropLayers
from conftest import (assert_same_weights, run_killed_in_step, save_tiny, state_dict_copy, tiny_gpt2_config,
                      tiny_llama_config)

SEQ = 32


@pytest.fixture(scope="session")
def deep_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A 4-layer tiny Llama, deep enough to drop layers from; a wide initialisation makes its
    next-token distributions peaked, so a student has something to learn."""
    return save_tiny(tmp_path_factory.mktemp("deep-llama"),
                     tiny_llama_config(len(tiny_tokenizer), num_hidden_layers=4, initializer_range=0.2), tiny_tokenizer)


@pytest.fixture(scope="session")
def deep_gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """A 4-layer tiny GPT-2 (dropout on, so resume must restore the random state)."""
    return save_tiny(tmp_path_factory.mktemp("deep-gpt2"),
                     tiny_gpt2_config(len(tiny_tokenizer), n_layer=4, initializer_range=0.2), tiny_tokenizer)


@pytest.fixture(params=["llama", "gpt2"])
def deep_dir(request, deep_llama_dir, deep_gpt2_dir):
    return deep_llama_dir if request.param == "llama" else deep_gpt2_dir


@pytest.fixture(scope="session")
def train_windows(tiny_tokenizer):
    return training_windows(tiny_tokenizer, TextSpec(split="calibration"), SEQ, 24)


def config(**overrides) -> TrainConfig:
    values = dict(steps=6, batch_size=4, seq_len=SEQ, lr=3e-3, warmup_steps=1, temperature=1.0)
    values.update(overrides)
    return TrainConfig(**values)


# -- the loss -------------------------------------------------------------------------------------------

def test_divergences_are_zero_for_identical_distributions_and_positive_otherwise():
    torch.manual_seed(0)
    a, b = torch.randn(5, 11), torch.randn(5, 11)
    for kind in ("forward", "reverse", "jsd"):
        assert divergence(a, a, 2.0, kind).abs().max() < 1e-5
        assert (divergence(a, b, 2.0, kind) > 0).all()
    assert torch.allclose(divergence(a, b, 1.0, "jsd"), divergence(b, a, 1.0, "jsd"), atol=1e-6)
    assert torch.allclose(divergence(a, b, 1.0, "forward"), divergence(b, a, 1.0, "reverse"), atol=1e-6)
    # forward KL(p_teacher || p_student) by hand, T = 1
    p_t, log_s = b.softmax(-1), a.log_softmax(-1)
    assert torch.allclose(divergence(a, b, 1.0, "forward"), (p_t * (p_t.log() - log_s)).sum(-1), atol=1e-5)


def test_divergence_is_scaled_by_temperature_squared():
    a = torch.tensor([[0.0, 1.0, 2.0]])
    b = torch.tensor([[2.0, 1.0, 0.0]])
    raw = divergence(a / 3, b / 3, 1.0, "forward")
    assert torch.allclose(divergence(a, b, 3.0, "forward"), raw * 9)


def test_a_loss_with_nothing_to_learn_is_refused():
    with pytest.raises(ValueError, match="nothing to train"):
        TrainConfig(kl_weight=0, ce_weight=0)


# -- students --------------------------------------------------------------------------------------------

def test_uniform_selection_keeps_first_and_last_layers_evenly_spaced():
    assert uniform_layers(30, 15)[0] == 0 and uniform_layers(30, 15)[-1] == 29
    assert len(uniform_layers(30, 15)) == 15
    assert uniform_layers(4, 2) == [0, 3]
    assert uniform_layers(9, 3) == [0, 4, 8]  # every 4th


def test_importance_selection_keeps_the_highest_scoring_layers_in_order():
    assert choose_layers(5, 2, "importance", [0.1, 0.9, 0.2, 0.8, 0.3]) == [1, 3]


def test_student_layers_beyond_the_teachers_depth_are_refused():
    with pytest.raises(UserError, match="teacher has 4 layers"):
        choose_layers(4, 5)


def test_layer_map_follows_the_layers_a_dropped_student_kept():
    assert layer_map_for(2, 4, kept=[0, 3]) == [1, 4]
    assert layer_map_for(2, 4) == [2, 4]


def test_dropped_student_renumbers_layers_generates_with_cache_and_reloads(deep_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = load_artifact(str(deep_dir))
    before = state_dict_copy(teacher.model)
    student = drop_layers(teacher.model, [0, 3])
    assert_same_weights(before, state_dict_copy(teacher.model))  # the input is untouched
    assert student.config.num_hidden_layers == 2
    _, _, layers = decoder_layers(student)
    assert [m.layer_idx for layer in layers for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)
            and m is not layer] == [0, 1]
    prompt = torch.tensor([[5, 17, 42, 99, 7]])
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(student.generate(prompt, use_cache=True, **kw), student.generate(prompt, use_cache=False, **kw))
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(prompt).logits, student(prompt).logits, atol=1e-5)
    assert reloaded.config.num_hidden_layers == 2


def test_drop_layers_pass_by_importance_records_kept_layers(deep_llama_dir):
    teacher = load_artifact(str(deep_llama_dir))
    ctx = PassContext(calibration=CalibrationData(samples=2, seq_len=SEQ))
    student = DropLayers(layers=2, selection="importance", importance_samples=2)(teacher, ctx)
    metrics = student.passes[-1]["metrics"]
    assert len(metrics["kept_layers"]) == 2 and len(metrics["layer_importance"]) == 4
    scores = metrics["layer_importance"]
    assert sorted(metrics["kept_layers"]) == sorted(sorted(range(4), key=lambda i: -scores[i])[:2])


# -- training ---------------------------------------------------------------------------------------------

def test_data_order_is_a_function_of_the_seed_and_visits_every_window_once_per_epoch():
    first = sample_indices(10, seed=3, start=0, count=10)
    assert sorted(first) == list(range(10))
    assert sample_indices(10, 3, 0, 25) == sample_indices(10, 3, 0, 25)
    assert sample_indices(10, 3, 0, 25)[7:19] == sample_indices(10, 3, 7, 12)
    assert sample_indices(10, 4, 0, 10) != first


def test_schedule_warms_up_then_decays_to_the_floor():
    c = config(steps=20, warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, c) for s in range(20)]
    assert factors[:4] == sorted(factors[:4]) and factors[3] < 1
    assert factors[4:] == sorted(factors[4:], reverse=True)
    assert math.isclose(lr_factor(20, c), 0.1)


def test_distillation_loss_falls_and_the_teacher_is_unchanged(deep_dir, train_windows):
    teacher = load_artifact(str(deep_dir))
    before = state_dict_copy(teacher.model)
    student = DropLayers(layers=2)(teacher)
    result = distill_into(student, teacher, train_windows, config(steps=8, hidden_weight=0.5, ce_weight=0.2),
                          final_eval=False)
    losses = [h["loss"] for h in result["history"]]
    kls = [h["kl"] for h in result["history"]]
    assert sum(losses[-3:]) / 3 < losses[0] * 0.9, losses
    assert sum(kls[-3:]) / 3 < kls[0], kls
    assert_same_weights(before, state_dict_copy(teacher.model))
    assert all(p.grad is None for p in teacher.model.parameters())


def test_bfloat16_autocast_trains_and_keeps_float32_weights(deep_llama_dir, train_windows):
    teacher = load_artifact(str(deep_llama_dir))
    student = DropLayers(layers=2)(teacher)
    result = distill_into(student, teacher, train_windows, config(steps=2, dtype="bfloat16"), final_eval=False)
    assert all(math.isfinite(h["loss"]) for h in result["history"])
    assert all(p.dtype == torch.float32 for p in student.model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_runs_on_cuda(deep_llama_dir, train_windows):
    teacher = load_artifact(str(deep_llama_dir))
    student = DropLayers(layers=2)(teacher)
    result = distill_into(student, teacher, train_windows, config(steps=2), device="cuda", final_eval=False)
    assert next(student.model.parameters()).is_cuda and math.isfinite(result["final_loss"])


def _fresh_trainer(deep_dir, windows, ckpt, **overrides):
    torch.manual_seed(123)  # any global state before the run must not matter
    teacher = load_artifact(str(deep_dir))
    student = drop_layers(teacher.model, [0, 3])
    values = {"steps": 4, "checkpoint_every": 2, **overrides}
    return Trainer(student, teacher.model, windows, config(**values), checkpoint_dir=ckpt)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(deep_gpt2_dir, train_windows, tmp_path, monkeypatch):
    full = _fresh_trainer(deep_gpt2_dir, train_windows, tmp_path / "a").run(final_eval=False)

    run_killed_in_step(monkeypatch, _fresh_trainer(deep_gpt2_dir, train_windows, tmp_path / "b"), 4)
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["step-000002"]

    resumed = _fresh_trainer(deep_gpt2_dir, train_windows, tmp_path / "b").run(resume=True, final_eval=False)
    assert resumed["resumed_from_step"] == 2
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in full["history"]], rel=1e-6)
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-6)


def test_a_checkpoint_interrupted_while_writing_leaves_the_previous_one_whole(deep_llama_dir, train_windows, tmp_path,
                                                                            monkeypatch):
    import compress.distill.train as train_module

    real_save, calls = torch.save, []

    def dying_save(obj, path):
        calls.append(path)
        if len(calls) == 2:
            real_save({"half": "written"}, path)
            raise KeyboardInterrupt("killed while writing")
        real_save(obj, path)

    monkeypatch.setattr(train_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _fresh_trainer(deep_llama_dir, train_windows, tmp_path).run(final_eval=False)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]  # the partial one is gone
    state = torch.load(tmp_path / "step-000002" / "training_state.pt", weights_only=False)
    assert state["step"] == 2 and state["samples_seen"] == 8


def test_resume_refuses_a_checkpoint_made_with_other_settings(deep_llama_dir, train_windows, tmp_path):
    _fresh_trainer(deep_llama_dir, train_windows, tmp_path, steps=2).run(final_eval=False)
    with pytest.raises(UserError, match="different settings.*lr"):
        _fresh_trainer(deep_llama_dir, train_windows, tmp_path, steps=2, lr=1e-2).run(resume=True)


# -- CLI --------------------------------------------------------------------------------------------------

def _cli(teacher, out, *extra):
    return main(["-q", "distill", "--teacher", str(teacher), "-o", str(out), "--steps", "3", "--batch-size", "2",
                 "--seq-len", str(SEQ), "--calib-samples", "12", "--eval-windows", "2", "--eval-seq-len", "64",
                 *extra])


@pytest.mark.filterwarnings("ignore:QUALITY WARNING")  # a few steps on a random tiny model stay far from it
def test_cli_distills_a_half_depth_student_that_reloads(deep_llama_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "student"
    assert _cli(deep_llama_dir, out, "--student-layers", "2", "--checkpoint-every", "2") == 0
    assert "perplexity: teacher" in capsys.readouterr().out
    manifest = json.loads((out / "compress.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["drop_layers", "distill"]
    assert manifest["metrics"]["evaluation"]["perplexity_after"] > 0
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2
    assert not (tmp_path / "student.checkpoints").exists()  # removed once the output is whole


def test_cli_refuses_a_student_with_another_tokenizer(deep_llama_dir, tiny_tokenizer, tmp_path, capsys):
    import copy

    other = copy.deepcopy(tiny_tokenizer)
    other.add_tokens(["<unrelated-token>"])
    student = save_tiny(tmp_path / "other", tiny_llama_config(len(tiny_tokenizer)), other)
    assert _cli(deep_llama_dir, tmp_path / "out", "--student", str(student)) == 2
    err = capsys.readouterr().err
    assert "tokenizer differs from the teacher's" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_more_student_layers_than_the_teacher_has(deep_llama_dir, tmp_path, capsys):
    assert _cli(deep_llama_dir, tmp_path / "out", "--student-layers", "9") == 2
    assert "the teacher has 4 layers" in capsys.readouterr().err


def test_cli_refuses_evaluation_text_shorter_than_one_window(deep_llama_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Far too short.\n" * 3)
    assert _cli(deep_llama_dir, tmp_path / "out", "--student-layers", "2", "--eval-text", str(short)) == 2
    assert "fewer than one window" in capsys.readouterr().err


def test_cli_needs_exactly_one_kind_of_student(deep_llama_dir, tmp_path, capsys):
    assert _cli(deep_llama_dir, tmp_path / "out") == 2
    assert "exactly one of --student" in capsys.readouterr().err


def test_cli_help_shows_an_example():
    from click.testing import CliRunner

    from compress.cli import cli

    result = CliRunner().invoke(cli, ["distill", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--student-layers" in result.output


# -- recipe -----------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:QUALITY WARNING")
def test_prune_then_distill_is_one_recipe(deep_llama_dir, tmp_path):
    from compress.recipe import Recipe

    recipe = Recipe.from_dict({
        "calibration": {"source": "builtin", "samples": 8, "seq_len": SEQ},
        "evaluation": {"source": "builtin", "windows": 1, "seq_len": 64},
        "passes": [{"magnitude_prune": {"sparsity": 0.5}},
                   {"distill": {"steps": 2, "batch_size": 2, "seq_len": SEQ, "train_windows": 8, "ce_weight": 0.5}}],
    })
    result = recipe.run(model=str(deep_llama_dir), output=tmp_path / "out")
    assert [p["name"] for p in result.passes] == ["magnitude_prune", "distill"]
    distill = result.passes[-1]["metrics"]
    assert distill["teacher"]["path"] == str(deep_llama_dir.resolve()) and len(distill["loss_curve"]) >= 2
    assert (tmp_path / "out" / "compress.json").is_file()


def test_distill_pass_config_is_validated_before_work():
    with pytest.raises(UserError, match="stepz: unknown key"):
        build_pass("distill", {"stepz": 3})
    with pytest.raises(UserError, match="steps"):
        build_pass("distill", {"steps": 0})


@pytest.mark.parametrize("name", ["distill-recover.yaml", "distill-half-depth.yaml"])
def test_shipped_distill_recipes_parse(name):
    from pathlib import Path

    from compress.recipe import Recipe

    recipe = Recipe.from_yaml(Path(__file__).parents[1] / "configs" / name)
    assert "distill" in [p.name for p in recipe.passes]


# -- several processes ------------------------------------------------------------------------------------

def test_two_processes_on_cpu_train_one_student_through_torchrun_and_gloo(deep_llama_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "compress", "-q", "distill", "--teacher", str(deep_llama_dir), "--student-layers", "2",
           "-o", str(out), "--steps", "3", "--batch-size", "2", "--seq-len", str(SEQ), "--calib-samples", "16",
           "--eval-windows", "1", "--eval-seq-len", "64"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("saved to") == 1  # only the main process reports and writes
    metrics = json.loads((out / "compress.json").read_text())["passes"][-1]["metrics"]
    assert metrics["processes"] == 2
    assert metrics["samples_seen"] == 3 * 2 * 2  # steps x batch x processes: each process took its own slice
