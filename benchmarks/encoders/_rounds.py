"""Interleaved timing rounds for the encoder speed scripts: every function once per round, ratios to the first."""
import statistics
import time


def interleaved(fns: dict, items: int, rounds: int = 5) -> None:
    """Warm each function up, time `rounds` rounds taking turns, print items/s and the per-round ratio to the
    first function (median [range])."""
    for f in fns.values():
        f()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    first = next(iter(times.values()))
    for name, ts in times.items():
        ratios = [a / b for a, b in zip(first, ts)]
        print(f"{name:24s} {items / statistics.median(ts):7.1f} sent/s  x first {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}]")
