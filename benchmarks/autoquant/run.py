"""Quality of GGUF files in llama.cpp against the PyTorch float32 base: the mixes of `--target-kl` and uniform types.

    python benchmarks/autoquant/run.py out/autoquant/q8_0.gguf out/autoquant/q4_0.gguf out/autoquant/mix-0.02.gguf

Every file runs in llama.cpp (compress.llamacpp) and is compared with the base
in PyTorch by the toolkit's shared measurement (compress.evaluate.compare:
token-level perplexity, mean KL(base || file) per scored token, top-1
agreement), on two texts that no calibration window comes from:

* wikitext2: WikiText-2 valid (tokenized), the first --eval-windows windows of
  --eval-seq-len tokens of the whole file (out of domain: calibration is the
  toolkit's default text, 'mixed' = the built-in corpus's calibration half and
  Wikipedia lead sections);
* builtin: the built-in corpus's evaluation half (in domain for the built-in
  half of 'mixed', which is drawn from the other half).

Writes results.json and results.md to --results (default: this folder), with
each mix's own record from its manifest (assignment counts, predicted KL,
KL measured on its held-out calibration windows, file size, curve).
No speed is measured here: suite-speed.yaml is the side-by-side timing run.
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

# The shared data folder beside the checkout (main at /work/main, a worktree at /work/wt/NAME).
WIKI = next((d / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens" for d in (ROOT.parent, ROOT.parent.parent)
             if (d / "shared").is_dir()), ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="GGUF files to measure")
    p.add_argument("--model", default="smollm2-135m-instruct", help="the PyTorch base the files came from")
    p.add_argument("--wiki", default=str(WIKI))
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--builtin-windows", type=int, default=None,
                   help="windows of the built-in evaluation half [default: --eval-windows]")
    p.add_argument("--eval-seq-len", type=int, default=1024)
    p.add_argument("--only", choices=("wikitext2", "builtin"), default=None, help="measure on one of the two texts")
    p.add_argument("--results", type=Path, default=HERE)
    return p.parse_args(argv)


def mix_record(path: Path) -> dict | None:
    """The auto_quantize pass's record from the file's manifest (None for a uniform export)."""
    manifest = path.with_name(path.name + ".compress.json")
    if not manifest.exists():
        return None
    passes = json.loads(manifest.read_text())["passes"]
    record = next((p for p in passes if p["name"] == "auto_quantize"), None)
    if record is None:
        export = next(p for p in passes if p["name"] == "gguf_export")
        return {"type_counts": export["metrics"]["type_counts"]}
    m = record["metrics"]
    keep = ("target_kl", "type_counts", "predicted_kl", "measured_kl", "measured_kl_pytorch", "measured_kl_llamacpp",
            "predicted_speedup_vs_q8_0", "bytes_per_token", "curve", "windows")
    return {"config": record["config"], **{k: m[k] for k in keep}, "backoff_rounds": len(m["backoff"]) - 1}


class OneWindowBase:
    """The base model with its logits for the last window asked kept, so every file is compared with one forward."""

    def __init__(self, model):
        self.model, self.key, self.value = model, None, None

    def __call__(self, input_ids, attention_mask=None):
        from compress.evaluate import logits_of

        key = input_ids.numpy().tobytes()
        if key != self.key:
            self.key, self.value = key, logits_of(self.model, input_ids)
        return self.value


def pooled(parts: list[dict]) -> dict:
    """compare()'s per-window results pooled token-weighted (perplexity from the summed NLL, as compare does)."""
    import math

    tokens = sum(p["tokens"] for p in parts)
    mean = lambda key: sum(p[key] * p["tokens"] for p in parts) / tokens
    nll = lambda key: sum(math.log(p[key]) * p["tokens"] for p in parts) / tokens
    out = {"kl_mean": mean("kl_mean"), "top1_agreement": mean("top1_agreement"),
           "delta_p_correct": mean("delta_p_correct"), "perplexity": math.exp(nll("perplexity")),
           "perplexity_base": math.exp(nll("perplexity_base")), "tokens": tokens}
    return {**out, "ppl_ratio": out["perplexity"] / out["perplexity_base"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    from compress.data import Windows
    from compress.evaluate import compare
    from compress.llamacpp import LlamaCppCausalLM
    from compress.models import load_artifact
    from compress.progress import progress
    from compress.recipe import EvaluationData

    base = load_artifact(args.model)
    windows = {
        "wikitext2": EvaluationData(source=args.wiki, split="all", windows=args.eval_windows,
                                    seq_len=args.eval_seq_len).load(base.tokenizer),
        "builtin": EvaluationData(source="builtin", split="evaluation", windows=args.builtin_windows or args.eval_windows,
                                  seq_len=args.eval_seq_len).load(base.tokenizer),
    }
    if args.only:
        windows = {args.only: windows[args.only]}
    models = {path: LlamaCppCausalLM(path) for path in args.files}
    rows = {path: {"file": str(path), "name": path.stem, "gguf_bytes": path.stat().st_size,
                   "record": mix_record(path)} for path in args.files}
    reference = OneWindowBase(base.model)
    for domain, w in windows.items():
        # Window by window, every file against the same base logits (computed once: the base is the slow part).
        parts = {path: [] for path in args.files}
        for i in progress(range(len(w)), desc=f"{domain}: windows x files", unit="window"):
            one = Windows(w.input_ids[i : i + 1], w.score_from[i : i + 1], w.provenance)
            for path, model in models.items():
                parts[path].append(compare(reference, model, one, desc=f"{path.stem} ({domain})"))
        for path in args.files:
            rows[path][domain] = pooled(parts[path])
        write(args, windows, list(rows.values()))  # after each text, so a stopped run keeps what it measured
    for model in models.values():
        model.close()
    print(table(write(args, windows, list(rows.values()))))


def write(args, windows: dict, rows: list[dict]) -> dict:
    from compress.bench.metrics import cpu_model
    from compress.saving import library_versions

    record = {"command": "python benchmarks/autoquant/run.py " + " ".join(sys.argv[1:]),
              "date": dt.date.today().isoformat(), "cpu": cpu_model(), "versions": library_versions(),
              "eval_data": {d: w.provenance for d, w in windows.items()}, "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    (args.results / "results.md").write_text(table(record) + "\n")
    return record


def table(record: dict) -> str:
    data = "; ".join(f"{d}: {p.get('windows')} x {p.get('seq_len')} tokens ({p.get('split')}), {p.get('scored_tokens')} "
                     "scored" for d, p in record["eval_data"].items())
    lines = [f"`{record['command']}`, {record['date']}, {record['cpu']}", "", data, "",
             "| file (llama.cpp) | types | MB | KL wiki | ppl x base wiki | top-1 wiki | KL builtin | "
             "ppl x base builtin | top-1 builtin | held-out calib. KL (pass) | predicted KL | predicted decode vs q8_0 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["rows"]:
        rec = r["record"] or {}
        counts = ", ".join(f"{n} {t}" for t, n in sorted(rec.get("type_counts", {}).items()))
        measured = [f"{d['kl_mean']:.4f} | {d['ppl_ratio']:.3f} | {d['top1_agreement']:.1%}" if d else "not run | |"
                    for d in (r.get("wikitext2"), r.get("builtin"))]
        lines.append(f"| {r['name']} | {counts} | {r['gguf_bytes'] / 1e6:.1f} | {' | '.join(measured)} | "
                     f"{_f(rec.get('measured_kl'))} | {_f(rec.get('predicted_kl'))} | "
                     f"{_f(rec.get('predicted_speedup_vs_q8_0'), 2)} |")
    return "\n".join(lines)


def _f(x, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    main()
