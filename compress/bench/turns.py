"""Turn-taking: the speed workers of one round stay alive and time their work in turns.

Why: on a shared or virtual machine the speed of the CPU drifts over seconds
(other tenants, frequency), and one fresh process per variant, one after the
other, puts 15 s or more between the base's timing and a variant's. Two runs of
the same bench then disagree by 10-25 % on prefill ratios. Here every variant
of a round is loaded in its own fresh process, one after the other (so load
times and memory stay uncontended and per process); then the timed work, cut
into short segments (one prefill, or a few decode steps), goes round the live
workers one segment at a time. The base and each variant are timed within a
second or two of each other, so drift hits them alike and their ratio keeps.

Only one worker computes at any moment: the others block on a pipe read, which
costs no CPU, and a worker says it is done only once its own threads have gone
quiet (ONNX Runtime's pool spins on a core for 40-70 ms after each run, which
slowed whichever worker came next by up to 16 %). Each segment is timed inside
its worker, so the parent's signalling is never inside a timed region.

The cost is memory: all variants of a round are resident at once. The harness
uses turns only where they fit (see harness.choose_interleave).
"""

from __future__ import annotations

import os
import random
import select
import time
from typing import Callable

from .worker import speed_segments

_SLICE_S = 0.5  # how often a wait checks that the worker is still alive


class _Turn:
    """One live worker and its two pipe ends on the parent's side."""

    def __init__(self, name: str, live, cmd_w: int, ack_r: int):
        self.name, self.live, self.cmd_w, self.ack_r = name, live, cmd_w, ack_r
        self.buffer = b""

    def go(self) -> None:
        os.write(self.cmd_w, b"go\n")

    def await_word(self, timeout: float) -> str | None:
        """The worker's next line ('ready' or 'done'), or None if it died or ran out of time."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.live.timed_out = True
                return None
            ready, _, _ = select.select([self.ack_r], [], [], min(_SLICE_S, left))
            if ready:
                chunk = os.read(self.ack_r, 64)
                if not chunk:
                    return None
                self.buffer += chunk
            elif self.live.proc.finished(0):
                return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        for fd in (self.cmd_w, self.ack_r):
            try:
                os.close(fd)
            except OSError:
                pass


def run_round(workers, jobs: list[tuple[str, dict]], timeout: float,
              on_segment: Callable[[str, int, int], None] | None = None, seed: int = 0) -> dict:
    """Run one speed worker per (name, job), taking turns; returns {name: WorkerResult}.

    Workers start in the given order, each loading and warming up alone. The
    segments then go round the live workers in an order shuffled each time
    round (seeded, so a run can be repeated), so that no variant always follows
    the same one: whatever one worker leaves behind (a cache, a CPU still busy)
    falls on every variant alike. A worker that fails or stops answering is
    stopped and left out; the others carry on.
    """
    shuffle = random.Random(seed).shuffle
    results: dict = {}
    live: list[_Turn] = []
    try:
        for name, job in jobs:
            cmd_r, cmd_w = os.pipe()
            ack_r, ack_w = os.pipe()
            try:
                worker = workers.start("speed", {**job, "turns": {"cmd_fd": cmd_r, "ack_fd": ack_w}},
                                       pass_fds=(cmd_r, ack_w))
            finally:
                os.close(cmd_r)
                os.close(ack_w)
            turn = _Turn(name, worker, cmd_w, ack_r)
            if turn.await_word(timeout) == "ready":
                live.append(turn)
            else:
                _finish(turn, results, kill=True)
        if live:
            job = jobs[0][1]  # every job of a round has the same settings, hence the same segments
            segments = speed_segments(job["prompt_lens"], job.get("prefill_repeats", 1), int(job["new_tokens"]),
                                      job.get("decode_chunk", 2))
            for i in range(len(segments)):
                order = list(live)
                shuffle(order)
                for turn in order:
                    turn.go()
                    if turn.await_word(timeout) != "done":
                        _finish(turn, results, kill=True)
                if on_segment:
                    on_segment(segments[i][0], i + 1, len(segments))
                live = [t for t in live if t.name not in results]
        for turn in live:  # one at a time, so that no exit overlaps anything else
            turn.go()
            _finish(turn, results, kill=False, timeout=timeout)
        live = []
    finally:
        for turn in live:  # interrupted: stop whatever is still running
            if turn.name not in results:
                _finish(turn, results, kill=True)
    return results


def _finish(turn: _Turn, results: dict, kill: bool, timeout: float = 0.0) -> None:
    if kill:
        if not turn.live.proc.finished(0):
            turn.live.proc.kill()
    elif not turn.live.proc.finished(timeout):
        turn.live.proc.kill()
        turn.live.timed_out = True
    turn.close()
    results[turn.name] = turn.live.result()
