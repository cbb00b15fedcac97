"""The command line: help everywhere, one-line errors, meaningful exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from compress.cli import cli, main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def all_commands(group=cli, prefix=()):
    import click

    for name, command in group.commands.items():
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


def test_every_command_has_help_with_an_example(capsys):
    for path in [()] + list(all_commands()):
        code, out, _ = run_cli(capsys, *path, "--help")
        assert code == 0, path
        assert "Example" in out, f"{' '.join(path) or 'compress'} --help shows no example"


def test_run_writes_an_output_and_prints_perplexity(capsys, tiny_llama_dir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("evaluation: {windows: 1, seq_len: 64}\npasses:\n  - magnitude_prune: {sparsity: 0.5}\n")
    code, out, err = run_cli(capsys, "--quiet", "run", str(recipe), "-m", str(tiny_llama_dir), "-o", str(tmp_path / "o"))
    assert code == 0, err
    assert "perplexity" in out and "saved to" in out
    assert json.loads((tmp_path / "o" / "compress.json").read_text())["passes"][0]["name"] == "magnitude_prune"


@pytest.mark.parametrize(
    "recipe_text, extra, message",
    [
        ("passes: [\n", [], "not valid YAML"),
        ("passes:\n  - nope: {}\n", [], "unknown pass 'nope'"),
        ("passes:\n  - magnitude_prune: {sparsity: -1}\n", [], "sparsity"),
        ("passes: []\n", ["-m", "./missing-model"], "model path ./missing-model does not exist"),
        ("passes: []\n", ["-m", "no-such-alias"], "unknown model alias"),
        ("evaluation: {source: empty.txt, seq_len: 64}\npasses: []\n", [], "is empty"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(capsys, tmp_path, tiny_llama_dir, monkeypatch, recipe_text, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "r.yaml").write_text(recipe_text)
    args = ["run", "r.yaml", "-o", "out"] + (extra or ["-m", str(tiny_llama_dir)])
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1, f"expected one line, got: {err!r}"
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(capsys, tmp_path, tiny_llama_dir):
    (tmp_path / "r.yaml").write_text("evaluation: null\npasses: []\n")
    (tmp_path / "o").mkdir()
    code, _, err = run_cli(capsys, "run", str(tmp_path / "r.yaml"), "-m", str(tiny_llama_dir), "-o", str(tmp_path / "o"))
    assert code == 2 and "already exists; pass --force" in err
    code, _, err = run_cli(capsys, "-q", "run", str(tmp_path / "r.yaml"), "-m", str(tiny_llama_dir), "-o",
                           str(tmp_path / "o"), "--force")
    assert code == 0, err


def test_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "compress", "run", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: recipe {tmp_path / 'missing.yaml'} does not exist; "
                                                "give the path of a YAML recipe (see configs/)"]
