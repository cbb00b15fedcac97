"""`compress quantize`: bitsandbytes, ONNX Runtime or GPTQ (onto a runtime's grid) quantization, or mixed
GGUF types under a KL budget (--target-kl, compress.commands.autoquant), then the quality guard."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_options import data_options, data_specs, output_options, trust_remote_code_option

from ..quant_grids import GGUF_GRID_TYPES, GRID_NAMES

# ort-int8 / ort-int4: the fast onnxruntime-genai graph, weight-only MatMulNBits with int8 compute
# (ort_genai_export; causal LMs). ort-dynamic-int8 / ort-optimum-int4 / ort-weight-int8: ort_quantize on
# optimum's ONNX export (weight-int8: MatMulNBits 8-bit with int8 compute, the fast int8 for encoders).
# gptq: calibrated rounding onto a runtime's grid (gptq_quantize; causal LMs).
METHODS = ("bnb-int8", "bnb-nf4", "bnb-fp4", "ort-int8", "ort-int4", "ort-dynamic-int8", "ort-optimum-int4",
           "ort-weight-int8", "gptq")
FAST_GRAPH_METHODS = ("ort-int8", "ort-int4")
# Options of --method gptq only, as (parameter, flag): refused with the other methods when given.
GPTQ_ONLY = (("grid", "--grid"), ("asymmetric", "--asymmetric"), ("act_order", "--act-order/--no-act-order"),
             ("clip_search", "--clip-search"), ("damp", "--damp"), ("sequential", "--sequential/--one-shot"),
             ("keep_sparsity", "--keep-sparsity"), ("head", "--head"), ("head_grid", "--head-grid"),
             ("tune_steps", "--tune-steps"))
# Options of --method only (every method's), refused with --target-kl when given.
METHOD_ONLY = (("keep", "--keep"), ("keep_first", "--keep-first"), ("keep_last", "--keep-last"),
               ("device", "--device"), ("double_quant", "--double-quant/--no-double-quant"),
               ("compute_dtype", "--compute-dtype"), ("block_size", "--block-size"), ("reduce_range", "--reduce-range"),
               ("int4_algorithm", "--int4-algorithm")) + GPTQ_ONLY
# Options of --target-kl only, refused with --method when given.
AUTOQUANT_ONLY = (("types", "--types"), ("search_windows", "--search-windows"), ("check_windows", "--check-windows"),
                  ("blocks_from", "--blocks-from"), ("search_kl", "--search-kl"))
# Options of --method that --target-kl takes too: --tune-steps trains the chosen mix's scales.
SHARED_WITH_TARGET_KL = ("tune_steps",)


def refuse_given(options: tuple[tuple[str, str], ...], applies_to: str, not_to: str) -> None:
    """One-line UserError when any of `options` (parameter, flag) was given on this command line rather than
    left at its default: "FLAGS only apply to APPLIES_TO, not to NOT_TO"."""
    from ..errors import UserError

    ctx = click.get_current_context()
    given = [flag for name, flag in options if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given:
        raise UserError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to {applies_to}, "
                        f"not to {not_to}")


def build_gptq_pass(grid: str | None, block_size: int, asymmetric: bool, act_order: bool | None, clip_search: bool,
                    damp: float | None, sequential: bool | None, keep_sparsity: bool, keep: tuple[str, ...],
                    keep_first, keep_last, int4_algorithm: str, reduce_range: bool, head: bool = False,
                    head_grid: str | None = None):
    """The gptq_quantize pass for `--method gptq`, validated (one-line UserError on a bad combination)."""
    from ..errors import UserError
    from ..passes.base import build_pass

    if grid is None:
        raise UserError(f"--method gptq needs --grid, the runtime grid to write: {', '.join(GRID_NAMES)}")
    if asymmetric and grid in GGUF_GRID_TYPES:
        raise UserError(f"--asymmetric applies to the int4/int8 grids; GGUF {grid} has its own zero point "
                        "(q4_1 and q5_1 are the asymmetric GGUF types)")
    if keep_first is not None or keep_last is not None:
        raise UserError("--keep-first/--keep-last are not available with --method gptq; leave modules in float "
                        "with --keep GLOB")
    if head_grid is not None and not head:
        raise UserError("--head-grid is the output head's grid, so it needs --head")
    if head_grid is not None and (head_grid in GGUF_GRID_TYPES) != (grid in GGUF_GRID_TYPES):
        raise UserError(f"--head-grid {head_grid} and --grid {grid} belong to different runtimes; choose both from "
                        "the GGUF types or both from int4/int8")
    if int4_algorithm != "rtn" or reduce_range:
        raise UserError("--int4-algorithm and --reduce-range apply to ort-optimum-int4 / ort-dynamic-int8, not to --method gptq")
    config = {"grid": grid, "block_size": block_size, "clip_search": clip_search, "keep_sparsity": keep_sparsity,
              "exclude": list(keep) or None, "head": head}
    if head_grid is not None:
        config["head_grid"] = head_grid
    if act_order is not None:
        config["act_order"] = act_order
    if asymmetric:
        config["symmetric"] = False
    if damp is not None:
        config["damp"] = damp
    if sequential is not None:
        config["sequential"] = sequential
    return build_pass("gptq_quantize", config)


def build_quantize_pass(method: str, keep: tuple[str, ...], keep_first: int | None, keep_last: int | None, device: str,
                        double_quant: bool, compute_dtype: str, block_size: int, reduce_range: bool,
                        int4_algorithm: str = "rtn"):
    """The pass for a --method, validated (bad values raise UserError before any work)."""
    from ..errors import UserError
    from ..passes.base import build_pass

    family, kind = method.split("-", 1)
    if family == "bnb":
        config = {"method": kind, "keep": list(keep), "keep_first": keep_first or 0, "keep_last": keep_last or 0,
                  "device": device,
                  "double_quant": double_quant, "compute_dtype": compute_dtype}
        return build_pass("bnb_quantize", config)
    if method in FAST_GRAPH_METHODS:
        unused = [name for name, given in (("--keep", keep), ("--keep-first", keep_first is not None),
                                           ("--keep-last", keep_last is not None), ("--reduce-range", reduce_range),
                                           ("--int4-algorithm", int4_algorithm != "rtn")) if given]
        if unused:
            raise UserError(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not for {method}, which "
                            "quantizes every projection of the fast graph; use ort-dynamic-int8 / ort-optimum-int4 "
                            "for those options")
        return build_pass("ort_genai_export", {"precision": kind, "block_size": block_size})
    config = {"method": {"optimum-int4": "int4"}.get(kind, kind), "keep": list(keep) or None,
              "keep_first": keep_first, "keep_last": keep_last}
    if kind in ("optimum-int4", "weight-int8"):
        config["block_size"] = block_size
    if kind == "optimum-int4":
        config["algorithm"] = int4_algorithm
    elif kind == "dynamic-int8":
        config["reduce_range"] = reduce_range
    return build_pass("ort_quantize", config)


def load_model(ref: str, device: str = "cpu", trust_remote_code: bool = False):
    from ..models import load_artifact
    from ..onnx_utils import is_onnx_directory, load_onnx_artifact

    if is_onnx_directory(ref):
        return load_onnx_artifact(ref)
    return load_artifact(ref, device=device if device.startswith("cuda") else "cpu", trust_remote_code=trust_remote_code)


def run_guard(base, result, evaluation, what: str, max_kl: float, min_top1: float, fail: bool,
              min_cosine: float | None = None, min_top10: float | None = None) -> dict | None:
    """Compare result with base on the evaluation text; record in the manifest; warn or raise."""
    from ..encoders.architecture import is_encoder
    from ..passes.quantization import quality_guard

    if evaluation is None:
        return None
    if is_encoder(base):  # sentence embeddings on the evaluation text's sentences (compress.encoders.quality)
        from ..encoders.quality import QUANT_MIN_MEAN_COSINE, QUANT_MIN_TOP10_OVERLAP, check_quality

        quality = check_quality(base, result, evaluation, what, QUANT_MIN_MEAN_COSINE if min_cosine is None else min_cosine,
                                QUANT_MIN_TOP10_OVERLAP if min_top10 is None else min_top10, fail)
        result.metrics["quality"] = result.metrics["evaluation"] = quality
        return quality
    windows = evaluation.load(base.tokenizer)
    quality = quality_guard(base.model, result.model, windows, what, max_kl=max_kl, min_top1=min_top1,
                            fail=fail, batch_size=evaluation.batch_size)
    result.metrics["quality"] = quality
    result.metrics["evaluation"] = {
        "data": windows.provenance, "perplexity_before": quality["perplexity_base"],
        "perplexity_after": quality["perplexity"], "kl_mean": quality["kl_mean"],
        "top1_agreement": quality["top1_agreement"], "delta_p_correct": quality["delta_p_correct"],
    }
    return quality


def echo_quality(quality: dict | None, output: str) -> None:
    if quality and "cosine_mean" in quality:  # an encoder
        from ..encoders.quality import summary_line

        verdict = "passed" if quality["passed"] else "FAILED: " + "; ".join(quality["problems"])
        click.echo(f"{summary_line(quality)} (quality guard {verdict})")
    elif quality:
        verdict = "passed" if quality["passed"] else "FAILED: " + "; ".join(quality["problems"])
        click.echo(f"perplexity {quality['perplexity_base']:.2f} -> {quality['perplexity']:.2f}, "
                   f"KL from base {quality['kl_mean']:.4f}, top-1 agreement {quality['top1_agreement']:.1%} "
                   f"(quality guard {verdict})")
    click.echo(f"saved to {output}")


def autoquant_options(f):
    from .autoquant import OPTIONS

    for opt in reversed(OPTIONS):
        f = opt(f)
    return f


def guard_options(f):
    from ..passes.quantization import QUANT_MAX_KL, QUANT_MIN_TOP1

    opts = [
        click.option("--max-kl", type=click.FloatRange(min=0), default=QUANT_MAX_KL, show_default=True,
                     help="Quality guard: largest acceptable mean KL(base || quantized) per token."),
        click.option("--min-top1", type=click.FloatRange(0, 1), default=QUANT_MIN_TOP1, show_default=True,
                     help="Quality guard: smallest acceptable top-1 agreement with the base."),
        click.option("--min-cosine", type=float, default=None,
                     help="Encoders' quality guard: smallest acceptable mean cosine to the base's sentence embeddings "
                          "[default: 0.95]."),
        click.option("--min-top10", type=float, default=None,
                     help="Encoders' quality guard: smallest acceptable top-10 neighbour overlap with the base "
                          "[default: 0.75]."),
        click.option("--fail-on-damage", is_flag=True,
                     help="Exit with status 3 and save nothing if the guard fails (default: save and warn)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _json_config(directory: Path) -> dict:
    import json

    path = directory / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@click.command("quantize")
@click.argument("model")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="bnb-*: bitsandbytes (PyTorch checkpoint); ort-int8/ort-int4: the fast onnxruntime-genai graph "
                   "(weight-only, int8 compute; causal LMs); ort-dynamic-int8/ort-optimum-int4/ort-weight-int8: "
                   "optimum's ONNX graph (weight-int8: MatMulNBits 8-bit, int8 compute; the fast int8 for encoders); "
                   "gptq: calibrated rounding onto --grid (a float checkpoint holding the grid values, plus the "
                   "runtime's blocks; causal LMs). Or --target-kl instead of --method.")
@autoquant_options
@click.option("--keep", multiple=True, metavar="GLOB",
              help="Module names kept in float, e.g. 'model.layers.*.mlp.down_proj' (repeatable). "
                   "ort-dynamic-int8 default: the MLP down projections; others: none (the LM head is always kept in "
                   "float). Not for ort-int8/ort-int4.")
@click.option("--keep-first", type=int, default=None, metavar="N",
              help="Also keep the first N decoder blocks in float. Default: 2 for ort-dynamic-int8, 0 otherwise.")
@click.option("--keep-last", type=int, default=None, metavar="N",
              help="Also keep the last N decoder blocks in float. Default: 2 for ort-dynamic-int8, 0 otherwise.")
@click.option("--device", default="cpu", show_default=True, help="bitsandbytes device: cpu or cuda.")
@click.option("--double-quant/--no-double-quant", default=True, show_default=True,
              help="bnb 4-bit: quantize the block scales too.")
@click.option("--compute-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="bnb 4-bit: dtype of the matrix products.")
@click.option("--block-size", type=int, default=32, show_default=True,
              help="ort-int8/ort-int4/ort-optimum-int4/ort-weight-int8, gptq int4/int8: weights per scale "
                   "(GGUF grids: 32 only).")
@click.option("--reduce-range", is_flag=True,
              help="ort-dynamic-int8: 7-bit weights (slower path to accuracy; rarely better).")
@click.option("--int4-algorithm", type=click.Choice(["rtn", "hqq"]), default="rtn", show_default=True,
              help="ort-optimum-int4: round-to-nearest, or HQQ (optimised scales and zero points; slower to build).")
@click.option("--grid", type=click.Choice(GRID_NAMES), default=None,
              help="gptq: the runtime grid: GGUF q4_0/q4_1/q5_0/q5_1/q8_0/iq4_nl (llama.cpp), or int4/int8 (ONNX Runtime "
                   "MatMulNBits).")
@click.option("--asymmetric", is_flag=True, help="gptq int4/int8: per-block zero points (default: symmetric).")
@click.option("--act-order/--no-act-order", default=None,
              help="gptq: round columns by decreasing Hessian diagonal (default; blocks stay the runtime's "
                   "contiguous ones) or left to right.")
@click.option("--clip-search", is_flag=True,
              help="gptq: per block, also try narrower ranges and keep the one with the smallest weighted error.")
@click.option("--damp", type=float, default=None, help="gptq: Hessian dampening, a share of its mean diagonal [0.01].")
@click.option("--sequential/--one-shot", default=None,
              help="gptq: calibrate block by block on the quantized blocks' outputs (default) or in one pass.")
@click.option("--keep-sparsity", is_flag=True,
              help="gptq: weights that are exactly 0 (a pruned model's) stay 0 (not with q4_1 / q5_1).")
@click.option("--head", is_flag=True,
              help="gptq: also quantize the output head; a tied head is untied, the input embeddings staying float "
                   "(export them at q8_0: a lookup costs no decode time).")
@click.option("--head-grid", type=click.Choice(GRID_NAMES), default=None,
              help="gptq with --head: the head's own grid of the same runtime (default: --grid), e.g. q5_0 or q8_0 "
                   "for the head of a q4_0 model: more quality, some decode speed (benchmarks/gptq/README.md).")
@click.option("--tune-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="gptq: then train the block scales and norms (codes fixed) for N steps against MODEL on the "
                   "calibration text (tune_scales; 150 is about 15-30 minutes for the built-in model on 2 cores). "
                   "With --target-kl: train the searched mix's 4- and 5-bit matrices this way before the check.")
@guard_options
@trust_remote_code_option
@data_options
@output_options
def command(model: str, method: str | None, keep, keep_first, keep_last, device, double_quant, compute_dtype, block_size,
            reduce_range, int4_algorithm, grid, asymmetric, act_order, clip_search, damp, sequential, keep_sparsity,
            head, head_grid, tune_steps, max_kl, min_top1, min_cosine, min_top10, fail_on_damage, output, force, trust_remote_code, target_kl,
            types, search_windows, check_windows, blocks_from, search_kl, **data) -> None:
    """Quantize MODEL and check the result against it on evaluation text.

    After quantizing, the quality guard compares the result with MODEL on the
    evaluation text (mean KL divergence and top-1 agreement; for an encoder, the
    cosine and top-10 overlap of sentence embeddings) and warns loudly if it
    drifted past --max-kl/--min-top1 (--min-cosine/--min-top10); the numbers go
    into compress.json.
    bnb-* outputs reload quantized with AutoModelForCausalLM.from_pretrained
    (AutoModel for an encoder; its ONNX outputs load with ORTModelForFeatureExtraction);
    ort-int8/ort-int4 outputs (the fast graph, as `compress export ort-genai`
    writes it) load with onnxruntime_genai.Model; ort-dynamic-int8 and
    ort-optimum-int4 outputs with ORTModelForCausalLM.from_pretrained, and for
    those two MODEL may also be an ONNX directory from `compress export onnx`.
    gptq rounds every projection onto the --grid of a runtime, compensating
    each rounding on the calibration text (--calib-*), and saves a float
    checkpoint holding exactly the grid values plus quantized_blocks.safetensors
    with the runtime's own blocks (a GGUF or MatMulNBits writer stores them as
    they are); --tune-steps N then trains the blocks' scales against MODEL
    (the codes stay GPTQ's; docs/quantization.md). The other methods need no calibration and ignore --calib-*.
    --target-kl instead chooses a llama.cpp type per matrix (the fastest mix
    whose KL on held-out calibration windows stays within the budget) and
    writes one GGUF file; see docs/autoquant.md.

    \b
    Examples:
      compress quantize smollm2-135m-instruct --method ort-int8 -o out/ort-int8
      compress quantize out/pruned --method bnb-nf4 --keep-first 2 --keep-last 2 -o out/pruned-nf4
      compress quantize minilm --method ort-weight-int8 -o out/minilm-int8
      compress quantize out/onnx --method ort-optimum-int4 --block-size 32 -o out/ort-int4 \\
          --eval-text ../data/wiki.valid.tokens --eval-windows 4 --fail-on-damage
      compress quantize smollm2-135m-instruct --method gptq --grid q4_0 -o out/gptq-q4_0
      compress quantize smollm2-135m-instruct --method gptq --grid int4 --block-size 64 -o out/gptq-int4
      compress quantize smollm2-135m-instruct --method gptq --grid q4_0 --calib-text mixed --tune-steps 150 -o out/q4_0-tuned
      compress quantize smollm2-135m-instruct --target-kl 0.02 -o out/mix-0.02.gguf
    """
    from ..devices import check_device
    from ..encoders.architecture import is_encoder_config
    from ..errors import UserError
    from ..models import load_config, resolve_source
    from ..onnx_utils import is_onnx_directory
    from ..saving import check_output_path, save_artifact
    from ..support import check_sequence_lengths

    from ..passes.base import PassContext

    if method is None:
        if target_kl is None:
            raise UserError(f"give --method ({', '.join(METHODS)}) or --target-kl KL")
        refuse_given(tuple(o for o in METHOD_ONLY if o[0] not in SHARED_WITH_TARGET_KL), "--method", "--target-kl")
        from .autoquant import run_autoquant

        return run_autoquant(model, target_kl, types, search_windows, check_windows, blocks_from, max_kl,
                             min_top1, fail_on_damage, output, force, trust_remote_code, data,
                             tune_steps=tune_steps, search_kl=search_kl)
    if target_kl is not None:
        raise UserError(f"--target-kl chooses the GGUF types itself; give it without --method {method}")
    refuse_given(AUTOQUANT_ONLY, "--target-kl", f"--method {method}")
    check_device(device)
    if method == "gptq":
        quant = build_gptq_pass(grid, block_size, asymmetric, act_order, clip_search, damp, sequential,
                                keep_sparsity, keep, keep_first, keep_last, int4_algorithm, reduce_range, head,
                                head_grid)
    else:
        refuse_given(GPTQ_ONLY, "--method gptq", method)
        quant = build_quantize_pass(method, keep, keep_first, keep_last, device, double_quant, compute_dtype,
                                    block_size, reduce_range, int4_algorithm)
    calibration, evaluation = data_specs(data)
    onnx_input = is_onnx_directory(model)
    if onnx_input and method.startswith("bnb"):
        raise UserError(f"{model} is an ONNX model; bitsandbytes needs a PyTorch checkpoint "
                        "(use ort-dynamic-int8/ort-optimum-int4)")
    if onnx_input and method in FAST_GRAPH_METHODS:
        raise UserError(f"{model} is an optimum ONNX export; {method} builds the fast graph from the PyTorch checkpoint "
                        "(give that), or use ort-dynamic-int8/ort-optimum-int4 on this directory")
    if onnx_input and method == "gptq":
        raise UserError(f"{model} is an ONNX model; gptq needs the PyTorch checkpoint it came from")
    source_path = Path(model).expanduser().resolve() if onnx_input else resolve_source(model).path
    check_output_path(output, force, source_path)
    config = load_config(model, trust_remote_code=trust_remote_code) if not onnx_input else _json_config(source_path)
    encoder = is_encoder_config(config)
    if encoder and method in FAST_GRAPH_METHODS:
        raise UserError(f"{method} builds onnxruntime-genai's graph for causal LMs, and {model} is an encoder; use "
                        "ort-weight-int8 (the same weight-only int8 with int8 compute, on optimum's graph), "
                        "ort-dynamic-int8 or ort-optimum-int4")
    if encoder and method == "gptq":
        raise UserError(f"gptq rounds a causal LM's projections on next-token calibration, and {model} is an "
                        "encoder; use ort-weight-int8, ort-dynamic-int8, ort-optimum-int4 or bnb-*")
    # An encoder is evaluated on sentences, each cut at the model's own limit, not on windows.
    check_sequence_lengths(config, model, {"evaluation": evaluation.seq_len if evaluation and not encoder else None})

    base = load_model(model, device, trust_remote_code)
    result = quant(base, PassContext(calibration=calibration)) if method == "gptq" else quant(base)
    if tune_steps:
        from ..passes.base import build_pass

        # The teacher is MODEL itself (the artifact's recorded source), loaded afresh in float.
        result = build_pass("tune_scales", {"steps": tune_steps})(result, PassContext(calibration=calibration),
                                                                  inplace=True)
    what = f"{method} {quant.target_grid().label}" if method == "gptq" else method
    quality = run_guard(base, result, evaluation, f"{what} of {model}", max_kl, min_top1, fail_on_damage,
                        min_cosine, min_top10)
    save_artifact(result, output, force=force)
    if result.quantized_blocks:
        click.echo(f"{len(result.quantized_blocks)} matrices on the {quant.target_grid().label} grid; the runtime's "
                   f"blocks are in {output}/quantized_blocks.safetensors")
    echo_quality(quality, output)
