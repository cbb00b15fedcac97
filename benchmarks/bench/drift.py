"""How much does a speed ratio move when nothing differs? The base against an identical copy of itself.

    python benchmarks/bench/drift.py benchmarks/bench/drift/same-processes benchmarks/bench/drift/same-turns2 ...

Each report must hold the base and one variant that is the same model (the
runs in benchmarks/bench/drift/ were made with `compress bench same=<the
base's converted directory> --no-quality --repeats 8`, see README.md there).
For every round (repeat) the script takes the base's value over the copy's,
for prefill (the process's median prefill) and decode (total decode time), so
1.0 is the truth and the spread over rounds is the noise of one round's ratio.
Also prints the absolute medians, to show how fast the machine was.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def per_round_ratios(report: dict) -> dict[str, list[float]]:
    base = next(v for v in report["variants"] if v["name"] == report["base"])
    copy = next(v for v in report["variants"] if v["name"] != report["base"])
    prefill, decode = [], []
    for b, c in zip(base["speed"]["runs"], copy["speed"]["runs"]):
        pb, pc = b["prompts"][0], c["prompts"][0]
        prefill.append(pb["prefill_s"] / pc["prefill_s"])
        decode.append(sum(pb["decode_step_s"]) / sum(pc["decode_step_s"]))
    return {"prefill": prefill, "decode": decode}


def absolute(report: dict) -> tuple[float, float]:
    """Median prefill (ms) and median decode step (ms) over every process of the report."""
    runs = [r["prompts"][0] for v in report["variants"] for r in v["speed"]["runs"]]
    return (1000 * statistics.median(x for p in runs for x in p["prefill_all_s"]),
            1000 * statistics.median(x for p in runs for x in p["decode_step_s"]))


def describe(report: dict) -> str:
    s = report["settings"]
    how = s.get("interleaved") or "processes (before turns existed)"
    if how.startswith("turns"):
        how = f"turns, {s.get('decode_chunk')} decode steps a turn"
    return how.split(" (")[0] if how.startswith("processes") else how


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    print("| run | how | rounds | prefill ratio: sd [min–max] | decode ratio: sd [min–max] | "
          "prefill median | decode step median | started |")
    print("|---|---|---:|---|---|---:|---:|---|")
    for path in args.runs:
        report = json.loads((path / "bench.json").read_text())
        r = per_round_ratios(report)
        pre_ms, step_ms = absolute(report)
        cells = [f"{statistics.pstdev(x):.3f} [{min(x):.3f}–{max(x):.3f}]" for x in (r["prefill"], r["decode"])]
        print(f"| {path.name} | {describe(report)} | {len(r['prefill'])} | {cells[0]} | {cells[1]} | "
              f"{pre_ms:.0f} ms | {step_ms:.1f} ms | {report['created'][11:16]} UTC |")


if __name__ == "__main__":
    main()
