"""The `compress` command line.

Each command family lives in its own module under compress/commands/ and is
registered in COMMAND_MODULES. Errors caused by input print one line and exit
non-zero (2; 3 for a failed quality guard; 4 for a full disk); --verbose adds tracebacks.
"""

from __future__ import annotations

import errno
import importlib
import sys
import traceback

from . import startup

startup.defer_ctrl_c()  # Ctrl-C during the imports below (seconds) stops at the first checkpoint

import click  # noqa: E402

from .cli_options import data_options, data_specs, output_options, trust_remote_code_option  # noqa: E402
from .errors import DiskFullError, UserError  # noqa: E402
from .progress import configure  # noqa: E402

# Modules under compress.commands that each define `command` (a click command or group).
COMMAND_MODULES: list[str] = [
    "prune",
    "distill",
    "quantize",
    "export",
    "bench",
]

_state = {"verbose": False}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs, and a traceback on errors.")
@click.version_option(package_name="compress")
def cli(quiet: bool, verbose: bool) -> None:
    """Make Hugging Face causal LMs smaller and faster, and measure what it cost.

    \b
    Example:
      compress run configs/default.yaml -o out/default
    """
    _state["verbose"] = verbose
    configure(quiet=quiet, verbose=verbose)


@cli.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-m", "--model", default=None,
              help="Model: alias (smollm2-135m-instruct), local directory, .gguf file or hub id. Overrides the recipe's.")
@trust_remote_code_option
@output_options
def run_command(recipe: str, model: str | None, output: str, force: bool, trust_remote_code: bool) -> None:
    """Run a YAML recipe of passes on a model and save the result.

    The result is a Hugging Face directory plus compress.json, which records the
    source, every pass with its config and measurements, and perplexity before
    and after on evaluation text that calibration never saw.

    \b
    Example:
      compress run configs/default.yaml -o out/default
      compress run configs/default.yaml --model ./my-model -o out/pruned --force
    """
    from .recipe import Recipe, run_recipe

    parsed = Recipe.from_yaml(recipe)
    result = run_recipe(parsed, model=model, output=output, force=force, trust_remote_code=trust_remote_code)
    _print_summary(result, output)


def _print_summary(result, output) -> None:
    evaluation = result.metrics.get("evaluation")
    if evaluation and "cosine_mean" in evaluation:  # an encoder
        from .encoders.quality import summary_line

        click.echo(summary_line(evaluation))
    elif evaluation:
        line = f"perplexity {evaluation['perplexity_before']:.2f} -> {evaluation['perplexity_after']:.2f}"
        if "kl_mean" in evaluation:
            line += f", KL from base {evaluation['kl_mean']:.4f}, top-1 agreement {evaluation['top1_agreement']:.1%}"
        click.echo(line)
    click.echo(f"saved to {output}")


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"compress.commands.{name}")
        cli.add_command(module.command)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors for bad input, exit codes that mean something."""
    try:
        result = cli.main(args=argv, prog_name="compress", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:  # a bad option or value: one line, like every other bad input
        command = exc.ctx.command_path if exc.ctx is not None else "compress"
        click.echo(f"error: {exc.format_message()} (see {command} --help)", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted; no output was written", err=True)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _internal_error(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"error: the disk is full{where}; free some space and run again", err=True)
        return DiskFullError.exit_code
    except Exception as exc:
        return _internal_error(exc)


def _internal_error(exc: BaseException) -> int:
    """An internal error: still one line unless asked for more."""
    if _state["verbose"]:
        traceback.print_exc()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    click.echo(f"error: {type(exc).__name__}: {first} (run with --verbose for the traceback)", err=True)
    return 1


def entry_point() -> None:
    code = main()
    startup.started()  # a Ctrl-C held back while a short command ran (help, an early error): exit 130
    sys.exit(code)


# Re-exported for command modules.
__all__ = ["cli", "main", "data_options", "data_specs", "output_options"]
