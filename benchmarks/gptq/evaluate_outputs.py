"""Quality of saved outputs against the float32 PyTorch base, on run.py's windows, the base run once.

    python benchmarks/gptq/run.py --variants gptq-act --save /tmp/gptq-runs --build-only
    python -m compress export gguf /tmp/gptq-runs/q4_0-gptq-act -o /tmp/gptq-runs/gptq-act-q4_0.gguf --type q4_0
    python benchmarks/gptq/evaluate_outputs.py --rtn q4_0 --torch gptq-act=/tmp/gptq-runs/q4_0-gptq-act \\
        --gguf rtn=/tmp/gptq-runs/base-q4_0.gguf --gguf gptq-act=/tmp/gptq-runs/gptq-act-q4_0.gguf \\
        --out benchmarks/gptq/results/outputs-q4_0.json

The base's logits come from PyTorch eager float32, computed once per domain
and replayed for every variant: `--torch` outputs (a saved checkpoint, run as
PyTorch float32 holding the grid values), `--rtn GRID` (run.py's round-to-nearest
row, built here) and `--gguf` files run by llama.cpp (logits for every
position, one window at a time, from an empty cache). Windows: WikiText-2 valid (tokenized, the file as it is,
split "all") and the built-in corpus's evaluation half, --eval-windows x
--eval-seq-len, as in run.py with its default (builtin) calibration. The size
column is the file on disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

WIKI = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the base (PyTorch float32)")
    ap.add_argument("--gguf", action="append", default=[], metavar="NAME=PATH", help="a GGUF file, run by llama.cpp")
    ap.add_argument("--torch", action="append", default=[], metavar="NAME=DIR", help="a saved output, PyTorch")
    ap.add_argument("--rtn", default=None, metavar="GRID", help="also run.py's round-to-nearest row on GRID")
    ap.add_argument("--wiki", default=str(WIKI))
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seq-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads")
    ap.add_argument("--domains", default="wikitext2,builtin", help="which evaluation texts, in this order")
    ap.add_argument("--extra-text", action="append", default=[], metavar="NAME=FILE",
                    help="one more evaluation text, a local file read whole (split 'all'), measured after --domains; "
                         "benchmarks/calibration/third_domain.sh writes one that neither calibration corpus resembles")
    ap.add_argument("--out", required=True, help="the JSON record")
    args = ap.parse_args(argv)
    args.files, args.dirs = {}, {}
    for option, items, out, exists in (("--gguf", args.gguf, args.files, Path.is_file),
                                       ("--torch", args.torch, args.dirs, Path.is_dir)):
        for item in items:
            name, sep, path = item.partition("=")
            if not sep or not exists(Path(path)):
                ap.error(f"{option} wants NAME=PATH of an existing output, got {item!r}")
            out[name] = Path(path)
    args.extra = {}
    for item in args.extra_text:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--extra-text wants NAME=FILE of an existing text file, got {item!r}")
        if name in ("wikitext2", "builtin") or name in args.extra:
            ap.error(f"--extra-text name {name!r} is already an evaluation text; give it another name")
        args.extra[name] = path
    if not (args.files or args.dirs or args.rtn):
        ap.error("nothing to evaluate: give --gguf, --torch or --rtn")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from compress.bench.worker import ReplayLogits
    from compress.evaluate import compare
    from compress.llamacpp import LlamaCppCausalLM
    from compress.models import load_artifact
    from compress.recipe import EvaluationData

    base = load_artifact(args.model)
    specs = {"wikitext2": EvaluationData(source=args.wiki, split="all", windows=args.eval_windows,
                                         seq_len=args.eval_seq_len),
             "builtin": EvaluationData(source="builtin", split="evaluation", windows=args.eval_windows,
                                       seq_len=args.eval_seq_len)}
    specs.update({name: EvaluationData(source=path, split="all", windows=args.eval_windows, seq_len=args.eval_seq_len)
                  for name, path in args.extra.items()})
    torch_models = {name: load_artifact(str(path)).model for name, path in args.dirs.items()}
    rows = {f"torch:{name}": {"runtime": "PyTorch float32 (grid values)", "output": str(path)}
            for name, path in args.dirs.items()}
    if args.rtn:
        from run import build  # run.py's round-to-nearest variant, the same code as its table

        torch_models["rtn"] = build("rtn", argparse.Namespace(grid=args.rtn, block_size=None, asymmetric=False),
                                    base)[0].model
        rows["torch:rtn"] = {"runtime": "PyTorch float32 (grid values)", "output": f"round-to-nearest {args.rtn}"}
    rows.update({f"llama.cpp:{name}": {"runtime": "llama.cpp", "output": str(path), "size_bytes": path.stat().st_size}
                 for name, path in args.files.items()})
    provenance = {}
    for domain in [d for d in args.domains.split(",") if d] + list(args.extra):
        spec = specs[domain]
        windows = spec.load(base.tokenizer)
        provenance[domain] = windows.provenance
        replay = ReplayLogits(base.model, windows, 1)
        models = [(f"torch:{name}", model, None) for name, model in torch_models.items()]
        models += [(f"llama.cpp:{name}", None, path) for name, path in args.files.items()]
        for key, model, path in models:
            if model is None:
                model = LlamaCppCausalLM(path, threads=args.threads)
            m = compare(replay.rewind(), model, windows, desc=f"{key} ({domain})")
            if path is not None:
                model.close()
            rows[key][domain] = {"ppl_ratio": m["perplexity"] / m["perplexity_base"], **m}
            print(key, domain, json.dumps(rows[key][domain]), flush=True)
        del replay
        write_record(args, rows, provenance)  # after each domain, so a cut-short run keeps what it measured


def write_record(args, rows: dict, provenance: dict) -> None:
    from compress.bench.metrics import cpu_model
    from compress.saving import library_versions

    record = {"command": "python benchmarks/gptq/evaluate_outputs.py " + " ".join(sys.argv[1:]),
              "date": dt.date.today().isoformat(), "cpu": cpu_model(), "threads": args.threads,
              "versions": library_versions(), "base_runtime": "PyTorch eager float32",
              "eval_data": provenance, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
