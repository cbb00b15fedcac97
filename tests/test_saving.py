"""Outputs are written atomically, never over the input, and reload with stock transformers."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compress import MagnitudePrune, save_artifact
from compress.errors import UserError
from compress.saving import MANIFEST_NAME, atomic_directory


def test_saved_output_reloads_with_stock_transformers_and_has_a_manifest(tiny_model_dir, tmp_path):
    from compress import load_artifact

    pruned = MagnitudePrune(sparsity=0.5)(load_artifact(str(tiny_model_dir)))
    out = save_artifact(pruned, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    for name, tensor in pruned.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["source"]["kind"] == "local"
    assert manifest["passes"][0]["name"] == "magnitude_prune"
    assert manifest["passes"][0]["config"]["sparsity"] == 0.5
    assert manifest["passes"][0]["metrics"]["sparsity_reached"] == 0.5
    assert {"torch", "transformers", "python"} <= manifest["versions"].keys()


def test_existing_output_is_refused_without_force(tiny_llama, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists; pass --force"):
        save_artifact(tiny_llama, tmp_path / "out")


def test_force_replaces_an_earlier_output(tiny_llama, tmp_path):
    out = save_artifact(tiny_llama, tmp_path / "out")
    (out / "model.safetensors").write_bytes(b"an older, different output")
    save_artifact(tiny_llama, out, force=True)
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_refuses_a_directory_that_is_not_an_output(tiny_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("the user's")
    with pytest.raises(UserError, match="not an output of compress"):
        save_artifact(tiny_llama, out, force=True)
    assert (out / "thesis.txt").read_text() == "the user's"


def test_force_refuses_an_output_holding_files_compress_did_not_write(tiny_llama, tmp_path):
    out = save_artifact(tiny_llama, tmp_path / "out")
    (out / "notes.txt").write_text("added by the user")
    with pytest.raises(UserError, match=r"files compress did not write \(notes.txt\)"):
        save_artifact(tiny_llama, out, force=True)
    assert (out / "notes.txt").exists()


def test_manifest_lists_every_file_the_output_holds(tiny_llama, tmp_path):
    out = save_artifact(tiny_llama, tmp_path / "out")
    files = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert sorted(files) == sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("inside", [False, True])
def test_output_equal_to_or_inside_the_input_is_refused(tiny_llama, inside):
    target = tiny_llama.source_path / "sub" if inside else tiny_llama.source_path
    with pytest.raises(UserError, match="overlaps the input model"):
        save_artifact(tiny_llama, target, force=True)


def test_failure_while_saving_leaves_no_output_directory(tiny_llama, tmp_path):
    def broken_writer(artifact, directory):
        artifact.model.save_pretrained(directory)  # half the work is done...
        raise RuntimeError("disk full")  # ...then it fails

    tiny_llama.writer = broken_writer
    with pytest.raises(RuntimeError, match="disk full"):
        save_artifact(tiny_llama, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [], "neither the output nor a partial directory may remain"


def test_failure_while_replacing_leaves_the_existing_output_unchanged(tiny_llama, tmp_path):
    out = save_artifact(tiny_llama, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_writer(artifact, directory):
        (directory / "partial.bin").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt  # an interrupted run behaves the same

    tiny_llama.writer = broken_writer
    with pytest.raises(KeyboardInterrupt):
        save_artifact(tiny_llama, out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_atomic_directory_renames_into_place_only_on_success(tmp_path):
    with atomic_directory(tmp_path / "result") as tmp:
        (tmp / "a.txt").write_text("x")
        assert not (tmp_path / "result").exists()
    assert (tmp_path / "result" / "a.txt").read_text() == "x"
