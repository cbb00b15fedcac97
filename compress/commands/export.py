"""`compress export onnx|gguf|ort-genai`: an ONNX directory for optimum's ORTModelForCausalLM, one GGUF file
for llama.cpp, or the fast ONNX Runtime graph for onnxruntime-genai; each checked against PyTorch."""

from __future__ import annotations

import click

from ..cli_options import output_options, trust_remote_code_option


@click.group("export")
def command() -> None:
    """Export a model to another runtime's format.

    \b
    Examples:
      compress export onnx smollm2-135m-instruct -o out/onnx
      compress export gguf smollm2-135m-instruct --type q8_0 -o out/base-q8_0.gguf
      compress export ort-genai smollm2-135m-instruct --precision int8 -o out/genai-int8
    """


@command.command("onnx")
@click.argument("model")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: optimum's choice for the architecture).")
@click.option("--no-check", is_flag=True, help="Skip the comparison with the PyTorch model's logits and generation.")
@trust_remote_code_option
@output_options
def onnx_command(model: str, opset: int | None, no_check: bool, output: str, force: bool,
                 trust_remote_code: bool) -> None:
    """Export MODEL (base, pruned or distilled checkpoint) to ONNX with past key values.

    The export is optimum-onnx's (task text-generation-with-past). Afterwards
    the ONNX model is compared with the PyTorch one on a fixed input (largest
    logit difference, greedy generation with the KV cache); a wrong export is
    refused. The output holds model.onnx, config, tokenizer and compress.json,
    and loads with ORTModelForCausalLM.from_pretrained(OUTPUT). An encoder
    (BERT, MiniLM, RoBERTa) is exported with optimum's feature-extraction task
    instead, checked on its token states and sentence embeddings, and loads with
    ORTModelForFeatureExtraction.from_pretrained(OUTPUT); its pooling config is
    saved beside it.

    \b
    Examples:
      compress export onnx smollm2-135m-instruct -o out/onnx
      compress export onnx out/pruned -o out/pruned-onnx --force
      compress export onnx minilm -o out/minilm-onnx
      compress quantize out/onnx --method ort-dynamic-int8 -o out/onnx-int8
    """
    export_and_save("onnx_export", {"opset": opset, "check": not no_check}, model, output, force, trust_remote_code)
    click.echo(f"saved to {output}")


def export_and_save(pass_name: str, config: dict, model: str, output: str, force: bool,
                    trust_remote_code: bool = False) -> dict:
    """Validate the export pass, check the output path, export MODEL, save; echo the check. Returns its metrics."""
    from ..models import load_artifact, resolve_source
    from ..passes.base import build_pass
    from ..saving import check_output_path, save_artifact

    export = build_pass(pass_name, config)
    check_output_path(output, force, resolve_source(model).path)
    result = export(load_artifact(model, trust_remote_code=trust_remote_code))
    save_artifact(result, output, force=force)
    metrics = result.passes[-1]["metrics"]
    if "max_abs_state_diff" in metrics:  # an encoder (feature-extraction export)
        click.echo(f"checked against PyTorch: max token-state difference {metrics['max_abs_state_diff']:.2e}, "
                   f"worst sentence-embedding cosine {metrics['min_embedding_cosine']:.6f}")
    elif "max_abs_logit_diff" in metrics:
        click.echo(f"checked against PyTorch: max logit difference {metrics['max_abs_logit_diff']:.2e}, "
                   f"greedy generation match {metrics['generation_match']:.0%}")
    return metrics


def _parse_overrides(values: tuple[str, ...]) -> dict[str, str]:
    from ..errors import UserError

    overrides = {}
    for item in values:
        pattern, sep, kind = item.rpartition("=")
        if not sep or not pattern or not kind:
            raise UserError(f"--override '{item}' must be PATTERN=TYPE, e.g. 'token_embd.weight=f16'")
        overrides[pattern] = kind
    return overrides


@command.command("gguf")
@click.argument("model")
@click.option("--type", "type_name", default="q8_0", show_default=True,
              help="Weight type of every matrix: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1 or iq4_nl.")
@click.option("--override", "overrides", multiple=True, metavar="PATTERN=TYPE",
              help="Another type for the matrices whose GGUF or model name matches the glob; repeatable, a later one wins "
                   "(e.g. 'token_embd.weight=q8_0', 'blk.*.ffn_down.weight=f16').")
