"""Bad inputs and faults, as a table: each gets one line, a meaningful exit code, and leaves everything as it was.

Every row of CASES is one thing a user can get wrong (or one fault), run through the
command line in this process (`compress.cli.main`). For each, the test asserts:

* the exit code (2 bad input, 4 a full disk, 0 where the run now succeeds, with a warning);
* exactly one line on stderr, and no traceback;
* the file hashes of every input (the tiny models, the working directory, the home
  directory) are what they were: nothing the user owns changed or vanished;
* no leftover directory: no `.NAME.partial-*` / `.NAME.old-*`, no half-written output.

The `item` of a row is the number of the finding in issue 11 it covers. A few
behaviours that need a process of their own (Ctrl-C while starting, warnings printed
while importing libraries) are tested by subprocess below the table.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from compress.cli import main

LEFTOVER_MARKERS = (".partial-", ".old-")
QUICK = ["--method", "magnitude", "--eval-text", "none"]


def dead_pid() -> int:
    """The id of a process that has finished (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Env:
    """A working directory (the current one), a home directory, and the tiny models; helpers to fill them."""

    def __init__(self, work: Path, home: Path, llama: Path, gpt2: Path, bert: Path, monkeypatch):
        self.work, self.home, self.llama, self.gpt2, self.bert = work, home, llama, gpt2, bert
        self.monkeypatch = monkeypatch

    def path(self, rel: str) -> Path:
        return self.work / rel

    def write(self, rel: str, content: str | bytes) -> Path:
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def user_dir(self, rel: str) -> Path:
        self.write(f"{rel}/thesis.txt", "three years of work")
        return self.path(rel)

    def model_copy(self, rel: str, src: Path | None = None) -> Path:
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copytree(src or self.llama, target))

    def earlier_output(self, rel: str) -> Path:
        """An output of an earlier run of compress (manifest and all), as --force may replace."""
        code = main(["-q", "prune", str(self.llama), *QUICK, "-o", str(self.path(rel))])
        assert code == 0
        return self.path(rel)

    def recipe(self, text: str, rel: str = "recipe.yaml") -> str:
        return str(self.write(rel, text))


def snapshot(*roots: Path, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """Every file and directory below the roots: a file's sha256, '<dir>' for a directory."""
    found = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            if skip(path):
                continue
            found[str(path)] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob(".*") if any(m in p.name for m in LEFTOVER_MARKERS))


@dataclass
class Case:
    id: str
    item: int  # the finding of issue 11 this row covers
    argv: Callable[[Env], list[str]]
    message: str  # a substring of the one stderr line
    code: int = 2
    setup: Callable[[Env], None] = lambda env: None
    # For rows that now succeed (code 0): the output they write, and checks of it.
    output: str | None = None
    check: Callable[[Env], None] = lambda env: None
    keep: tuple[str, ...] = ()  # leftover names that must survive (a live process's)
    skip_if: Callable[[], bool] = field(default=lambda: False)


def _disk_full_writer(monkeypatch):
    """The disk fills up half-way through writing the weights."""
    import compress.saving

    def writer(artifact, directory):
        (directory / "model.safetensors").write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "model.safetensors"))

    monkeypatch.setattr(compress.saving, "write_hf_checkpoint", writer)


def _broken_pickle(env: Env) -> None:
    class Payload:  # what a malicious checkpoint pickles: a call, not a tensor
        def __reduce__(self):
            return (print, ("this ran while loading",))

    target = env.model_copy("pickled")
    from safetensors.torch import load_file

    state = dict(load_file(target / "model.safetensors"))
    state["payload"] = Payload()
    torch.save(state, target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()


def _without_tensor(env: Env) -> None:
    from safetensors.torch import load_file, save_file

    target = env.model_copy("incomplete")
    state = load_file(target / "model.safetensors")
    state.pop("model.layers.1.mlp.down_proj.weight")
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})


