"""Write outputs atomically, with a manifest that records their provenance.

An output is built in a hidden sibling directory and renamed into place only
when complete, so a failed or interrupted run never leaves a half-written
directory where a good one is expected, and an existing output survives intact
until its replacement is whole.

`--force` replaces only what a previous run of this toolkit wrote (`check_replaceable`,
the one rule every command uses): a directory holding our manifest or our bench report
and nothing else of note. Every command checks its output with `check_output_path`
before any work: not an input, not the user's, and writable.

Some outputs are one file (a GGUF model for llama.cpp): the file is written under a
hidden name in its own directory and renamed into place, and its manifest sits beside
it as ``NAME.compress.json`` (``out.gguf`` -> ``out.gguf.compress.json``), written the
same way just before the file. `check_output_file` is their check; `--force` replaces
such a file only when that manifest says this toolkit wrote it.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import json
import os
import platform
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from .artifact import Artifact
from .errors import DiskFullError, UserError
from .progress import log
from .startup import started

MANIFEST_NAME = "compress.json"
FILE_MANIFEST_SUFFIX = ".compress.json"  # beside a one-file output: out.gguf -> out.gguf.compress.json
MANIFEST_FORMAT = "compress-manifest/1"

_VERSIONED_PACKAGES = (
    "compress",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-genai",
    "onnxruntime-genai-cuda",
    "bitsandbytes",
    "torch-pruning",
    "gguf",
    "llama-cpp-python",
    "sentence-transformers",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------- what --force may replace

BENCH_REPORT_NAME = "bench.json"
BENCH_REPORT_FORMAT = "compress-bench/1"
BENCH_REPORT_FILES = ("bench.json", "bench.csv", "bench.md", "bench.png")
# Files a desktop drops into any folder it shows; they do not make a directory the user's.
_INCONSEQUENTIAL = {".DS_Store", "Thumbs.db", "desktop.ini"}


def _json_format(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def _written_by_us(directory: Path) -> set[str] | None:
    """The files a run of this toolkit recorded writing into `directory`, or None if it wrote none of it.

    An output holds our manifest (compress.json, listing its files since they were recorded)
    or our bench report (bench.json with format compress-bench/1, always the same four files).
    A manifest from before files were recorded vouches for the plain files beside it (the set
    is then every top-level file; subdirectories stay unaccounted for).
    """
    ours: set[str] = set()
    manifest = directory / MANIFEST_NAME
    if manifest.is_file() and _json_format(manifest) == MANIFEST_FORMAT:
        recorded = json.loads(manifest.read_text()).get("files")
        if isinstance(recorded, list):
            ours |= {str(f) for f in recorded} | {MANIFEST_NAME}
        else:
            ours |= {p.name for p in directory.iterdir() if p.is_file() and not p.is_symlink()}
    report = directory / BENCH_REPORT_NAME
    if report.is_file() and _json_format(report) == BENCH_REPORT_FORMAT:
        ours |= set(BENCH_REPORT_FILES)
    return ours or None


def _files_under(directory: Path) -> list[str]:
    """Every file (and link) below `directory`, as relative POSIX paths; directories themselves do not count."""
    found = []
    for root, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            found.append((Path(root) / name).relative_to(directory).as_posix())
    return sorted(found)


def check_replaceable(out: Path) -> None:
    """The `--force` rule, for every command: replace only what a previous run of this toolkit wrote.

    `out` (resolved, existing) may be replaced when it is an empty directory, or holds our manifest or
    our bench report and nothing else of note. Never the current directory, the home directory or a
    directory that holds either, whatever is in them.
    """
    try:
        here = Path.cwd().resolve()
    except FileNotFoundError:  # the current directory was deleted: nothing there to protect
        here = None
    home = Path.home().resolve()
    if here is not None and (out == here or _is_within(here, out)):
        raise UserError(f"--force will not replace {out}: it is or holds the current directory; choose a new output directory")
    if out == home or _is_within(home, out):
        raise UserError(f"--force will not replace {out}: it is or holds the home directory; choose a new output directory")
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"--force will not replace {out}: it is not a directory; choose a directory path")
    present = _files_under(out)
    if not present and not any(out.iterdir()):
        return
    ours = _written_by_us(out)
    if ours is None:
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise UserError(
            f"--force will not replace {out}: it is not an output of compress (no {MANIFEST_NAME} or "
            f"{BENCH_REPORT_NAME}; it holds {shown}...); choose another output directory or delete it yourself"
        )
    foreign = [f for f in present if f not in ours and Path(f).name not in _INCONSEQUENTIAL]
    if foreign:
        raise UserError(
            f"--force will not replace {out}: besides an output of compress it holds files compress did not write "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); move them out or choose another output"
        )


def overlapping_input(out: Path, inputs: Iterable[Path]) -> Path | None:
    """The first input that `out` is, lies inside, or contains (a file input is compared as itself)."""
    for src in inputs:
        src = Path(src).expanduser().resolve()
        if out == src or _is_within(out, src) or _is_within(src, out):
            return src
    return None


def probe_writable(directory: Path) -> None:
    """Create `directory` (and its parents) and write a file there, then undo both: fail now, not after the work."""
    created = []
    for parent in reversed([directory, *directory.parents]):
        if not parent.exists():
            created.append(parent)
    try:
        for d in created:
            d.mkdir()
        probe = directory / f".compress-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        blocker = next((p for p in [directory, *directory.parents] if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file" if blocker is not None else (exc.strerror or str(exc)).lower()
        raise UserError(f"cannot write the output into {directory} ({why}); choose an output in a writable directory") from None
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()


def check_output_path(out: str | os.PathLike, force: bool,
                      source_path: Path | Iterable[Path] | None = None) -> Path:
    """Refuse an output that would overwrite an input or anything not ours; check it can be written.

    `source_path` is the input (a directory or a file) or several; the output may not be, hold or
    lie inside any of them. Leftovers of killed runs beside the output are cleared (see
    `remove_stale_leftovers`).
    """
    out = Path(out).expanduser().resolve()
    inputs = [source_path] if isinstance(source_path, (str, os.PathLike)) else list(source_path or [])
    src = overlapping_input(out, [p for p in inputs if p is not None])
    if src is not None:
        raise UserError(f"output {out} overlaps the input model at {src}; choose an output directory elsewhere")
    # First, so that an output a killed run left half-replaced is back before it is looked at.
    remove_stale_leftovers(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is a file; choose a directory path")
    if out.exists() and not force:
        raise UserError(f"output directory {out} already exists; pass --force to replace it")
    if out.exists():
        check_replaceable(out)
    probe_writable(out.parent)
    return out


# ----------------------------------------------------------------- atomic directories

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_leftovers(out: Path) -> None:
    """Remove `.NAME.partial-PID` / `.NAME.old-PID` beside `out` whose process is gone; one warning line.

    A killed run leaves them; one whose process still runs is another run's work in progress and
    is left alone. If `out` itself is missing (a run killed between the two renames of a
    replacement where the system cannot swap atomically), the newest `.old-PID` is the previous
    output and is put back.
    """
    parent = out.parent
    if not parent.is_dir():
        return
    stale = []
    for entry in parent.iterdir():
        m = _LEFTOVER.match(entry.name)
        if m and m["name"] == out.name and int(m["pid"]) != os.getpid() and not _process_alive(int(m["pid"])):
            stale.append((m["kind"], entry))
    if not stale:
        return
    restored = None
    olds = sorted((e for kind, e in stale if kind == "old"), key=lambda e: e.stat().st_mtime, reverse=True)
    if olds and not out.exists():
        olds[0].rename(out)
        restored = olds[0]
    removed = [e for _, e in stale if e != restored]
    for entry in removed:
        _remove(entry)
    said = []
    if restored is not None:
        said.append(f"restored the previous output from {restored.name}")
    if removed:
        said.append(f"removed {len(removed)} leftover director{'y' if len(removed) == 1 else 'ies'} of killed runs "
                    f"({', '.join(e.name for e in removed[:3])}{', ...' if len(removed) > 3 else ''})")
    log.warning(f"beside {out}: " + "; ".join(said))


def _remove(path: Path) -> None:
    """Remove a temporary directory or file of ours; gone already is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a))


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _disk_full(out: Path, tmp: Path, needed: int | None, replacing: bool) -> DiskFullError:
    if tmp.is_file():
        written = tmp.stat().st_size
    else:
        written = sum((tmp / f).stat().st_size for f in _files_under(tmp) if (tmp / f).is_file()) if tmp.exists() else 0
    _remove(tmp)
    free = shutil.disk_usage(out.parent).free
    need = f"about {_mb(needed)} needed" if needed else f"more than the {_mb(written)} written before it ran out"
    kept = "the earlier output is unchanged" if replacing else "nothing was written"
    return DiskFullError(f"the disk holding {out.parent} is full ({need}, {_mb(free)} free); {kept}; "
                         "free some space or choose an output on another disk")


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, force: bool = False, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary directory is
    removed and an existing `out` is left untouched. A replacement swaps the two
    directories in one step where the system can, so a kill at any moment leaves
    either the old output or the new one at `out`. A full disk is a `DiskFullError`
    (`expected_bytes`, when known, is how much the output needs).
    """
    started()  # the imports are done: a Ctrl-C held back during them stops here
    out = Path(out).expanduser().resolve()
    if out.exists() and not force:
        raise UserError(f"output directory {out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise _disk_full(out, tmp, expected_bytes, out.exists()) from None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        tmp.rename(out)
    elif _exchange(tmp, out):
        # `tmp` now holds the old output; a kill while it is deleted leaves a leftover the next run clears.
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        # Two renames; the old output is deleted only once the new one is in place.
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)


def manifest_for(artifact: Artifact) -> dict[str, Any]:
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": artifact.source,
        "passes": artifact.passes,
        "metrics": artifact.metrics,
        "versions": library_versions(),
    }
    if artifact.pooling is not None:
        manifest["pooling"] = artifact.pooling.describe()
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_manifest_file(Path(directory) / MANIFEST_NAME, manifest)


def write_manifest_file(path: Path, manifest: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def file_manifest_path(path: str | os.PathLike) -> Path:
    """Where the manifest of a one-file output lives: beside it, NAME.compress.json."""
    path = Path(path)
    return path.with_name(path.name + FILE_MANIFEST_SUFFIX)


def read_file_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest beside a one-file output (None if there is none)."""
    manifest = file_manifest_path(path)
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"manifest {manifest} is not valid JSON ({exc}); delete it or re-create the output") from None


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"manifest {path} is not valid JSON ({exc}); delete it or re-create the output") from None


