"""`compress bench`: measure variants side by side (speed, memory, size, quality)."""

from __future__ import annotations

import datetime as _dt
import shlex

import click

from ..data import BUILTIN


@click.command("bench")
@click.argument("variants", nargs=-1)
@click.option("--suite", type=click.Path(dir_okay=False), default=None,
              help="YAML suite (base, settings, variants). Default: configs/bench-default.yaml when no VARIANTS are given.")
@click.option("-m", "--base", default=None, help="Base model every ratio is taken against (default: the suite's, else the built-in model).")
@click.option("--backend", default=None,
              help="Backend for variants that don't set one: pytorch, onnxruntime, or another installed runtime "
                   "(see docs/bench.md). Default: chosen from each model's format (an ONNX export runs on ONNX Runtime).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Device for variants that don't set one [default: cpu].")
@click.option("--dtype", default=None, help="PyTorch dtype: float32, float16 or bfloat16 [default: float32].")
@click.option("--prompt-len", "prompt_lens", type=int, multiple=True, help="Prompt length in tokens; repeat for several [default: 128].")
@click.option("--batch-size", type=int, default=None,
              help="Prompts timed at once for variants that don't set one (pytorch backend) [default: 1].")
@click.option("--new-tokens", type=int, default=None, help="Tokens generated after the prompt [default: 64].")
@click.option("--repeats", type=int, default=None, help="Timed runs per variant, each in a fresh process [default: 5].")
@click.option("--warmup-tokens", type=int, default=None, help="Decode steps in the warm-up, after one prefill [default: 8].")
@click.option("--prefill-repeats", type=int, default=None,
              help="Prefills timed in each process; the median is that repeat's value [default: 5].")
@click.option("--interleave", type=click.Choice(["auto", "turns", "processes"]), default=None,
              help="turns: each round's processes stay loaded and time their work in turns, a prefill or a few decode "
                   "steps at a time (steadier ratios; all variants in memory at once); processes: one at a time; "
                   "auto: turns on the CPU when they fit in memory [default: auto].")
@click.option("--threads", type=int, default=None, help="Threads per measurement [default: all cores].")
@click.option("--eval-text", default=None, help=f"Evaluation text: '{BUILTIN}', a .txt/.jsonl/.parquet file or hf:NAME[@CONFIG][:SPLIT].")
@click.option("--eval-split", type=click.Choice(["calibration", "evaluation", "all"]), default=None,
              help="Which part of the evaluation text [default: evaluation].")
@click.option("--eval-windows", type=int, default=None, help="Evaluation windows (0: the whole text) [default: 4].")
@click.option("--eval-seq-len", type=int, default=None, help="Tokens per evaluation window [default: 512].")
@click.option("--calib-text", default=None,
              help="Calibration text for variants whose passes need it (same forms as --eval-text; its calibration "
                   "part) [default: the suite's].")
@click.option("--text-field", default=None, help="Field (.jsonl) or column (.parquet, hf:) holding the evaluation text [default: text].")
@click.option("--encoding", default=None, help="Encoding of a local evaluation text file [default: utf-8].")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a model's own Python code (auto_map in its config) while planning and building variants; "
                   "off by default, only for models you trust.")
@click.option("--no-quality", is_flag=True, help="Skip perplexity, divergence and samples (speed, memory and size only).")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the variants built from recipes here (default: a temporary directory, removed afterwards).")
@click.option("--timeout", type=float, default=None, help="Seconds a worker may spend on one variant before it is stopped and that variant failed [default: 900].")
@click.option("--isolation", type=click.Choice(["exec", "fork"]), default="exec", show_default=True,
              help="exec: a new interpreter per measurement; fork: workers forked from this process (no import "
                   "cost, for tests and dry runs; CPU only, since CUDA does not survive a fork).")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Report directory (written atomically) [default: bench-results/<UTC time>].")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists and is an earlier report "
              "of compress (bench.json and its siblings, nothing else).")
