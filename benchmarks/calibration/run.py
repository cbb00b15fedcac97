"""Calibration domain against evaluation domain: every calibrated pass, calibrated on each corpus, evaluated on each text.

    python benchmarks/calibration/run.py                       # the full grid (protocol sizes)
    python benchmarks/calibration/run.py --report-only         # rewrite results.md from results.json

For the built-in model, each method in METHODS is calibrated on each corpus in CORPORA and
measured (perplexity × base, mean KL(base ‖ variant), top-1 agreement) on each evaluation text in
--eval-texts. A cell is *in-domain* when calibration and evaluation are two parts of one corpus,
*shares a member* when the calibration corpus is a mix holding the evaluation corpus, and
*out-of-domain* otherwise. Evaluation windows are never calibration text (checked with
`compress.data.check_disjoint`, and for WikiText-2 by token position).

WikiText-2 valid (`--wikitext`, the file as it is) is one corpus here as well: its evaluation part
is the text up to the line that ends the protocol's 16 evaluation windows of 1,024 tokens, its
calibration part everything after (so calibration never sees those windows, whatever
--eval-windows is).

Data-free methods (round-to-nearest and bnb quantization: they never read calibration text) get
one row per evaluation text, without a calibration axis.

The base's logits are computed once per evaluation text and kept on disk (--cache); one-shot
Wanda, MLP-channel scoring and Wanda 2:4 share one calibration pass of the base per corpus
(compress.passes.calibration caches its statistics). Results are appended to results.json after
every cell, and a rerun skips the cells already there with the same settings, so an interrupted
run resumes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # this checkout's compress, not another installed copy

PROTOCOL_EVAL_WINDOWS, EVAL_SEQ_LEN = 16, 1024
# shared/ sits beside the main checkout (../shared) or two levels up from a worktree (/work/wt/NAME).
DEFAULT_WIKITEXT = next((p for p in (HERE.parents[1].parent / "shared", HERE.parents[1].parent.parent / "shared")
                         if p.is_dir()), HERE.parents[1].parent / "shared") / "data" / "wikitext-2" / "wiki.valid.tokens"

# (key, label, pass name, config); a config with "sequential" follows --sequential/--one-shot.
METHODS = [
    ("wanda-50", "Wanda 50%", "wanda_prune", {"sparsity": 0.5, "sequential": None}),
    ("mlp-25", "MLP channels -25% (activation scores)", "channel_prune",
     {"ratio": 0.25, "importance": "activation", "refit": False}),
    ("mlp-25-refit", "MLP channels -25% (activation scores) + least-squares refit", "channel_prune",
     {"ratio": 0.25, "importance": "activation", "refit": True, "refit_damp": 0.01}),
    ("sparsegpt-50", "SparseGPT 50%", "sparsegpt_prune", {"sparsity": 0.5, "sequential": None}),
    ("wanda-2:4", "Wanda 2:4", "wanda_prune", {"pattern": "2:4", "sequential": None}),
    ("sparsegpt-2:4", "SparseGPT 2:4", "sparsegpt_prune", {"pattern": "2:4", "sequential": None}),
]
# The order of work: one-shot Wanda and MLP-channel scoring share the base's calibration statistics.
ORDER = [("wanda-50", "mlp-25", "mlp-25-refit", "wanda-2:4"), ("sparsegpt-50",), ("sparsegpt-2:4",)]
DATA_FREE = [
    ("bnb-nf4", "bnb NF4 (data-free)", "bnb_quantize", {"method": "nf4"}),
    ("bnb-int8", "bnb int8 (data-free)", "bnb_quantize", {"method": "int8"}),
]
CORPORA = ["builtin", "wikitext2", "mixed", "wikipedia-leads"]
CORPUS_LABELS = {"builtin": "built-in (Python docs)", "wikitext2": "WikiText-2 valid",
                 "wikipedia-leads": "wikipedia-leads", "mixed": "mixed (built-in + wikipedia-leads)"}


def wikitext_fraction(tokenizer, path: Path) -> float:
    """An eval_fraction whose evaluation part holds the protocol's first 16 x 1024 tokens of the file."""
    text = path.read_text(encoding="utf-8")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    end_char = enc["offset_mapping"][PROTOCOL_EVAL_WINDOWS * EVAL_SEQ_LEN - 1][1]
    return round(end_char / len(text) + 1e-4, 4)


