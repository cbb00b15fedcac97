"""Reports: JSON (raw values, the schema in schema.json), CSV, Markdown with ratios, and a PNG plot.

Speed ratios compare timings measured in the same run, paired round by round
when the run took turns, so machine-wide drift largely cancels; every timing is
shown with its spread (min-max over repeats).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from .metrics import describe_cpu, latency_percentiles, summarize

REPORT_FILES = ("bench.json", "bench.csv", "bench.md", "bench.png")


# --------------------------------------------------------------------------- summaries


def summarize_speed(runs: list[dict]) -> dict[str, Any]:
    """Summaries over repeats (min/median/max) for one variant's speed runs, raw runs kept."""
    prompts = []
    for i, first in enumerate(runs[0]["prompts"]):
        per_run = [r["prompts"][i] for r in runs]
        steps_all = [s for p in per_run for s in p["decode_step_s"]]
        # Tokens per second over the whole batch: each decode step yields one token per sequence.
        rates = [_batch(r) * len(p["decode_step_s"]) / sum(p["decode_step_s"])
                 for r, p in zip(runs, per_run) if p["decode_step_s"]]
        prompts.append({
            "prompt_len": first["prompt_len"],
            "prefill_ms": summarize([1000.0 * p["prefill_s"] for p in per_run]),
            "decode_tokens_per_s": summarize(rates),
            "per_token_ms": latency_percentiles(steps_all),
            "decode_steps": len(first["decode_step_s"]),
        })
    out = {
        "repeats": len(runs),
        "load_s": summarize(r["load_s"] for r in runs),
        "peak_rss_bytes": summarize(r["peak_rss_bytes"] for r in runs),
        "load_rss_bytes": summarize(r["rss_after_load_bytes"] - r["rss_before_load_bytes"] for r in runs),
        "cuda_max_allocated_bytes": None,
        "cuda_max_reserved_bytes": None,
        "torch_threads": runs[0].get("torch_threads"),
        "prompts": prompts,
        "runs": runs,
    }
    for key in ("cuda_max_allocated_bytes", "cuda_max_reserved_bytes"):
        if all(key in r for r in runs):
            out[key] = summarize(r[key] for r in runs)
    return out


def _batch(run: dict) -> int:
    """Sequences timed at once in a speed run (reports from before batches existed: 1)."""
    return int(run.get("batch_size") or 1)


def _median(summary: dict | None) -> float | None:
    return summary.get("median") if summary else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not math.isfinite(num) or not math.isfinite(den) or den == 0:
        return None
    return num / den


def add_ratios(report: dict) -> None:
    """Every variant's ratios against the base from the same run (None where not measured).

    Speed ratios: the median of per-round paired ratios when the run took
    turns (see `paired_rounds`), else the variant's median over the base's.
    Memory, size and quality: the variant's value (median) over the base's.
    """
    base = next((v for v in report["variants"] if v["name"] == report["base"]), None)

    def metric(v: dict | None, key: str):
        if v is None:
            return None
        speed, quality, size = v.get("speed"), v.get("quality"), v.get("size")
        if key == "prefill_ms":
            return _median(speed["prompts"][0]["prefill_ms"]) if speed else None
        if key == "tokens_per_s":
            return _median(speed["prompts"][0]["decode_tokens_per_s"]) if speed else None
        if key == "peak_rss":
            return _median(speed["peak_rss_bytes"]) if speed else None
        if key == "load_s":
            return _median(speed["load_s"]) if speed else None
        if key == "size":
            return size["weights_bytes"] if size else None
        if key in ("perplexity", "nonzero_parameters"):
            return quality.get(key) if quality else None
        raise KeyError(key)

    for v in report["variants"]:
        ratios = {
            # > 1 means faster than the base
            "prefill_speedup": _ratio(metric(base, "prefill_ms"), metric(v, "prefill_ms")),
            "decode_speedup": _ratio(metric(v, "tokens_per_s"), metric(base, "tokens_per_s")),
            # < 1 means smaller than the base
            "load_time": _ratio(metric(v, "load_s"), metric(base, "load_s")),
            "peak_rss": _ratio(metric(v, "peak_rss"), metric(base, "peak_rss")),
            "size": _ratio(metric(v, "size"), metric(base, "size")),
            "nonzero_parameters": _ratio(metric(v, "nonzero_parameters"), metric(base, "nonzero_parameters")),
            "perplexity": _ratio(metric(v, "perplexity"), metric(base, "perplexity")),
        }
        if v.get("speed") and base and base.get("speed"):
            base_prompts = {p["prompt_len"]: p for p in base["speed"]["prompts"]}
            rounds = paired_rounds(report, base, v)
            for p in v["speed"]["prompts"]:
                b = base_prompts.get(p["prompt_len"])
                if b is None:
                    p["prefill_speedup"] = p["decode_speedup"] = None
                elif rounds:
                    pre = [_ratio(_prefill_ms(rb, p["prompt_len"]), _prefill_ms(rv, p["prompt_len"])) for rb, rv in rounds]
                    dec = [_ratio(_decode_rate(rv, p["prompt_len"]), _decode_rate(rb, p["prompt_len"])) for rb, rv in rounds]
                    p["prefill_speedup_rounds"], p["decode_speedup_rounds"] = pre, dec
                    p["prefill_speedup"], p["decode_speedup"] = _median_or_none(pre), _median_or_none(dec)
                else:
                    p["prefill_speedup"] = _ratio(_median(b["prefill_ms"]), _median(p["prefill_ms"]))
                    p["decode_speedup"] = _ratio(_median(p["decode_tokens_per_s"]), _median(b["decode_tokens_per_s"]))
            if rounds:
                first = v["speed"]["prompts"][0]
                ratios["prefill_speedup"], ratios["decode_speedup"] = first["prefill_speedup"], first["decode_speedup"]
        v["ratios"] = ratios