def command(variants, suite, output, force, work_dir, isolation, **options) -> None:
    """Measure load time, prefill and decode speed, memory, size and quality of
    every variant side by side, each measurement in a fresh process.

    A VARIANT is [NAME=]REF where REF is a model (alias, directory, ONNX export
    directory, .gguf file or hub id), a YAML recipe (.yaml), a pass name, or
    inline passes in YAML, applied to the base model. The base is always measured
    first; every ratio is against it. Reports: bench.json (raw values and the
    environment), bench.csv, bench.md (ratios) and bench.png (quality vs speed
    and memory, Pareto front marked).

    \b
    Examples:
      compress bench                                   # the default suite, CPU
      compress bench mag50="magnitude_prune: {sparsity: 0.5}" out/wanda -o bench-results/mine
      compress bench out/ort-int8 --repeats 3 --no-quality -o bench-results/ort
      compress bench --suite configs/bench-default.yaml --device cuda -o bench-results/gpu
      compress bench --suite configs/encoders/bench-minilm.yaml -o bench-results/minilm   # an encoder base

    When the base is a sentence encoder (BERT, MiniLM, RoBERTa), variants are
    timed on sentences at the suite's batch sizes and compared by their sentence
    embeddings instead (docs/encoders.md).
    """
    from ..bench import Suite, default_suite_path, parse_variant_arg, run_bench
    from ..encoders.bench import encoder_bench_requested
    from ..progress import log

    ctx = click.get_current_context()
    if encoder_bench_requested(suite, options["base"]):  # sentence encoders: compress/encoders/bench.py
        return _encoder_bench(variants, suite, output, force, work_dir, isolation, options, _command_line(ctx))
    if suite is None and not variants:
        suite = str(default_suite_path())
    loaded = Suite.from_yaml(suite) if suite else Suite()
    data = loaded.model_dump(mode="python")
    data["variants"] = [v.model_dump(exclude_none=True) for v in loaded.variants]
    data["variants"] += [parse_variant_arg(a, i + len(data["variants"])).model_dump(exclude_none=True)
                         for i, a in enumerate(variants)]
    if options["base"]:
        data["base"] = options["base"]
    settings = data["settings"]
    for key in ("backend", "device", "dtype", "batch_size", "new_tokens", "repeats", "warmup_tokens", "prefill_repeats", "interleave", "threads"):
        if options[key] is not None:
            settings[key] = options[key]
    if options["prompt_lens"]:
        settings["prompt_lens"] = list(options["prompt_lens"])
    if options["timeout"] is not None:
        settings["timeout_s"] = options["timeout"]
    if options["no_quality"]:
        settings["quality"] = False
    if options["trust_remote_code"]:
        settings["trust_remote_code"] = True
    evaluation = data["evaluation"]
    for opt, key in (("eval_text", "source"), ("eval_split", "split"), ("eval_seq_len", "seq_len"),
                     ("text_field", "text_field"), ("encoding", "encoding")):
        if options[opt] is not None:
            evaluation[key] = options[opt]
    if options["eval_windows"] is not None:
        evaluation["windows"] = options["eval_windows"] or None
    if options["calib_text"] is not None:
        data["calibration"]["source"] = options["calib_text"]
    parsed = Suite.from_dict(data, where="bench options")
    if output is None:
        output = f"bench-results/{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    log.info(f"Benchmarking {len(parsed.variants) + 1} variants (base: {parsed.base}); report in {output}")
    report = run_bench(parsed, output, force=force, work_dir=work_dir, command=_command_line(ctx),
                       verbose=False, isolation=isolation)
    _summary(report, output)


def _encoder_bench(variants, suite, output, force, work_dir, isolation, options, command) -> None:
    from ..encoders.bench import run_encoder_bench, suite_from_options

    parsed = suite_from_options(suite, variants, options)
    if output is None:
        output = f"bench-results/{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    _summary(run_encoder_bench(parsed, output, force=force, work_dir=work_dir, command=command, isolation=isolation),
             output)


def _summary(report: dict, output) -> None:
    ok = sum(v["status"] == "ok" for v in report["variants"])
    click.echo(f"{ok}/{len(report['variants'])} variants measured without errors; report in {output}/bench.md")
    for v in report["variants"]:
        for e in v["errors"]:
            click.echo(f"  {v['name']}: {e['stage']} failed: {e['error']}")


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the parameters that were given (for the report)."""
    parts = ["compress", "bench"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        value = ctx.params.get(param.name)
        if source is None or source.name == "DEFAULT" or value in (None, (), False):
            continue
        if isinstance(param, click.Argument):
            parts += list(value)
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            parts.append(flag)
        elif param.multiple:
            for item in value:
                parts += [flag, str(item)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)