@click.option("--no-check", is_flag=True, help="Skip the check in llama.cpp (tokenizer and logits against PyTorch).")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output file, ending in .gguf (written atomically).")
def gguf_command(model: str, type_name: str, overrides: tuple[str, ...], no_check: bool, output: str, force: bool) -> None:
    """Export MODEL (base, pruned, layer-dropped or distilled) to one GGUF file for llama.cpp.

    The file is written with the gguf package; the tokenizer goes in as
    llama.cpp reads it (carried from the original GGUF when the model came from
    one). When llama-cpp-python is installed, the file is then checked in
    llama.cpp: same token ids as the tokenizer, logits close to PyTorch's.
    The manifest is saved beside the file as OUTPUT.compress.json. See docs/gguf.md.

    \b
    Examples:
      compress export gguf smollm2-135m-instruct --type q8_0 -o out/base-q8_0.gguf
      compress export gguf out/mlp25 --type q4_0 --override 'token_embd.weight=q8_0' -o out/mlp25-q4_0.gguf
      compress bench out/base-q8_0.gguf -o bench-results/gguf
    """
    from ..models import load_artifact, resolve_source
    from ..passes.base import build_pass
    from ..saving import check_output_file, save_artifact

    export = build_pass("gguf_export", {"type": type_name, "overrides": _parse_overrides(overrides),
                                        "check": not no_check})
    check_output_file(output, force, resolve_source(model).path, export.output_file_suffix)
    result = export(load_artifact(model))
    path = save_artifact(result, output, force=force)
    metrics = result.passes[-1]["metrics"]
    counts = ", ".join(f"{n} {t}" for t, n in metrics["type_counts"].items())
    click.echo(f"wrote {metrics['arch']} GGUF: {counts} matrices; tokenizer {metrics['tokenizer']}")
    for fb in metrics["fallbacks"][:5]:
        click.echo(f"  {fb['tensor']}: {fb['written']} instead of {fb['asked']} ({fb['why']})")
    if len(metrics["fallbacks"]) > 5:
        click.echo(f"  ... {len(metrics['fallbacks']) - 5} more fallbacks, listed in the manifest")
    check = metrics.get("check", {})
    if check.get("checked"):
        click.echo(f"checked in llama.cpp: same token ids, max logit difference {check['max_abs_logit_diff']:.2e}, "
                   f"top-1 agreement {check['top1_agreement']:.0%}")
    elif check:
        click.echo(f"not checked in llama.cpp: {check.get('reason')}")
    click.echo(f"saved to {path}")


@command.command("ort-genai")
@click.argument("model")
@click.option("--precision", type=click.Choice(["fp32", "int8", "int4"]), default="int8", show_default=True,
              help="int8/int4: weight-only MatMulNBits (block-wise scales); fp32: the same graph unquantized.")
@click.option("--block-size", type=int, default=32, show_default=True, help="int8/int4: weights per scale.")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=4, show_default=True,
              help="int8/int4: MatMulNBits compute type; 4 = int8 activations, 1 = float32.")
@click.option("--head-precision", type=click.Choice(["same", "int8"]), default="same", show_default=True,
              help="int4: keep the (tied) head and embedding at 8 bits.")
@click.option("--algorithm", type=click.Choice(["default", "k_quant"]), default="default", show_default=True,
              help="int4: how the 4-bit codes are chosen (round-to-nearest, or k-quant's scale search).")
@click.option("--no-check", is_flag=True, help="Skip the comparison with the PyTorch model's logits and generation.")
@trust_remote_code_option
@output_options
def ort_genai_command(model: str, precision: str, block_size: int, accuracy_level: int, head_precision: str,
                      algorithm: str, no_check: bool, output: str, force: bool, trust_remote_code: bool) -> None:
    """Export MODEL to the fast ONNX Runtime LLM graph (onnxruntime-genai's model builder).

    The graph has grouped-query attention with fused rotary embeddings, packed
    QKV, fused skip + RMS norms and, at int8/int4, MatMulNBits weights with
    int8 compute; a tied head is quantized and shared with the embedding.
    Afterwards it is compared with MODEL on a fixed input (logits, and greedy
    generation through onnxruntime-genai); a wrong fp32 export is refused.
    The output loads with onnxruntime_genai.Model(OUTPUT) and holds compress.json.

    \b
    Examples:
      compress export ort-genai smollm2-135m-instruct -o out/genai-int8
      compress export ort-genai out/mlp25 --precision int4 -o out/mlp25-genai-int4
      compress bench out/genai-int8 -o bench-results/genai
    """
    metrics = export_and_save("ort_genai_export", {
        "precision": precision, "block_size": block_size, "accuracy_level": accuracy_level,
        "head_precision": head_precision, "algorithm": algorithm, "check": not no_check}, model, output, force,
        trust_remote_code)
    click.echo(f"saved to {output} ({metrics['onnx_bytes'] / 2**20:.1f} MiB of graph)")
