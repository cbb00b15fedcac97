"""SIGKILL a `compress distill` run mid-training, `--resume` it, and compare with an uninterrupted run.

    python benchmarks/distillation/kill_resume.py

The model is a small GPT-2 (dropout on, so the random state must be restored
too) built here with the built-in model's tokenizer; the commands are the real
CLI. It checks that every checkpoint directory on disk after the kill is
complete (loads), that the resumed run finishes, and that its final loss and
weights equal the uninterrupted run's. Writes results/kill_resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))


def build_model(path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from compress.models import load_artifact

    tokenizer = load_artifact("smollm2-135m-instruct").tokenizer
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=4, n_head=4, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        initializer_range=0.2)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def distill_cmd(teacher: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "compress", "-q", "distill", "--teacher", str(teacher), "--student-layers", "2",
            "-o", str(out), "--steps", str(steps), "--batch-size", "2", "--seq-len", "64", "--lr", "3e-3",
            "--warmup-steps", "2", "--checkpoint-every", "1", "--keep-checkpoints", "--calib-samples", "64",
            "--eval-windows", "2", "--eval-seq-len", "128", *extra]


def final_state(out: Path) -> tuple[float, dict]:
    from safetensors.torch import load_file

    metrics = json.loads((out / "compress.json").read_text())["passes"][-1]["metrics"]
    return metrics["final_loss"], load_file(out / "model.safetensors")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "out" / "kill-resume"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--kill-after", type=int, default=6, help="kill once this step's checkpoint exists")
    args = ap.parse_args(argv)
    import shutil

    import torch

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    teacher = work / "teacher"
    build_model(teacher)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    t0 = time.perf_counter()
    subprocess.run(distill_cmd(teacher, work / "uninterrupted", args.steps), env=env, check=True)
    uninterrupted_s = time.perf_counter() - t0

    ckpt = work / "killed.checkpoints"
    proc = subprocess.Popen(distill_cmd(teacher, work / "killed", args.steps), env=env)
    target = ckpt / f"step-{args.kill_after:06d}"
    while not target.exists():
        if proc.poll() is not None:
            raise SystemExit(f"the run ended (rc {proc.returncode}) before step {args.kill_after}; raise --steps")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    on_disk = sorted(p.name for p in ckpt.iterdir())
    complete = []
    for p in ckpt.iterdir():
        if p.name.startswith("step-"):
            state = torch.load(p / "training_state.pt", map_location="cpu", weights_only=False)
            complete.append({"dir": p.name, "step": state["step"]})
    killed_at = max(c["step"] for c in complete)

    t0 = time.perf_counter()
    subprocess.run(distill_cmd(teacher, work / "killed", args.steps, "--resume"), env=env, check=True)
    resume_s = time.perf_counter() - t0

    loss_a, weights_a = final_state(work / "uninterrupted")
    loss_b, weights_b = final_state(work / "killed")
    max_diff = max(float((weights_a[k] - weights_b[k]).abs().max()) for k in weights_a)
    result = {
        "command": "python benchmarks/distillation/kill_resume.py " + " ".join(sys.argv[1:]),
        "model": "GPT-2, 4 layers, width 64, dropout 0.1, SmolLM2 tokenizer; student: 2 of its layers",
        "steps": args.steps, "signal": "SIGKILL", "killed_after_checkpoint_of_step": killed_at,
        "checkpoint_dir_after_kill": on_disk, "complete_checkpoints_after_kill": complete,
        "final_loss_uninterrupted": loss_a, "final_loss_resumed": loss_b,
        "final_loss_abs_difference": abs(loss_a - loss_b), "max_abs_weight_difference": max_diff,
        "same_within_1e-6": abs(loss_a - loss_b) <= 1e-6 * max(1.0, abs(loss_a)),
        "uninterrupted_seconds": round(uninterrupted_s, 1), "resume_seconds": round(resume_s, 1),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "kill_resume.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
