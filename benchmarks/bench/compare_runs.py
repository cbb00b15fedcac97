"""Do two runs of the same bench agree? Compares every speed ratio (variant vs base, same run).

    python benchmarks/bench/compare_runs.py benchmarks/bench/cpu-default benchmarks/bench/cpu-default-run2 \
        -o benchmarks/bench/agreement.md

A ratio agrees when the two runs' values differ by at most the tolerance
(default 10%) relative to their mean. Absolute times are not compared: on a
shared machine they move with the load; ratios measured side by side should not.
Exit status 0 when every ratio agrees, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPEED_RATIOS = ("prefill_speedup", "decode_speedup")


def load(path: Path) -> dict:
    path = path / "bench.json" if path.is_dir() else path
    return json.loads(path.read_text())


def _estimator(report: dict) -> str:
    n = report["settings"]["repeats"]
    if str(report["settings"].get("interleaved") or "").startswith("turns"):
        return f"the median of {n} per-round ratios (the processes took turns)"
    return f"the ratio of medians over {n} repeats (one process at a time)"


def ratios(report: dict) -> dict[tuple[str, int, str], float]:
    out = {}
    for v in report["variants"]:
        if v["name"] == report["base"] or not v.get("speed"):
            continue
        for p in v["speed"]["prompts"]:
            for key in SPEED_RATIOS:
                if p.get(key) is not None:
                    out[(v["name"], p["prompt_len"], key)] = p[key]
        if v["ratios"].get("load_time") is not None:
            out[(v["name"], 0, "load_time")] = v["ratios"]["load_time"]
    return out


def compare(a: dict, b: dict, tolerance: float) -> tuple[list[str], bool]:
    ra, rb = ratios(a), ratios(b)
    rows = ["| Variant | Prompt | Ratio | Run 1 | Run 2 | Difference | Within ±{:.0%} |".format(tolerance),
            "|---|---:|---|---:|---:|---:|---|"]
    ok = True
    for key in sorted(set(ra) | set(rb)):
        name, prompt, what = key
        x, y = ra.get(key), rb.get(key)
        if x is None or y is None:
            rows.append(f"| {name} | {prompt or ''} | {what} | {x if x is not None else 'n/a'} | {y if y is not None else 'n/a'} | n/a | missing |")
            ok = False
            continue
        diff = abs(x - y) / ((x + y) / 2)
        agree = diff <= tolerance
        if what in SPEED_RATIOS:
            ok &= agree
            verdict = "yes" if agree else "NO"
        else:  # load time depends on the page cache; shown, not part of the verdict
            verdict = ("yes" if agree else "no") + " (informational)"
        rows.append(f"| {name} | {prompt or ''} | {what} | {x:.3f}× | {y:.3f}× | {diff:.1%} | {verdict} |")
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run1", type=Path)
    ap.add_argument("run2", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("-o", "--output", type=Path, help="also write the comparison as Markdown here")
    args = ap.parse_args(argv)
    a, b = load(args.run1), load(args.run2)
    rows, ok = compare(a, b, args.tolerance)
    la, lb = a["environment"].get("load_average_start"), b["environment"].get("load_average_start")
    text = "\n".join([
        "# Do two runs of the same bench agree?",
        "",
        f"- Run 1: `{a.get('command')}` at {a['created']} (load average at start {la})",
        f"- Run 2: `{b.get('command')}` at {b['created']} (load average at start {lb})",
        f"- Compared: every speed ratio against the base (prefill and decode speedup per prompt length; "
        "load time is shown but not part of the verdict, since it depends on the page cache), "
        f"each {_estimator(a)} in run 1 and {_estimator(b)} in run 2. "
        "Difference = |run 1 − run 2| / mean of the two.",
        f"- Command: `python benchmarks/bench/compare_runs.py {args.run1} {args.run2}"
        + (f" -o {args.output}`" if args.output else "`"),
        "",
        *rows,
        "",
        f"**Verdict**: {'every ratio agrees' if ok else 'some ratios differ by more than'} "
        f"{'within ' if ok else ''}{args.tolerance:.0%}.",
        "",
    ])
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