def write_hf_checkpoint(artifact: Artifact, directory: Path) -> None:
    """A plain Hugging Face directory: safetensors weights, config, tokenizer; and the runtime blocks of
    weights already on a grid, if any (see compress.quantized_blocks)."""
    artifact.model.save_pretrained(directory, safe_serialization=True)
    if artifact.tokenizer is not None:
        artifact.tokenizer.save_pretrained(directory)
    if artifact.quantized_blocks:
        from .quantized_blocks import save_quantized_blocks

        save_quantized_blocks(artifact.model, artifact.quantized_blocks, directory)


def _code_modules(entry: Any) -> list[str]:
    """The module files an auto_map entry needs ('modeling_x.XForCausalLM' -> ['modeling_x.py'])."""
    refs = entry if isinstance(entry, (list, tuple)) else [entry]
    return [f"{ref.split('--')[-1].rsplit('.', 1)[0]}.py" for ref in refs if isinstance(ref, str)]


def keep_code_references_whole(directory: Path, source_dir: Path | None) -> None:
    """An output may not point at custom code (auto_map) it does not carry.

    Code files the source directory has are copied along; entries whose code is nowhere to be
    had (a model loaded with its stock class, code in another hub repository) are dropped, so the
    output loads with the stock class instead of failing for a missing file.
    """
    for name in ("config.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text())
        auto_map = config.get("auto_map")
        if not isinstance(auto_map, dict):
            continue
        dropped = []
        for key, entry in list(auto_map.items()):
            for module in _code_modules(entry):
                if not (directory / module).is_file() and source_dir is not None and (source_dir / module).is_file():
                    shutil.copy2(source_dir / module, directory / module)
            if not all((directory / m).is_file() and "--" not in str(entry) for m in _code_modules(entry)):
                del auto_map[key]
                dropped.append(key)
        if dropped:
            if not auto_map:
                del config["auto_map"]
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            log.warning(f"{name}: dropped auto_map entries for {', '.join(dropped)}, whose code the output does not "
                        "carry; it loads with the stock classes")


def expected_size(artifact: Artifact) -> int | None:
    """Bytes the artifact's weights take (what saving them needs, about), or None if unknown."""
    model = artifact.model
    if hasattr(model, "size_bytes"):
        return model.size_bytes()
    try:
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}
    except Exception:  # an estimate for one message; never a reason for a save to fail
        return None
    return sum(storages.values()) or None


