"""Stopwatches for the timed regions of a speed worker: the host clock on the CPU, CUDA events on CUDA.

On the CPU a region is timed with ``time.perf_counter``. On CUDA the device
runs asynchronously, so the host clock is only right after a synchronisation,
and the synchronisation itself (and any host jitter around it) lands inside
the timing. CUDA events are stamped by the GPU in stream order: the time
between two events is the time the device took from the first to the second,
including any gap in which it waited for the host to launch the next kernel
(a batch-1 decode of a small model is launch-bound, and that wait is part of
its real latency). ``stop`` waits for the end event, so a timed step is still
complete before the next one starts, as on the CPU.

Usage::

    clock = stopwatch("cuda", sync=runner.sync)
    mark = clock.start()
    ...work...
    seconds = clock.stop(mark)
"""

from __future__ import annotations

import time

CUDA_EVENTS = "cuda-events"
HOST_CLOCK = "perf_counter"


class HostStopwatch:
    """perf_counter around a region; `sync` (if given) runs before each reading, e.g. a device synchronise."""

    name = HOST_CLOCK

    def __init__(self, sync=None):
        self._sync = sync or (lambda: None)

    def start(self) -> float:
        self._sync()
        return time.perf_counter()

    def stop(self, mark: float) -> float:
        self._sync()
        return time.perf_counter() - mark


class CudaEventStopwatch:
    """A pair of CUDA events on the current stream; the elapsed time is read off the GPU's clock."""

    name = CUDA_EVENTS

    def __init__(self):
        import torch

        self._torch = torch

    def start(self):
        event = self._torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, mark) -> float:
        end = self._torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return mark.elapsed_time(end) / 1000.0  # elapsed_time is in milliseconds


def stopwatch(device: str, sync=None, events: bool = True):
    """CUDA events on a CUDA device, the host clock (after `sync`) anywhere else.

    `events=False` keeps the host clock on CUDA too: for a runtime whose kernels run on
    a stream of its own (ONNX Runtime's CUDA provider), events on PyTorch's current
    stream would not bracket its work.
    """
    if events and str(device).startswith("cuda"):
        return CudaEventStopwatch()
    return HostStopwatch(sync)