def specs(name: str, args, fraction: float):
    """(calibration spec, evaluation spec) of a corpus."""
    from compress.passes.base import CalibrationData
    from compress.recipe import EvaluationData

    source = str(args.wikitext) if name == "wikitext2" else name
    extra = {"eval_fraction": fraction} if name == "wikitext2" else {}
    calibration = CalibrationData(source=source, split="calibration", samples=args.calib_samples,
                                  seq_len=args.calib_seq_len, **extra)
    evaluation = EvaluationData(source=source, split="evaluation", windows=args.eval_windows, seq_len=EVAL_SEQ_LEN,
                                **extra)
    return calibration, evaluation


def relation(calibration: str, evaluation: str) -> str:
    from compress.corpora import corpus

    if calibration == evaluation:
        return "in-domain"
    named = corpus(calibration)
    if named is not None and evaluation in named.members:
        return "shares a member"
    return "out-of-domain"


class DiskReplay:
    """The base model's logits for one set of windows, computed once and kept on disk.

    Stands in for the base in `compress.evaluate.compare` (which visits the windows in order,
    one at a time); each call must receive the window it recorded.
    """

    def __init__(self, model, windows, directory: Path):
        import torch

        from compress.evaluate import logits_of
        from compress.progress import progress

        self.windows, self.directory, self._next = windows, directory, 0
        directory.mkdir(parents=True, exist_ok=True)
        for i in progress(range(len(windows)), desc=f"base logits ({directory.name})", unit="window"):
            path = directory / f"{i}.pt"
            if not path.exists():
                logits = logits_of(model, windows.input_ids[i : i + 1])
                torch.save(logits, path.with_suffix(".partial"))
                path.with_suffix(".partial").rename(path)

    def rewind(self) -> "DiskReplay":
        self._next = 0
        return self

    def __call__(self, input_ids, attention_mask=None):
        import torch

        i = self._next
        if not torch.equal(self.windows.input_ids[i : i + 1], input_ids):
            raise RuntimeError("replayed base logits were asked for a different window than recorded")
        self._next += 1
        return torch.load(self.directory / f"{i}.pt", mmap=True)


def environment() -> dict:
    from compress.bench.metrics import cpu_model
    from compress.saving import library_versions

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "versions": library_versions(), "platform": platform.platform()}


