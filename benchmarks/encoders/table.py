"""The encoder table (README) from a run's bench.json and loading.json, with the issue's claims checked.

    python benchmarks/encoders/table.py RESULTS            # RESULTS/bench/bench.json, RESULTS/loading.json
    python benchmarks/encoders/table.py RESULTS MORE...    # rows of several runs (the base row from the first)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(x, spec="{:.4f}"):
    return "n/a" if x is None else spec.format(x)


def read_runs(dirs: list[Path]) -> tuple[dict, dict]:
    """One report (the first run's, with the variants of the later runs after its own) and the load checks."""
    report, loading = None, {}
    for results in dirs:
        run = json.loads((results / "bench" / "bench.json").read_text())
        if report is None:
            report = run
        else:
            report["variants"] += [v for v in run["variants"] if v["name"] not in {x["name"] for x in report["variants"]}]
        loading_path = results / "loading.json"
        if loading_path.is_file():
            for r in json.loads(loading_path.read_text())["variants"]:
                loading.setdefault(r["name"], r)
    return report, loading


def main(dirs: list[Path]) -> None:
    report, loading = read_runs(dirs)
    sizes = report["settings"]["batch_sizes"]
    header = (["Variant", "Backend"] + [f"Sent/s b{b}" for b in sizes] + [f"× base b{b}" for b in sizes]
              + [f"Latency b{b} p50 / p90 / p99 ms" for b in sizes] + ["Peak RSS MB", "Size MB", "Cosine mean / p5 / min", "Top-10 overlap",
                 "Spearman", "Loads with (stock)"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * 2 + "---:|" * (len(header) - 3) + "---|")
    rows = {}
    for v in report["variants"]:
        sp, q = v.get("speed"), v.get("quality") or {}
        by = {b["batch_size"]: b for b in sp["batches"]} if sp else {}
        rate = [fmt(by[b]["sentences_per_s"]["median"], "{:.1f}") if b in by else "n/a" for b in sizes]
        ratio = [fmt(by[b].get("speedup"), "{:.2f}×") if b in by else "n/a" for b in sizes]
        lat = [" / ".join(fmt(by[b]["latency_ms"][p], "{:.1f}") for p in ("p50", "p90", "p99")) if b in by else "n/a"
               for b in sizes]
        rss = fmt(sp["peak_rss_bytes"]["median"] / 1e6, "{:.0f}") if sp else "n/a"
        size = fmt((v.get("size") or {}).get("weights_bytes", 0) / 1e6, "{:.1f}") if v.get("size") else "n/a"
        cos = " / ".join(fmt(q.get(k)) for k in ("cosine_mean", "cosine_p5", "cosine_min"))
        load = loading.get(v["name"], {})
        loads = " + ".join(x for x in (load.get("loader"), load.get("sentence_transformers")) if x) if load.get("loads") \
            else (f"FAILED: {load.get('error')}" if load else "not checked")
        print("| " + " | ".join([v["name"], v["backend"] or "n/a", *rate, *ratio, *lat, rss, size, cos,
                                 fmt(q.get("top10_overlap"), "{:.1%}"), fmt(q.get("spearman_pairwise")), loads]) + " |")
        rows[v["name"]] = (by, q)
    print()
    big = max(sizes)

    def claim(text, name, ok):
        print(f"- {text}: {'yes' if ok else 'NO'}" if ok is not None else f"- {text}: not measured")

    def get(name, what):
        by, q = rows.get(name, ({}, {}))
        return q.get("cosine_mean") if what == "cos" else (by.get(big) or {}).get("speedup")

    cos, speed = get("ort-int8", "cos"), get("ort-int8", "speed")
    claim(f"ORT int8: mean cosine >= 0.99 ({fmt(cos)}) at >= 2x PyTorch fp32 sentences/s at batch {big} "
          f"({fmt(speed, '{:.2f}x')})", "ort-int8", None if cos is None or speed is None else cos >= 0.99 and speed >= 2)
    cos, speed = get("mlp25-distill", "cos"), get("mlp25-distill", "speed")
    claim(f"MLP channels -25% + embedding distillation: mean cosine >= 0.97 ({fmt(cos)}), speed ratio at batch {big} "
          f"{fmt(speed, '{:.2f}x')}", "mlp25-distill", None if cos is None else cos >= 0.97)
    loads = [r.get("loads") for r in loading.values()]
    claim("every output loads with stock libraries", "", all(loads) if loads else None)


if __name__ == "__main__":
    main([Path(d) for d in sys.argv[1:]] or [Path("benchmarks/encoders/results")])
