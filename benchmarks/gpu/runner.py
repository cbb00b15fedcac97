"""Run the GPU suite on the lent GPU machine, or the whole kit on this CPU machine first (--dry-run).

On the GPU machine (README.md gives the exact calls of the device tool; the
machine keeps /tmp between calls only while it stays warm, 30 s):

    python3 benchmarks/gpu/runner.py stage --carry benchmarks/gpu/carry/call1 --gpu-tests   # call 1
    python3 benchmarks/gpu/runner.py bench --carry benchmarks/gpu/carry/call2               # call 2, at once

Here, before any GPU time is spent (a tiny model built from a config, the
same steps, ``--device cpu``):

    .venv/bin/python benchmarks/gpu/runner.py --dry-run [--out DIR]

Steps: *stage* checks every carried part against the manifest and keeps it in
the store (/tmp/compress-gpu); when all parts of a file are there it is joined
and its hash checked. Wheels whose requirement the machine does not meet are
installed into the store's site folder (``pip install --no-index --no-deps
--target``), and the bench runs with that folder first on PYTHONPATH. *bench*
then converts the built-in model (as on the CPU), checks that its tensors and
token ids hash to what the CPU's conversion gave, runs ``compress bench
--device cuda`` on suite.yaml with the carried corpus as its text, and writes
bench.md/json/csv/png, summary.md and runner.log into $OUT.

Standard library only until the wheels are installed; the steps that need
compress run in a child process that sees them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from kit import KitError, join_parts, read_manifest, sha256_file, tokens_digest, weights_digest  # noqa: E402

STORE = Path("/tmp/compress-gpu")
SUITE = HERE / "suite.yaml"
DEADLINE_S = 360  # the suite must fit in 6 minutes; the bench is stopped then, leaving call 2 time to write its outputs
GPU_TESTS_S = 120  # the CUDA-only tests in call 1 are stopped after this
RUN_AS = ["python3 benchmarks/gpu/runner.py"]  # how this run was started, for the report (set by main)
REPORT_FILES = ("bench.md", "bench.json", "bench.csv", "bench.png")
# The dry run measures the variants of the GPU suite that use the new paths: another dtype, a batch,
# and a 2:4 build shared by its dense and sparse-kernel variants (the sparse one must be refused
# on the CPU in one line). The passes of the others are tested in tests/ and validated from suite.yaml
# by tests/test_gpu_kit.py; measuring them here would only make the dry run slower.
DRY_BUDGET = 600_000  # bytes a dry-run call carries: small, so that the tiny model is cut across both calls
DRY_VARIANTS = ("fp16", "fp16-b16", "wanda-2-4-fp16", "wanda-2-4-sparse")
NOT_MEASURED = [
    "ONNX Runtime's CUDA provider: onnxruntime-gpu (about 255 MB) cannot be carried in calls of 64 MiB, and the "
    "machine's onnxruntime is a CPU build, so no ONNX Runtime variant runs on the GPU.",
    "torch.compile: left out to keep the suite within its 6 minutes (each fresh process would compile again).",
]


class Log:
    """Lines with the seconds since the start, printed at once and kept for runner.log."""

    def __init__(self):
        self.start = time.monotonic()
        self.lines: list[str] = []
        self.phases: dict[str, float] = {}

    def __call__(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f} s] {text}"
        print(line, flush=True)
        self.lines.append(line)

    def phase(self, name: str, since: float) -> None:
        self.phases[name] = round(time.monotonic() - since, 1)


# --------------------------------------------------------------------------- staging and installing


def stage(carries: list[Path], store: Path, log: Log) -> dict:
    """Check the carried parts and keep them in the store; join every file whose parts are all there."""
    manifest = None
    store.mkdir(parents=True, exist_ok=True)
    for carry in carries:
        found = read_manifest(carry)
        if manifest is not None and found["files"] != manifest["files"]:
            raise KitError(f"{carry} was assembled apart from the other carried folder; assemble the carry again")
        manifest = found
        for part in (p for f in found["files"] for p in f["parts"]):
            src, kept = carry / part["name"], store / "parts" / part["name"]
            if src.is_file():
                if sha256_file(src) != part["sha256"]:
                    raise KitError(f"{src} does not match its hash in the manifest; assemble the carry again")
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, kept)
        log(f"staged {carry} ({len(list(carry.iterdir())) - 1} files)")
    if manifest is None:
        raise KitError("no carried folder given; pass --carry benchmarks/gpu/carry/callN")
    (store / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for f in manifest["files"]:
        target = store / "files" / f["name"]
        parts = [store / "parts" / p["name"] for p in f["parts"]]
        if all(_have(store, p) for p in f["parts"]) and not (target.is_file() and sha256_file(target) == f["sha256"]):
            join_parts(parts, target, f["sha256"])
    return manifest


def _have(store: Path, part: dict) -> bool:
    """The part is in the store with the manifest's hash (a part left by an older carry is not)."""
    kept = store / "parts" / part["name"]
    return kept.is_file() and kept.stat().st_size == part["size"] and sha256_file(kept) == part["sha256"]


