"""Shared by the encoder speed scripts: the bench's timing batches, and interleaved timing rounds (every function
once per round, ratios to the first)."""
import statistics
import time
from pathlib import Path

WIKI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"


def timing_batches(tok, tensors: str, sentences: int = 256, batch: int = 32) -> list:
    """The bench's timing sentences (WikiText-2 valid, evaluation half), sorted by length, in padded batches."""
    from compress.encoders.sentences import SentenceSpec, load_sentences

    lines = load_sentences(SentenceSpec(source=str(WIKI), split="evaluation", sentences=sentences)).texts
    lines.sort(key=lambda s: len(tok(s)["input_ids"]))
    return [tok(lines[i:i + batch], padding=True, truncation=True, max_length=256, return_tensors=tensors)
            for i in range(0, sentences, batch)]


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
