"""`compress distill`: train a student against a frozen teacher."""

from __future__ import annotations


import click

from ..cli_options import data_options, data_specs, output_options, trust_remote_code_option


@click.command("distill")
@click.option("--teacher", required=True, help="Teacher: alias (smollm2-135m-instruct), local directory, .gguf or hub id.")
@click.option("--student", default=None, help="Student model (same forms), e.g. the output of a pruning pass.")
@click.option("--student-layers", type=int, default=None,
              help="Make the student from the teacher by keeping this many decoder layers.")
@click.option("--layer-selection", type=click.Choice(["uniform", "importance"]), default="uniform", show_default=True,
              help="With --student-layers: evenly spaced layers (first and last kept) or the most important ones.")
@output_options
@click.option("--steps", type=int, default=200, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Windows per micro-batch (per process).")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--seq-len", type=int, default=256, show_default=True, help="Tokens per training window.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--warmup-steps", type=int, default=10, show_default=True, help="Linear warm-up steps.")
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine", show_default=True,
              help="Learning-rate decay after warm-up.")
@click.option("--clip-norm", type=float, default=1.0, show_default=True, help="Gradient-norm clipping (0: off).")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--kl-weight", type=float, default=1.0, show_default=True, help="Weight of the divergence from the teacher.")
@click.option("--ce-weight", type=float, default=0.0, show_default=True, help="Weight of the cross-entropy on the text.")
@click.option("--hidden-weight", type=float, default=0.0, show_default=True, help="Weight of hidden-state alignment.")
@click.option("--hidden-loss", type=click.Choice(["cosine", "mse"]), default="cosine", show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Softmax temperature of the divergence.")
@click.option("--divergence", type=click.Choice(["forward", "reverse", "jsd"]), default="forward", show_default=True,
              help="forward KL(teacher||student), reverse KL, or Jensen-Shannon.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Compute dtype (bfloat16 uses autocast; weights stay float32).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data order and initial RNG.")
@click.option("--eval-every", type=int, default=0, show_default=True,
              help="Evaluate held-out perplexity every N steps (0: only before and after).")
@click.option("--checkpoint-every", type=int, default=0, show_default=True, help="Checkpoint every N steps (0: never).")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              help="Where checkpoints go [default: OUTPUT.checkpoints beside the output].")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint, exactly where it stopped.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep the checkpoints after the output is saved.")
@trust_remote_code_option
@click.option("--keep-sparsity", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Keep the zeros of a pruned student (unstructured or N:M) through training; auto: when its "
                   "projections are pruned (5%+ exact zeros).")
@data_options
def command(**kw) -> None:
    """Distill a teacher into a smaller student and save the student.

    The student is either a model you give (--student; it must share the
    teacher's tokenizer, e.g. a pruned copy to recover) or the teacher with
    only --student-layers of its decoder layers. Training text is the
    calibration text (--calib-text/--calib-split; --calib-samples limits the
    windows, default all of it), never the evaluation text. The teacher runs
    without gradients and is never modified. A pruned student keeps its zeros
    (--keep-sparsity auto): pruned positions get no gradient and are reset to
    zero after every step; the manifest records the sparsity before and after.
    For several processes, start this
    same command with `torchrun` or `accelerate launch` (CPU: gloo).

    \b
    Examples:
      compress distill --teacher smollm2-135m-instruct --student-layers 15 -o out/student \\
          --steps 300 --batch-size 4 --seq-len 256 --lr 3e-4 --checkpoint-every 50
      compress distill --teacher smollm2-135m-instruct --student out/wanda-2-4 -o out/recovered-2-4 \\
          --steps 300 --kl-weight 1 --keep-sparsity on
      compress distill --teacher smollm2-135m-instruct --student out/pruned-mlp25 -o out/recovered \\
          --steps 200 --calib-text ../shared/data/wikitext-2/wiki.valid.tokens \\
          --eval-text ../shared/data/wikitext-2/wiki.valid.tokens
      torchrun --nproc_per_node 2 -m compress distill --teacher T --student-layers 2 -o out/s
    """
    from ..distill.run import run_distill_command

    ctx = click.get_current_context()
    if ctx.get_parameter_source("calib_seq_len") != click.core.ParameterSource.DEFAULT:
        from ..errors import UserError

        raise UserError("--calib-seq-len does not apply to distill; training windows have --seq-len tokens")
    samples_given = ctx.get_parameter_source("calib_samples") != click.core.ParameterSource.DEFAULT
    calibration, evaluation = data_specs(kw)
    kw["keep_sparsity"] = {"auto": "auto", "on": True, "off": False}[kw["keep_sparsity"]]
    train_windows = calibration.samples if samples_given else None
    result = run_distill_command(calibration=calibration, evaluation=evaluation, train_windows=train_windows, **kw)
    if result is None:  # another process of a multi-process run; the main one reports
        return
    evaluation_metrics = result.metrics.get("evaluation")
    if evaluation_metrics:
        click.echo(
            f"perplexity: teacher {evaluation_metrics['perplexity_teacher']:.2f}, student "
            f"{evaluation_metrics['perplexity_student_before']:.2f} -> {evaluation_metrics['perplexity_after']:.2f}"
        )
    sparsity = result.passes[-1]["metrics"].get("sparsity")
    if sparsity:
        click.echo(sparsity_line(sparsity))
    click.echo(f"saved to {kw['output']}")


def sparsity_line(sparsity: dict) -> str:
    """One line on what training did to a pruned student's zeros."""
    line = f"sparsity of the projections {sparsity['sparsity_before']:.1%} -> {sparsity['sparsity_after']:.1%}"
    if sparsity["masked_matrices"]:
        line += f" (zeros kept in {sparsity['masked_matrices']} pruned matrices"
    else:
        line += f" (keep-sparsity off: {sparsity['pruned_weights_revived']} pruned weights are non-zero again"
    pattern = sparsity.get("pattern")
    if pattern:
        broken = pattern["groups_breaking_it_after"]
        line += f"; {pattern['n_m']} {'holds in every group' if not broken else f'broken in {broken} groups'}"
    return line + ")"