def paired_rounds(report: dict, base: dict, v: dict) -> list[tuple[dict, dict]]:
    """(base run, variant run) of every round both ran in, when the run took turns; else [].

    In turns, a round's base and variant were timed segment by segment within a
    second or two of each other, so their ratio is free of the machine's drift
    between rounds; the median of those per-round ratios is the speed ratio. One
    process at a time has no such pairing, and the ratio is of the two medians.
    """
    if not str(report.get("settings", {}).get("interleaved") or "").startswith("turns") or v is base:
        return []
    by_repeat = {r["repeat"]: r for r in base["speed"]["runs"]}
    return [(by_repeat[r["repeat"]], r) for r in v["speed"]["runs"] if r["repeat"] in by_repeat]


def _prompt_run(run: dict, prompt_len: int) -> dict | None:
    return next((p for p in run["prompts"] if p["prompt_len"] == prompt_len), None)


def _prefill_ms(run: dict, prompt_len: int) -> float | None:
    p = _prompt_run(run, prompt_len)
    return 1000.0 * p["prefill_s"] if p else None


def _decode_rate(run: dict, prompt_len: int) -> float | None:
    p = _prompt_run(run, prompt_len)
    return _batch(run) * len(p["decode_step_s"]) / sum(p["decode_step_s"]) if p and p["decode_step_s"] else None


def _median_or_none(values: list[float | None]) -> float | None:
    from .metrics import percentile

    kept = [x for x in values if x is not None]
    return percentile(kept, 50) if kept else None


# --------------------------------------------------------------------------- writers


def write_reports(report: dict, output: Path, force: bool = False) -> Path:
    """bench.json, bench.csv, bench.md and bench.png, written atomically into `output`."""
    from .schema import validate_report

    validate_report(report)
    return write_report_files(report, output, force, to_csv, to_markdown, plot)


