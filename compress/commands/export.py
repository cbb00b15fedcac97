"""`compress export onnx`: an ONNX directory that ORTModelForCausalLM loads, checked against PyTorch."""

from __future__ import annotations

import click

from ..cli_options import output_options, trust_remote_code_option


@click.group("export")
def command() -> None:
    """Export a model to another runtime's format.

    \b
    Example:
      compress export onnx smollm2-135m-instruct -o out/onnx
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
    and loads with ORTModelForCausalLM.from_pretrained(OUTPUT).

    \b
    Examples:
      compress export onnx smollm2-135m-instruct -o out/onnx
      compress export onnx out/pruned -o out/pruned-onnx --force
      compress quantize out/onnx --method ort-int8 -o out/onnx-int8
    """
    from ..models import load_artifact, resolve_source
    from ..passes.base import build_pass
    from ..saving import check_output_path, save_artifact

    export = build_pass("onnx_export", {"opset": opset, "check": not no_check})
    check_output_path(output, force, resolve_source(model).path)
    result = export(load_artifact(model, trust_remote_code=trust_remote_code))
    save_artifact(result, output, force=force)
    metrics = result.passes[-1]["metrics"]
    if "max_abs_logit_diff" in metrics:
        click.echo(f"checked against PyTorch: max logit difference {metrics['max_abs_logit_diff']:.2e}, "
                   f"greedy generation match {metrics['generation_match']:.0%}")
    click.echo(f"saved to {output}")
