"""Mixed GGUF precision under a KL budget (auto_quantize) against uniform types, in llama.cpp.

Regenerates benchmarks/autoquant/results.{json,md}:

    python benchmarks/autoquant/run.py                      # build + quality (all that runs on a loaded machine)
    python benchmarks/autoquant/run.py --stages speed,report    # the speed run, on a quiet machine

Stages:

* build: the auto_quantize pass on the model for each --budgets value (the
  sensitivities are measured once and reused, in one process), written as
  GGUF files; the same model exported uniformly at q8_0, q5_0 and q4_0 for
  comparison. Calibration: the toolkit's default calibration text.
* quality: every GGUF run by llama.cpp against the PyTorch float32 model on
  the evaluation windows (default: WikiText-2 valid, the first 16 windows of
  1024 tokens, which calibration never sees): perplexity, mean KL, top-1
  agreement, pooled over all windows.
* speed: `compress bench` on a suite of the base, all-q8_0, all-q4_0 and the
  mixes (llama.cpp, batch 1, 128-token prompt, 64 new tokens, 5 repeats taking
  turns); the mixes' decode speed is given against all-q8_0 from the same run
  (the median of per-round ratios).
* report: results.md and results.json.

A small setting proves the pipeline (not a measurement):

    python benchmarks/autoquant/run.py --model TINY_DIR --eval-text builtin --eval-windows 2 --eval-seq-len 64 \\
        --calib-samples 6 --calib-seq-len 64 --repeats 1 --new-tokens 8 --prompt-len 16 --work-dir /tmp/aq-work \\
        --results-dir /tmp/aq-results
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

EVAL_TEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"
MODEL = "smollm2-135m-instruct"
UNIFORM = ("q8_0", "q5_0", "q4_0")
SPEED_REFERENCE = "llamacpp-q8_0"


def mix_name(budget: float) -> str:
    return f"mix-kl{budget:g}"


def build(args, work: Path) -> dict:
    from compress.models import load_artifact
    from compress.passes.base import CalibrationData, PassContext, build_pass
    from compress.saving import save_artifact

    base = load_artifact(args.model)
    ctx = PassContext(calibration=CalibrationData(samples=args.calib_samples, seq_len=args.calib_seq_len))
    built = {}
    for type_name in UNIFORM:
        out = work / f"llamacpp-{type_name}.gguf"
        if not out.exists():
            save_artifact(build_pass("gguf_export", {"type": type_name})(base), out, force=True)
        built[f"llamacpp-{type_name}"] = {"path": str(out), "type": type_name}
    for budget in args.budgets:
        out = work / f"{mix_name(budget)}.gguf"
        start = time.perf_counter()
        if not out.exists():
            config = {"target_kl": budget, "types": args.types, "search_windows": args.search_windows,
                      "check_windows": args.check_windows, "curve": args.curve}
            save_artifact(build_pass("auto_quantize", config)(base, ctx), out, force=True)
        manifest = json.loads(out.with_name(out.name + ".compress.json").read_text())
        record = next(p for p in manifest["passes"] if p["name"] == "auto_quantize")
        m = record["metrics"]
        built[mix_name(budget)] = {
            "path": str(out), "budget": budget, "build_seconds": record.get("seconds", time.perf_counter() - start),
            "type_counts": m["type_counts"], "predicted_kl": m["predicted_kl"], "measured_kl": m["measured_kl"],
            "measured_kl_pytorch": m["measured_kl_pytorch"], "measured_kl_llamacpp": m["measured_kl_llamacpp"],
            "predicted_speedup_vs_q8_0": m["predicted_speedup_vs_q8_0"], "gguf_bytes": m["gguf_bytes"],
            "backoff_rounds": len(m["backoff"]) - 1, "curve": m["curve"], "assignment": m["assignment"],
            "windows": m["windows"],
        }
    return built


class OneWindowBase:
    """The base model, its logits for the current window computed once and reused for every variant."""

    def __init__(self, model):
        self.model = model
        self.key = None
        self.value = None

    def __call__(self, input_ids, attention_mask=None):
        from compress.evaluate import logits_of

        key = input_ids.numpy().tobytes()
        if key != self.key:
            self.key, self.value = key, logits_of(self.model, input_ids)
        return self.value


def quality(args, built: dict) -> dict:
    """Every GGUF in llama.cpp against the PyTorch base, pooled over the evaluation windows."""
    from compress.data import Windows
    from compress.evaluate import compare
    from compress.llamacpp import LlamaCppCausalLM
    from compress.models import load_artifact
    from compress.progress import progress
    from compress.recipe import EvaluationData

    base = load_artifact(args.model)
    spec = EvaluationData(source=args.eval_text, split="all" if args.eval_text != "builtin" else "evaluation",
                          windows=args.eval_windows, seq_len=args.eval_seq_len)
    windows = spec.load(base.tokenizer)
    reference = OneWindowBase(base.model)
    models = {name: LlamaCppCausalLM(v["path"]) for name, v in built.items()}
    sums = {name: {"kl": 0.0, "top1": 0.0, "nll": 0.0, "nll_base": 0.0, "tokens": 0} for name in models}
    for i in progress(range(len(windows)), desc="quality (window x variants)", unit="window"):
        one = Windows(windows.input_ids[i : i + 1], windows.score_from[i : i + 1], windows.provenance)
        for name, model in models.items():
            q = compare(reference, model, one)
            s, n = sums[name], q["tokens"]
            s["kl"] += q["kl_mean"] * n
            s["top1"] += q["top1_agreement"] * n
            s["nll"] += math.log(q["perplexity"]) * n
            s["nll_base"] += math.log(q["perplexity_base"]) * n
            s["tokens"] += n
    for model in models.values():
        model.close()
    out = {}
    for name, s in sums.items():
        n = s["tokens"]
        out[name] = {"kl_mean": s["kl"] / n, "top1_agreement": s["top1"] / n, "perplexity": math.exp(s["nll"] / n),
                     "perplexity_base": math.exp(s["nll_base"] / n), "tokens": n,
                     "gguf_bytes": Path(built[name]["path"]).stat().st_size}
    return {"data": windows.provenance, "variants": out}


def speed(args, built: dict, work: Path) -> dict:
    """`compress bench` on the base, all-q8_0, all-q4_0 and the mixes; mixes' decode speed against all-q8_0."""
    import yaml

    names = [SPEED_REFERENCE, "llamacpp-q4_0"] + [n for n in built if n.startswith("mix-")]
    suite = {
        "base": args.model,
        "settings": {"prompt_lens": [args.prompt_len], "new_tokens": args.new_tokens, "repeats": args.repeats,
                     "quality": False},
        "variants": [{"name": n, "model": built[n]["path"]} for n in names],
    }
    suite_path = work / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False))
    report_dir = work / "bench"
    command = [sys.executable, "-m", "compress", "bench", "--suite", str(suite_path), "-o", str(report_dir), "--force"]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    report = json.loads((report_dir / "bench.json").read_text())
    rows = {v["name"]: v for v in report["variants"]}

    def rounds(name):
        return rows[name]["speed"]["prompts"][0]["decode_speedup_rounds"]

    out = {"command": " ".join(command), "suite": suite, "environment": report.get("environment"), "variants": {}}
    for name in names:
        prompt = rows[name]["speed"]["prompts"][0]
        paired = [a / b for a, b in zip(rounds(name), rounds(SPEED_REFERENCE))]
        out["variants"][name] = {"decode_tokens_per_s": prompt["decode_tokens_per_s"]["median"],
                                 "decode_vs_base": prompt["decode_speedup"],
                                 "decode_vs_q8_0": statistics.median(paired), "decode_vs_q8_0_rounds": paired}
    return out


