"""Regenerate benchmarks/pruning/results.{json,md}: every pruning pass on the built-in model.

    python benchmarks/pruning/run.py --eval-text ../shared/data/wikitext-2/wiki.valid.tokens

For each variant: perplexity (with --kl also mean KL(base || variant) and top-1
agreement) on evaluation text that calibration never saw, parameter and
non-zero counts, and the seconds the pruning took (calibration included; the
calibration statistics are cached, so only the first calibrated pass pays).
Structured variants are saved, reloaded with a stock
`AutoModelForCausalLM.from_pretrained`, checked against the in-memory model,
and timed side by side with the base (greedy decode, interleaved repeats).
`--report-only` rewrites the Markdown from the JSON without running anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # this checkout's compress, not another installed copy

VARIANTS = [
    # (label, kind, [(pass name, config)])
    ("base", "base", []),
    ("magnitude 50% (per row)", "unstructured", [("magnitude_prune", {"sparsity": 0.5, "scope": "row"})]),
    # One-shot: every statistic from the unpruned model; sequential: block by block, on the pruned blocks' outputs.
    ("Wanda 50% (per row, one-shot)", "unstructured",
     [("wanda_prune", {"sparsity": 0.5, "scope": "row", "sequential": False})]),
    ("Wanda 50% (per row, sequential)", "unstructured",
     [("wanda_prune", {"sparsity": 0.5, "scope": "row", "sequential": True})]),
    ("SparseGPT 50% (per row, one-shot)", "unstructured",
     [("sparsegpt_prune", {"sparsity": 0.5, "scope": "row", "sequential": False})]),
    ("SparseGPT 50% (per row, sequential)", "unstructured",
     [("sparsegpt_prune", {"sparsity": 0.5, "scope": "row", "sequential": True})]),
    ("magnitude 2:4", "unstructured", [("magnitude_prune", {"pattern": "2:4"})]),
    ("Wanda 2:4 (one-shot)", "unstructured", [("wanda_prune", {"pattern": "2:4", "sequential": False})]),
    ("Wanda 2:4 (sequential)", "unstructured", [("wanda_prune", {"pattern": "2:4", "sequential": True})]),
    ("MLP channels -25%, magnitude", "structured", [("channel_prune", {"ratio": 0.25, "importance": "magnitude"})]),
    ("MLP channels -25%, activations", "structured", [("channel_prune", {"ratio": 0.25, "importance": "activation"})]),
    ("MLP channels -25%, activations + bias compensation", "structured",
     [("channel_prune", {"ratio": 0.25, "importance": "activation", "bias_compensation": True})]),
    ("heads -1/3 (1 of 3 KV groups), activations", "structured",
     [("head_prune", {"ratio": 1 / 3, "mode": "groups", "importance": "activation"})]),
    ("layers -3 of 30 (least change on calibration)", "structured", [("layer_drop", {"count": 3})]),
]


def environment() -> dict:
    from compress.bench.metrics import cpu_model
    from compress.saving import library_versions

    cpu = cpu_model()
    return {"cpu": cpu, "cores": os.cpu_count(), "versions": library_versions(), "platform": platform.platform()}


def run(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from compress.data import check_disjoint
    from compress.evaluate import compare, perplexity
    from compress.layers import count_parameters
    from compress.models import load_artifact
    from compress.passes.base import CalibrationData, PassContext, build_pass
    from compress.progress import configure, log
    from compress.recipe import EvaluationData
    from compress.saving import save_artifact
    from timing import side_by_side

    configure(quiet=args.quiet)
    torch.manual_seed(0)
    evaluation = EvaluationData(source=args.eval_text, split="evaluation", windows=args.eval_windows, seq_len=1024)
    calibration = CalibrationData(source=args.calib_text, split="calibration", samples=args.calib_samples, seq_len=512)
    check_disjoint(calibration, evaluation)
    base = load_artifact(args.model)
    windows = evaluation.load(base.tokenizer)
    ctx = PassContext(calibration=calibration)
    results = {"settings": {"model": args.model, "evaluation": windows.provenance,
                            "calibration": calibration.model_dump(), "quality_threads": args.threads},
               "environment": environment(), "variants": []}
    if args.note:
        results["note"] = args.note
    only = set(args.only or [])
    reloaded = {}
    tmp = Path(tempfile.mkdtemp(prefix="prune-bench-"))
    torch.set_num_threads(args.threads)
    base_counts = count_parameters(base.model)
    for label, kind, passes in VARIANTS:
        if only and label not in only and kind != "base":
            continue
        start = time.perf_counter()
        art = base
        for name, config in passes:
            art = build_pass(name, config)(art, ctx)
        seconds = time.perf_counter() - start
        row = {"label": label, "kind": kind, "passes": [{n: c} for n, c in passes], "prune_seconds": round(seconds, 1)}
        if args.speed_only:
            if kind == "unstructured":
                continue
            row["perplexity"] = None
        elif passes and args.kl:
            q = compare(base.model, art.model, windows, desc=label)
            row.update(perplexity=q["perplexity"], perplexity_base=q["perplexity_base"], kl_mean=q["kl_mean"],
                       top1_agreement=q["top1_agreement"])
        else:
            row["perplexity"] = perplexity(art.model, windows, desc=label)["perplexity"]
        if passes and not args.speed_only:
            row["pass_metrics"] = {k: v for k, v in art.passes[-1]["metrics"].items()
                                   if k not in ("sparsity_per_layer", "calibration")}
        row.update(count_parameters(art.model))
        if kind == "structured":
            out = save_artifact(art, tmp / f"v{len(reloaded)}")
            stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            probe = windows.input_ids[:1, :64]
            with torch.inference_mode():
                diff = (stock(probe).logits - art.model(probe).logits).abs().max().item()
            row["reload_max_abs_logit_diff"] = diff
            row["reloaded_parameters"] = count_parameters(stock)["parameters"]
            reloaded[label] = stock
        results["variants"].append(row)
        log.info(f"{label}: perplexity {row['perplexity']}, parameters {row['parameters']:,}, "
                 f"non-zero {row['nonzero_parameters']:,}")
        Path(args.out, f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
        del art

    if reloaded and args.repeats:
        threads = args.latency_threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        prompt = windows.input_ids[-1:, :128]  # a window's first 128 tokens, as the prompt
        models = {"base": base.model, **reloaded}
        timing = side_by_side(models, prompt, new_tokens=64, repeats=args.repeats, warmup=1)
        results["latency"] = {"settings": {"prompt_tokens": 128, "new_tokens": 64, "batch": 1, "greedy": True,
                                           "repeats": args.repeats, "warmup": 1, "threads": threads,
                                           "interleaved": True},
                              "models": timing}
    results["base_parameters"] = base_counts
    results["embedding_parameters"] = base.model.get_input_embeddings().weight.numel()
    Path(args.out, f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def calibration_text(settings: dict) -> str:
    calib = settings["calibration"]
    if calib["source"] == "builtin":
        return "the built-in corpus's calibration split (Python documentation topics; a different source)"
    return (f"`{calib['source']}`, its second half (split `calibration`, the text after the evaluation half, "
            "so the two never overlap)")


def report(results: dict, command: str) -> str:
    s, env = results["settings"], results["environment"]
    v = env["versions"]
    ev = s["evaluation"]
    lines = [
        "# Pruning the built-in model (SmolLM2-135M-Instruct)",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {results['date']}. CPU: {env['cpu']}, {env['cores']} cores; other jobs were running on the machine. "
        f"Python {v.get('python')}, torch {v.get('torch')}, transformers {v.get('transformers')}.",
        "",
        f"Evaluation: WikiText-2 valid (tokenized), `{ev['source']}`, its first half (split `evaluation`), "
        f"the first {ev['windows']} non-overlapping windows of {ev['seq_len']} tokens ({ev['scored_tokens']:,} scored "
        f"tokens). Calibration (Wanda, activation-scored channels and heads, layer scores): {calibration_text(s)}, "
        f"{s['calibration']['samples']} windows of {s['calibration']['seq_len']} tokens; it never overlaps the "
        "evaluation text. "
        f"Quality runs used {s['quality_threads']} thread(s). No fine-tuning after pruning.",
        "",
    ]
    if results.get("note"):
        lines += [f"Note: {results['note']}", ""]
    with_kl = any("kl_mean" in r for r in results["variants"])
    divergence = " KL(base‖variant) | top-1 agree |" if with_kl else ""
    lines += [f"| variant | perplexity | × base |{divergence} parameters | non-zero | pruning s |",
              "|---|---:|---:|" + ("---:|---:|" if with_kl else "") + "---:|---:|---:|"]
    base_ppl = next(r["perplexity"] for r in results["variants"] if r["kind"] == "base")
    if base_ppl is None:  # a speed-only run
        lines = lines[:6] + ["Speed only: the structured variants were built with the same passes and shapes as in "
                             "the quality table, calibrated on "
                             f"{s['calibration']['samples']} windows of {s['calibration']['seq_len']} tokens "
                             "(which channels/heads/blocks go does not change the speed; how many does). "
                             f"Parameters: " + ", ".join(f"{r['label']} {fmt_count(r['parameters'])}"
                                                         for r in results["variants"]) + "."]
        if results.get("note"):
            lines += ["", f"Note: {results['note']}"]
        return "\n".join(lines + latency_lines(results)) + "\n"
    for r in results["variants"]:
        cells = ""
        if with_kl:
            kl = f"{r['kl_mean']:.3f}" if "kl_mean" in r else "–"
            top1 = f"{r['top1_agreement']:.1%}" if "top1_agreement" in r else "–"
            cells = f" {kl} | {top1} |"
        lines.append(f"| {r['label']} | {r['perplexity']:,.2f} | {r['perplexity'] / base_ppl:,.2f} |{cells} "
                     f"{fmt_count(r['parameters'])} | {fmt_count(r['nonzero_parameters'])} | {r['prune_seconds']:.0f} |")
    lines += ["", "`pruning s`: wall time of the pass, calibration included. The calibration statistics (input norms, "
              "block changes) are collected once, by the first variant that needs them, and reused from a cache by "
              "the others; SparseGPT and every sequential variant collect their own (sequential: block by block, "
              "each block's statistics on the outputs of the blocks already pruned)."]
    if not with_kl:
        lines += ["", "KL and top-1 agreement with the base were not measured in this run (`--kl` doubles the "
                  "evaluation cost; the machine was shared)."]
    emb = results.get("embedding_parameters")
    lines += ["", "Parameters count every tensor once"
              + (f" (the tied embedding/LM head included, {fmt_count(emb)} of them)." if emb else ".")]
    reloads = [f"{r['label']}: {r['reload_max_abs_logit_diff']:.1e}"
               for r in results["variants"] if "reload_max_abs_logit_diff" in r]
    if reloads:  # a run of unstructured variants only has none
        lines.append("Structured variants were saved and reloaded with a stock `AutoModelForCausalLM.from_pretrained`; "
                     "largest logit difference from the in-memory model: " + ", ".join(reloads) + ".")
    checks = []
    for r in results["variants"]:
        if not r["passes"]:
            continue
        (name, config), = r["passes"][0].items()
        unstructured_50 = name in ("wanda_prune", "sparsegpt_prune") and not config.get("pattern")
        channels = name == "channel_prune" and config.get("importance") == "activation"
        if unstructured_50 or channels:
            ratio = r["perplexity"] / base_ppl
            checks.append(f"- {r['label']}: {ratio:.2f}× the base perplexity, "
                          f"{'within' if ratio <= 1.6 else 'NOT within'} the 1.6× target.")
    if checks:
        lines += ["", "Against the issue's targets (activation-aware 50% unstructured and structured 25% MLP with "
                  "calibration within 1.6× of the base perplexity):", "", *checks]
    return "\n".join(lines + latency_lines(results)) + "\n"


def latency_lines(results: dict) -> list[str]:
    lines = []
    lat = results.get("latency")
    if lat:
        st = lat["settings"]
        m = lat["models"]
        lines += [
            "",
            "## Decode latency, PyTorch eager on the CPU",
            "",
            f"Greedy `generate`, batch 1, {st['prompt_tokens']}-token prompt, {st['new_tokens']} new tokens, "
            f"{st['threads']} threads; {st['warmup']} warm-up and {st['repeats']} measured repeats, the models "
            "interleaved within each repeat in one process (the reloaded checkpoints). Median (min–max). "
            "Ratios are base time / variant time (above 1: the variant is faster), from medians of the same session.",
            "",
            "| model | prefill ms | decode tokens/s | total s | prefill speed-up | decode speed-up |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        b = m["base"]
        for name, t in m.items():
            p, d, tot = t["prefill_s"], t["decode_tokens_per_s"], t["total_s"]
            lines.append(
                f"| {name} | {p['median'] * 1e3:.0f} ({p['min'] * 1e3:.0f}–{p['max'] * 1e3:.0f}) | "
                f"{d['median']:.1f} ({d['min']:.1f}–{d['max']:.1f}) | {tot['median']:.2f} | "
                f"{b['prefill_s']['median'] / p['median']:.2f}× | {d['median'] / b['decode_tokens_per_s']['median']:.2f}× |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--eval-text", default="../shared/data/wikitext-2/wiki.valid.tokens")
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--calib-text", default="builtin")
    ap.add_argument("--calib-samples", type=int, default=32, help="calibration windows of 512 tokens")
    ap.add_argument("--kl", action="store_true", help="also KL and top-1 agreement with the base (doubles the cost)")
    ap.add_argument("--threads", type=int, default=1, help="threads for the quality runs")
    ap.add_argument("--repeats", type=int, default=5, help="latency repeats (0: skip latency)")
    ap.add_argument("--latency-threads", type=int, default=0, help="threads for the latency runs (0: all cores)")
    ap.add_argument("--speed-only", action="store_true",
                    help="only build the structured variants and time them (no perplexity); their shapes, not which "
                    "channels were chosen, decide the speed, so a small --calib-samples is enough")
    ap.add_argument("--only", nargs="*", help="only these variant labels (and the base)")
    ap.add_argument("--note", default="", help="a note on the conditions of the run, written into the JSON and Markdown")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--name", default="results", help="file stem of the results (NAME.json, NAME.md)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()
    command = "python benchmarks/pruning/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.report_only:
        results = json.loads(Path(args.out, f"{args.name}.json").read_text())
        command = results.get("command", command)
    else:
        results = run(args)
        results["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results["command"] = command
        Path(args.out, f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(args.out, f"{args.name}.md").write_text(report(results, command))
    print(Path(args.out, f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
