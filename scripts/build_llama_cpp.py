"""Install llama-cpp-python with a chosen set of portable x86 CPU variants (used by setup.sh).

Why not plain ``pip install llama-cpp-python`` with ``GGML_CPU_ALL_VARIANTS=ON``: that compiles
llama.cpp's CPU code 14 times (x64, sse42, sandybridge ... sapphirerapids), which was most of a
15-minute cold set-up on 2 cores, and ggml's CMake has no option to build only some of them.
So this script fetches the pinned sdist from the package registry, keeps only the variants named
in ``--variants`` in ggml's list (every other line of the build is untouched), builds the wheel
once and keeps it in a cache keyed by everything that changes the build (version, variants,
CMAKE_ARGS, Python tag). pip's own wheel cache keys on the sdist alone, so a change of build
flags would silently reuse an old wheel; this cache does not.

compress picks at run time the best variant that really runs on the machine
(compress/llamacpp_runtime.py), so a machine whose best level was left out gets the next lower
one (x64 always works). Standard library only: it runs before compress is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VARIANT_LIST = "vendor/llama.cpp/ggml/src/CMakeLists.txt"
VARIANT_LINE = re.compile(r"^(\s*)ggml_add_cpu_backend_variant\((\w+)\b")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "compress" / "llama-cpp-python"


def build_key(version: str, variants: list[str], cmake_args: str) -> str:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    text = "\n".join([version, " ".join(sorted(variants)), cmake_args, tag, sys.platform])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def keep_variants(cmake_text: str, keep: list[str]) -> tuple[str, list[str]]:
    """Comment out x86 variant lines not in `keep`; return the new text and the names kept.

    Only the x86 block is touched (its names are unique to it); ARM/PowerPC/... lines are left alone
    because they never build on x86.
    """
    x86 = {"x64", "sse42", "sandybridge", "ivybridge", "piledriver", "haswell", "skylakex",
           "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4", "alderlake", "sapphirerapids"}
    out, kept = [], []
    for line in cmake_text.splitlines(keepends=True):
        m = VARIANT_LINE.match(line)
        if m and m.group(2) in x86:
            if m.group(2) in keep:
                kept.append(m.group(2))
            else:
                line = f"{m.group(1)}# (left out by compress's setup) {line.lstrip()}"
        out.append(line)
    return "".join(out), kept


def install_stamp(prefix: str) -> Path:
    """Where the build key of the llama-cpp-python installed in a venv is kept: without it, a change of
    LLAMA_CPP_VARIANTS or CMAKE_ARGS would keep the old install, whose version alone still matches."""
    return Path(prefix) / "compress-llama-cpp-build.txt"


def installed_matches(stamp: Path, key: str) -> bool:
    import importlib.util

    return stamp.is_file() and stamp.read_text().strip() == key and importlib.util.find_spec("llama_cpp") is not None


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def build_wheel(version: str, variants: list[str], dest: Path, pip: list[str]) -> Path:
    with tempfile.TemporaryDirectory(prefix="compress-llama-build-") as tmp:
        tmp = Path(tmp)
        run(pip + ["download", "-q", "--disable-pip-version-check", "--no-deps", "--no-binary", "llama-cpp-python",
                   "-d", str(tmp), f"llama-cpp-python=={version}"])
        sdists = list(tmp.glob("llama_cpp_python-*.tar.gz"))
        if len(sdists) != 1:
            sys.exit(f"setup: expected one llama-cpp-python {version} sdist from the registry, got {sdists}")
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / f"llama_cpp_python-{version}"
        listing = src / VARIANT_LIST
        text, kept = keep_variants(listing.read_text(), variants)
        missing = sorted(set(variants) - set(kept))
        if missing:
            sys.exit(f"setup: llama-cpp-python {version} has no CPU variant(s) {missing} in {VARIANT_LIST}; "
                     "fix --variants in setup.sh")
        listing.write_text(text)
        print(f"compiling llama.cpp {version} with CPU variants {' '.join(kept)} "
              "(once per machine; a few minutes on 2 cores)", flush=True)
        out = tmp / "wheel"
        run(pip + ["wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", str(out), str(src)])
        wheels = list(out.glob("llama_cpp_python-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"setup: building llama-cpp-python gave {wheels}, expected one wheel")
        # Into the cache in one rename, so an interrupted build never leaves a half-written wheel there.
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        shutil.move(str(wheels[0]), staging / wheels[0].name)
        try:
            staging.rename(dest)
        except OSError:  # another set-up finished first: keep its wheel
            shutil.rmtree(staging, ignore_errors=True)
    return next(dest.glob("llama_cpp_python-*.whl"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", required=True)
    ap.add_argument("--variants", required=True, help="space-separated ggml CPU variant names")
    args = ap.parse_args()
    variants = args.variants.split()
    if "x64" not in variants:
        sys.exit("setup: the CPU variants must include x64, the one that runs everywhere")
    pip = [sys.executable, "-m", "pip"]
    key = build_key(args.version, variants, os.environ.get("CMAKE_ARGS", ""))
    stamp = install_stamp(sys.prefix)
    if installed_matches(stamp, key):
        return 0
    dest = cache_dir() / key
    wheels = list(dest.glob("llama_cpp_python-*.whl")) if dest.is_dir() else []
    wheel = wheels[0] if wheels else build_wheel(args.version, variants, dest, pip)
    # --no-deps: its dependencies (numpy, jinja2, diskcache, typing-extensions) come with compress's own install.
    run(pip + ["install", "-q", "--disable-pip-version-check", "--no-deps", "--force-reinstall", str(wheel)])
    stamp.write_text(key + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