def write_report_files(report: dict, output: Path, force: bool, to_csv, to_markdown, plot) -> Path:
    """The four report files of a validated report, made by the given writers, atomically into `output`.

    Shared by the decoder and the encoder bench, whose tables and plots differ but whose files do not.
    """
    from ..saving import atomic_directory

    with atomic_directory(output, force=force) as tmp:
        (tmp / "bench.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (tmp / "bench.csv").write_text(to_csv(report))
        plotted = plot(report, tmp / "bench.png")
        (tmp / "bench.md").write_text(to_markdown(report, plot_file="bench.png" if plotted else None))
    return output


def _mb(x: float | None) -> float | None:
    return None if x is None else x / 1e6


CSV_COLUMNS = [
    "name", "status", "backend", "device", "dtype", "batch_size", "prompt_len", "prefill_ms_median", "prefill_ms_min", "prefill_ms_max",
    "decode_tok_s_median", "decode_tok_s_min", "decode_tok_s_max", "token_ms_p50", "token_ms_p90", "token_ms_p99",
    "load_s_median", "peak_rss_mb_median", "cuda_max_allocated_mb", "cuda_max_reserved_mb", "size_mb",
    "parameters", "nonzero_parameters", "perplexity", "kl_mean", "top1_agreement",
    "prefill_speedup", "decode_speedup", "peak_rss_ratio", "size_ratio", "errors",
]


def _rows(report: dict):
    """One flat row per variant and prompt length."""
    for v in report["variants"]:
        speed, q, size, r = v.get("speed"), v.get("quality") or {}, v.get("size") or {}, v.get("ratios") or {}
        common = {
            "name": v["name"], "status": v["status"], "backend": v["backend"], "device": v["device"], "dtype": v["dtype"],
            "batch_size": v.get("batch_size") or 1,
            "size_mb": _mb(size.get("weights_bytes")), "parameters": q.get("parameters"),
            "nonzero_parameters": q.get("nonzero_parameters"), "perplexity": q.get("perplexity"),
            "kl_mean": q.get("kl_mean"), "top1_agreement": q.get("top1_agreement"),
            "peak_rss_ratio": r.get("peak_rss"), "size_ratio": r.get("size"),
            "errors": " | ".join(f"{e['stage']}: {e['error']}" for e in v["errors"]),
        }
        if not speed:
            yield common
            continue
        common.update(load_s_median=_median(speed["load_s"]), peak_rss_mb_median=_mb(_median(speed["peak_rss_bytes"])),
                      cuda_max_allocated_mb=_mb(_median(speed["cuda_max_allocated_bytes"])),
                      cuda_max_reserved_mb=_mb(_median(speed["cuda_max_reserved_bytes"])))
        for p in speed["prompts"]:
            pre, dec, tok = p["prefill_ms"], p["decode_tokens_per_s"], p["per_token_ms"]
            yield {**common, "prompt_len": p["prompt_len"],
                   "prefill_ms_median": pre["median"], "prefill_ms_min": pre["min"], "prefill_ms_max": pre["max"],
                   "decode_tok_s_median": dec["median"], "decode_tok_s_min": dec["min"], "decode_tok_s_max": dec["max"],
                   "token_ms_p50": tok["p50"], "token_ms_p90": tok["p90"], "token_ms_p99": tok["p99"],
                   "prefill_speedup": p.get("prefill_speedup"), "decode_speedup": p.get("decode_speedup")}


def to_csv(report: dict) -> str:
    return rows_to_csv(_rows(report), CSV_COLUMNS)


def rows_to_csv(rows, columns: list[str]) -> str:
    """CSV text of `rows` (dicts) in `columns`, a missing or None value as an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    text = fmt.format(x)
    # A rounding-level negative (KL of two near-identical models) shows as zero, not "-0.0000".
    return text[1:] if text.startswith("-") and float(text.rstrip("%×").replace(",", "")) == 0 else text


def _spread(s: dict | None, fmt: str = "{:.1f}") -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}×"


_RELATION_NOTES = {
    "same corpus": "the other part of the evaluation corpus (never the evaluation windows, but the same domain), "
                   "so calibrated variants are measured on the kind of text they were calibrated on, which flatters "
                   "them; on other text they lose more (benchmarks/calibration/)",
    "shares a corpus": "a mix that holds the other part of the evaluation corpus (never the evaluation windows), "
                       "so calibrated variants are measured partly on the kind of text they were calibrated on, which "
                       "flatters them somewhat (benchmarks/calibration/)",
    "different corpora": "a different corpus from the evaluation text (out-of-domain)",
}


def calibration_note(settings: dict) -> str:
    """One sentence per calibration text the variants read, saying plainly whether it shares the evaluation's corpus."""
    groups = settings.get("calibration")
    if groups is None:
        return ""
    if not groups:
        return "No variant read calibration text."
    notes = []
    for g in groups:
        notes.append(f"Calibration of {', '.join(g['used_by'])}: {g['source']} ({g['split']} part, {g['samples']} × "
                     f"{g['seq_len']} tokens), {_RELATION_NOTES.get(g.get('relation_to_evaluation'), 'relation unknown')}.")
    return " ".join(notes)


def to_markdown(report: dict, plot_file: str | None = None) -> str:
    env, s = report["environment"], report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    ev = s.get("evaluation", {})
    data = s.get("evaluation_data") or {}
    lines = [
        f"# compress bench: {len(report['variants'])} variants, {s['device'].upper()}",
        "",
        f"- **Command**: `{report.get('command') or 'n/a'}`",
        f"- **Date**: {report['created']} (took {report['seconds']:.0f} s)",
        f"- **Machine**: {describe_cpu(env)}, {env['usable_cores']} usable cores"
        + (f"; GPU {env['gpu']['name']}" if env.get("gpu") else "; no GPU")
        + f"; threads per measurement: {s['threads'] or 'all cores'}",
        f"- **Load average** (1/5/15 min) at start {env.get('load_average_start')}, at end {env.get('load_average_end')}"
        " — other jobs share this machine when it is above zero; compare ratios, not absolute times.",
        f"- **Versions**: {versions}",
        f"- **Speed settings**: {_batch_line(report)}, prompt {', '.join(map(str, s['prompt_lens']))} tokens, "
        f"{s['new_tokens']} new tokens (greedy), warm-up of one prefill + {s['warmup_tokens']} decode steps, "
        f"{s['repeats']} repeats, each in a fresh process, variants interleaved round-robin; in each process the prefill is "
        f"timed {s.get('prefill_repeats', 1)} times and its median kept. Timings: median [min–max] over repeats. "
        + _clock_line(report)
        + ("A round's processes took turns (one prefill or "
           f"{s.get('decode_chunk')} decode steps each, in a shuffled order); speed ratios are medians of the "
           "per-round ratios against the base timed beside them."
           if str(s.get("interleaved") or "").startswith("turns")
           else "Speed ratios: the variant's median over the base's."),
        f"- **Quality settings**: {ev.get('source')} ({ev.get('split')} split), {data.get('windows', ev.get('windows'))} windows of "
        f"{ev.get('seq_len')} tokens ({data.get('scored_tokens', 'n/a')} scored tokens, sha256 {data.get('sha256', 'n/a')}); "
        "perplexity is token-level; KL is mean KL(base ‖ variant) per token; top-1 is the share of positions "
        "where both models' most likely next token agree. " + calibration_note(s),
        "",
        "## Speed and memory",
        "",
        "Grouped by runtime; every ratio is against the base (first row).",
        "",
        "| Variant | Runtime / device / dtype | Status | Prefill ms | Prefill × base | Decode tok/s | Decode × base "
        "| Token ms p50 / p90 / p99 | Load s | Peak RSS MB | RSS × base |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ordered = grouped_by_runtime(report["variants"], report["base"])
    for v in ordered:
        sp, r = v.get("speed"), v["ratios"]
        where = f"{runtime_label(v['backend'])} / {v['device']} / {v['dtype']}" + (
            f" / batch {v['batch_size']}" if (v.get("batch_size") or 1) != 1 else "")
        if not sp:
            lines.append(f"| {v['name']} | {where} | {v['status']} | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        for i, p in enumerate(sp["prompts"]):
            tok = p["per_token_ms"]
            label = v["name"] if len(sp["prompts"]) == 1 else f"{v['name']} (prompt {p['prompt_len']})"
            lines.append(
                f"| {label} | {where} | {v['status']} | {_spread(p['prefill_ms'], '{:.0f}')} | {_x(p.get('prefill_speedup'))} "
                f"| {_spread(p['decode_tokens_per_s'])} | {_x(p.get('decode_speedup'))} "
                f"| {_f(tok['p50'])} / {_f(tok['p90'])} / {_f(tok['p99'])} | {_spread(sp['load_s'], '{:.2f}')} "
                f"| {_spread(_scaled(sp['peak_rss_bytes'], 1e-6), '{:.0f}')} | {_x(r['peak_rss'])} |"
            )
    if any(v.get("speed") and v["speed"].get("cuda_max_allocated_bytes") for v in report["variants"]):
        lines += ["", "CUDA memory (PyTorch): max allocated / max reserved, MB (median over repeats):", ""]
        for v in report["variants"]:
            sp = v.get("speed")
            if sp and sp.get("cuda_max_allocated_bytes"):
                lines.append(f"- {v['name']}: {_f(_mb(_median(sp['cuda_max_allocated_bytes'])), '{:.0f}')} / "
                             f"{_f(_mb(_median(sp['cuda_max_reserved_bytes'])), '{:.0f}')}")
    noise = _noise_line(report)
    if noise:
        lines += ["", noise]
    lines += [
        "",
        "## Size and quality",
        "",
        "| Variant | Runtime | What | Size MB | Size × base | Parameters | Non-zero | Perplexity | PPL × base | KL (base ‖ variant) | Top-1 agreement |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in ordered:
        q, size, r = v.get("quality") or {}, v.get("size") or {}, v["ratios"]
        lines.append(
            f"| {v['name']} | {runtime_label(v['backend'])} | {v['description']} | {_f(_mb(size.get('weights_bytes')))} | {_x(r['size'])} "
            f"| {_f(q.get('parameters'), '{:,}')} | {_f(q.get('nonzero_parameters'), '{:,}')} "
            f"| {_f(q.get('perplexity'), '{:.2f}')} | {_x(r['perplexity'])} | {_f(q.get('kl_mean'), '{:.4f}')} "
            f"| {_f(q.get('top1_agreement'), '{:.1%}')} |"
        )
    failures = [(v["name"], e) for v in report["variants"] for e in v["errors"]]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- **{name}** ({e['stage']}): {e['error']}" for name, e in failures]
    if plot_file:
        lines += ["", "## Quality against speed and memory", "",
                  "Perplexity (lower is better) against decode speed and against peak RSS; the Pareto front "
                  "(variants no other variant beats on both axes; perplexities within "
                  f"{PARETO_QUALITY_TIE:.1%} of each other count as equal) is joined by a line; the marker says the runtime.", "", f"![quality vs speed and memory]({plot_file})"]
    samples = [(v["name"], (v.get("quality") or {}).get("sample")) for v in report["variants"]]
    if any(t for _, t in samples):
        prompt = s.get("sample", {}).get("prompt", "")
        lines += ["", "## Greedy samples", "", f"Prompt: “{prompt}”", ""]
        for name, text in samples:
            if text is not None:
                shown = " ".join(text.split())
                lines.append(f"- **{name}**: {shown}")
    lines += ["", "Raw values (every repeat, every decode step) are in bench.json; one row per variant in bench.csv.", ""]
    return "\n".join(lines)


def _batch_line(report: dict) -> str:
    sizes = sorted({v.get("batch_size") or 1 for v in report["variants"]} | {report["settings"].get("batch_size") or 1})
    if sizes == [1]:
        return "batch 1"
    return (f"batch {report['settings'].get('batch_size') or 1} unless the table says otherwise (a batch times that many "
            "different prompts at once; its decode tokens/s counts the tokens of every sequence)")


def _clock_line(report: dict) -> str:
    clocks = {r.get("clock") for v in report["variants"] for r in ((v.get("speed") or {}).get("runs") or [])}
    if "cuda-events" in clocks:
        return "PyTorch on CUDA is timed with CUDA events (the GPU's clock), everything else with perf_counter. "
    return ""


def _noise_line(report: dict) -> str | None:
    """How much the same variant's timings moved between repeats: the scale below which ratios mean little."""
    spreads = []
    for v in report["variants"]:
        sp = v.get("speed")
        if not sp or sp["repeats"] < 2:
            continue
        for p in sp["prompts"]:
            for key in ("prefill_ms", "decode_tokens_per_s"):
                s = p[key]
                if s.get("min"):
                    spreads.append((s["max"] / s["min"], v["name"], key))
    if not spreads:
        return None
    worst = max(spreads)
    label = {"prefill_ms": "prefill time", "decode_tokens_per_s": "decode speed"}[worst[2]]
    return (f"**Noise**: between repeats of the same variant, timings moved by up to {worst[0]:.2f}× "
            f"({label} of {worst[1]}; max/min). Ratios closer to 1 than that spread are not a measured difference.")


def render(directory: str | Path, recompute_ratios: bool = False) -> None:
    """Rewrite bench.md, bench.csv and bench.png of a report directory from its bench.json.

    `recompute_ratios` first recomputes every ratio from the raw values with this
    version's `add_ratios` and writes bench.json back (the raw values are untouched).
    """
    from .schema import validate_report

    directory = Path(directory)
    report = json.loads((directory / "bench.json").read_text())
    if recompute_ratios:
        add_ratios(report)
        validate_report(report)
        (directory / "bench.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (directory / "bench.csv").write_text(to_csv(report))
    plotted = plot(report, directory / "bench.png")
    (directory / "bench.md").write_text(to_markdown(report, plot_file="bench.png" if plotted else None))


def _scaled(s: dict | None, factor: float) -> dict | None:
    if not s or s.get("median") is None:
        return s
    return {k: s[k] * factor for k in ("min", "median", "max")}


# --------------------------------------------------------------------------- plot


# Perplexities closer than this (relative) are a tie: an exported or re-serialised copy of the
# same weights differs from its source in the fourth or fifth digit through float rounding
# alone, and a copy that is faster at "the same" quality must push its source off the front.
PARETO_QUALITY_TIE = 0.002


def pareto_front(points: list[tuple[float, float]], maximize_x: bool, y_tie: float = PARETO_QUALITY_TIE) -> list[int]:
    """Indices of points no other point beats on both axes (y is minimized), sorted along x.

    Two y values within `y_tie` (relative) of each other count as equal, so a point
    that is better on x and equal on y dominates.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (x2, y2) in enumerate(points):
            if j == i:
                continue
            tied = abs(y2 - y) <= y_tie * max(abs(y), abs(y2))
            better_x = x2 >= x if maximize_x else x2 <= x
            strictly_x = x2 > x if maximize_x else x2 < x
            if better_x and (y2 <= y or tied) and (strictly_x or (y2 < y and not tied)):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


# How each backend is named in the reports, in the order its group appears.
RUNTIME_LABELS = {
    "pytorch": "PyTorch",
    "onnxruntime": "ONNX Runtime (optimum)",
    "ort-genai": "ONNX Runtime GenAI (fused graph)",
    "llamacpp": "llama.cpp",
}
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def runtime_label(backend: str | None) -> str:
    return RUNTIME_LABELS.get(backend or "", backend or "?")


def grouped_by_runtime(variants: list[dict], base_name: str) -> list[dict]:
    """Variants ordered by runtime (the base's runtime first, the base first within it), stable otherwise."""
    order = list(RUNTIME_LABELS)
    base = next((v for v in variants if v["name"] == base_name), None)
    first = base["backend"] if base else None

    def key(item):
        i, v = item
        b = v.get("backend")
        group = -1 if b == first else (order.index(b) if b in order else len(order))
        return (group, v["name"] != base_name, i)

    return [v for _, v in sorted(enumerate(variants), key=key)]


def plot(report: dict, path: Path) -> bool:
    """Perplexity against decode tokens/s and against peak RSS, Pareto fronts marked. False if nothing to plot."""
    pts = []
    for v in report["variants"]:
        q, sp = v.get("quality") or {}, v.get("speed")
        ppl = q.get("perplexity")
        if sp and ppl is not None and math.isfinite(ppl):
            pts.append((v["name"], _median(sp["prompts"][0]["decode_tokens_per_s"]),
                        _median(sp["peak_rss_bytes"]) / 1e6, ppl, v.get("backend") or "?"))
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = [(axes[0], 1, True, "decode tokens/s (median; higher is faster)"),
              (axes[1], 2, False, "peak RSS of the measuring process, MB (median; lower is smaller)")]
    runtimes = sorted({p[4] for p in pts}, key=lambda b: list(RUNTIME_LABELS).index(b) if b in RUNTIME_LABELS else 99)
    for ax, col, maximize, xlabel in panels:
        xy = [(p[col], p[3]) for p in pts]
        front = pareto_front(xy, maximize_x=maximize)
        for k, runtime in enumerate(runtimes):
            mine = [xy[i] for i, p in enumerate(pts) if p[4] == runtime]
            ax.scatter([x for x, _ in mine], [y for _, y in mine], marker=_MARKERS[k % len(_MARKERS)],
                       color=f"C{k}", zorder=2, label=runtime_label(runtime))
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], color="tab:red", marker="o",
                markerfacecolor="none", markersize=13, zorder=1, label="Pareto front")
        for (name, *_), (x, y) in zip(pts, xy):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("perplexity (lower is better)")
        if max(y for _, y in xy) / max(min(y for _, y in xy), 1e-9) > 20:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    env = report["environment"]
    fig.suptitle(f"compress bench on {report['settings']['device']}: {env['cpu_model']}"
                 + (f" / {env['gpu']['name']}" if env.get("gpu") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":  # python -m compress.bench.report DIR: re-render a report from its bench.json
    import sys

    for d in sys.argv[1:]:
        render(d)
