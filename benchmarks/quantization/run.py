"""Quantization benchmark: size, peak memory, perplexity, divergence from the base, decode speed.

Regenerates benchmarks/quantization/results.{json,md}:

    python benchmarks/quantization/run.py --windows 8 --repeats 5

Stages (all by default): build (quantize the built-in model into --work-dir),
quality (every variant against the PyTorch fp32 base on WikiText-2 valid,
through the same quality guard as `compress quantize`), speed (each variant in
its own process, variants interleaved round by round), report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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

# name -> (backend, how it is built: list of (pass name, config)); "base" is the model itself.
VARIANTS: dict[str, tuple[str, list]] = {
    "pytorch-fp32": ("torch", []),
    "bnb-int8": ("torch", [("bnb_quantize", {"method": "int8"})]),
    "bnb-nf4": ("torch", [("bnb_quantize", {"method": "nf4"})]),
    "bnb-nf4-mixed": ("torch", [("bnb_quantize", {"method": "nf4", "keep": ["*.mlp.down_proj"],
                                                   "keep_first": 2, "keep_last": 2})]),
    "ort-fp32": ("onnx", [("onnx_export", {})]),
    "ort-int8": ("onnx", [("ort_quantize", {"method": "int8"})]),
    "ort-int4": ("onnx", [("ort_quantize", {"method": "int4", "block_size": 32})]),
    "ort-int4-mixed": ("onnx", [("ort_quantize", {"method": "int4", "block_size": 32, "keep": ["*.mlp.down_proj"],
                                                  "keep_first": 2, "keep_last": 2})]),
    "ort-int4-mixed-asym": ("onnx", [("ort_quantize", {"method": "int4", "block_size": 32, "symmetric": False,
                                                       "keep": ["*.mlp.down_proj"], "keep_first": 2, "keep_last": 2})]),
    "ort-int4-hqq": ("onnx", [("ort_quantize", {"method": "int4", "block_size": 32, "algorithm": "hqq"})]),
    "ort-int4-hqq-mixed": ("onnx", [("ort_quantize", {"method": "int4", "block_size": 32, "algorithm": "hqq",
                                                      "keep": ["*.mlp.down_proj"], "keep_first": 2, "keep_last": 2})]),
    # The trap from the issue, kept to show the guard catches it: every weight
    # MatMul (down projections and edge blocks included), signed int8, one
    # scale per tensor, no reduce_range.
    "ort-int8-naive": ("onnx", [("ort_quantize", {"method": "int8", "keep": [], "keep_first": 0, "keep_last": 0,
                                                  "per_channel": False, "weight_type": "int8"})]),
}
SPEED_VARIANTS = ["pytorch-fp32", "bnb-int8", "bnb-nf4", "bnb-nf4-mixed", "ort-fp32", "ort-int8", "ort-int4",
                  "ort-int4-mixed", "ort-int4-hqq"]


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.name != "compress.json")


def build(work: Path, names: list[str]) -> None:
    from compress.models import load_artifact
    from compress.onnx_utils import load_onnx_artifact
    from compress.passes.base import build_pass
    from compress.saving import save_artifact

    base = load_artifact(MODEL)
    for name in names:
        out = work / name
        if out.exists():
            continue
        backend, steps = VARIANTS[name]
        # ONNX quantizations start from the ONNX fp32 export, so each is exported once.
        source = load_onnx_artifact(str(work / "ort-fp32")) if backend == "onnx" and name != "ort-fp32" else base
        start = time.perf_counter()
        artifact = source
        for pass_name, config in steps:
            artifact = build_pass(pass_name, config)(artifact)
        if not steps:
            artifact = source.copy()
        print(f"built {name} in {time.perf_counter() - start:.0f} s", flush=True)
        save_artifact(artifact, out, force=True)


def load_variant(work: Path, name: str):
    """Load a saved variant the way a user would: stock from_pretrained / ORTModelForCausalLM."""
    import torch

    path = work / name
    if VARIANTS[name][0] == "onnx":
        from compress.onnx_utils import OnnxCausalLM

        threads = int(os.environ.get("QUANT_BENCH_THREADS", "0")) or None
        return OnnxCausalLM(path, owned=False, threads=threads)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32)
    return model.eval()


class CachedLogits:
    """The base model's logits, computed once per window and reused for every variant."""

    def __init__(self, model):
        self.model = model
        self.cache: dict[bytes, object] = {}

    def __call__(self, input_ids, attention_mask=None):
        from compress.evaluate import logits_of

        key = input_ids.numpy().tobytes()
        if key not in self.cache:
            self.cache[key] = logits_of(self.model, input_ids)
        return self.cache[key]


