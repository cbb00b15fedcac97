"""The real built-in model, end to end (marked `integration`; about a minute, more on first conversion)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.integration


def test_builtin_model_recipe_output_reloads_with_plain_transformers_and_answers(tmp_path):
    from compress import Recipe, run_recipe

    recipe = Recipe.from_dict({
        "model": "smollm2-135m-instruct",
        "evaluation": {"source": "builtin", "windows": 2, "seq_len": 256},
        "passes": [{"magnitude_prune": {"sparsity": 0.2, "scope": "row"}}],
    })
    run_recipe(recipe, output=tmp_path / "out")

    manifest = json.loads((tmp_path / "out" / "compress.json").read_text())
    evaluation = manifest["metrics"]["evaluation"]
    assert manifest["source"]["ref"] == "smollm2-135m-instruct"
    assert 5 < evaluation["perplexity_before"] < 40, "the base model is intact on real prose"
    assert evaluation["perplexity_after"] < 1.5 * evaluation["perplexity_before"]

    # The five lines a user without this toolkit would write.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        answer = tok.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1]:],
                            skip_special_tokens=True)
    assert "Paris" in answer


def test_a_gguf_path_loads_through_the_same_conversion_cache():
    from compress.models import builtin_gguf_path, load_artifact

    artifact = load_artifact(str(builtin_gguf_path("smollm2-135m-instruct")))
    assert artifact.source["kind"] == "gguf"
    config = artifact.model.config
    assert (config.model_type, config.num_hidden_layers, config.num_key_value_heads) == ("llama", 30, 3)
