"""Sparsity-preserving recovery on the built-in model: prune, measure, distill with the zeros kept, measure.

    python benchmarks/recovery/run.py                      # both variants, the issue's settings
    python benchmarks/recovery/run.py --only 2:4 --steps 600
    python benchmarks/recovery/run.py --smoke --results /tmp/recovery-smoke   # minutes: proves the path runs

Variants (issue 13's targets, judged on WikiText-2 valid, which neither
calibration nor training reads):

* ``wanda-50``: Wanda 50 % per row (sequential calibration); target after recovery
  <= 1.4x the base perplexity with the sparsity still exactly 50 %;
* ``2:4``: 2:4 pruning (``--prune-2-4 sparsegpt`` by default, the better start;
  ``wanda`` also possible); target <= 2.0x with the 2:4 pattern in every group.

Each recovery is plain distillation from the unpruned model (forward KL on its
logits) with ``keep_sparsity`` on, trained on the built-in corpus's calibration
half; the target is at most 30 CPU-minutes of training, so the training wall
time and the process CPU time are recorded. Quality is measured twice, the
runtime being PyTorch eager float32 on the CPU:

* out of domain: WikiText-2 valid (tokenized), ``--eval-windows`` x ``--eval-seq-len``;
* in domain: the built-in corpus's evaluation half (the calibration and training
  text's other half), same windows.

Each variant writes results/<variant>.json; results/README.md is the table.
Timing numbers from a shared machine are not speed claims (training wall time
grows with the load); CPU minutes are the process's own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

WIKI = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"
VARIANTS = {
    "wanda-50": {"target_ppl_ratio": 1.4},
    "2:4": {"target_ppl_ratio": 2.0},
}
TRAIN_BUDGET_CPU_MINUTES = 30


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--only", choices=sorted(VARIANTS), action="append", help="run only these variants")
    ap.add_argument("--prune-2-4", choices=["sparsegpt", "wanda"], default="sparsegpt")
    ap.add_argument("--wiki", default=str(WIKI), help="the out-of-domain evaluation text")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--train-windows", type=int, default=None, help="training windows (default: all of the text)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=20)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="training compute dtype (bfloat16: autocast; the weights stay float32)")
    ap.add_argument("--text", default="builtin",
                    help="calibration and training text, its calibration part (builtin, mixed, ...)")
    ap.add_argument("--curve-every", type=int, default=0,
                    help="student perplexity on the first --curve-windows WikiText-2 evaluation windows every N "
                         "steps (measured only, inside the training time)")
    ap.add_argument("--curve-windows", type=int, default=2)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seq-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--save", default=None, help="also save each recovered model under this directory")
    ap.add_argument("--smoke", action="store_true",
                    help="a few steps on tiny windows: checks that everything runs, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.calib_samples, args.calib_seq_len = 4, 128
        args.steps, args.batch_size, args.seq_len, args.train_windows, args.warmup_steps = 2, 2, 64, 8, 0
        args.eval_windows, args.eval_seq_len = 1, 128
    return args


def evaluation_sets(args) -> dict:
    """Out of domain (WikiText-2 valid, wholly unseen) and in domain (the built-in corpus's other half)."""
    from compress.data import TextSpec, check_disjoint
    from compress.recipe import EvaluationData

    sets = {"wikitext2": EvaluationData(source=args.wiki, split="all", windows=args.eval_windows,
                                        seq_len=args.eval_seq_len),
            "builtin": EvaluationData(source="builtin", split="evaluation", windows=args.eval_windows,
                                      seq_len=args.eval_seq_len)}
    for spec in sets.values():
        check_disjoint(TextSpec(source=args.text, split="calibration"), spec)
    return sets


def prune_pass(name: str, args):
    from compress.passes.base import build_pass

    if name == "wanda-50":
        return build_pass("wanda_prune", {"sparsity": 0.5})
    return build_pass(f"{args.prune_2_4}_prune", {"pattern": "2:4"})


def quality(base, model, windows: dict) -> dict:
    from compress.evaluate import compare

    out = {}
    for domain, w in windows.items():
        m = compare(base.model, model, w, desc=f"evaluating ({domain})")
        out[domain] = {"perplexity": m["perplexity"], "perplexity_base": m["perplexity_base"],
                       "ppl_ratio": m["perplexity"] / m["perplexity_base"], "kl_mean": m["kl_mean"],
                       "top1_agreement": m["top1_agreement"]}
    return out


def run_variant(name: str, args, base, windows: dict) -> dict:
    from compress.data import TextSpec
    from compress.distill import TrainConfig, distill_into, summarize, training_windows
    from compress.passes.base import CalibrationData, PassContext

    calibration = CalibrationData(source=args.text, split="calibration", samples=args.calib_samples,
                                  seq_len=args.calib_seq_len)
    prune = prune_pass(name, args)
    start = time.perf_counter()
    student = prune(base, PassContext(calibration=calibration))
    prune_seconds = time.perf_counter() - start
    before = quality(base, student.model, windows)

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         warmup_steps=args.warmup_steps, kl_weight=1.0, keep_sparsity=True, dtype=args.dtype,
                         eval_every=args.curve_every)
    train = training_windows(base.tokenizer, TextSpec(source=args.text, split="calibration"), args.seq_len,
                             args.train_windows)
    curve_windows = None
    if args.curve_every:
        from compress.data import Windows

        w = windows["wikitext2"]
        curve_windows = Windows(w.input_ids[:args.curve_windows], w.score_from[:args.curve_windows],
                                {**w.provenance, "windows_used": args.curve_windows})
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    result = distill_into(student, base, train, config, eval_windows=curve_windows, final_eval=False)
    train_cpu, train_wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    student.record_pass("distill", config.model_dump(mode="json"), summarize(result), train_wall)
    after = quality(base, student.model, windows)
    if args.save:
        from compress.saving import save_artifact

        save_artifact(student, Path(args.save) / name.replace(":", "-"), force=True)

    sparsity = result["sparsity"]
    target = VARIANTS[name]["target_ppl_ratio"]
    pattern = sparsity.get("pattern")
    zeros_kept = sparsity["pruned_weights_revived"] == 0 and (pattern is None or not pattern["groups_breaking_it_after"])
    return {
        "variant": name, "prune": {"pass": prune.name, "config": prune.config(), "seconds": round(prune_seconds, 1)},
        "train": {**config.model_dump(mode="json"), "train_data": train.provenance},
        "quality_before_recovery": before, "quality_after_recovery": after,
        "sparsity": {k: v for k, v in sparsity.items() if k != "per_matrix"},
        "train_wall_seconds": round(train_wall, 1), "train_cpu_minutes": round(train_cpu / 60, 2),
        "loss_curve": summarize(result, every=max(1, args.steps // 10))["loss_curve"],
        "wiki_ppl_curve": {"windows": args.curve_windows if args.curve_every else 0, "points": result["evals"]},
        "targets": {"ppl_ratio_max": target, "met_ppl": after["wikitext2"]["ppl_ratio"] <= target,
                    "met_zeros": zeros_kept,
                    "met_budget": train_cpu / 60 <= TRAIN_BUDGET_CPU_MINUTES},
        "smoke": args.smoke,
    }


def environment() -> dict:
    import torch

    from compress.bench.metrics import cpu_model
    from compress.saving import library_versions

    return {"date": dt.date.today().isoformat(), "cpu": cpu_model(), "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(), "versions": library_versions(),
            "command": "python benchmarks/recovery/run.py " + " ".join(sys.argv[1:])}


def table(results: list[dict], env: dict) -> str:
    lines = [
        "# Sparsity-preserving recovery (issue 13)", "",
        f"Command: `{env['command']}`  ",
        f"Date {env['date']}, {env['cpu']}, {env['torch_threads']} torch threads; runtime: PyTorch eager float32, CPU.",
        "", "Perplexity as a multiple of the base model's and mean KL(base || variant) per token, before and after "
        "recovery; out of domain: WikiText-2 valid (tokenized), which neither calibration nor training read; in "
        "domain: the built-in corpus's evaluation half (its other half trained the student).", "",
        "| variant | ppl x base wiki (before -> after) | KL wiki | ppl x base builtin | KL builtin | sparsity after "
        "| N:M groups broken | train wall s | train CPU min | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, a = r["quality_before_recovery"], r["quality_after_recovery"]
        s = r["sparsity"]
        pattern = s.get("pattern")
        t = r["targets"]
        verdict = "smoke run" if r["smoke"] else ("met" if t["met_ppl"] and t["met_zeros"] and t["met_budget"]
                                                   else "not met")
        lines.append(
            f"| {r['variant']} ({r['prune']['pass']}) | {b['wikitext2']['ppl_ratio']:.2f} -> "
            f"{a['wikitext2']['ppl_ratio']:.2f} | {b['wikitext2']['kl_mean']:.3f} -> {a['wikitext2']['kl_mean']:.3f} "
            f"| {b['builtin']['ppl_ratio']:.2f} -> {a['builtin']['ppl_ratio']:.2f} | {b['builtin']['kl_mean']:.3f} -> "
            f"{a['builtin']['kl_mean']:.3f} | {s['sparsity_after']:.2%} | "
            f"{pattern['groups_breaking_it_after'] if pattern else '-'} | {r['train_wall_seconds']:.0f} | "
            f"{r['train_cpu_minutes']:.1f} | <= {t['ppl_ratio_max']}x: {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from compress.models import load_artifact

    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    base = load_artifact(args.model)
    windows = {domain: spec.load(base.tokenizer) for domain, spec in evaluation_sets(args).items()}
    env = environment()
    results = []
    for name in args.only or list(VARIANTS):
        record = {**run_variant(name, args, base, windows), "environment": env,
                  "eval_data": {d: w.provenance for d, w in windows.items()}}
        (results_dir / f"{name.replace(':', '-')}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        results.append(record)
        print(table([record], env).splitlines()[-1], flush=True)
    (results_dir / "README.md").write_text(table(results, env))


if __name__ == "__main__":
    main()
