"""summary.md for a GPU run: the paired ratios the GPU suite is for, and what the kit checked and left out.

bench.md gives every variant's ratio against the base. The questions of the GPU
suite also compare variants with each other (float16 and bfloat16 against
float32, bitsandbytes against the float16 it computes in, the sparse kernels
against dense kernels on the same 2:4 weights), so each pair in `PAIRS` is
computed here from the raw runs in bench.json, round by round: the two
processes of a round ran in turns within seconds of each other, so each
round's ratio is paired, and the table gives the median with the spread
(min-max) over rounds.
"""

from __future__ import annotations

import math
from typing import Any

# (question, numerator variant, denominator variant)
PAIRS = [
    ("float16 against float32", "fp16", "base"),
    ("bfloat16 against float32", "bf16", "base"),
    ("batch 16 against batch 1, float32 (throughput)", "fp32-b16", "base"),
    ("float16 against float32, batch 16", "fp16-b16", "fp32-b16"),
    ("bfloat16 against float32, batch 16", "bf16-b16", "fp32-b16"),
    ("bitsandbytes int8 against float16", "bnb-int8", "fp16"),
    ("bitsandbytes nf4 against float16", "bnb-nf4", "fp16"),
    ("MLP -25 % against the base", "mlp-channels-25", "base"),
    ("2:4 weights on dense kernels against float16", "wanda-2-4-fp16", "fp16"),
    ("2:4 sparse kernels against dense kernels, batch 1", "wanda-2-4-sparse", "wanda-2-4-fp16"),
    ("2:4 sparse kernels against dense kernels, batch 16", "wanda-2-4-sparse-b16", "wanda-2-4-fp16-b16"),
]


def _rate(run: dict) -> float | None:
    """Decode tokens/s of one run's first prompt, every sequence of its batch counted."""
    steps = run["prompts"][0]["decode_step_s"]
    return (run.get("batch_size") or 1) * len(steps) / sum(steps) if steps else None


def _spread(values: list[float]) -> str:
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if not xs:
        return "n/a"
    mid = len(xs) // 2
    median = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    return f"{median:.3f}× [{xs[0]:.3f}–{xs[-1]:.3f}] (n={len(xs)})"


def paired(report: dict, numerator: str, denominator: str) -> dict[str, list[float]] | None:
    """Per-round ratios of two variants: decode tokens/s (a over b) and prefill speed (b's time over a's)."""
    variants = {v["name"]: v for v in report["variants"]}
    a, b = variants.get(numerator), variants.get(denominator)
    if not (a and b and a.get("speed") and b.get("speed")):
        return None
    runs_b = {r["repeat"]: r for r in b["speed"]["runs"]}
    decode, prefill = [], []
    for ra in a["speed"]["runs"]:
        rb = runs_b.get(ra["repeat"])
        if rb is None:
            continue
        rate_a, rate_b = _rate(ra), _rate(rb)
        decode.append(rate_a / rate_b if rate_a and rate_b else None)
        prefill.append(rb["prompts"][0]["prefill_s"] / ra["prompts"][0]["prefill_s"])
    return {"decode": decode, "prefill": prefill}


def _cuda_mb(v: dict | None) -> str:
    s = ((v or {}).get("speed") or {}).get("cuda_max_allocated_bytes")
    return f"{s['median'] / 1e6:.0f}" if s and s.get("median") is not None else "n/a"


def pairs_table(report: dict) -> str:
    variants = {v["name"]: v for v in report["variants"]}
    rows = ["| Question | Variant / against | Decode tok/s × | Prefill speed × | CUDA max allocated MB | Quality (PPL, KL, top-1) |",
            "|---|---|---:|---:|---:|---|"]
    for question, a, b in PAIRS:
        found = paired(report, a, b)
        if found is None:
            continue
        q = variants[a].get("quality") or {}
        kl = q.get("kl_mean") or 0.0
        kl = 0.0 if abs(kl) < 5e-5 else kl  # a rounding-level negative shows as zero
        quality = f"{q['perplexity']:.2f}, {kl:.4f}, {q['top1_agreement']:.1%}" if q else "n/a"
        rows.append(f"| {question} | {a} / {b} | {_spread(found['decode'])} | {_spread(found['prefill'])} "
                    f"| {_cuda_mb(variants[a])} / {_cuda_mb(variants[b])} | {quality} |")
    return "\n".join(rows)


def kit_notes(report: dict, manifest: dict, facts: dict[str, Any], not_measured: list[str]) -> str:
    """What the kit did and checked, and what it does not measure (appended to bench.md and in summary.md)."""
    data = report["settings"].get("evaluation_data") or {}
    same_text = data.get("sha256") == manifest.get("evaluation_sha256")
    model = facts.get("model") or {}
    installed = [e["wheel"].split("-")[0] for e in facts.get("install", []) if e.get("installed")]
    lines = ["## GPU kit (benchmarks/gpu)", "",
             f"- **Device**: {facts.get('nvidia_smi') or (report['environment'].get('gpu') or {}).get('name') or 'no GPU'}"
             f"; Python {facts.get('python')}; suite {facts.get('suite')}.",
             f"- **Ran as**: `{facts.get('runner_command', 'n/a')}` (the device tool's calls: benchmarks/gpu/README.md).",
             f"- **Installed from the carry**: {', '.join(installed) or 'nothing (the machine had it all)'}.",
             f"- **Base model**: {model.get('path', 'n/a')}; its tensors and token ids hash to what the CPU's "
             "conversion gave (checked before the bench ran).",
             "- **Evaluation windows**: " + (
                 "none (no quality was measured)." if not data.get("sha256") else
                 f"the same text as the CPU reports (sha256 {data['sha256']})." if same_text else
                 f"sha256 {data['sha256']}, NOT the CPU's {manifest.get('evaluation_sha256')}."),
             "- **Not measured here**:"] + [f"  - {item}" for item in not_measured]
    return "\n".join(lines)


def write_summary(report: dict, manifest: dict, facts: dict[str, Any], not_measured: list[str]) -> str:
    interleaved = report["settings"].get("interleaved") or "n/a"
    rounds = report["settings"]["repeats"]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in (facts.get("phases") or {}).items())
    failures = [f"- **{v['name']}** ({e['stage']}): {e['error']}" for v in report["variants"] for e in v["errors"]]
    return "\n".join([
        f"# GPU run: paired ratios ({report['created']})", "",
        f"`{report.get('command')}`, {len(report['variants'])} variants, {rounds} round{'s' if rounds != 1 else ''}; "
        f"interleaving: {interleaved}. Ratios above 1 mean the first variant is faster; each is the median of "
        "the per-round ratios [min–max over rounds]. Ratios closer to 1 than their spread are not a measured difference.",
        "", pairs_table(report), "",
        kit_notes(report, manifest, facts, not_measured), "",
        f"Phases: {phases or 'n/a'}; the whole bench took {report['seconds']:.0f} s.", "",
        *(["## Failures", "", *failures, ""] if failures else []),
        "Every variant's own numbers and ratios against the base are in bench.md; raw values in bench.json.", "",
    ])
