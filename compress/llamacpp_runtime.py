"""llama.cpp (through llama-cpp-python) with a CPU variant that really runs on this machine.

setup.sh builds llama-cpp-python with ``GGML_NATIVE=OFF GGML_BACKEND_DL=ON
GGML_CPU_ALL_VARIANTS=ON``: instead of one CPU backend compiled for the build
machine (``-march=native``, which died with "Illegal instruction" when the
machine changed), the wheel carries one ``libggml-cpu-<variant>.so`` per
instruction-set level, and one is chosen at run time. setup.sh keeps four of
ggml's fourteen x86 levels (x64, haswell, skylakex, icelake:
scripts/build_llama_cpp.py); a build with any other set works the same way.

ggml chooses by the CPU's feature flags, and that is not enough on a virtual
machine: an Intel Xeon KVM guest here advertises amx_tile/amx_int8 and the
kernel grants the AMX permission, yet the sapphirerapids variant dies with
SIGILL at its first ``tilezero``. So `ensure_cpu_backend` tries the
candidates best first, each in a throw-away subprocess that loads the
variant and evaluates a few tokens of the built-in model (whose Q4_1 weights
take the AMX and VNNI paths), and loads the first that survives into this
process. The verdict is cached per CPU (model name, flags) and variant file, so
the probing (a few seconds) happens once per machine.

A llama-cpp-python built the ordinary way (no variant files) is used as it is.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import UserError
from .progress import log

# Best first; each variant's name is ggml's, and the flags are what /proc/cpuinfo must list for
# it to be worth probing at all (ggml's own requirements, spelled as Linux names them).
VARIANTS: list[tuple[str, tuple[str, ...]]] = [
    ("sapphirerapids", ("avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")),
    ("zen4", ("avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16")),
    ("cooperlake", ("avx512f", "avx512_vnni", "avx512_bf16")),
    ("icelake", ("avx512f", "avx512vbmi", "avx512_vnni")),
    ("cascadelake", ("avx512f", "avx512_vnni")),
    ("cannonlake", ("avx512f", "avx512vbmi")),
    ("skylakex", ("avx512f",)),
    ("alderlake", ("avx2", "fma", "f16c", "bmi2", "avx_vnni")),
    ("haswell", ("avx2", "fma", "f16c", "bmi2")),
    ("piledriver", ("avx", "f16c", "fma")),
    ("ivybridge", ("avx", "f16c")),
    ("sandybridge", ("avx",)),
    ("sse42", ("sse4_2",)),
    ("x64", ()),
]

_loaded: dict[str, str] = {}
_log_callback = None  # kept alive: llama.cpp calls it for as long as the process runs


def require_llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise UserError(f"llama.cpp is not installed here ({exc}); run ./setup.sh, which builds llama-cpp-python "
                        "(see README)") from None
    return llama_cpp


def variant_files() -> dict[str, Path]:
    """The CPU variant libraries the installed llama-cpp-python carries, by variant name."""
    llama_cpp = require_llama_cpp()
    package = Path(llama_cpp.__file__).resolve().parent
    # The wheel installs the variants beside the package's lib/ or, as 0.3.x does, in site-packages/bin.
    dirs = [package / "lib", package.parent / "bin"]
    extra = os.environ.get("COMPRESS_GGML_BACKEND_DIR")
    if extra:
        dirs.insert(0, Path(extra))
    found: dict[str, Path] = {}
    for d in dirs:
        for f in sorted(d.glob("libggml-cpu-*.so")) if d.is_dir() else []:
            found.setdefault(f.name[len("libggml-cpu-"):-len(".so")], f)
    return found


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cache_path() -> Path:
    from .models import compress_cache_dir

    return compress_cache_dir() / "llamacpp-cpu-variants.json"


def _cache_key(path: Path) -> str:
    from .bench.metrics import cpu_model

    stat = path.stat()
    text = f"{cpu_model()}|{' '.join(sorted(cpu_flags()))}|{path}|{stat.st_size}|{int(stat.st_mtime)}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _ggml() -> ctypes.CDLL:
    llama_cpp = require_llama_cpp()
    # libllama links libggml by its soname; the wheel carries libggml.so, .so.0 and .so.0.x as separate
    # copies, so the handle must be the .so.0 one or the backend registers in a second, unused instance.
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    for name in ("libggml.so.0", "libggml.so"):
        if (lib_dir / name).is_file():
            lib = ctypes.CDLL(str(lib_dir / name))
            lib.ggml_backend_load.argtypes = [ctypes.c_char_p]
            lib.ggml_backend_load.restype = ctypes.c_void_p
            lib.ggml_backend_reg_count.restype = ctypes.c_size_t
            return lib
    raise UserError(f"llama-cpp-python at {lib_dir} has no libggml; reinstall it with ./setup.sh")


def quiet_llama_logs() -> None:
    """Send llama.cpp's and ggml's own log lines to our debug log (shown with -v) instead of stderr."""
    global _log_callback
    if _log_callback is not None:
        return
    llama_cpp = require_llama_cpp()

    def forward(level, text, user_data):
        line = text.decode("utf-8", errors="replace").rstrip() if text else ""
        if line:
            log.debug(f"llama.cpp: {line}")

    _log_callback = llama_cpp.llama_log_callback(forward)
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def probe_variant(path: Path, timeout: float = 120.0) -> tuple[bool, str]:
    """Run a few tokens of the built-in model on one CPU variant in a subprocess; (works, why not)."""
    cmd = [sys.executable, "-m", "compress.llamacpp_runtime", "--probe", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    if done.returncode == 0:
        return True, ""
    if done.returncode < 0:
        import signal

        return False, f"killed by {signal.Signals(-done.returncode).name}"
    lines = [ln for ln in (done.stderr or "").strip().splitlines() if ln.strip()]
    return False, f"exit {done.returncode}: {lines[-1][:200] if lines else 'no output'}"


def _candidates(files: dict[str, Path]):
    """(name, file) of each built variant whose ISA this CPU has, best first: the order both the loader and
    the reports walk."""
    flags = cpu_flags()
    for name, needs in VARIANTS:
        path = files.get(name)
        if path is not None and set(needs) <= flags:
            yield name, path


def ensure_cpu_backend() -> str:
    """Load the best CPU variant that runs here into this process (once); return its name.

    Returns "built-in" when llama-cpp-python carries no variant files (an ordinary build).
    """
    if "cpu" in _loaded:
        return _loaded["cpu"]
    quiet_llama_logs()
    files = variant_files()
    if not files:
        _loaded["cpu"] = "built-in"
        return "built-in"
    cache_file = _cache_path()
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    refused = []
    for name, path in _candidates(files):
        key = _cache_key(path)
        verdict = cache.get(key)
        if verdict is None:
            log.info(f"llama.cpp: checking that its {name} CPU code runs on this machine (once)...")
            works, why = probe_variant(path)
            verdict = {"variant": name, "works": works, "why": why}
            cache[key] = verdict
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(f".tmp-{os.getpid()}")
                tmp.write_text(json.dumps(cache, indent=1) + "\n")
                tmp.replace(cache_file)
            except OSError:
                pass  # a read-only cache only costs probing again next time
        if not verdict["works"]:
            refused.append(f"{name} ({verdict['why']})")
            continue
        if not _ggml().ggml_backend_load(str(path).encode()):
            refused.append(f"{name} (ggml could not load {path})")
            continue
        if refused:
            log.info(f"llama.cpp: using the {name} CPU code; skipped what faults here: {', '.join(refused)}")
        _loaded["cpu"] = name
        _loaded["refused"] = ", ".join(refused)
        return name
    raise UserError("the llama.cpp build cannot run on this CPU: no CPU variant survived a test run"
                    + (f" ({'; '.join(refused)})" if refused else "")
                    + "; rebuild llama-cpp-python with ./setup.sh on this machine")


def probed_variant() -> str | None:
    """The CPU variant `ensure_cpu_backend` picks here, read from its verdicts without loading anything;
    "built-in" for an ordinary build, None where llama.cpp is not installed or has not been probed yet."""
    try:
        files = variant_files()
    except UserError:
        return None
    if not files:
        return "built-in"
    try:
        cache = json.loads(_cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for name, path in _candidates(files):
        verdict = cache.get(_cache_key(path))
        if verdict is None:
            return None
        if verdict["works"]:
            return name
    return None


def backend_report() -> dict[str, str]:
    """Which CPU variant runs and which were skipped, for reports."""
    return {"cpu_variant": _loaded.get("cpu", "not loaded"), "skipped": _loaded.get("refused", "")}


def _probe_main(path: str) -> int:
    """Child of `probe_variant`: load one variant, evaluate a few tokens; a fault kills only this process."""
    from .models import DEFAULT_MODEL, builtin_gguf_path

    llama_cpp = require_llama_cpp()
    if not _ggml().ggml_backend_load(path.encode()):
        print(f"ggml could not load {path}", file=sys.stderr)
        return 3
    model = llama_cpp.Llama(str(builtin_gguf_path(DEFAULT_MODEL)), n_ctx=64, n_threads=1, verbose=False)
    # A prompt of several tokens takes the batched matrix-multiply paths (AMX, VNNI); one more token the vector ones.
    tokens = model.tokenize(b"The quick brown fox jumps over the lazy dog again and again", add_bos=False)
    model.eval(tokens)
    model.eval([tokens[0]])
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        sys.exit(_probe_main(sys.argv[2]))
    print("usage: python -m compress.llamacpp_runtime --probe LIBGGML_CPU_VARIANT.so", file=sys.stderr)
    sys.exit(2)
