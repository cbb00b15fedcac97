"""`compress prune`: one pruning pass from the command line (the same passes recipes use)."""

from __future__ import annotations

import click

from ..cli_options import data_options, data_specs, output_options, trust_remote_code_option
from ..errors import UserError

STRUCTURES = {"channels": "channel_prune", "heads": "head_prune", "layers": "layer_drop"}


def build_prune_pass(method: str, sparsity: float | None, pattern: str | None, scope: str, structure: str | None,
                     head_mode: str, skip_first_last: bool, bias_compensation: bool, include: tuple[str, ...], exclude: tuple[str, ...],
                     include_lm_head: bool, sequential: bool | None = None, refit: bool | None = None,
                     selection: str | None = None):
    """The pass the options describe, validated (one-line UserError on a bad combination)."""
    from ..passes.base import build_pass

    if selection is not None and structure != "channels":
        raise UserError("--selection chooses which MLP channels go; it applies to --structure channels")
    if structure is None:
        if skip_first_last:
            raise UserError("--skip-first-last applies to structured pruning (--structure); for unstructured pruning "
                            "use --exclude with the first and last blocks' module names")
        if bias_compensation or refit is not None:
            raise UserError("--refit / --no-refit apply to --structure channels or heads, --bias-compensation to "
                            "--structure channels")
        name = {"magnitude": "magnitude_prune", "sparsegpt": "sparsegpt_prune"}.get(method, "wanda_prune")
        config = {"sparsity": sparsity, "scope": scope if pattern is None else None, "pattern": pattern, "include": list(include) or None,
                  "exclude": list(exclude) or None, "include_lm_head": include_lm_head}
        if sequential is not None:
            if method == "magnitude":
                raise UserError("--sequential / --one-shot choose how calibration statistics are collected; "
                                "--method magnitude uses none")
            config["sequential"] = sequential
        return build_pass(name, config)
    if pattern is not None or include or exclude or include_lm_head or sequential is not None:
        raise UserError("--pattern, --include, --exclude, --include-lm-head and --sequential / --one-shot apply to "
                        "unstructured pruning; drop them or drop --structure")
    if method == "sparsegpt":
        raise UserError("--method sparsegpt is unstructured; for --structure use magnitude or activation")
    importance = "magnitude" if method == "magnitude" else "activation"
    if structure == "channels":
        config = {"ratio": sparsity, "importance": importance, "skip_first_last": skip_first_last,
                  "bias_compensation": bias_compensation, **({} if refit is None else {"refit": refit}),
                  **({} if selection is None else {"selection": selection})}
    elif structure in ("heads", "layers") and bias_compensation:
        raise UserError("--bias-compensation applies to --structure channels")
    elif structure == "layers" and refit is not None:
        raise UserError("--refit / --no-refit apply to --structure channels or heads; dropped layers leave no "
                        "projection to refit")
    elif structure == "heads":
        if skip_first_last:
            raise UserError("--skip-first-last is not available for heads: a stock config holds one head count for "
                            "every layer; prune every layer or prune channels instead")
        config = {"ratio": sparsity, "importance": importance, "mode": head_mode,
                  **({} if refit is None else {"refit": refit})}
    else:
        if method == "magnitude":
            raise UserError("layers are scored on calibration text (how little each block changes its input); "
                            "use --method activation (or wanda) with --structure layers")
        config = {"ratio": sparsity, "skip_first_last": skip_first_last}
    return build_pass(STRUCTURES[structure], config)


@click.command("prune")
@click.argument("model")
@click.option("--method", type=click.Choice(["magnitude", "wanda", "activation", "sparsegpt"]), default="wanda",
              show_default=True, help="Importance: weight magnitude, or activations on calibration text (wanda = "
              "activation); sparsegpt (unstructured) also updates the remaining weights.")
@click.option("--sparsity", type=float, default=0.5, show_default=True,
              help="Share of weights to zero; with --structure, share of channels / heads / layers to remove.")
@click.option("--pattern", default=None, help="N:M pattern along the input dimension, e.g. 2:4 (unstructured only).")
@click.option("--scope", type=click.Choice(["row", "layer", "global"]), default="row", show_default=True,
              help="Where the sparsity is enforced (unstructured): every output row, every matrix, or overall.")
