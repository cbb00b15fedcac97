"""SIGKILL at any moment of `--force` replacing an earlier output never loses it, and the next run tidies up.

A child process (forked, so it needs no fresh imports) runs `compress prune ... -o OUT
--force` over an earlier output and kills itself with SIGKILL at the k-th file-system
step of the save: every directory made, file opened for writing, rename, swap and
deletion in the output's folder, as Python's audit hooks report them. For each k the
test checks that OUT loads and is complete, the earlier output or the new one, never a
mix; then it runs the command again and checks that no `.OUT.partial-PID` /
`.OUT.old-PID` is left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from compress.cli import main
from compress.saving import MANIFEST_NAME

pytestmark = pytest.mark.slow

FS_EVENTS = {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree",
             "shutil.copyfile", "ctypes.call_function"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _touches(folder: bytes, event: str, args: tuple) -> bool:
    """Whether an audit event is a file-system step in `folder` (rmtree's inner steps name files relative to it)."""
    if event not in FS_EVENTS:
        return False
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        return writes and isinstance(path, (str, bytes)) and folder in os.fsencode(path)
    if event in ("os.remove", "os.rmdir") and args[-1] is not None:  # (path, dir_fd): inside an rmtree
        return True
    if event == "ctypes.call_function":
        return any(isinstance(a, bytes) and folder in a for a in args[1])
    return any(isinstance(a, (str, bytes, os.PathLike)) and folder in os.fsencode(a) for a in args)


def run_child(argv: list[str], folder: Path, kill_at: int | None, count_file: Path) -> int:
    """Fork; the child runs the CLI and SIGKILLs itself at its kill_at-th step in `folder` after the save starts.

    Returns the child's wait status. Without kill_at, the child writes how many steps it took.
    """
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    try:  # the child: never returns into pytest
        import torch

        torch.set_num_threads(1)
        target, state = os.fsencode(folder), {"armed": False, "steps": 0}

        def hook(event, args):
            if not state["armed"]:
                # The save starts when the hidden directory that becomes the output is made.
                state["armed"] = event == "os.mkdir" and b".partial-" in os.fsencode(args[0]) and target in os.fsencode(args[0])
                if not state["armed"]:
                    return
            elif not _touches(target, event, args):
                return
            state["steps"] += 1
            if kill_at is not None and state["steps"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        sys.addaudithook(hook)
        code = main(argv)
        state["armed"], kill_at = False, None  # the bookkeeping below is not part of the run
        steps = state["steps"]
        count_file.write_text(json.dumps({"code": code, "steps": steps}))
        os._exit(0)
    except BaseException:
        os._exit(99)


def output_state(out: Path) -> float:
    """The sparsity the output at `out` was pruned to, after checking it is whole and loads with stock transformers."""
    from transformers import AutoModelForCausalLM

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert present == sorted(manifest["files"]), "the output is not whole"
    AutoModelForCausalLM.from_pretrained(out)
    return manifest["passes"][-1]["config"]["sparsity"]


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and
                  (".partial-" in p.name or ".old-" in p.name))


def prune_argv(model: Path, out: Path, sparsity: float) -> list[str]:
    return ["-q", "prune", str(model), "--method", "magnitude", "--sparsity", str(sparsity), "--eval-text", "none",
            "-o", str(out), "--force"]


def test_sigkill_at_any_moment_of_a_replacement_keeps_an_output_that_loads(tiny_llama_dir, tmp_path, capsys):
    folder = tmp_path / "outs"
    out = folder / "pruned"
    count_file = tmp_path / "count.json"
    assert main(prune_argv(tiny_llama_dir, out, 0.3)) == 0  # the earlier output

    # How many steps a whole save takes, in a child like the killed ones.
    status = run_child(prune_argv(tiny_llama_dir, out, 0.5), folder, None, count_file)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    counted = json.loads(count_file.read_text())
    assert counted["code"] == 0
    total = counted["steps"]
    assert total >= 12, f"a save took only {total} steps"
    assert output_state(out) == 0.5

    moments = sorted({1 + round(i * (total - 1) / 11) for i in range(12)})
    seen = set()
    for k in moments:
        earlier, new = (0.3, 0.5) if k % 2 else (0.5, 0.3)  # alternate, so that a swap always shows
        assert main(prune_argv(tiny_llama_dir, out, earlier)) == 0
        capsys.readouterr()
        status = run_child(prune_argv(tiny_llama_dir, out, new), folder, k, count_file)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"step {k}: the child was not killed"

        after_kill = output_state(out)  # whole and loadable, whatever the moment
        assert after_kill in (earlier, new), f"step {k}"
        seen.add("earlier" if after_kill == earlier else "new")

        assert main(prune_argv(tiny_llama_dir, out, new)) == 0
        err = capsys.readouterr().err
        assert leftovers(folder, out.name) == [], f"step {k}: a stale directory remained"
        assert output_state(out) == new
        assert "Traceback" not in err
    assert len(moments) >= 10
    assert seen == {"earlier", "new"}, "the kills should land both before and after the swap"


def test_a_kill_between_the_two_renames_of_the_fallback_is_undone_by_the_next_run(tiny_llama_dir, tmp_path, monkeypatch):
    """Where the system cannot swap two directories in one step, the earlier output waits in .NAME.old-PID."""
    import compress.saving as saving

    out = tmp_path / "pruned"
    assert main(prune_argv(tiny_llama_dir, out, 0.3)) == 0
    monkeypatch.setattr(saving, "_exchange", lambda a, b: False)
    renamed = []
    real_rename = Path.rename

    def rename_then_die(self, target):
        result = real_rename(self, target)
        renamed.append(Path(target))
        if ".old-" in str(target):
            raise SystemExit("killed")  # what SIGKILL would leave: the first rename done, the second not
        return result

    monkeypatch.setattr(Path, "rename", rename_then_die)
    with pytest.raises(SystemExit):
        with saving.atomic_directory(out, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(Path, "rename", real_rename)
    old = renamed[-1]
    assert not out.exists() and old.is_dir()
    # The dead run's PID is this process's; pretend it was another that died.
    dead = old.with_name(old.name.rsplit("-", 1)[0] + "-999999999")
    old.rename(dead)
    for partial in tmp_path.glob(".pruned.partial-*"):
        partial.rename(partial.with_name(".pruned.partial-999999998"))
    saving.remove_stale_leftovers(out)
    assert output_state(out) == 0.3
    assert leftovers(tmp_path, out.name) == []