def save_artifact(artifact: Artifact, out: str | os.PathLike, force: bool = False) -> Path:
    """Save the model, tokenizer and manifest to `out`, atomically; the manifest lists every file written.

    A writer with a ``file_suffix`` attribute writes one file (see `save_file_artifact`).
    """
    writer = artifact.writer or write_hf_checkpoint
    if getattr(writer, "file_suffix", None):
        return save_file_artifact(artifact, out, force)
    out = check_output_path(out, force, artifact.source_path)
    source_dir = artifact.source_path if artifact.source_path is not None and Path(artifact.source_path).is_dir() else None
    with atomic_directory(out, force=force, expected_bytes=expected_size(artifact)) as tmp:
        writer(artifact, tmp)
        if artifact.pooling is not None:  # an encoder: its sentence-transformers pipeline goes with every format
            from .encoders.pooling import write_pooling

            write_pooling(tmp, artifact.pooling, artifact.model.config.hidden_size)
        keep_code_references_whole(tmp, source_dir)
        manifest = manifest_for(artifact)
        manifest["files"] = _files_under(tmp) + [MANIFEST_NAME]
        write_manifest(tmp, manifest)
    return out


# ----------------------------------------------------------------- one-file outputs


def check_output_file(out: str | os.PathLike, force: bool, source_path: Path | Iterable[Path] | None = None,
                      suffix: str = ".gguf") -> Path:
    """`check_output_path` for a one-file output: the suffix, not an input, replaced only if ours, writable."""
    out = Path(out).expanduser().resolve()
    if not out.name.lower().endswith(suffix) or out.name.lower() == suffix:
        raise UserError(f"this output is one {suffix} file: give a file path ending in {suffix} (got {out})")
    inputs = [source_path] if isinstance(source_path, (str, os.PathLike)) else list(source_path or [])
    src = overlapping_input(out, [p for p in inputs if p is not None])
    if src is not None:
        raise UserError(f"output {out} overlaps the input model at {src}; choose an output path elsewhere")
    manifest = file_manifest_path(out)
    for path in (out, manifest):
        remove_stale_leftovers(path)
        if path.is_dir() or path.is_symlink():
            raise UserError(f"output {path} exists and is not a plain file; choose another file name")
    if (out.exists() or manifest.exists()) and not force:
        raise UserError(f"output file {out if out.exists() else manifest} already exists; pass --force to replace it")
    if out.exists() or manifest.exists():
        recorded = read_file_manifest(out) if manifest.exists() else None
        if not (isinstance(recorded, dict) and recorded.get("format") == MANIFEST_FORMAT
                and recorded.get("file") == out.name):
            raise UserError(f"--force will not replace {out}: it is not an output of compress (no manifest "
                            f"{manifest.name} beside it that names it); choose another file name or delete it yourself")
    probe_writable(out.parent)
    return out


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `out` that replaces `out` only if the block succeeds.

    The temporary file lives in the same directory, so the final rename is atomic; on any
    exception (KeyboardInterrupt included) it is removed and `out` is untouched. A full disk
    is a `DiskFullError`.
    """
    started()  # the imports are done: a Ctrl-C held back during them stops here
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise _disk_full(out, tmp, expected_bytes, out.exists()) from None
        _remove(tmp)
        raise
    except BaseException:
        _remove(tmp)
        raise


def save_file_artifact(artifact: Artifact, out: str | os.PathLike, force: bool = False) -> Path:
    """Save a one-file output and the manifest beside it, each through a temporary file and a rename.

    The manifest is renamed into place first and the file last, so a new file never sits
    beside an old manifest.
    """
    writer = artifact.writer
    out = check_output_file(out, force, artifact.source_path, writer.file_suffix)
    with atomic_file(out, expected_bytes=expected_size(artifact)) as tmp_file:
        writer(artifact, tmp_file)
        manifest = {**manifest_for(artifact), "file": out.name, "bytes": tmp_file.stat().st_size}
        with atomic_file(file_manifest_path(out)) as tmp_manifest:
            write_manifest_file(tmp_manifest, manifest)
    return out


def check_output(out: str | os.PathLike, force: bool, source_path: Path | Iterable[Path] | None = None,
                 file_suffix: str | None = None) -> Path:
    """check_output_file for one-file outputs (`file_suffix` given), check_output_path for directories."""
    if file_suffix:
        return check_output_file(out, force, source_path, file_suffix)
    return check_output_path(out, force, source_path)