def missing_parts(manifest: dict, store: Path) -> list[str]:
    return [f"{p['name']} ({p['call']})" for f in manifest["files"] for p in f["parts"] if not _have(store, p)]


def unmet(requirement: str, path: list[str] | None = None) -> str | None:
    """Why this environment does not satisfy `requirement` ("not installed", "5.17.0 installed"), or None."""
    from importlib import metadata

    from packaging.requirements import Requirement

    req = Requirement(requirement)
    dist = next(iter(metadata.distributions(name=req.name, path=path if path is not None else sys.path)), None)
    if dist is None:
        return "not installed"
    if req.specifier.contains(dist.version, prereleases=True):
        return None
    return f"{dist.version} installed"


def install(manifest: dict, store: Path, log: Log) -> list[dict]:
    """Install into store/site every joined wheel whose requirement the machine itself does not meet."""
    site = store / "site"
    done_path = site / ".kit-installed.json"
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}
    plan, todo = [], []
    for f in manifest["files"]:
        if f["role"] != "wheel":
            continue
        why = unmet(f["requirement"])  # the machine's own packages, without the site folder
        plan.append({"wheel": f["name"], "requirement": f["requirement"], "machine": why or "already satisfied"})
        wheel = store / "files" / f["name"]
        if why is not None and wheel.is_file() and done.get(f["name"]) != f["sha256"]:
            todo.append((f, wheel))
    if todo:
        site.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(site)] + [str(w) for _, w in todo]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise KitError(f"pip could not install the carried wheels: {tail}")
        done.update({f["name"]: f["sha256"] for f, _ in todo})
        done_path.write_text(json.dumps(done, indent=1))
        log(f"installed {len(todo)} wheels into {site}: {', '.join(f['name'].split('-')[0] for f, _ in todo)}")
    for entry in plan:
        entry["installed"] = entry["wheel"] in done
    return plan


def environment(store: Path) -> dict[str, str]:
    """The environment of every child process: the installed wheels and this checkout first, no network."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(store / "site"), str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(COMPRESS_CACHE_DIR=str(store / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    return env


def check_requirements(manifest: dict, store: Path) -> None:
    """Every joined wheel's requirement holds with the site folder first on the path."""
    site_first = [str(store / "site")] + sys.path
    still = {f["requirement"]: why for f in manifest["files"]
             if f["role"] == "wheel" and (store / "files" / f["name"]).is_file()
             for why in [unmet(f["requirement"], site_first)] if why}
    if still:
        raise KitError("after installing, still unmet: " + "; ".join(f"{r} ({w})" for r, w in still.items()))