@click.option("--structure", type=click.Choice(sorted(STRUCTURES)), default=None,
              help="Remove whole MLP channels, attention heads or decoder layers (the model gets smaller).")
@click.option("--head-mode", type=click.Choice(["groups", "query"]), default="groups", show_default=True,
              help="Heads: remove whole key/value groups, or the same number of query heads from every group.")
@click.option("--skip-first-last", is_flag=True,
              help="Leave the first and last blocks alone (channels: widths then differ per layer, saved zero-padded).")
@click.option("--bias-compensation", is_flag=True,
              help="Channels: put the removed channels' mean contribution on calibration text into the down bias.")
@click.option("--refit/--no-refit", default=None,
              help="Channels and heads: least-squares refit of the down (channels) or attention output (heads) "
              "projection's kept columns on calibration text (default on; --no-refit: plain removal).")
@click.option("--selection", type=click.Choice(["score", "reconstruction"]), default=None,
              help="Channels: keep the highest-scored channels (score, the default), or remove one at a time the "
              "channel the refit of the others makes up for best (reconstruction; needs the refit).")
@click.option("--include", multiple=True, help="Glob of module names to prune (repeatable; default: every projection).")
@click.option("--exclude", multiple=True, help="Glob of module names to leave alone (repeatable).")
@click.option("--include-lm-head", is_flag=True, help="Also prune the output head (off by default).")
@click.option("--sequential/--one-shot", default=None,
              help="wanda / sparsegpt: collect each decoder block's calibration statistics on the outputs of the "
              "blocks already pruned, as the papers do (default; about twice the calibration cost), or all of them "
              "in one pass of the unpruned model (default with --scope global, which needs every score at once).")
@trust_remote_code_option
@data_options
@output_options
def command(model: str, output: str, force: bool, trust_remote_code: bool, **kw) -> None:
    """Prune MODEL and save the result as a Hugging Face checkpoint.

    Unstructured methods write zeros into the weights (same shapes, fewer
    non-zeros); --structure removes rows and columns and rewrites the config,
    so a stock AutoModelForCausalLM.from_pretrained loads a smaller model.
    Perplexity before and after is measured on --eval-text, which calibration
    never overlaps.

    \b
    Examples:
      compress prune smollm2-135m-instruct --method wanda --sparsity 0.5 -o out/wanda-50
      compress prune smollm2-135m-instruct --method magnitude --pattern 2:4 -o out/mag-2-4
      compress prune smollm2-135m-instruct --method sparsegpt --sparsity 0.5 -o out/sparsegpt-50
      compress prune smollm2-135m-instruct --structure channels --sparsity 0.25 -o out/mlp-25
      compress prune smollm2-135m-instruct --structure heads --sparsity 0.333 --head-mode query -o out/heads
      compress prune smollm2-135m-instruct --structure layers --sparsity 0.1 --eval-text none -o out/depth
    """
    from ..cli import _print_summary
    from ..models import load_config
    from ..recipe import Recipe, run_recipe

    calibration, evaluation = data_specs(kw)
    ctx = click.get_current_context()
    if kw["pattern"] is not None and kw["structure"] is None:
        given = [f"--{name}" for name in ("sparsity", "scope")
                 if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if given:
            raise UserError(f"--pattern {kw['pattern']} decides the sparsity and works within every row; "
                            f"drop {' and '.join(given)}")
        kw["sparsity"] = None
    p = build_prune_pass(**kw)
    if hasattr(p, "check_config"):  # refuse a head ratio that cannot fit before loading the model
        p.check_config(load_config(model, trust_remote_code=trust_remote_code))
    recipe = Recipe(model=model, calibration=calibration, evaluation=evaluation, passes=[p])
    result = run_recipe(recipe, model=model, output=output, force=force, trust_remote_code=trust_remote_code)
    metrics = result.passes[-1]["metrics"]
    if "sparsity_reached" in metrics:
        click.echo(f"sparsity reached {metrics['sparsity_reached']:.2%} over {metrics['layers_pruned']} matrices")
    if "parameters_before" in metrics:
        click.echo(f"parameters {metrics['parameters_before']:,} -> {metrics['parameters']:,}")
    _print_summary(result, output)