def report(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    lines = [f"# Mixed GGUF precision under a KL budget (auto_quantize), llama.cpp", "",
             f"Command: `{results['command']}`  ", f"Date: {results['date']}; machine: {results['machine']}", ""]
    q = results.get("quality", {})
    sp = results.get("speed", {}).get("variants", {})
    if q:
        d = q["data"]
        lines += [f"Evaluation: {d.get('source')} ({d.get('split')}), {d.get('windows')} windows of "
                  f"{d.get('seq_len')} tokens, {d.get('scored_tokens')} scored; base: PyTorch float32. "
                  "Every row runs in llama.cpp.", "",
                  "| variant (llama.cpp) | budget | types | predicted KL | measured KL (held-out calibration) | "
                  "KL on evaluation | ppl x base | top-1 | size MB | decode vs all-q8_0 (predicted, bytes) | "
                  "decode vs all-q8_0 (measured) |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, v in q["variants"].items():
            b = results["build"][name]
            counts = ", ".join(f"{n} {t}" for t, n in b.get("type_counts", {b.get("type"): "all"}).items())
            pred = b.get("predicted_speedup_vs_q8_0")
            measured = sp.get(name, {}).get("decode_vs_q8_0")
            lines.append(
                f"| {name} | {b.get('budget', '')} | {counts} | {_f(b.get('predicted_kl'))} | {_f(b.get('measured_kl'))} | "
                f"{v['kl_mean']:.4f} | {v['perplexity'] / v['perplexity_base']:.3f} | {v['top1_agreement']:.1%} | "
                f"{v['gguf_bytes'] / 1e6:.1f} | {_f(pred, 2)} | {_f(measured, 2) if measured else 'to be measured'} |")
        lines.append("")
    for name, b in results.get("build", {}).items():
        if not b.get("curve"):
            continue
        lines += [f"Budget curve of {name}'s search (no back-off; measured on the held-out calibration windows, "
                  "PyTorch with llama.cpp's roundings):", "",
                  "| budget | predicted KL | measured KL | types | predicted decode vs all-q8_0 | weights MB |",
                  "|---:|---:|---:|---|---:|---:|"]
        for p in b["curve"]:
            if not p.get("feasible"):
                lines.append(f"| {p['budget']} | infeasible | | | | |")
                continue
            counts = ", ".join(f"{n} {t}" for t, n in p["type_counts"].items())
            lines.append(f"| {p['budget']} | {p['predicted_kl']:.4f} | {_f(p.get('measured_kl'))} | {counts} | "
                         f"{p['predicted_speedup_vs_q8_0']:.2f} | {p['weight_bytes'] / 1e6:.1f} |")
        lines.append("")
        break  # every mix shares the same sensitivities, so one curve says it
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def _f(x, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.02])
    p.add_argument("--curve", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05, 0.1])
    p.add_argument("--types", default="q4_0,q5_0,q8_0,f16")
    p.add_argument("--search-windows", type=int, default=2)
    p.add_argument("--check-windows", type=int, default=4)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--eval-text", default=str(EVAL_TEXT))
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-seq-len", type=int, default=1024)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stages", default="build,quality,report", help="comma-separated: build, quality, speed, report")
    p.add_argument("--work-dir", type=Path, default=ROOT / "bench-results" / "autoquant-work")
    p.add_argument("--results-dir", type=Path, default=HERE)
    args = p.parse_args()
    stages = set(args.stages.split(","))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results_path = args.results_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update({"command": "python benchmarks/autoquant/run.py " + " ".join(sys.argv[1:]),
                    "date": time.strftime("%Y-%m-%d"),
                    "machine": f"{_cpu_model()}, {_cores()} cores"})
    if "build" in stages or "quality" in stages or "speed" in stages:
        results["build"] = build(args, args.work_dir)
    if "quality" in stages:
        results["quality"] = quality(args, results["build"])
    if "speed" in stages:
        results["speed"] = speed(args, results["build"], args.work_dir)
    if "report" in stages:
        from compress.saving import library_versions

        results["versions"] = library_versions()
        report(results, args.results_dir)
        print((args.results_dir / "results.md").read_text())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