def _with_config(env: Env, rel: str, **changes) -> None:
    target = env.model_copy(rel)
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))


CUSTOM_CODE = {"AutoConfig": "configuration_mine.MyConfig", "AutoModelForCausalLM": "modeling_mine.MyModel"}


def _no_auto_map_in_output(env: Env) -> None:
    config = json.loads((env.path("out") / "config.json").read_text())
    assert "auto_map" not in config


def _output_loads(env: Env) -> None:
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(env.path("out"))


def _stale_beside(env: Env) -> None:
    env.earlier_output("out")
    for name in (f".out.partial-{dead_pid()}", f".out.old-{dead_pid()}"):
        env.write(f"{name}/model.safetensors", b"\0" * 100)
    env.write(f".out.partial-{os.getppid()}/model.safetensors", b"another run at work")


def _half_replaced(env: Env) -> None:
    """A run killed between the two renames of a replacement: the earlier output waits in .out.old-PID."""
    env.earlier_output("kept")
    env.path("kept").rename(env.path(f".out.old-{dead_pid()}"))


def _corrupt_checkpoint(env: Env) -> None:
    env.write("student.checkpoints/step-000001/training_state.pt", b"PK\x03\x04 truncated")


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def L(env: Env) -> str:
    return str(env.llama)


def G(env: Env) -> str:
    return str(env.gpt2)


