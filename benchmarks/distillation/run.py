"""Distillation benchmark on the built-in model: recovery of a pruned student, a half-depth
student distilled vs trained on cross-entropy alone, and decode speed against the teacher.

Each phase writes results/<phase>.json; `table` turns them into results/README.md.

    python benchmarks/distillation/run.py all --steps 60 --batch-size 4 --seq-len 256 --lr 2e-4

Phases: prepare (teacher and the two untrained students' perplexity; saves the students),
recovery, layers-kd, layers-ce (training runs), speed (decode ratio, one process, interleaved),
table. Training text is the calibration half of the WikiText-2 file; evaluation its first
windows, which training never sees (compress.data.check_disjoint).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

RESULTS = HERE / "results"  # --results changes it (e.g. for a smoke run on a tiny model)
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"
PHASES = ["prepare", "recovery", "layers-kd", "layers-ce", "speed", "table"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=PHASES + ["all"])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--text", default=str(WIKI), help="training (calibration half) and evaluation (first windows) text")
    ap.add_argument("--work", default=str(ROOT / "out" / "distill-bench"), help="where students are saved")
    ap.add_argument("--student", default=None, help="a saved structured-pruned student (default: the stand-in)")
    ap.add_argument("--prune-ratio", type=float, default=0.25)
    ap.add_argument("--student-layers", type=int, default=15)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seq-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=str(RESULTS), help="where the JSON and the Markdown table go")
    ap.add_argument("--speed-repeats", type=int, default=5)
    ap.add_argument("--tag", default="", help="suffix for a training phase's JSON and output (a second run's settings)")
    return ap.parse_args(argv)


def specs(args):
    from compress.data import TextSpec, check_disjoint
    from compress.recipe import EvaluationData

    train = TextSpec(source=args.text, split="calibration")
    evaluation = EvaluationData(source=args.text, split="evaluation", windows=args.eval_windows, seq_len=args.eval_seq_len)
    check_disjoint(train, evaluation)
    return train, evaluation


def save_json(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def load_json(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def command_line() -> str:
    return "python benchmarks/distillation/run.py " + " ".join(sys.argv[1:])


def train_config(args, kd: bool):
    from compress.distill import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                       warmup_steps=args.warmup_steps, seed=args.seed, temperature=args.temperature,
                       kl_weight=1.0 if kd else 0.0, ce_weight=0.0 if kd else 1.0)


def phase_prepare(args):
    import torch

    from compress.distill import training_windows
    from compress.evaluate import perplexity
    from compress.models import load_artifact
    from compress.passes.base import CalibrationData, PassContext
    from compress.passes.distillation import DropLayers
    from compress.saving import save_artifact
    from standin_prune import prune_mlp_channels

    train, evaluation = specs(args)
    work = Path(args.work)
    teacher = load_artifact(args.model)
    windows = evaluation.load(teacher.tokenizer)
    out = {"eval_data": windows.provenance}
    t0 = time.perf_counter()
    out["teacher_perplexity"] = perplexity(teacher.model, windows, desc="teacher")["perplexity"]
    out["teacher_eval_seconds"] = round(time.perf_counter() - t0, 1)

    if args.student:
        pruned = load_artifact(args.student)
        out["pruned_student"] = {"source": args.student}
    else:
        pruned = teacher.copy()
        calib = training_windows(teacher.tokenizer, train, 512, 8)
        info = prune_mlp_channels(pruned.model, calib.input_ids, args.prune_ratio)
        pruned.record_pass("standin_structured_mlp_prune", {"ratio": args.prune_ratio}, info, 0.0)
        save_artifact(pruned, work / "pruned", force=True)
        out["pruned_student"] = {"source": "stand-in (benchmarks/distillation/standin_prune.py)", **info}
    out["pruned_perplexity"] = perplexity(pruned.model, windows, desc="pruned")["perplexity"]

    ctx = PassContext(calibration=CalibrationData(source=train.source, split="calibration"))
    shallow = DropLayers(layers=args.student_layers)(teacher, ctx)
    save_artifact(shallow, work / "shallow", force=True)
    out["shallow_student"] = shallow.passes[-1]["metrics"]
    out["shallow_perplexity"] = perplexity(shallow.model, windows, desc="shallow")["perplexity"]
    from compress.layers import count_parameters

    out["parameters"] = {"teacher": count_parameters(teacher.model)["parameters"],
                         "pruned": count_parameters(pruned.model)["parameters"],
                         "shallow": count_parameters(shallow.model)["parameters"]}
    out["torch_threads"] = torch.get_num_threads()
    save_json("prepare", out)
    return out


def phase_train(args, name: str, student_dir: str, kd: bool):
    from compress.distill import distill_into, summarize, training_windows
    from compress.evaluate import perplexity
    from compress.models import load_artifact
    from compress.saving import save_artifact

    train, evaluation = specs(args)
    work = Path(args.work)
    teacher = load_artifact(args.model) if kd else None
    student = load_artifact(student_dir if Path(student_dir).is_absolute() else str(work / student_dir))
    tokens = training_windows(student.tokenizer, train, args.seq_len)
    windows = evaluation.load(student.tokenizer)
    config = train_config(args, kd)
    start = time.perf_counter()
    result = distill_into(student, teacher, tokens, config, final_eval=False)
    train_seconds = time.perf_counter() - start
    ppl = perplexity(student.model, windows, desc=f"{name} after")["perplexity"]
    student.record_pass("distill", config.model_dump(mode="json"), summarize(result), train_seconds)
    save_artifact(student, work / name, force=True)
    out = {"command": command_line(), "config": config.model_dump(mode="json"), "train_data": tokens.provenance,
           "eval_data": windows.provenance, "perplexity_after": ppl, "train_seconds": round(train_seconds, 1),
           "wall_seconds": round(time.perf_counter() - start, 1), **summarize(result, every=max(1, args.steps // 10))}
    save_json(name, out)
    return out


def decode_once(model, prompt, new_tokens: int):
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, min_new_tokens=1,
                       do_sample=False, pad_token_id=0)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        total = time.perf_counter() - t0
    return prefill, (new_tokens - 1) / max(total - prefill, 1e-9)


def phase_speed(args):
    import torch

    from compress.data import TextSpec, load_text, tokenize
    from compress.models import load_artifact

    work = Path(args.work)
    # Decode speed depends on the architecture, not on the weights: when the
    # distilled half-depth student is not on disk, its untrained copy stands in.
    shallow = work / "layers-kd" if (work / "layers-kd").is_dir() else work / "shallow"
    models = {"teacher": load_artifact(args.model), "recovered": load_artifact(str(work / ("recovery" + args.tag))),
              f"half-depth ({shallow.name})": load_artifact(str(shallow))}
    text = load_text(TextSpec(source=args.text, split="calibration")).text
    prompt = torch.tensor([tokenize(models["teacher"].tokenizer, text)[:128]])
    samples: dict[str, dict[str, list[float]]] = {k: {"prefill_s": [], "decode_tok_s": []} for k in models}
    for art in models.values():  # warm-up
        decode_once(art.model, prompt, 8)
    for _ in range(args.speed_repeats):
        for name, art in models.items():  # interleaved: each repeat runs every model once
            prefill, rate = decode_once(art.model, prompt, 64)
            samples[name]["prefill_s"].append(prefill)
            samples[name]["decode_tok_s"].append(rate)
    summary = {}
    base = statistics.median(samples["teacher"]["decode_tok_s"])
    for name, s in samples.items():
        med = statistics.median(s["decode_tok_s"])
        summary[name] = {"decode_tok_s_median": med, "decode_tok_s_min": min(s["decode_tok_s"]),
                         "decode_tok_s_max": max(s["decode_tok_s"]),
                         "prefill_s_median": statistics.median(s["prefill_s"]), "ratio_to_teacher": med / base,
                         "raw": s}
    out = {"command": command_line(), "prompt_tokens": 128, "new_tokens": 64, "repeats": args.speed_repeats,
           "torch_threads": torch.get_num_threads(), "models": summary}
    save_json("speed", out)
    return out


def environment() -> dict:
    from compress.bench.metrics import cpu_model
    from compress.saving import library_versions

    cpu = cpu_model()
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": library_versions(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def phase_table(args):
    prep, kd, ce, speed = (load_json(n) for n in ["prepare", "layers-kd", "layers-ce", "speed"])
    recoveries = sorted((json.loads(p.read_text()) for p in RESULTS.glob("recovery*.json")),
                        key=lambda r: (r["config"]["steps"], r["config"]["lr"]))
    env = load_json("environment") or environment()
    lines = ["# Distillation benchmark", "",
             f"Date (start of the last phase run): {env.get('date')}. CPU: {env['cpu']}, {env['cores']} cores; load "
             f"average when that phase started: {env.get('load_average', 'not recorded')} (above 0 means other jobs "
             "shared the cores, so wall times are upper bounds).", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), ""]
    if prep:
        ev = prep["eval_data"]
        lines += [f"Evaluation: {ev['source']} ({ev['split']} part), first {ev['windows']} windows of "
                  f"{ev['seq_len']} tokens ({ev['scored_tokens']} scored tokens), token-level perplexity.", ""]
        if ev["windows"] < 16:
            lines += [f"Deviation from BENCH_PROTOCOL.md: {ev['windows']} evaluation windows instead of 16, because "
                      f"one 1,024-token teacher forward took about {prep['teacher_eval_seconds'] / ev['windows']:.0f} s "
                      "on the shared CPU; small perplexity differences are within noise at this size.", ""]
    if kd:
        td = kd["train_data"]
        lines += [f"Training text: {td['source']} ({td['split']} part, {td['windows']} windows of {td['seq_len']} "
                  "tokens), never the evaluation windows. Same domain as the evaluation text.", ""]
        c = kd["config"]
        lines += [f"Settings: AdamW, warm-up steps (per row) then {c['schedule']} decay to "
                  f"{c['min_lr_ratio']}x the peak lr, clip {c['clip_norm']}, seed {c['seed']}, {c['dtype']}, torch "
                  f"threads {(prep or {}).get('torch_threads')}; steps, batch and lr per row. Distilled runs: forward "
                  f"KL at T={c['temperature']} only; the cross-entropy run: cross-entropy only.", ""]
    lines += ["## Quality", "", "| model | parameters | perplexity | training | train wall time | command |",
              "|---|---:|---:|---|---:|---|"]
    if prep:
        p = prep["parameters"]
        lines.append(f"| teacher ({args.model}, {prep['shallow_student']['teacher_layers']} layers) | {p['teacher']:,} | {prep['teacher_perplexity']:.2f} | | | |")
        lines.append(f"| pruned student, 25% MLP channels removed, untrained | {p['pruned']:,} | {prep['pruned_perplexity']:.2f} | | | `{cmd(prep)}` |")
        for rec in recoveries:
            lines.append(f"| pruned student after distillation (recovery) | {p['pruned']:,} | {rec['perplexity_after']:.2f} | {run_settings(rec)} | {rec['train_seconds']:.0f} s | `{rec['command']}` |")
        n = prep["shallow_student"]["kept_layers"]
        lines.append(f"| {len(n)}-layer student (layers {n}), untrained | {p['shallow']:,} | {prep['shallow_perplexity']:.2f} | | | |")
        if kd:
            lines.append(f"| {len(n)}-layer student, distilled (KL) | {p['shallow']:,} | {kd['perplexity_after']:.2f} | {run_settings(kd)} | {kd['train_seconds']:.0f} s | `{kd['command']}` |")
        if ce:
            lines.append(f"| {len(n)}-layer student, cross-entropy only | {p['shallow']:,} | {ce['perplexity_after']:.2f} | {run_settings(ce)} | {ce['train_seconds']:.0f} s | `{ce['command']}` |")
        lines.append("")
        for rec in recoveries:
            if prep["pruned_perplexity"] <= prep["teacher_perplexity"]:
                break
            gap_before = prep["pruned_perplexity"] - prep["teacher_perplexity"]
            gap_after = rec["perplexity_after"] - prep["teacher_perplexity"]
            closed = 1 - gap_after / gap_before
            lines += [f"Recovery ({run_settings(rec)}) closed {closed:.2%} of the pruned student's perplexity gap "
                      f"to the teacher ({gap_before:.2f} -> {gap_after:.2f}); target: at least 50%: "
                      f"{'met' if closed >= 0.5 else 'NOT met'}.", ""]
        if kd and ce:
            better = kd["perplexity_after"] < ce["perplexity_after"]
            lines += [f"Half-depth student: distilled {kd['perplexity_after']:.2f} vs cross-entropy only "
                      f"{ce['perplexity_after']:.2f} (same steps, data, seed): distillation "
                      f"{'wins' if better else 'does NOT win'}.", ""]
        lines += [f"The pruned student is {prep['pruned_student']['source']}.", ""]
    if speed:
        lines += ["## Decode speed (one process, models interleaved)", "",
                  f"Batch 1, {speed['prompt_tokens']}-token prompt, {speed['new_tokens']} new tokens, greedy, "
                  f"PyTorch eager fp32, torch threads {speed['torch_threads']}; one warm-up, {speed['repeats']} "
                  "interleaved repeats; median (min-max). All models in one process rather than one process each, "
                  "so the ratio is measured under the same load. Command: "
                  f"`{speed['command']}`", "",
                  "| model | decode tokens/s | ratio to teacher | prefill (s) |", "|---|---:|---:|---:|"]
        for name, s in speed["models"].items():
            lines.append(f"| {name} | {s['decode_tok_s_median']:.1f} ({s['decode_tok_s_min']:.1f}-"
                         f"{s['decode_tok_s_max']:.1f}) | {s['ratio_to_teacher']:.2f}x | {s['prefill_s_median']:.3f} |")
        lines.append("")
    kill = load_json("kill_resume")
    if kill:
        lines += ["## Kill and resume", "",
                  f"`{kill['command']}`: {kill['model']}, {kill['steps']} steps with a checkpoint every step through "
                  f"the real `compress distill` CLI. The run was killed with {kill['signal']} after the checkpoint of "
                  f"step {kill['killed_after_checkpoint_of_step']}; on disk afterwards: "
                  f"{', '.join(kill['checkpoint_dir_after_kill'])} (every step-* directory loads). "
                  f"`--resume` finished it: final loss {kill['final_loss_resumed']:.7f} vs "
                  f"{kill['final_loss_uninterrupted']:.7f} uninterrupted (difference "
                  f"{kill['final_loss_abs_difference']:.2g}); largest weight difference "
                  f"{kill['max_abs_weight_difference']:.2g}.", ""]
    notes = RESULTS / "notes.md"
    if notes.is_file():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    lines += ["Raw numbers: the JSON files beside this one. Regenerate with the commands above; "
              "`python benchmarks/distillation/run.py table` rebuilds this file.", ""]
    (RESULTS / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


def run_settings(run) -> str:
    c = run["config"]
    return f"{c['steps']} steps x {c['batch_size']} x {c['seq_len']} tokens, lr {c['lr']}, {c['warmup_steps']} warm-up"


def cmd(prep):
    return prep.get("command", "")


def main(argv=None):
    global RESULTS
    args = parse_args(argv)
    RESULTS = Path(args.results)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from compress.progress import configure

    configure()
    phases = PHASES if args.phase == "all" else [args.phase]
    if args.phase != "table":
        save_json("environment", {**environment(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    for phase in phases:
        start = time.perf_counter()
        if phase == "prepare":
            out = phase_prepare(args)
            out["command"] = command_line()
            out["wall_seconds"] = round(time.perf_counter() - start, 1)
            save_json("prepare", out)
        elif phase == "recovery":
            phase_train(args, "recovery" + args.tag, str(Path(args.student).resolve()) if args.student else "pruned",
                        kd=True)
        elif phase == "layers-kd":
            phase_train(args, "layers-kd", "shallow", kd=True)
        elif phase == "layers-ce":
            phase_train(args, "layers-ce", "shallow", kd=False)
        elif phase == "speed":
            phase_speed(args)
        else:
            phase_table(args)
        print(f"[{phase}] {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
