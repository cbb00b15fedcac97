"""GPTQ against round-to-nearest on the same runtime grids, on the built-in model.

    python benchmarks/gptq/run.py                                   # q4_0: RTN, GPTQ, GPTQ + act-order
    python benchmarks/gptq/run.py --grid int4 --variants rtn,gptq-act --save out/gptq
    python benchmarks/gptq/run.py --smoke --results /tmp/gptq-smoke  # minutes: proves the path runs

Each variant puts every projection (not the embeddings / tied head) on the grid
and is measured as PyTorch float32 holding exactly the grid values, which is
what the runtime decodes from the blocks (llama.cpp and MatMulNBits at
accuracy_level 4 also round the activations to 8 bits, which this does not
show: the runtime's own numbers come from `compress bench` on the exported
files). ``rtn`` is the runtime's own round-to-nearest choice (the same block
parameters as llama.cpp's / ONNX Runtime's quantizer, nearest codes on the
stored grid); ``rtn-clip`` adds the per-block range search (data-free). Columns: perplexity as a multiple of the base's, mean
KL(base || variant), top-1 agreement, on WikiText-2 valid (tokenized) and on
the built-in corpus's evaluation half. Calibration is the built-in corpus's
calibration half by default (WikiText-2 is then out of domain and wholly
unseen); ``--calib-text wiki`` calibrates on WikiText-2 valid's calibration
half instead and evaluates on its other half (in domain; the built-in column
becomes the out-of-domain one).

``--save DIR`` keeps each GPTQ output (checkpoint + quantized_blocks.safetensors)
for `compress export gguf` / the fast ONNX Runtime writer and `compress bench`.
Judge 4-bit by q4_0 or symmetric int4: the built-in weights are a dequantized
Q4_1 grid, which q4_1 reproduces exactly (docs/quantization.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

WIKI = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"
# None: round-to-nearest without calibration ({"clip_search": True}: with the data-free range search).
VARIANTS = {"rtn": None, "rtn-clip": None, "gptq": {"act_order": False}, "gptq-act": {"act_order": True},
            "gptq-act-clip": {"act_order": True, "clip_search": True}}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--grid", default="q4_0", help="q4_0, q4_1, q5_0, q5_1, q8_0, int4, int8")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--asymmetric", action="store_true")
    ap.add_argument("--damp", type=float, default=None, help="GPTQ Hessian dampening (default: the pass's)")
    ap.add_argument("--head", action="store_true",
                    help="GPTQ also quantizes the output head (untied; the embeddings stay float for the writer)")
    ap.add_argument("--head-grid", default=None,
                    help="with --head: the head's own grid (e.g. q5_0 for a q4_0 body; default: --grid)")
    ap.add_argument("--variants", default="rtn,gptq,gptq-act", help=f"comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--wiki", default=str(WIKI))
    ap.add_argument("--calib-text", default="builtin",
                    help="calibration text, its calibration half ('wiki': WikiText-2 valid's; its evaluation then "
                         "uses the other half)")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seq-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--save", default=None, help="keep each GPTQ output under this directory")
    ap.add_argument("--build-only", action="store_true",
                    help="only build and --save the GPTQ outputs (evaluate them with evaluate_outputs.py)")
    ap.add_argument("--smoke", action="store_true", help="tiny calibration and evaluation: proves the path runs")
    args = ap.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.build_only and not args.save:
        ap.error("--build-only needs --save")
    if args.smoke:
        args.calib_samples, args.calib_seq_len, args.eval_windows, args.eval_seq_len = 2, 128, 1, 128
    return args


def calibration_source(args) -> str:
    return args.wiki if args.calib_text == "wiki" else args.calib_text


def build(name: str, args, base):
    """The variant and the seconds it took to build."""
    import torch

    from compress.layers import weight_matrices
    from compress.passes.base import CalibrationData, PassContext
    from compress.passes.gptq import GptqQuantize

    start = time.perf_counter()
    if VARIANTS[name] is None:
        grid = GptqQuantize(grid=args.grid, block_size=args.block_size,
                            symmetric=False if args.asymmetric else None).target_grid()
        variant = base.copy()
        with torch.no_grad():
            for t in weight_matrices(variant.model):
                t.weight.copy_(grid.round_to_nearest(t.weight, clip_search=name == "rtn-clip")[0])
    else:
        options = {**VARIANTS[name], **({"damp": args.damp} if args.damp is not None else {}), "head": args.head,
                   **({"head_grid": args.head_grid} if args.head_grid else {})}
        gptq = GptqQuantize(grid=args.grid, block_size=args.block_size,
                            symmetric=False if args.asymmetric else None, **options)
        calibration = CalibrationData(source=calibration_source(args), samples=args.calib_samples,
                                      seq_len=args.calib_seq_len)
        variant = gptq(base, PassContext(calibration=calibration))
    return variant, time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from compress.bench.metrics import cpu_model
    from compress.bench.worker import ReplayLogits
    from compress.evaluate import compare
    from compress.models import load_artifact
    from compress.recipe import EvaluationData
    from compress.saving import library_versions, save_artifact

    base = load_artifact(args.model)
    # WikiText-2 is wholly unseen unless it is the calibration text; then only its evaluation half is used.
    wiki_split = "evaluation" if calibration_source(args) == args.wiki else "all"
    windows = {
        "wikitext2": EvaluationData(source=args.wiki, split=wiki_split, windows=args.eval_windows,
                                    seq_len=args.eval_seq_len).load(base.tokenizer),
        "builtin": EvaluationData(source="builtin", split="evaluation", windows=args.eval_windows,
                                  seq_len=args.eval_seq_len).load(base.tokenizer),
    }
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    label = args.grid + (f"-b{args.block_size}" if args.block_size else "") + ("-asym" if args.asymmetric else "") \
        + ("" if args.calib_text == "builtin" else f"-calib-{Path(args.calib_text).stem}") \
        + ("" if args.damp is None else f"-damp{args.damp:g}") + ("-head" if args.head else "") \
        + (f"-{args.head_grid}" if args.head_grid else "")
    rows, variants = [], {}
    for name in args.variants.split(","):
        variant, seconds = build(name, args, base)
        row = {"variant": name, "grid": label, "build_seconds": round(seconds, 1)}
        if variant.passes and variant.passes[-1]["name"] == "gptq_quantize":
            row["output_error_mean"] = variant.passes[-1]["metrics"]["output_error_mean"]
            if args.save:
                save_artifact(variant, Path(args.save) / f"{label}-{name}", force=True)
        rows.append(row)
        variants[name] = variant
        print(json.dumps(row), flush=True)
    if args.build_only:
        return
    for domain, w in windows.items():  # the base's logits once per domain, for every variant
        replay = ReplayLogits(base.model, w, 1)
        for row in rows:
            m = compare(replay.rewind(), variants[row["variant"]].model, w, desc=f"{row['variant']} ({domain})")
            row[domain] = {"ppl_ratio": m["perplexity"] / m["perplexity_base"], "kl_mean": m["kl_mean"],
                           "top1_agreement": m["top1_agreement"], "perplexity": m["perplexity"],
                           "perplexity_base": m["perplexity_base"]}
            print(json.dumps({"variant": row["variant"], domain: row[domain]}), flush=True)
        del replay
    record = {"command": "python benchmarks/gptq/run.py " + " ".join(sys.argv[1:]), "date": dt.date.today().isoformat(),
              "calibration": calibration_source(args),
              "cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "versions": library_versions(),
              "eval_data": {d: w.provenance for d, w in windows.items()}, "smoke": args.smoke, "rows": rows}
    (results_dir / f"{label}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = [f"# GPTQ vs round-to-nearest on {label}", "", f"`{record['command']}`, {record['date']}, {record['cpu']}"
             + (" (smoke run: numbers mean nothing)" if args.smoke else ""), "",
             "| variant | ppl x base wiki | KL wiki | top-1 wiki | ppl x base builtin | KL builtin | build s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        w, b = r["wikitext2"], r["builtin"]
        lines.append(f"| {r['variant']} | {w['ppl_ratio']:.3f} | {w['kl_mean']:.4f} | {w['top1_agreement']:.1%} | "
                     f"{b['ppl_ratio']:.3f} | {b['kl_mean']:.4f} | {r['build_seconds']:.0f} |")
    (results_dir / f"{label}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