CASES = [
    # 1. --force replaces only what compress wrote; never an input, never the user's.
    Case("force-current-directory", 1, lambda e: ["prune", L(e), *QUICK, "-o", ".", "--force"],
         "current directory", setup=lambda e: e.write("notes.txt", "mine")),
    Case("force-home-directory", 1, lambda e: ["prune", L(e), *QUICK, "-o", "~", "--force"], "home directory"),
    Case("force-users-directory", 1, lambda e: ["prune", L(e), *QUICK, "-o", "mine", "--force"],
         "not an output of compress", setup=lambda e: e.user_dir("mine")),
    Case("force-someone-elses-model", 1, lambda e: ["prune", L(e), *QUICK, "-o", "other", "--force"],
         "not an output of compress", setup=lambda e: e.model_copy("other")),
    Case("force-output-with-users-file", 1, lambda e: ["prune", L(e), *QUICK, "-o", "out", "--force"],
         "files compress did not write (notes.txt)",
         setup=lambda e: (e.earlier_output("out"), e.write("out/notes.txt", "mine"))),
    Case("output-is-the-input", 1, lambda e: ["prune", "m", *QUICK, "-o", "m", "--force"], "overlaps the input",
         setup=lambda e: e.model_copy("m")),
    Case("output-inside-the-input", 1, lambda e: ["prune", "m", *QUICK, "-o", "m/sub"], "overlaps the input",
         setup=lambda e: e.model_copy("m")),
    Case("output-holds-the-input", 1, lambda e: ["prune", "models/m", *QUICK, "-o", "models", "--force"],
         "overlaps the input", setup=lambda e: e.model_copy("models/m")),
    Case("bench-output-is-a-variant", 1,
         lambda e: ["bench", "v", "-m", L(e), "--no-quality", "-o", "v", "--force"], "overlaps the input",
         setup=lambda e: e.earlier_output("v")),
    Case("bench-output-inside-a-variant", 1,
         lambda e: ["bench", "v", "-m", L(e), "--no-quality", "-o", "v/report"], "overlaps the input",
         setup=lambda e: e.earlier_output("v")),
    Case("bench-output-is-the-base", 1,
         lambda e: ["bench", L(e), "-m", "b", "--no-quality", "-o", "b", "--force"], "overlaps the input",
         setup=lambda e: e.earlier_output("b")),
    Case("bench-force-users-directory", 1, lambda e: ["bench", L(e), "-m", L(e), "-o", "mine", "--force"],
         "not an output of compress", setup=lambda e: e.user_dir("mine")),
    Case("distill-output-is-the-teacher", 1,
         lambda e: ["distill", "--teacher", "t", "--student-layers", "1", "-o", "t", "--force"], "overlaps the input",
         setup=lambda e: e.model_copy("t")),
    Case("quantize-force-users-directory", 1,
         lambda e: ["quantize", L(e), "--method", "ort-int8", "-o", "mine", "--force"], "not an output of compress",
         setup=lambda e: e.user_dir("mine")),
    Case("export-force-users-directory", 1, lambda e: ["export", "onnx", L(e), "-o", "mine", "--force"],
         "not an output of compress", setup=lambda e: e.user_dir("mine")),
    Case("run-force-current-directory", 1,
         lambda e: ["run", e.recipe("evaluation: null\npasses: []\n"), "-m", L(e), "-o", ".", "--force"],
         "current directory"),
    # 2. A .gguf input is compared as the file itself, not as its folder.
    Case("gguf-beside-the-output-is-not-an-overlap", 2, lambda e: ["prune", "model.gguf", *QUICK, "-o", "results/x"],
         "could not read GGUF file", setup=lambda e: e.write("model.gguf", b"GGUF not really")),
    Case("output-holding-the-gguf", 2, lambda e: ["prune", "sub/model.gguf", *QUICK, "-o", "sub", "--force"],
         "overlaps the input", setup=lambda e: e.write("sub/model.gguf", b"GGUF not really")),
    # 3. Windows longer than the model's context, refused before any work.
    Case("evaluation-past-llama-context", 3, lambda e: ["prune", L(e), "--method", "magnitude", "-o", "out"],
         "takes at most 512 tokens per sequence (its context), but evaluation windows have 1024 tokens"),
    Case("calibration-past-gpt2-context", 3,
         lambda e: ["prune", G(e), "--calib-seq-len", "1024", "--eval-text", "none", "-o", "out"],
         "calibration windows have 1024 tokens"),
    Case("quantize-evaluation-past-context", 3,
         lambda e: ["quantize", G(e), "--method", "ort-int8", "--eval-seq-len", "600", "-o", "out"],
         "evaluation windows have 600 tokens"),
    Case("recipe-training-past-context", 3,
         lambda e: ["run", e.recipe("evaluation: null\npasses:\n  - distill: {steps: 1, seq_len: 2048}\n"),
                    "-m", L(e), "-o", "out"], "training windows have 2048 tokens"),
    Case("distill-training-past-context", 3,
         lambda e: ["distill", "--teacher", L(e), "--student-layers", "1", "--seq-len", "1024", "--eval-text", "none",
                    "-o", "out"], "training windows have 1024 tokens"),
    Case("bench-evaluation-past-context", 3,
         lambda e: ["bench", L(e), "-m", L(e), "--eval-seq-len", "1024", "-o", "out"], "evaluation windows have 1024 tokens"),
    # 4. An output that cannot be written is found before the work; a full disk is one line and exit 4.
    Case("output-in-proc", 4, lambda e: ["prune", L(e), *QUICK, "-o", "/proc/compress-out"], "cannot write the output"),
    Case("output-parent-is-a-file", 4, lambda e: ["prune", L(e), *QUICK, "-o", "afile/out"], "afile is a file",
         setup=lambda e: e.write("afile", "x")),
    Case("distill-output-parent-is-a-file", 4,
         lambda e: ["distill", "--teacher", L(e), "--student-layers", "1", "-o", "afile/out"], "afile is a file",
         setup=lambda e: e.write("afile", "x")),
    Case("bench-output-in-proc", 4, lambda e: ["bench", "-m", L(e), "-o", "/proc/compress-out"],
         "cannot write the output"),
    Case("disk-full-new-output", 4, lambda e: ["prune", L(e), *QUICK, "-o", "out"], "is full (about", code=4,
         setup=lambda e: _disk_full_writer(e.monkeypatch)),
    Case("disk-full-replacing", 4, lambda e: ["prune", L(e), *QUICK, "-o", "out", "--force"],
         "the earlier output is unchanged", code=4,
         setup=lambda e: (e.earlier_output("out"), _disk_full_writer(e.monkeypatch))),
    # 5. Leftovers of killed runs are cleared by the next run for the same output (a live run's kept).
    Case("stale-leftovers-removed", 5, lambda e: ["prune", L(e), *QUICK, "-o", "out", "--force"],
         "removed 2 leftover directories of killed runs", code=0, output="out", setup=_stale_beside,
         check=_output_loads, keep=(f".out.partial-{os.getppid()}",)),
    Case("half-replaced-output-restored", 5, lambda e: ["prune", L(e), *QUICK, "-o", "out", "--force"],
         "restored the previous output", code=0, output="out", setup=_half_replaced, check=_output_loads),
    # 6. Models the passes cannot handle.
    Case("distilbert-folder", 6, lambda e: ["prune", str(e.bert), *QUICK, "-o", "out"],
         "distilbert (DistilBertForMaskedLM) model, which compress does not support; supported: Llama (llama), "
         "GPT-2 (gpt2) causal language models; BERT (bert)"),
    Case("quantize-distilbert-folder", 6, lambda e: ["quantize", str(e.bert), "--method", "bnb-int8", "-o", "out"],
         "which compress does not support"),
    Case("target-kl-distilbert-folder", 6,
         lambda e: ["quantize", str(e.bert), "--target-kl", "0.02", "-o", "out.gguf"], "which compress does not support"),
    Case("distill-distilbert-teacher", 6,
         lambda e: ["distill", "--teacher", str(e.bert), "--student-layers", "1", "-o", "out"],
         "which compress does not support"),
    Case("weights-missing", 6, lambda e: ["prune", "incomplete", *QUICK, "-o", "out"],
         "has no weights for 1 tensors of LlamaForCausalLM (e.g. model.layers.1.mlp.down_proj.weight)",
         setup=_without_tensor),
    Case("custom-code-without-flag", 6, lambda e: ["prune", "custom", *QUICK, "-o", "out"],
         "pass --trust-remote-code",
         setup=lambda e: _with_config(e, "custom", model_type="mine", auto_map=CUSTOM_CODE)),
    Case("auto-map-without-code-is-dropped", 6, lambda e: ["prune", "mapped", *QUICK, "-o", "out"],
         "dropped auto_map entries", code=0, output="out", check=_no_auto_map_in_output,
         setup=lambda e: _with_config(e, "mapped", auto_map=CUSTOM_CODE)),
    # 7. A mistyped path is a missing path, not a hub id.
    Case("typo-under-existing-folder", 7, lambda e: ["prune", "out/typo", *QUICK, "-o", "x"],
         "model path out/typo does not exist", setup=lambda e: e.user_dir("out")),
    Case("dot-path-typo", 7, lambda e: ["prune", "./typo", *QUICK, "-o", "x"], "model path ./typo does not exist"),
    Case("hub-id-unreachable", 7, lambda e: ["prune", "models/llama", *QUICK, "-o", "x"],
         "no local directory models/llama and no hub model models/llama reachable"),
    # 8. What the manifest would say must be what was done.
    Case("pattern-with-sparsity", 8, lambda e: ["prune", L(e), *QUICK, "--pattern", "2:4", "--sparsity", "0.3", "-o", "x"],
         "drop --sparsity"),
    Case("pattern-with-scope", 8, lambda e: ["prune", L(e), *QUICK, "--pattern", "2:4", "--scope", "layer", "-o", "x"],
         "drop --scope"),
    Case("recipe-pattern-with-sparsity", 8,
         lambda e: ["run", e.recipe("passes:\n  - magnitude_prune: {pattern: '2:4', sparsity: 0.7}\n"), "-m", L(e),
                    "-o", "x"], "drop sparsity when giving a pattern"),
    Case("distill-device-tpu", 8,
         lambda e: ["distill", "--teacher", L(e), "--student-layers", "1", "--device", "tpu", "-o", "x"],
         "unknown device 'tpu'"),
    Case("quantize-device-tpu", 8, lambda e: ["quantize", L(e), "--method", "bnb-int8", "--device", "tpu", "-o", "x"],
         "unknown device 'tpu'"),
    Case("recipe-distill-device-tpu", 8,
         lambda e: ["run", e.recipe("passes:\n  - distill: {steps: 1, device: tpu}\n"), "-m", L(e), "-o", "x"],
         "unknown device 'tpu'"),
    Case("distill-device-cuda-without-gpu", 8,
         lambda e: ["distill", "--teacher", L(e), "--student-layers", "1", "--device", "cuda", "-o", "x"],
         "no CUDA GPU is available", skip_if=_has_cuda),
    # 9. Text input.
    Case("eval-text-not-utf8", 9, lambda e: ["prune", L(e), "--method", "magnitude", "--eval-text", "latin.txt",
                                              "--eval-seq-len", "16", "-o", "x"],
         "is not valid utf-8: byte 11 (0xe9) cannot be decoded; pass --encoding",
         setup=lambda e: e.write("latin.txt", b"plain text \xe9t\xe9 and more\n" * 200)),
    Case("unknown-encoding", 9, lambda e: ["prune", L(e), *QUICK, "--encoding", "klingon", "-o", "x"],
         "unknown text encoding 'klingon'"),
    Case("jsonl-without-the-field", 9, lambda e: ["prune", L(e), "--method", "wanda", "--eval-text", "none",
                                                   "--calib-text", "t.jsonl", "-o", "x"],
         "has no 'text' field; name the field holding the text with --text-field",
         setup=lambda e: e.write("t.jsonl", '{"body": "words"}\n' * 10)),
    Case("one-long-line-splits-at-whitespace", 9,
         lambda e: ["prune", L(e), "--method", "wanda", "--eval-text", "none", "--calib-text", "long.txt",
                    "--calib-seq-len", "16", "--calib-samples", "2", "-o", "out"],
         "", code=0, output="out", check=_output_loads,
         setup=lambda e: e.write("long.txt", " ".join(["words"] * 3000))),
    Case("byte-identical-copy-overlaps", 9,
         lambda e: ["prune", L(e), "--method", "wanda", "--calib-text", "a.txt", "--calib-split", "all",
                    "--eval-text", "b.txt", "--eval-split", "all", "--eval-seq-len", "16", "-o", "x"],
         "would overlap", setup=lambda e: (e.write("a.txt", "same words\n" * 400), e.write("b.txt", "same words\n" * 400))),
    # 10. Load errors name the real cause.
    Case("unsafe-pickle", 10, lambda e: ["prune", "pickled", *QUICK, "-o", "x"], "a pickle holding more than tensors",
         setup=_broken_pickle),
    Case("onnx-directory-for-pytorch", 10, lambda e: ["prune", "onnx", *QUICK, "-o", "x"], "holds an ONNX export",
         setup=lambda e: (e.write("onnx/config.json", (e.llama / "config.json").read_text()),
                          e.write("onnx/model.onnx", b"onnx"),
                          e.write("onnx/tokenizer.json", (e.llama / "tokenizer.json").read_text()))),
    Case("no-tokenizer", 10, lambda e: ["prune", "bare", *QUICK, "-o", "x"], "has no tokenizer",
         setup=lambda e: (e.write("bare/config.json", (e.llama / "config.json").read_text()),
                          e.write("bare/model.safetensors", (e.llama / "model.safetensors").read_bytes()))),
    Case("quantize-custom-code", 10, lambda e: ["quantize", "custom", "--method", "bnb-int8", "-o", "x"],
         "needs its own Python code to load",
         setup=lambda e: _with_config(e, "custom", model_type="mine", auto_map=CUSTOM_CODE)),
    # 11. The smaller ones.
    Case("corrupt-distill-checkpoint", 11,
         lambda e: ["distill", "--teacher", L(e), "--student-layers", "1", "--seq-len", "16", "--eval-text", "none",
                    "--resume", "--checkpoint-dir", "student.checkpoints", "-o", "student"],
         "training_state.pt cannot be read", setup=_corrupt_checkpoint),
    Case("recipe-without-passes", 11, lambda e: ["run", e.recipe("evaluation: null\npasses: []\n"), "-m", L(e), "-o", "out"],
         "the recipe has no passes: the output is an unchanged copy", code=0, output="out", check=_output_loads),
    Case("channels-down-to-one", 11,
         lambda e: ["prune", L(e), *QUICK, "--structure", "channels", "--sparsity", "0.999", "-o", "out"],
         "leaves 1 MLP channel of 128", code=0, output="out", check=_output_loads),
    Case("negative-max-kl", 11, lambda e: ["quantize", L(e), "--method", "bnb-int8", "--max-kl", "-1", "-o", "x"],
         "Invalid value for '--max-kl'"),
    Case("min-top1-above-one", 11, lambda e: ["quantize", L(e), "--method", "bnb-int8", "--min-top1", "2", "-o", "x"],
         "Invalid value for '--min-top1'"),
    # And a few that were already right, kept right.
    Case("unknown-alias", 0, lambda e: ["prune", "no-such-alias", *QUICK, "-o", "x"], "unknown model alias"),
    Case("existing-output-without-force", 0, lambda e: ["prune", L(e), *QUICK, "-o", "out"],
         "already exists; pass --force", setup=lambda e: e.earlier_output("out")),
    Case("missing-bench-suite", 0, lambda e: ["bench", "--suite", "nope.yaml", "-o", "x"], "does not exist"),
]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A DistilBERT folder: an encoder whose layout the passes do not know (BERT itself is supported: test_encoders)."""
    from transformers import AutoModelForMaskedLM, DistilBertConfig

    path = tmp_path_factory.mktemp("tiny-distilbert")
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=len(tiny_tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                              max_position_embeddings=128)
    AutoModelForMaskedLM.from_config(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_llama_dir, tiny_gpt2_dir, tiny_bert_dir) -> Env:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    (home / "documents").mkdir(parents=True)
    (home / "documents" / "letter.txt").write_text("dear")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    return Env(work, home, tiny_llama_dir, tiny_gpt2_dir, tiny_bert_dir, monkeypatch)


def test_the_table_covers_every_finding_of_issue_11():
    assert len(CASES) >= 40
    assert {c.item for c in CASES} >= set(range(1, 12))
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, env: Env, capsys):
    if case.skip_if():
        pytest.skip("needs a machine without the resource the case lacks")
    case.setup(env)
    argv = case.argv(env)  # may write a recipe: part of the setting up
    capsys.readouterr()  # what setting up printed
    skip_output = (lambda p: False) if case.output is None else (
        lambda p: p == env.path(case.output) or env.path(case.output) in p.parents
        or any(m in part for part in p.parts for m in LEFTOVER_MARKERS))
    inputs = (env.work, env.home, env.llama, env.gpt2, env.bert)
    before = snapshot(*inputs, skip=skip_output)

    code = main(["-q", *argv])
    err = capsys.readouterr().err

    assert code == case.code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    if case.message:
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err!r}"
        assert case.message in lines[0]
        if case.code:
            assert lines[0].startswith("error: ")
    else:
        assert lines == [], err
    assert snapshot(*inputs, skip=skip_output) == before, "an input or a file of the user's changed"
    assert leftovers(env.work) == sorted(str(env.path(k)) for k in case.keep), "a leftover directory remained"
    # A failed run's snapshot also covers the output: nothing new may appear in the working directory.
    case.check(env)


# --------------------------------------------------------------------------- beside the table


def test_a_variant_that_does_not_exist_fails_before_anything_is_timed(tiny_llama_dir, tmp_path, monkeypatch):
    from compress.bench import Suite
    from compress.bench.harness import plan

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    suite = Suite.from_dict({"base": str(tiny_llama_dir), "variants": [
        {"name": "typo", "model": "out/typo"}, {"name": "hub", "model": "nobody-here/nothing"}]})
    base, typo, hub = plan(suite)
    assert base.runnable
    assert not typo.runnable and "does not exist" in typo.errors[0]["error"]
    assert not hub.runnable and "no hub model nobody-here/nothing reachable" in hub.errors[0]["error"]


def test_a_pattern_records_the_sparsity_it_implies(tiny_llama_dir, tmp_path, capsys):
    assert main(["-q", "prune", str(tiny_llama_dir), *QUICK, "--pattern", "1:4", "-o", str(tmp_path / "o")]) == 0
    config = json.loads((tmp_path / "o" / "compress.json").read_text())["passes"][-1]["config"]
    assert config["pattern"] == "1:4" and config["sparsity"] == 0.75 and config["scope"] == "row"


def test_text_options_reach_the_reader(tiny_llama_dir, tmp_path):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"body": f"line {i} of words here"}) + "\n" for i in range(400)))
    (tmp_path / "latin.txt").write_bytes(("Caf\xe9 au lait. " * 400 + "\n" + "Cr\xe8me. " * 400).encode("latin-1"))
    common = ["-q", "prune", str(tiny_llama_dir), "--method", "wanda", "--eval-text", "none", "--calib-seq-len", "16",
              "--calib-samples", "2"]
    assert main([*common, "--calib-text", str(tmp_path / "t.jsonl"), "--text-field", "body", "-o", str(tmp_path / "a")]) == 0
    assert main([*common, "--calib-text", str(tmp_path / "latin.txt"), "--encoding", "latin-1", "-o", str(tmp_path / "b")]) == 0


@pytest.mark.parametrize("command", [["run"], ["prune"], ["quantize"], ["distill"], ["export", "onnx"], ["bench"]])
def test_every_command_that_loads_a_model_offers_trust_remote_code(command, capsys):
    assert main([*command, "--help"]) == 0
    assert "--trust-remote-code" in capsys.readouterr().out


def _compress(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "compress", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def _wait_until_torch_is_loading(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Return once the child has mapped libtorch: it is then inside compress's own imports.

    Before compress's first line runs (site, runpy) a Ctrl-C is Python's to answer, not ours.
    """
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see when the command line is inside its imports")
    deadline = time.monotonic() + timeout
    while "libtorch" not in maps.read_text():
        assert proc.poll() is None, "the command ended before it imported torch"
        assert time.monotonic() < deadline, "the command did not import torch within a minute"
        time.sleep(0.005)


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path):
    proc = _compress("prune", "smollm2", "-o", str(tmp_path / "out"))
    _wait_until_torch_is_loading(proc)  # a fixed sleep lands in the interpreter's own start-up on a cold machine
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert len(err.splitlines()) == 1 and "interrupted" in err, err
    assert not (tmp_path / "out").exists()


def test_library_warnings_stay_off_stderr_without_verbose(tiny_llama_dir, tmp_path):
    """bitsandbytes warns about its CPU 'kernels' as it loads; transformers about weights it ties."""
    quiet = _compress("-q", "quantize", str(tiny_llama_dir), "--method", "bnb-int8", "--eval-text", "none",
                      "-o", str(tmp_path / "quiet"))
    _, err = quiet.communicate(timeout=300)
    assert quiet.returncode == 0, err
    assert err == "", err


@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_lets_library_warnings_through(verbose):
    import logging

    from compress.progress import THIRD_PARTY, configure

    configure(quiet=False, verbose=verbose)
    try:
        for name in THIRD_PARTY:
            assert logging.getLogger(f"{name}.inner").isEnabledFor(logging.WARNING) == verbose, name
            assert logging.getLogger(name).isEnabledFor(logging.ERROR)
    finally:
        configure()
