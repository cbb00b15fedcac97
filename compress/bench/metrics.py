"""Measurements that do not depend on a backend: statistics, memory, disk size, environment.

Timings are kept raw (every repeat, every decode step) and summarised as
min / median / max (the spread the report shows) plus percentiles for per-token
latency. Percentiles use linear interpolation between order statistics, the
same rule as ``numpy.percentile``'s default, written out here so the worker
needs nothing beyond the standard library to summarise.
"""

from __future__ import annotations

import math
import os
import platform
import re
import resource
import sys
from pathlib import Path
from typing import Any, Iterable

# Files that hold a model's weights, for "size on disk" (tokenizer and config files are
# counted separately in the directory total).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".data", ".gguf")


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Iterable[float], keep_values: bool = True) -> dict[str, Any]:
    """min / median / max / mean of a list of measurements (and the values themselves)."""
    xs = [float(v) for v in values]
    if not xs:
        return {"n": 0, "min": None, "median": None, "max": None, "mean": None, **({"values": []} if keep_values else {})}
    out = {"n": len(xs), "min": min(xs), "median": percentile(xs, 50), "max": max(xs), "mean": sum(xs) / len(xs)}
    if keep_values:
        out["values"] = xs
    return out


def latency_percentiles(seconds: Iterable[float]) -> dict[str, float | None]:
    """p50/p90/p99 of per-token latencies, in milliseconds."""
    xs = [1000.0 * s for s in seconds]
    if not xs:
        return {"p50": None, "p90": None, "p99": None}
    return {"p50": percentile(xs, 50), "p90": percentile(xs, 90), "p99": percentile(xs, 99)}


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; psutil elsewhere)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        pages = int(statm.read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image so far.

    On Linux this is VmHWM from /proc/self/status, not ru_maxrss: ru_maxrss
    survives execve, so a worker started by a parent that already holds a model
    would report the parent's size (every variant then shows the same peak).
    Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    hwm = _proc_status_bytes("VmHWM").get("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def rss_parts() -> dict[str, int] | None:
    """Resident memory by kind (anon, file-backed, shmem), bytes; None where there is no /proc.

    PyTorch weights loaded from safetensors are file-backed (mapped from the file),
    ONNX Runtime's are anonymous.
    """
    found = _proc_status_bytes("RssAnon", "RssFile", "RssShmem")
    return {"anon": found["RssAnon"], "file": found["RssFile"], "shmem": found["RssShmem"]} if len(found) == 3 else None


def page_faults() -> dict[str, int]:
    """Minor and major page faults of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"minor": usage.ru_minflt, "major": usage.ru_majflt}


def _proc_status_bytes(*fields: str) -> dict[str, int]:
    """The given kB fields of /proc/self/status, in bytes (empty where there is no /proc)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return {}
    found = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            found[key] = int(value.split()[0]) * 1024  # reported in kB
    return found


def directory_size(path: str | os.PathLike | None) -> dict[str, int] | None:
    """Bytes of weight files and of everything in a model directory (None for a hub id)."""
    if path is None:
        return None
    root = Path(path)
    if root.is_file():
        size = root.stat().st_size
        return {"weights_bytes": size, "total_bytes": size}
    if not root.is_dir():
        return None
    weights = total = 0
    for f in root.rglob("*"):
        if f.is_file():
            size = f.stat().st_size
            total += size
            if f.name.endswith(WEIGHT_SUFFIXES):
                weights += size
    return {"weights_bytes": weights, "total_bytes": total}


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (it describes them all); empty where there is none."""
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
    return fields


def cpu_model() -> str:
    return _cpuinfo_fields().get("model name") or platform.processor() or platform.machine()


# The instruction-set extensions that decide which kernels the runtimes pick (oneDNN, MLAS, ggml):
# speeds and even ratios between runtimes differ between CPUs that differ here.
_ISA_FLAG = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512\w*|avx_vnni\w*|avx_ne_convert|amx_\w+)$")


def cpu_identity() -> dict[str, Any]:
    """Vendor, family/model numbers and instruction-set flags: the model name alone ("AMD EPYC") can cover
    CPUs generations apart, with and without AVX-512 or AMX."""
    fields = _cpuinfo_fields()
    return {"vendor": fields.get("vendor_id") or platform.machine(), "family": fields.get("cpu family"),
            "model": fields.get("model"), "isa": sorted(f for f in fields.get("flags", "").split() if _ISA_FLAG.match(f))}


def describe_cpu(env: dict[str, Any]) -> str:
    """One line for reports: model name, family/model, the ISA flags, and llama.cpp's CPU code where known."""
    ident = env.get("cpu") or {}
    text = env["cpu_model"]
    if ident.get("family") is not None:
        text += f" ({ident['vendor']} family {ident['family']} model {ident['model']})"
    if ident.get("isa"):
        text += f"; ISA flags: {' '.join(ident['isa'])}"
    if env.get("llamacpp_cpu_variant"):
        text += f"; llama.cpp CPU code: {env['llamacpp_cpu_variant']}"
    return text


def environment() -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, GPU, threads, library versions, load."""
    import torch

    from ..saving import library_versions

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu": cpu_identity(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads_default": torch.get_num_threads(),
        "platform": platform.platform(),
        "memory_bytes": _total_memory(),
        "gpu": None,
        "versions": library_versions(),
        "llamacpp_cpu_variant": _llamacpp_variant(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                      "cuda": torch.version.cuda, "capability": f"{props.major}.{props.minor}",
                      "memory_bytes": int(props.total_memory), "multiprocessors": int(props.multi_processor_count)}
    return env


def _llamacpp_variant() -> str | None:
    from ..llamacpp_runtime import probed_variant

    try:
        return probed_variant()
    except Exception:  # noqa: BLE001 - a report line must never fail the run that it describes
        return None


def _total_memory() -> int | None:
    return meminfo_bytes("MemTotal")


def meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field (MemTotal, MemAvailable, ...) in bytes; None where there is no /proc."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
