"""`compress quantize`: bitsandbytes or ONNX Runtime quantization, or mixed GGUF types under a KL budget
(--target-kl, compress.commands.autoquant), then the quality guard."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_options import data_options, data_specs, output_options, trust_remote_code_option

METHODS = ("bnb-int8", "bnb-nf4", "bnb-fp4", "ort-int8", "ort-int4")


def build_quantize_pass(method: str, keep: tuple[str, ...], keep_first: int | None, keep_last: int | None, device: str,
                        double_quant: bool, compute_dtype: str, block_size: int, reduce_range: bool,
                        int4_algorithm: str = "rtn"):
    """The pass for a --method, validated (bad values raise UserError before any work)."""
    from ..passes.base import build_pass

    family, kind = method.split("-", 1)
    if family == "bnb":
        config = {"method": kind, "keep": list(keep), "keep_first": keep_first or 0, "keep_last": keep_last or 0,
                  "device": device,
                  "double_quant": double_quant, "compute_dtype": compute_dtype}
        return build_pass("bnb_quantize", config)
    config = {"method": kind, "keep": list(keep) or None, "keep_first": keep_first, "keep_last": keep_last}
    if kind == "int4":
        config["block_size"] = block_size
        config["algorithm"] = int4_algorithm
    else:
        config["reduce_range"] = reduce_range
    return build_pass("ort_quantize", config)


def load_model(ref: str, device: str = "cpu", trust_remote_code: bool = False):
    from ..models import load_artifact
    from ..onnx_utils import is_onnx_directory, load_onnx_artifact

    if is_onnx_directory(ref):
        return load_onnx_artifact(ref)
    return load_artifact(ref, device=device if device.startswith("cuda") else "cpu", trust_remote_code=trust_remote_code)


def run_guard(base, result, evaluation, what: str, max_kl: float, min_top1: float, fail: bool) -> dict | None:
    """Compare result with base on the evaluation text; record in the manifest; warn or raise."""
    from ..passes.quantization import quality_guard

    if evaluation is None:
        return None
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
    if quality:
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
              help="bnb-*: bitsandbytes (PyTorch checkpoint); ort-*: ONNX Runtime (ONNX directory). "
                   "Or --target-kl instead.")
@autoquant_options
@click.option("--keep", multiple=True, metavar="GLOB",
              help="Module names kept in float, e.g. 'model.layers.*.mlp.down_proj' (repeatable). "
                   "ort-int8 default: the MLP down projections; others: none (the LM head is always kept in float).")
@click.option("--keep-first", type=int, default=None, metavar="N",
              help="Also keep the first N decoder blocks in float. Default: 2 for ort-int8, 0 otherwise.")
@click.option("--keep-last", type=int, default=None, metavar="N",
              help="Also keep the last N decoder blocks in float. Default: 2 for ort-int8, 0 otherwise.")
@click.option("--device", default="cpu", show_default=True, help="bitsandbytes device: cpu or cuda.")
@click.option("--double-quant/--no-double-quant", default=True, show_default=True,
              help="bnb 4-bit: quantize the block scales too.")
@click.option("--compute-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
              show_default=True, help="bnb 4-bit: dtype of the matrix products.")
@click.option("--block-size", type=int, default=32, show_default=True, help="ort-int4: weights per scale.")
@click.option("--reduce-range", is_flag=True, help="ort-int8: 7-bit weights (slower path to accuracy; rarely better).")
@click.option("--int4-algorithm", type=click.Choice(["rtn", "hqq"]), default="rtn", show_default=True,
              help="ort-int4: round-to-nearest, or HQQ (optimised scales and zero points; slower to build).")
@guard_options
@trust_remote_code_option
@data_options
@output_options
def command(model: str, method: str | None, keep, keep_first, keep_last, device, double_quant, compute_dtype,
            block_size, reduce_range, int4_algorithm, max_kl, min_top1, fail_on_damage, output, force, trust_remote_code,
            target_kl, types, search_windows, check_windows, **data) -> None:
    """Quantize MODEL and check the result against it on evaluation text.

    After quantizing, the quality guard compares the result with MODEL on the
    evaluation text (mean KL divergence and top-1 agreement) and warns loudly if
    it drifted past --max-kl/--min-top1; the numbers go into compress.json.
    bnb-* outputs reload quantized with AutoModelForCausalLM.from_pretrained;
    ort-* outputs with ORTModelForCausalLM.from_pretrained. MODEL may also be
    an ONNX directory from `compress export onnx` (ort-* methods).
    Calibration options are accepted for uniformity but unused by these
    methods. --target-kl instead chooses a llama.cpp type per matrix (the
    fastest mix whose KL on held-out calibration windows stays within the
    budget) and writes one GGUF file; see docs/autoquant.md.

    \b
    Examples:
      compress quantize smollm2-135m-instruct --method ort-int8 -o out/ort-int8
      compress quantize out/pruned --method bnb-nf4 --keep-first 2 --keep-last 2 -o out/pruned-nf4
      compress quantize out/onnx --method ort-int4 --block-size 32 -o out/ort-int4 \\
          --eval-text ../data/wiki.valid.tokens --eval-windows 4 --fail-on-damage
      compress quantize smollm2-135m-instruct --target-kl 0.02 -o out/mix-0.02.gguf
    """
    from ..devices import check_device
    from ..errors import UserError
    from ..models import load_config, resolve_source
    from ..onnx_utils import is_onnx_directory
    from ..saving import check_output_path, save_artifact
    from ..support import check_sequence_lengths

    if target_kl is not None or method is None:
        from .autoquant import run_autoquant

        if method is not None:
            raise UserError("give either --method or --target-kl, not both")
        if target_kl is None:
            raise UserError("give --method (bnb-int8, bnb-nf4, bnb-fp4, ort-int8, ort-int4) or --target-kl KL")
        return run_autoquant(model, target_kl, types, search_windows, check_windows, max_kl, min_top1,
                             fail_on_damage, output, force, trust_remote_code, data)
    check_device(device)
    quant = build_quantize_pass(method, keep, keep_first, keep_last, device, double_quant, compute_dtype, block_size,
                                reduce_range, int4_algorithm)
    _, evaluation = data_specs(data)
    onnx_input = is_onnx_directory(model)
    if onnx_input and method.startswith("bnb"):
        raise UserError(f"{model} is an ONNX model; bitsandbytes needs a PyTorch checkpoint (use ort-int8/ort-int4)")
    source_path = Path(model).expanduser().resolve() if onnx_input else resolve_source(model).path
    check_output_path(output, force, source_path)
    config = load_config(model, trust_remote_code=trust_remote_code) if not onnx_input else _json_config(source_path)
    check_sequence_lengths(config, model, {"evaluation": evaluation.seq_len if evaluation else None})

    base = load_model(model, device, trust_remote_code)
    result = quant(base)
    quality = run_guard(base, result, evaluation, f"{method} of {model}", max_kl, min_top1, fail_on_damage)
    save_artifact(result, output, force=force)
    echo_quality(quality, output)
