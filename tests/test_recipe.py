"""Recipes: YAML and Python build the same passes; the runner measures and saves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from compress import REGISTRY, MagnitudePrune, Recipe, build_pass, run_recipe
from compress.errors import UserError
from compress.passes.base import Pass

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_registry_maps_names_to_pass_classes():
    assert REGISTRY["magnitude_prune"] is MagnitudePrune
    assert all(issubclass(cls, Pass) and cls.name == name for name, cls in REGISTRY.items())


def test_yaml_and_python_build_the_same_pass(tmp_path):
    recipe = Recipe.from_yaml(write(tmp_path, "passes:\n  - magnitude_prune: {sparsity: 0.3, scope: layer}\n"))
    assert recipe.passes == [MagnitudePrune(sparsity=0.3, scope="layer")]
    assert recipe.passes[0].config() == MagnitudePrune(sparsity=0.3, scope="layer").config()


def test_every_shipped_recipe_parses():
    recipes = sorted(CONFIGS.glob("*.yaml"))
    assert recipes
    for path in recipes:
        if path.name.startswith("bench"):
            continue  # bench suites have their own format
        Recipe.from_yaml(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("passes:\n  - magnitude_prune: {sparsity: 0.5\n", "not valid YAML at line"),
        ("passes:\n  - no_such_pass: {}\n", "unknown pass 'no_such_pass'; known passes: .*magnitude_prune"),
        ("passes:\n  - magnitude_prune: {sparsity: 1.5}\n", "sparsity: Input should be less than 1 \\(got 1.5\\)"),
        ("passes:\n  - magnitude_prune: {sparsity: 0.5, colour: red}\n", "colour: unknown key"),
        ("passes:\n  - magnitude_prune: {scope: diagonal}\n", "scope: Input should be 'row', 'layer' or 'global'"),
        ("passes:\n  - magnitude_prune: {pattern: '3:2'}\n", "pattern must be N:M"),
        ("passes: {magnitude_prune: {}}\n", "passes must be a list"),
        ("- just a list\n", "must be a YAML mapping"),
        ("passes: []\nunknown_section: 1\n", "unknown_section: unknown key"),
        ("evaluation: {seq_len: 1}\npasses: []\n", "seq_len: Input should be greater than or equal to 2"),
    ],
)
def test_bad_recipes_are_refused_with_one_line_before_any_work(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as info:
        Recipe.from_yaml(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_recipe_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "nope.yaml")


def test_build_pass_validates_like_the_recipe():
    with pytest.raises(UserError, match="unknown pass"):
        build_pass("nope", {})
    assert build_pass("magnitude_prune", {"sparsity": 0.25}).sparsity == 0.25


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_run_recipe_measures_before_and_after_and_leaves_the_source_untouched(tiny_llama_dir, tmp_path):
    before = _digest(tiny_llama_dir)
    recipe = Recipe.from_dict({
        "evaluation": {"source": "builtin", "windows": 2, "seq_len": 64},
        "passes": [{"magnitude_prune": {"sparsity": 0.5}}],
    })
    result = run_recipe(recipe, model=str(tiny_llama_dir), output=tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "compress.json").read_text())
    evaluation = manifest["metrics"]["evaluation"]
    assert evaluation["perplexity_before"] > 1 and evaluation["perplexity_after"] > 1
    assert evaluation["perplexity_before"] != evaluation["perplexity_after"]
    assert 0 <= evaluation["top1_agreement"] <= 1 and evaluation["kl_mean"] >= 0
    assert evaluation["data"]["split"] == "evaluation" and evaluation["data"]["windows"] == 2
    assert manifest["metrics"]["recipe"]["passes"] == [{"magnitude_prune": MagnitudePrune(sparsity=0.5).config()}]
    assert result.passes[-1]["metrics"]["sparsity_reached"] == 0.5
    assert _digest(tiny_llama_dir) == before, "the input model must never be modified"


def test_recipe_output_is_checked_before_loading_the_model(tiny_llama_dir, tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("compress.recipe.load_artifact", must_not_load)
    with pytest.raises(UserError, match="already exists"):
        run_recipe(Recipe(passes=[MagnitudePrune()]), model=str(tiny_llama_dir), output=tmp_path / "out")


def test_chained_runs_keep_the_history(tiny_llama_dir, tmp_path):
    recipe = Recipe(evaluation=None, passes=[MagnitudePrune(sparsity=0.2)])
    run_recipe(recipe, model=str(tiny_llama_dir), output=tmp_path / "a")
    second = run_recipe(recipe, model=str(tmp_path / "a"), output=tmp_path / "b")
    assert [p["name"] for p in second.passes] == ["magnitude_prune", "magnitude_prune"]
    assert second.source["derived_from"]["kind"] == "local"