def quality(work: Path, names: list[str], windows_n: int) -> dict:
    import torch

    from compress.passes.quantization import quality_guard
    from compress.recipe import EvaluationData

    base_model = load_variant(work, "pytorch-fp32")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / "pytorch-fp32")
    spec = EvaluationData(source=str(EVAL_TEXT), split="evaluation", windows=windows_n, seq_len=1024)
    windows = spec.load(tokenizer)
    base = CachedLogits(base_model)
    results = {}
    for name in names:
        start = time.perf_counter()
        variant = base_model if name == "pytorch-fp32" else load_variant(work, name)
        with torch.inference_mode():
            metrics = quality_guard(base, variant, windows, name)
        metrics["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = metrics
        print(f"{name}: perplexity {metrics['perplexity']:.3f} (base {metrics['perplexity_base']:.3f}), "
              f"KL {metrics['kl_mean']:.4f}, top-1 {metrics['top1_agreement']:.3f}, "
              f"guard {'passed' if metrics['passed'] else 'FAILED'}", flush=True)
        del variant
    return results


def speed_once(work: Path, name: str, repeats: int, prompt_len: int, new_tokens: int) -> dict:
    """Runs in its own process: load, one warm-up, `repeats` timed generations; peak RSS."""
    import torch

    from compress.recipe import EvaluationData

    model = load_variant(work, name)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / "pytorch-fp32")
    # The prompt: the first prompt_len tokens of the evaluation text (batch 1).
    text = EvaluationData(source=str(EVAL_TEXT), split="evaluation", windows=1, seq_len=prompt_len).load(tokenizer)
    ids = text.input_ids[:1]
    mask = torch.ones_like(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=pad)
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - start

    generate(8)  # warm-up (first-run allocations and kernel choice)
    prefill, decode = [], []
    for _ in range(repeats):
        first = generate(1)
        total = generate(new_tokens)
        prefill.append(first)
        decode.append((new_tokens - 1) / max(total - first, 1e-9))
    return {"prefill_s": prefill, "decode_tok_s": decode,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def speed(work: Path, names: list[str], rounds: int, repeats: int, prompt_len: int, new_tokens: int) -> dict:
    results = {n: {"prefill_s": [], "decode_tok_s": [], "peak_rss_bytes": []} for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else list(reversed(names))  # interleaved, alternating order
        for name in order:
            cmd = [sys.executable, __file__, "--work-dir", str(work), "--speed-child", name, "--repeats", str(repeats),
                   "--threads", os.environ.get("QUANT_BENCH_THREADS", "0"),
                   "--prompt-len", str(prompt_len), "--new-tokens", str(new_tokens)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            one = json.loads(done.stdout.strip().splitlines()[-1])
            for key in ("prefill_s", "decode_tok_s"):
                results[name][key] += one[key]
            results[name]["peak_rss_bytes"].append(one["peak_rss_bytes"])
            print(f"round {r + 1} {name}: decode {statistics.median(one['decode_tok_s']):.1f} tok/s", flush=True)
    return results


def environment() -> dict:
    from compress.saving import library_versions

    from compress.bench.metrics import cpu_model

    cpu = cpu_model()
    flags = open("/proc/cpuinfo").read()
    return {"cpu": cpu, "cores": os.cpu_count(), "avx2": " avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "avx_vnni": " avx_vnni" in flags, "platform": platform.platform(), "versions": library_versions(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _stats(values: list[float], digits: int = 1) -> str:
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def report(data: dict, _unused=None) -> str:
    env, q, s, sizes = data["environment"], data["quality"], data.get("speed", {}), data["sizes"]
    base_ppl = q["pytorch-fp32"]["perplexity"]
    ort_fp32 = statistics.median(s["ort-fp32"]["decode_tok_s"]) if "ort-fp32" in s else None
    pt_fp32 = statistics.median(s["pytorch-fp32"]["decode_tok_s"]) if "pytorch-fp32" in s else None
    lines = [
        "# Quantization benchmark: SmolLM2-135M-Instruct on this CPU",
        "",
        "Quality: " + "; then ".join(f"`{c}`" for c in data.get("quality_commands", [])) +
        f"; speed: `{data.get('speed_command')}`; "
        f"table written on {env['date']} (`--stages report`). Variants were built first with `--stages build`. "
        "Quality numbers do not depend on the machine's load; speed numbers do: see the load average below.",
        "",
        f"- CPU: {env['cpu']}, {env['cores']} cores (AVX2: {env['avx2']}, AVX512-VNNI: {env['avx512_vnni']}, "
        f"AVX-VNNI: {env['avx_vnni']}); no GPU. Load average (1/5/15 min) around the speed stage: "
        f"{data.get('speed_load_average', 'not recorded (that run shared the CPU with other jobs, load near 9)')}; "
        "compare speed ratios from this run only.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"- Quality: WikiText-2 valid (tokenized), `{EVAL_TEXT.name}` as is, the first {data['windows']} "
        f"non-overlapping windows of 1,024 tokens ({q['pytorch-fp32']['tokens']} scored tokens; fewer than the "
        "protocol's 16, to fit a CPU shared with other jobs). KL is mean KL(base ‖ variant) per token, top-1 is the share "
        "of positions where both models' most likely next token agree; the base is PyTorch fp32.",
        f"- Speed: batch 1, {data['prompt_len']}-token prompt, {data['new_tokens']} new tokens, greedy; each variant "
        f"in its own process, {data['rounds']} interleaved rounds × {data['repeats']} repeats after one 8-token "
        f"warm-up, {data.get('threads') or 'default'} thread(s) per process for torch and ONNX Runtime; "
        "median (min–max). Prefill = time of a 1-token generation; decode tok/s = (new tokens − 1) / "
        "(time of the full generation − prefill). Peak memory = peak RSS of the measuring process (largest over rounds).",
        "- Size on disk: the saved output directory's weights (model.safetensors or model.onnx), tokenizer and config.",
        "",
        "| variant | size on disk (MB) | peak RSS (MB) | perplexity | Δ vs base | KL | top-1 | guard | prefill (s) "
        "| decode tok/s | decode vs ORT fp32 | decode vs PyTorch fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name in q:
        m = q[name]
        sp = s.get(name)
        delta = (m["perplexity"] / base_ppl - 1) * 100
        ppl = f"{m['perplexity']:.3f}" if m["perplexity"] < 1e4 else f"{m['perplexity']:.3g}"
        row = [name, f"{sizes[name] / 1e6:.0f}", f"{max(sp['peak_rss_bytes']) / 1e6:.0f}" if sp else "–", ppl,
               f"{delta:+.1f}%" if abs(delta) < 1e4 else f"{delta:+.2g}%", f"{m['kl_mean']:.4f}",
               f"{m['top1_agreement']:.3f}", "pass" if m["passed"] else "**FAIL**"]
        if sp:
            dec = statistics.median(sp["decode_tok_s"])
            row += [_stats(sp["prefill_s"], 2), _stats(sp["decode_tok_s"]),
                    f"{dec / ort_fp32:.2f}×" if ort_fp32 else "–", f"{dec / pt_fp32:.2f}×" if pt_fp32 else "–"]
        else:
            row += ["–", "not timed", "–", "–"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Variants (the recipe of each is in results.json and in its compress.json):", ""]
    for name in q:
        steps = VARIANTS[name][1]
        desc = "; ".join(f"`{p}` {json.dumps(c)}" for p, c in steps) or "the base model"
        lines.append(f"- **{name}**: {desc}")
    return "\n".join(lines) + "\n"


def save(path: Path, update: dict) -> dict:
    """Merge `update` into the JSON at path (re-read first: stages may run in parallel processes)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    for key, value in update.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) and key in ("quality", "sizes") else value
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", default="/tmp/compress-quant-bench", help="Where the quantized variants are saved.")
    ap.add_argument("--windows", type=int, default=8, help="Evaluation windows of 1024 tokens.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="Timed generations per round (after one warm-up).")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--stages", default="build,quality,speed,report")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=0,
                    help="Threads per process for torch and ONNX Runtime (0: the libraries' defaults, all cores).")
    ap.add_argument("--speed-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        os.environ["QUANT_BENCH_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.speed_child:
        print(json.dumps(speed_once(work, args.speed_child, args.repeats, args.prompt_len, args.new_tokens)))
        return
    from compress.progress import configure

    configure(quiet=True)
    names = [n for n in args.variants.split(",") if n]
    stages = set(args.stages.split(","))
    raw_path = HERE / "results.json"
    work.mkdir(parents=True, exist_ok=True)
    if "build" in stages:
        build(work, ["pytorch-fp32", "ort-fp32"] + [n for n in names if n not in ("pytorch-fp32", "ort-fp32")])
    command = "python benchmarks/quantization/run.py " + " ".join(sys.argv[1:])
    if "quality" in stages:
        results = quality(work, names, args.windows)
        previous = json.loads(raw_path.read_text()).get("quality_commands", []) if raw_path.exists() else []
        save(raw_path, {"quality": results, "quality_threads": args.threads, "windows": args.windows,
                        "quality_commands": previous + [command],
                        "sizes": {n: dir_size(work / n) for n in results}})
    if "speed" in stages:
        timed = [n for n in names if n in SPEED_VARIANTS]
        load_before = [round(x, 2) for x in os.getloadavg()]
        results = speed(work, timed, args.rounds, args.repeats, args.prompt_len, args.new_tokens)
        save(raw_path, {"speed": results, "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
                        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "speed_command": command,
                        "speed_load_average": {"start": load_before, "end": [round(x, 2) for x in os.getloadavg()]}})
    if "report" in stages:
        data = save(raw_path, {"environment": environment()})
        (HERE / "results.md").write_text(report(data, data))
        print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main()
