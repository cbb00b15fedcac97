"""Paired decode ratios between two variants of one bench report: round by round, median and range.

    python benchmarks/bench/paired.py benchmarks/bench/cpu-runtimes mlp25-llamacpp-q8_0 llamacpp-q8_0

Each round of a report times every variant once (their processes take turns), so the ratio of
two variants' decode speeds within a round is measured under the same machine state; the
median of those per-round ratios is the paired estimate, their range its spread.
"""
import json
import statistics
import sys
from pathlib import Path


def per_round_decode(report: dict, name: str) -> list[float]:
    """The variant's decode speed over the base's, round by round (the bench's own paired ratios)."""
    if name == report["base"]:
        return [1.0] * report["settings"]["repeats"]
    variant = next(v for v in report["variants"] if v["name"] == name)
    return variant["speed"]["prompts"][0]["decode_speedup_rounds"]


def main(argv: list[str]) -> int:
    directory, a, b = argv
    report = json.loads((Path(directory) / "bench.json").read_text())
    ratios = [x / y for x, y in zip(per_round_decode(report, a), per_round_decode(report, b))]
    print(f"{a} / {b} decode: median {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] "
          f"over {len(ratios)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