def in_kit(store: Path, *args: str) -> dict:
    """This script's `check` command in a child process that sees the installed wheels; its JSON answer."""
    result = subprocess.run([sys.executable, str(Path(__file__)), "check", *args], env=environment(store),
                            capture_output=True, text=True)
    if result.returncode:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise KitError(f"with the installed wheels: {tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_imports(manifest: dict, store: Path, log: Log) -> dict:
    """The joined wheels meet their requirements, and the modules the bench needs import (stage)."""
    check_requirements(manifest, store)
    versions = in_kit(store, "--imports", *manifest["imports"])["imports"]
    log("imports: " + ", ".join(f"{m} {v}".strip() for m, v in versions.items()))
    return versions


# --------------------------------------------------------------------------- the model, the suite, the bench


def prepare_model(manifest: dict, store: Path, log: Log) -> tuple[str, dict]:
    """The base model reference for the suite, converted and checked against the CPU's hashes."""
    base = manifest["base"]
    for f in manifest["files"]:
        if f["role"] == "model-archive":
            with tarfile.open(store / "files" / f["name"]) as tar:
                tar.extractall(store / "models", filter="data")
    if base.startswith("@"):
        base = str(store / "models" / base[1:])
    corpus = store / "files" / manifest["corpus"]
    start = time.monotonic()
    check_requirements(manifest, store)
    # One child process imports what the bench needs, converts the base like the bench will, and hashes it.
    found = in_kit(store, "--imports", *manifest["imports"], "--model", base, "--corpus", str(corpus))
    log("imports: " + ", ".join(f"{m} {v}".strip() for m, v in found["imports"].items()))
    log.phase("imports, model conversion and check", start)
    for key in ("weights_digest", "tokens_digest") + (("gguf_sha256",) if "gguf_sha256" in manifest else ()):
        if found.get(key) != manifest[key]:
            raise KitError(f"the base model's {key} here is {str(found.get(key))[:16]}, not the CPU's "
                           f"{manifest[key][:16]}: the GPU would measure another model; stopping")
    log(f"base model {found['path']}: same tensors and token ids as on the CPU")
    return base, found


def check(imports: list[str], ref: str | None, corpus: Path | None) -> dict:
    """(Run with the wheels installed.) Import `imports`; resolve and convert `ref` like the bench does, and hash it."""
    import importlib

    found: dict = {"imports": {m: getattr(importlib.import_module(m), "__version__", "") for m in imports}}
    if ref is None:
        return found
    from compress.models import converted_gguf_dir, resolve_source

    source = resolve_source(ref)
    path = converted_gguf_dir(source.path) if source.kind in ("builtin", "gguf") else source.path
    found.update(path=str(path), source=source.describe(), weights_digest=weights_digest(path),
                 tokens_digest=tokens_digest(path, corpus.read_text(encoding="utf-8")))
    if source.kind in ("builtin", "gguf"):
        found["gguf_sha256"] = sha256_file(source.path)
    return found


def effective_suite(suite: dict, corpus: Path, base: str) -> dict:
    """The suite with the base model and the carried corpus in place of this machine's built-in text."""
    suite = copy.deepcopy(suite)
    suite["base"] = base
    for section in ("evaluation", "calibration"):
        spec = suite.setdefault(section, {})
        if spec.get("source", "builtin") == "builtin":
            spec["source"] = str(corpus)
    settings = suite.setdefault("settings", {})
    if settings.get("prompt_text", "builtin") == "builtin":
        settings["prompt_text"] = str(corpus)
    return suite


def dry_suite(suite: dict) -> dict:
    """The GPU suite cut down for the CPU: one variant of each kind, tiny sizes, bitsandbytes on the CPU."""
    suite = copy.deepcopy(suite)
    suite["settings"] = {**suite.get("settings", {}), "prompt_lens": [8], "new_tokens": 4, "repeats": 1,
                         "warmup_tokens": 1, "prefill_repeats": 2, "threads": 1, "timeout_s": 120}
    suite["evaluation"] = {**suite.get("evaluation", {}), "windows": 2, "seq_len": 32}
    suite["calibration"] = {**suite.get("calibration", {}), "samples": 4, "seq_len": 32}
    suite["sample"] = {"new_tokens": 4}
    variants = []
    for v in suite["variants"]:
        if v["name"] in DRY_VARIANTS:
            v = {**v, **({"batch_size": min(2, v["batch_size"])} if v.get("batch_size") else {})}
            v["passes"] = [{name: {**cfg, "device": "cpu"} if isinstance(cfg, dict) and cfg.get("device") else cfg
                            for name, cfg in p.items()} if isinstance(p, dict) else p for p in v.get("passes") or []] or None
            variants.append({k: val for k, val in v.items() if val is not None})
    suite["variants"] = variants
    return suite


def run_group(cmd: list[str], store: Path, deadline: float) -> tuple[int | None, str]:
    """Run `cmd` with the kit's environment in a process group of its own; stop the group at the deadline.

    Returns the exit code (None when it was stopped) and its output. The group
    holds the command and every process it started (the bench's workers), and
    nothing else, so stopping it ends no one else's processes.
    """
    proc = subprocess.Popen(cmd, env=environment(store), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, cwd=str(REPO))
    try:
        out, _ = proc.communicate(timeout=deadline)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def run_bench(suite_path: Path, device: str, report: Path, store: Path, deadline: float, log: Log,
              isolation: str = "exec") -> int | None:
    """`compress bench --suite ... --device ...`, stopped at the deadline; its output goes into the log."""
    cmd = [sys.executable, "-m", "compress", "-q", "bench", "--suite", str(suite_path), "--device", device,
           "-o", str(report), "--force"] + (["--isolation", isolation] if isolation != "exec" else [])
    log("$ " + " ".join(cmd[1:]))
    start = time.monotonic()
    code, out = run_group(cmd, store, deadline)
    for line in (out or "").splitlines():
        log(f"  {line}")
    if code is None:
        log(f"the bench ran past its deadline of {deadline:.0f} s and was stopped; rerun call 2 with --repeats 2")
    log.phase("bench", start)
    return code


def write_log(out: Path, log: Log) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runner.log").write_text("\n".join(log.lines) + "\n")


def write_outputs(report: Path, out: Path, manifest: dict, facts: dict, log: Log) -> list[str]:
    """The bench's four files, its notes appended to bench.md, summary.md and runner.log, into `out`."""
    from summary import kit_notes, write_summary

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if (report / "bench.json").is_file():
        for name in REPORT_FILES:
            if (report / name).is_file():
                shutil.copyfile(report / name, out / name)
                written.append(name)
        bench = json.loads((report / "bench.json").read_text())
        with open(out / "bench.md", "a") as f:
            f.write("\n" + kit_notes(bench, manifest, facts, NOT_MEASURED) + "\n")
        (out / "summary.md").write_text(write_summary(bench, manifest, facts, NOT_MEASURED))
        written.append("summary.md")
    log(f"wrote {', '.join(written + ['runner.log'])} into {out}")
    write_log(out, log)
    return written


def machine_facts(device: str) -> dict:
    facts = {"python": sys.version.split()[0], "device": device, "runner_command": RUN_AS[0]}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True)
        facts["nvidia_smi"] = query.stdout.strip()
    return facts


