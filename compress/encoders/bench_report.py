"""The encoder bench's reports: bench.json (schema: bench_schema.json), bench.csv, bench.md and bench.png.

Same files and conventions as the decoder bench's (compress/bench/report.py,
whose formatting helpers and Pareto front this reuses): every timing is a
median with its spread over repeats, every ratio is against the base of the
same run, and the plot marks the variants no other variant beats on both
quality and speed (or memory).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..bench.metrics import describe_cpu, latency_percentiles, percentile, summarize
from ..bench.report import _f, _mb, _median, _ratio, _spread, _x, pareto_front, rows_to_csv

SCHEMA_PATH = Path(__file__).with_name("bench_schema.json")


def summarize_speed(runs: list[dict]) -> dict[str, Any]:
    """Per batch size: sentences/s (min / median / max over repeats) and batch latency percentiles over all batches."""
    batches = []
    for i, first in enumerate(runs[0]["batches"]):
        per_run = [r["batches"][i] for r in runs]
        rates = [b["sentences"] / sum(b["batch_s"]) for b in per_run]
        batches.append({
            "batch_size": first["batch_size"],
            "sentences": first["sentences"],
            "sentences_per_s": summarize(rates),
            "latency_ms": latency_percentiles([t for b in per_run for t in b["batch_s"]]),
        })
    return {
        "repeats": len(runs),
        "load_s": summarize(r["load_s"] for r in runs),
        "peak_rss_bytes": summarize(r["peak_rss_bytes"] for r in runs),
        "load_rss_bytes": summarize(r["rss_after_load_bytes"] - r["rss_before_load_bytes"] for r in runs),
        "torch_threads": runs[0].get("torch_threads"),
        "batches": batches,
        "runs": runs,
    }


def _rate(run: dict, batch_size: int) -> float | None:
    b = next((b for b in run["batches"] if b["batch_size"] == batch_size), None)
    return b["sentences"] / sum(b["batch_s"]) if b and sum(b["batch_s"]) > 0 else None


def add_ratios(report: dict) -> None:
    """Speed: the median over rounds of (variant sentences/s) / (base sentences/s) in the same round.

    Memory and size: the variant's value (median) over the base's.
    """
    base = next(v for v in report["variants"] if v["name"] == report["base"])
    for v in report["variants"]:
        sp, bsp = v.get("speed"), base.get("speed")
        ratios: dict[str, Any] = {"speedup": {}}
        if sp and bsp:
            base_runs = {r["repeat"]: r for r in bsp["runs"]}
            for b in sp["batches"]:
                size = b["batch_size"]
                rounds = [_ratio(_rate(r, size), _rate(base_runs[r["repeat"]], size))
                          for r in sp["runs"] if r["repeat"] in base_runs]
                rounds = [x for x in rounds if x is not None]
                b["speedup_rounds"] = rounds
                b["speedup"] = percentile(rounds, 50) if rounds else None
                ratios["speedup"][str(size)] = b["speedup"]
        ratios["peak_rss"] = _ratio(_median((sp or {}).get("peak_rss_bytes")), _median((bsp or {}).get("peak_rss_bytes")))
        ratios["size"] = _ratio((v.get("size") or {}).get("weights_bytes"), (base.get("size") or {}).get("weights_bytes"))
        v["ratios"] = ratios


def validate(report: dict) -> None:
    from ..bench.schema import SchemaError, validate as check

    problems = check(report, json.loads(SCHEMA_PATH.read_text()))
    if problems:
        raise SchemaError("the encoder bench report does not match compress/encoders/bench_schema.json: "
                          + "; ".join(problems[:5]))


def write_reports(report: dict, output: Path, force: bool = False) -> Path:
    from ..bench.report import write_report_files

    validate(report)
    return write_report_files(report, output, force, to_csv, to_markdown, plot)


CSV_COLUMNS = ["name", "status", "backend", "batch_size", "sentences_per_s_median", "sentences_per_s_min",
               "sentences_per_s_max", "speedup", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "load_s_median",
               "peak_rss_mb_median", "peak_rss_ratio", "size_mb", "size_ratio", "cosine_mean", "cosine_p5",
               "cosine_min", "top10_overlap", "spearman_pairwise", "parameters", "nonzero_parameters", "errors"]


def _rows(report: dict):
    for v in report["variants"]:
        sp, q, r = v.get("speed"), v.get("quality") or {}, v.get("ratios") or {}
        common = {"name": v["name"], "status": v["status"], "backend": v["backend"],
                  "size_mb": _mb((v.get("size") or {}).get("weights_bytes")), "size_ratio": r.get("size"),
                  "peak_rss_ratio": r.get("peak_rss"),
                  **{k: q.get(k) for k in ("cosine_mean", "cosine_p5", "cosine_min", "top10_overlap",
                                           "spearman_pairwise", "parameters", "nonzero_parameters")},
                  "errors": " | ".join(f"{e['stage']}: {e['error']}" for e in v["errors"])}
        if not sp:
            yield common
            continue
        common.update(load_s_median=_median(sp["load_s"]), peak_rss_mb_median=_mb(_median(sp["peak_rss_bytes"])))
        for b in sp["batches"]:
            rate, lat = b["sentences_per_s"], b["latency_ms"]
            yield {**common, "batch_size": b["batch_size"], "sentences_per_s_median": rate["median"],
                   "sentences_per_s_min": rate["min"], "sentences_per_s_max": rate["max"], "speedup": b.get("speedup"),
                   "latency_ms_p50": lat["p50"], "latency_ms_p90": lat["p90"], "latency_ms_p99": lat["p99"]}


def to_csv(report: dict) -> str:
    return rows_to_csv(_rows(report), CSV_COLUMNS)


def to_markdown(report: dict, plot_file: str | None = None) -> str:
    env, s = report["environment"], report["settings"]
    data = s.get("evaluation_data") or {}
    sizes = s["batch_sizes"]
    lines = [
        f"# compress bench (encoders): {len(report['variants'])} variants, CPU",
        "",
        f"- **Command**: `{report.get('command') or 'n/a'}`",
        f"- **Date**: {report['created']} (took {report['seconds']:.0f} s)",
        f"- **Machine**: {describe_cpu(env)}, {env['usable_cores']} usable cores; threads per measurement: "
        f"{s['threads'] or 'all cores'}",
        f"- **Load average** (1/5/15 min) at start {env.get('load_average_start')}, at end "
        f"{env.get('load_average_end')} — other jobs share this machine when it is above zero; compare ratios, not "
        "absolute speeds.",
        f"- **Versions**: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        ("- **Speed settings**: not timed in this run (settings.speed: false)." if not s.get("speed", True) else
         f"- **Speed settings**: {s['timing_sentences_used']} sentences embedded at batch sizes "
        f"{', '.join(map(str, sizes))} (sorted by length and padded per batch, as sentence-transformers' encode does; "
        f"tokenization not timed), {s['warmup_batches']} warm-up batches, {s['repeats']} repeats, each in a fresh "
        "process, variants interleaved round-robin. Sentences/s: median [min–max] over repeats; latency: percentiles "
        "of the time per batch over all repeats; speed ratios: median of the per-round ratios to the base."),
        f"- **Quality settings**: {data.get('sentences', 'n/a')} sentences from {data.get('source')} "
        f"({data.get('split')} split; sha256 {data.get('sentences_sha256', 'n/a')}). Cosine of each sentence's "
        "embedding to the base's (mean, 5th percentile, minimum); top-10 neighbour overlap with the base in a "
        "retrieval over all of them; Spearman correlation of all pairwise similarities with the base's.",
        "",
        "## Speed and memory",
        "",
        "| Variant | Backend | Status | " + " | ".join(f"Sent/s b{b} | × base" for b in sizes)
        + " | " + " | ".join(f"Latency ms b{b} p50 / p90 / p99" for b in sizes) + " | Load s | Peak RSS MB | RSS × base |",
        "|---|---|---|" + "---:|---:|" * len(sizes) + "---:|" * len(sizes) + "---:|---:|---:|",
    ]
    for v in report["variants"]:
        sp, r = v.get("speed"), v["ratios"]
        if not sp:
            lines.append(f"| {v['name']} | {v['backend'] or '?'} | {v['status']} | " + "n/a | " * (3 * len(sizes) + 3))
            continue
        by_size = {b["batch_size"]: b for b in sp["batches"]}
        rates = " | ".join(f"{_spread(by_size[b]['sentences_per_s'])} | {_x(by_size[b].get('speedup'))}" for b in sizes)
        lat = " | ".join(" / ".join(_f(by_size[b]["latency_ms"][p], "{:.2f}") for p in ("p50", "p90", "p99"))
                         for b in sizes)
        rss = {k: sp["peak_rss_bytes"][k] / 1e6 for k in ("min", "median", "max")}
        lines.append(f"| {v['name']} | {v['backend']} | {v['status']} | {rates} | {lat} | "
                     f"{_spread(sp['load_s'], '{:.2f}')} | {_spread(rss, '{:.0f}')} | {_x(r['peak_rss'])} |")
    lines += ["", "## Size and quality", "",
              "| Variant | What | Size MB | Size × base | Parameters | Non-zero | Cosine mean | Cosine p5 | Cosine min "
              "| Top-10 overlap | Spearman |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in report["variants"]:
        q, size, r = v.get("quality") or {}, v.get("size") or {}, v["ratios"]
        lines.append(
            f"| {v['name']} | {v['description']} | {_f(_mb(size.get('weights_bytes')))} | {_x(r['size'])} "
            f"| {_f(q.get('parameters'), '{:,}')} | {_f(q.get('nonzero_parameters'), '{:,}')} "
            f"| {_f(q.get('cosine_mean'), '{:.4f}')} | {_f(q.get('cosine_p5'), '{:.4f}')} "
            f"| {_f(q.get('cosine_min'), '{:.4f}')} | {_f(q.get('top10_overlap'), '{:.1%}')} "
            f"| {_f(q.get('spearman_pairwise'), '{:.4f}')} |")
    failures = [(v["name"], e) for v in report["variants"] for e in v["errors"]]
    if failures:
        lines += ["", "## Failures", ""] + [f"- **{n}** ({e['stage']}): {e['error']}" for n, e in failures]
    if plot_file:
        lines += ["", "## Quality against speed and memory", "",
                  f"Mean cosine to the base (higher is better) against sentences/s at batch {max(sizes)} and against "
                  "peak RSS; the Pareto front (variants no other variant beats on both axes) is joined by a line.", "",
                  f"![quality vs speed and memory]({plot_file})"]
    lines += ["", "Raw values (every repeat, every batch) are in bench.json; one row per variant and batch size in "
              "bench.csv.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> bool:
    """Mean cosine against sentences/s at the largest batch size and against peak RSS; False if nothing to plot."""
    size = max(report["settings"]["batch_sizes"])
    pts = []
    for v in report["variants"]:
        q, sp = v.get("quality") or {}, v.get("speed")
        cos = q.get("cosine_mean")
        if sp and cos is not None and math.isfinite(cos):
            rate = next(b for b in sp["batches"] if b["batch_size"] == size)["sentences_per_s"]["median"]
            pts.append((v["name"], rate, sp["peak_rss_bytes"]["median"] / 1e6, cos))
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = [(axes[0], 1, True, f"sentences/s at batch {size} (median; higher is faster)"),
              (axes[1], 2, False, "peak RSS of the measuring process, MB (median; lower is smaller)")]
    for ax, col, maximize, xlabel in panels:
        xy = [(p[col], p[3]) for p in pts]
        front = pareto_front([(x, -y) for x, y in xy], maximize_x=maximize)  # the front minimizes y: negate cosine
        ax.scatter([x for x, _ in xy], [y for _, y in xy], color="tab:blue", zorder=2)
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], color="tab:red", marker="o",
                markerfacecolor="none", markersize=12, zorder=1, label="Pareto front")
        for (name, *_), (x, y) in zip(pts, xy):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean cosine to the base's embeddings (higher is better)")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"compress bench (encoders) on CPU: {report['environment']['cpu_model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