def settings_key(args, method_config: dict) -> str:
    parts = [args.model, args.eval_windows, args.calib_samples, args.calib_seq_len, json.dumps(method_config, sort_keys=True)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def method_config(config: dict, sequential: bool) -> dict:
    return {k: (sequential if k == "sequential" else v) for k, v in config.items()}


def run(args) -> None:
    import torch

    from compress.data import check_disjoint
    from compress.evaluate import compare
    from compress.models import load_artifact
    from compress.passes.base import PassContext, build_pass
    from compress.progress import configure, log

    configure(quiet=args.quiet)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"cells": []}
    env = environment()
    results.update(environment=env, date=dt.date.today().isoformat())
    # Every invocation that added cells, in order (a resumed run is several).
    results.setdefault("runs", []).append({"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                                           "date": results["date"], "load_average": env["load_average"]})
    done = {(c["method"], c["calibration"], c["evaluation"], c["settings_key"]) for c in results["cells"]}

    base = load_artifact(args.model)
    fraction = wikitext_fraction(base.tokenizer, Path(args.wikitext))
    full_wikitext = base.tokenizer(Path(args.wikitext).read_text(encoding="utf-8"), add_special_tokens=False,
                                   verbose=False)["input_ids"]
    evaluations, replays = {}, {}
    for name in args.eval_texts:
        _, spec = specs(name, args, fraction)
        windows = spec.load(base.tokenizer)
        if name == "wikitext2":  # the protocol's windows: the file's first tokens, exactly
            first = torch.tensor(full_wikitext[: len(windows) * EVAL_SEQ_LEN]).view(len(windows), EVAL_SEQ_LEN)
            assert torch.equal(first, windows.input_ids), "WikiText-2 evaluation windows differ from the file's first"
        key = hashlib.sha256(windows.input_ids.numpy().tobytes() + args.model.encode()).hexdigest()[:16]
        evaluations[name] = (spec, windows)
        replays[name] = DiskReplay(base.model, windows, Path(args.cache) / f"{name}-{key}")
    results["evaluation"] = {name: w.provenance for name, (_, w) in evaluations.items()}
    results["wikitext_eval_fraction"] = fraction
    calibration_data = results.setdefault("calibration", {})

    def measure(key, label, pass_name, config, calibration_name):
        cells = [(e, settings_key(args, config)) for e in args.eval_texts]
        todo = [(e, k) for e, k in cells if (key, calibration_name or "none", e, k) not in done]
        if not todo:
            return
        if calibration_name is not None:
            calibration, _ = specs(calibration_name, args, fraction)
            for e, _k in todo:
                check_disjoint(calibration, evaluations[e][0])
            ctx = PassContext(calibration=calibration)
        else:
            ctx = PassContext()
        start = time.perf_counter()
        variant = build_pass(pass_name, config)(base, ctx)
        build_seconds = time.perf_counter() - start
        if calibration_name is not None:
            calibration_data[calibration_name] = ctx.calibration_windows(base.tokenizer).provenance
        for e, k in todo:
            spec, windows = evaluations[e]
            q = compare(replays[e].rewind(), variant.model, windows, desc=f"{key} / {calibration_name} on {e}")
            cell = {"method": key, "label": label, "pass": {pass_name: config}, "calibration": calibration_name or "none",
                    "evaluation": e, "relation": relation(calibration_name, e) if calibration_name else "data-free",
                    "perplexity": q["perplexity"], "perplexity_base": q["perplexity_base"],
                    "ppl_ratio": q["perplexity"] / q["perplexity_base"], "kl_mean": q["kl_mean"],
                    "top1_agreement": q["top1_agreement"], "tokens": q["tokens"],
                    "build_seconds": round(build_seconds, 1), "settings_key": k}
            results["cells"].append(cell)
            out.write_text(json.dumps(results, indent=2) + "\n")
            log.info(f"{key} calibrated on {calibration_name} evaluated on {e}: ppl x{cell['ppl_ratio']:.3f}, "
                     f"KL {cell['kl_mean']:.4f}")
        del variant

    wanted = set(args.methods)
    by_key = {m[0]: m for m in METHODS}
    for group in ORDER:  # corpus by corpus within a group, so the group's methods share one calibration pass
        for corpus_name in args.corpora:
            for key in group:
                if key in wanted:
                    _, label, pass_name, config = by_key[key]
                    measure(key, label, pass_name, method_config(config, args.sequential), corpus_name)
    for key, label, pass_name, config in DATA_FREE:
        if key in wanted:
            measure(key, label, pass_name, config, None)
    Path(args.markdown).write_text(to_markdown(results))


# --------------------------------------------------------------------------- report


def _cell(c: dict | None) -> tuple[str, str]:
    if c is None:
        return "n/m", "n/m"
    mark = {"in-domain": " (in)", "shares a member": " (half in)"}.get(c["relation"], "")
    return f"{c['ppl_ratio']:.2f}×{mark}", f"{c['kl_mean']:.3f}"


def to_markdown(results: dict) -> str:
    cells = results["cells"]
    evals = list(results.get("evaluation", {}))
    methods = list(dict.fromkeys((c["method"], c["label"]) for c in cells))
    env = results["environment"]
    lines = [
        "# Calibration domain × evaluation domain (built-in SmolLM2-135M-Instruct, PyTorch eager fp32)",
        "",
        "- **Commands** (one per invocation; a rerun resumes): " + "; ".join(
            f"`{r['command']}` ({r['date']}, load average {r['load_average'][0]:.1f})" for r in results.get("runs", [])),
        f"- **Machine**: {env['cpu']}, {env['cores']} cores, shared with other jobs (quality numbers do not "
        "depend on load); versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "- **Evaluation texts**: " + "; ".join(
            f"{CORPUS_LABELS.get(n, n)}: {p['windows']} × {p['seq_len']} tokens ({p['scored_tokens']} scored) of its "
            f"{p['split']} part, sha256 {p['sha256']}" for n, p in results.get("evaluation", {}).items()),
        "- **Calibration**: " + "; ".join(
            f"{CORPUS_LABELS.get(n, n)}: {p['windows']} × {p['seq_len']} tokens of its calibration part"
            f"{' (' + p['licence'] + ')' if p.get('licence') else ''}"
            for n, p in results.get("calibration", {}).items()),
        "- Each cell: perplexity × the base's on the same windows, and mean KL(base ‖ variant) per token. "
        "(in): calibration and evaluation are the two parts of one corpus; (half in): the calibration mix holds "
        "the evaluation corpus's other part; unmarked: a different corpus (wikipedia-leads and WikiText-2 are both "
        "Wikipedia, different articles: no 13-word sequence in common). Worst: the larger ppl × of the two texts. "
        "WikiText-2's calibration part is the file after the line ending its first 16 × 1024 tokens.",
        "",
    ]
    header = "| Method | Calibrated on | " + " | ".join(f"ppl × base on {CORPUS_LABELS.get(e, e)} | KL on "
                                                       f"{CORPUS_LABELS.get(e, e)}" for e in evals) + " | worst ppl × |"
    lines += [header, "|---|---|" + "---:|---:|" * len(evals) + "---:|"]
    for key, label in methods:
        calibrations = list(dict.fromkeys(c["calibration"] for c in cells if c["method"] == key))
        for cal in calibrations:
            row = [label, CORPUS_LABELS.get(cal, cal) if cal != "none" else "(no calibration)"]
            for e in evals:
                found = next((c for c in cells if c["method"] == key and c["calibration"] == cal and c["evaluation"] == e),
                             None)
                row += list(_cell(found))
            ratios = [c["ppl_ratio"] for c in cells if c["method"] == key and c["calibration"] == cal
                      and c["evaluation"] in evals]
            row.append(f"{max(ratios):.2f}×" if len(ratios) == len(evals) else "n/m")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## In-domain against out-of-domain (the two corpora each way)", "",
              "| Method | Calibrated on | in-domain ppl × | in-domain KL | out-of-domain ppl × | out-of-domain KL |",
              "|---|---|---:|---:|---:|---:|"]
    for key, label in methods:
        for cal in ("builtin", "wikitext2"):
            inside = next((c for c in cells if c["method"] == key and c["calibration"] == cal and c["relation"] == "in-domain"), None)
            outside = next((c for c in cells if c["method"] == key and c["calibration"] == cal
                            and c["relation"] == "out-of-domain" and c["evaluation"] in ("builtin", "wikitext2")), None)
            if inside or outside:
                a, b = _cell(inside)
                c_, d = _cell(outside)
                lines.append(f"| {label} | {CORPUS_LABELS[cal]} | {a.replace(' (in)', '')} | {b} | {c_} | {d} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--wikitext", default=str(DEFAULT_WIKITEXT), help="WikiText-2 valid, the file as it is")
    p.add_argument("--eval-texts", nargs="+", default=["builtin", "wikitext2"], choices=CORPORA)
    p.add_argument("--eval-windows", type=int, default=PROTOCOL_EVAL_WINDOWS)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--corpora", nargs="+", default=CORPORA, choices=CORPORA, help="calibration corpora")
    p.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS + DATA_FREE],
                   choices=[m[0] for m in METHODS + DATA_FREE])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sequential", dest="sequential", action="store_true", default=True,
                       help="Wanda/SparseGPT block by block (the passes' default)")
    group.add_argument("--one-shot", dest="sequential", action="store_false",
                       help="Wanda/SparseGPT statistics from the unpruned model in one pass (about half the time)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache", default=os.path.join(os.environ.get("COMPRESS_CACHE_DIR", os.path.expanduser("~/.cache/compress")),
                                                   "calibration-bench"), help="where the base's logits are kept")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--markdown", default=str(HERE / "results.md"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args()
    if args.report_only:
        Path(args.markdown).write_text(to_markdown(json.loads(Path(args.out).read_text())))
        return
    run(args)


if __name__ == "__main__":
    main()