def gpu_tests(store: Path, out: Path, log: Log, deadline: float = GPU_TESTS_S) -> int | None:
    """The CUDA-only tests (tests/test_bench_gpu.py, marker gpu) with the installed wheels; log in out."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_bench_gpu.py", "-q", "-rs", "-p", "no:cacheprovider"]
    start = time.monotonic()
    code, output = run_group(cmd, store, deadline)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-tests.log").write_text(output)
    last = (output.strip().splitlines() or ["no output"])[-1] if code is not None else f"stopped after {deadline:.0f} s"
    log(f"GPU tests (exit {code}): {last}")
    log.phase("GPU tests", start)
    return code


# --------------------------------------------------------------------------- commands


def cmd_stage(carries, store, out, tests, log) -> int:
    """Call 1: keep the parts, install the wheels that are whole, check they import, run the GPU tests."""
    manifest = stage(carries, store, log)
    install(manifest, store, log)
    check_imports(manifest, store, log)
    if tests:
        gpu_tests(store, out, log)
    missing = missing_parts(manifest, store)
    log(f"staged; still to come: {', '.join(missing) or 'nothing'}" + ("; run call 2 now" if missing else ""))
    write_log(out, log)
    return 0


def cmd_bench(carries, store, out, device, suite_file, deadline, repeats, dry, log) -> int:
    import yaml

    facts = machine_facts(device)
    try:
        manifest = stage(carries, store, log)
        missing = missing_parts(manifest, store)
        if missing:
            raise KitError(f"parts missing on this machine: {', '.join(missing)}; this is not the warm machine "
                           "that call 1 staged them on (more than 30 s passed?) or call 1 carried another assembly: "
                           "run call 1 again, then call 2 at once")
        facts["install"] = install(manifest, store, log)
        base, facts["model"] = prepare_model(manifest, store, log)
    except KitError as exc:
        log(f"error: {exc}")
        write_log(out, log)
        return 3
    suite = yaml.safe_load(Path(suite_file).read_text())
    suite = dry_suite(suite) if dry else suite
    if repeats:
        suite.setdefault("settings", {})["repeats"] = repeats
    work = store / "work"
    work.mkdir(parents=True, exist_ok=True)
    suite_path = work / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(effective_suite(suite, store / "files" / manifest["corpus"], base),
                                         sort_keys=False))
    facts["suite"] = str(Path(suite_file).resolve().relative_to(REPO)) + (" (cut down for the dry run)" if dry else "")
    # The dry run forks its workers (one import instead of one per measurement); the GPU run cannot.
    code = run_bench(suite_path, device, work / "report", store, deadline, log, "fork" if dry else "exec")
    facts["phases"] = dict(log.phases)
    written = write_outputs(work / "report", out, manifest, facts, log)
    report = work / "report" / "bench.json"
    measured = report.is_file() and any(v["status"] == "ok" for v in json.loads(report.read_text())["variants"])
    return 0 if code == 0 and measured else 1


def dry_run(out: Path, log: Log) -> int:
    """The whole kit on this CPU machine: a tiny carry cut across two calls, staged call by call, then the bench."""
    from assemble import assemble_tiny

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import _train_tokenizer, save_tiny, tiny_llama_config

    root = Path(tempfile.mkdtemp(prefix="compress-gpu-dry-"))
    try:
        tokenizer = _train_tokenizer()
        model = save_tiny(root / "tiny-model", tiny_llama_config(len(tokenizer)), tokenizer)
        manifest = assemble_tiny(root / "carry", model, budget=DRY_BUDGET)
        log(f"dry-run carry: {manifest['calls']} bytes per call")
        store = root / "store"
        cmd_stage([root / "carry" / "call1"], store, out, False, log)  # the GPU tests would all skip here
        return cmd_bench([root / "carry" / "call2"], store, out, "cpu", SUITE, DEADLINE_S, None, True, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["stage", "bench", "check"])
    parser.add_argument("--carry", action="append", type=Path, default=[], help="a carried folder (repeatable)")
    parser.add_argument("--store", type=Path, default=STORE, help=f"kept between calls while warm [{STORE}]")
    parser.add_argument("--out", type=Path, default=None, help="where the reports go [$OUT]")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--suite", type=Path, default=SUITE)
    parser.add_argument("--repeats", type=int, default=None, help="override the suite's repeats (e.g. 2 on a retry)")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds before the bench is stopped")
    parser.add_argument("--gpu-tests", action="store_true", help="stage: then run the CUDA-only tests")
    parser.add_argument("--dry-run", action="store_true", help="everything on this CPU machine with a tiny model")
    parser.add_argument("--imports", nargs="*", default=[], help=argparse.SUPPRESS)  # check (internal)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    RUN_AS[0] = "python3 benchmarks/gpu/runner.py " + shlex.join(argv)
    if args.command == "check":
        print(json.dumps(check(args.imports, args.model, args.corpus)))
        return 0
    log = Log()
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if args.dry_run:
        out = out or Path(tempfile.mkdtemp(prefix="compress-gpu-dry-out-"))
        return dry_run(out, log)
    if out is None:
        print("error: give --out DIR (on the GPU machine the device tool sets $OUT)", file=sys.stderr)
        return 2
    if args.command is None:
        parser.error("give a command (stage or bench) or --dry-run")
    try:
        if args.command == "stage":
            return cmd_stage(args.carry, args.store, out, args.gpu_tests, log)
        return cmd_bench(args.carry, args.store, out, args.device, args.suite, args.deadline, args.repeats, False, log)
    except KitError as exc:
        log(f"error: {exc}")
        write_log(out, log)
        return 3


if __name__ == "__main__":
    sys.exit(main())
