"""Options shared by the CLI commands, so every command spells them the same way."""

from __future__ import annotations

import click

from .data import BUILTIN, DEFAULT_CALIBRATION
from .passes.base import CalibrationData
from .recipe import EvaluationData


def output_options(f):
    f = click.option("--force", is_flag=True,
                     help="Replace the output directory if it exists and an earlier run of compress wrote it "
                          "(it holds compress.json or bench.json and nothing else).")(f)
    f = click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (written atomically).")(f)
    return f


def trust_remote_code_option(f):
    return click.option("--trust-remote-code", is_flag=True,
                        help="Allow a model's own Python code (auto_map in its config) to run; off by default, "
                             "only for models you trust.")(f)


def data_options(f):
    """--calib-text/--eval-text and their sizes; a command turns them into specs with `data_specs`."""
    opts = [
        click.option("--calib-text", default=DEFAULT_CALIBRATION, show_default=True,
                     help="Calibration text: a named corpus ('mixed', 'builtin', 'wikipedia-leads'; docs/calibration.md), "
                          "a .txt/.jsonl/.parquet file, or hf:NAME[@CONFIG][:SPLIT]."),
        click.option("--calib-split", type=click.Choice(["calibration", "evaluation", "all"]), default="calibration",
                     show_default=True, help="Which part of the calibration text to use."),
        click.option("--calib-samples", type=int, default=32, show_default=True, help="Calibration windows."),
        click.option("--calib-seq-len", type=int, default=512, show_default=True, help="Tokens per calibration window."),
        click.option("--eval-text", default=BUILTIN, show_default=True,
                     help="Evaluation text (same forms as --calib-text); 'none' skips evaluation."),
        click.option("--eval-split", type=click.Choice(["calibration", "evaluation", "all"]), default="evaluation",
                     show_default=True, help="Which part of the evaluation text to use."),
        click.option("--eval-windows", type=int, default=16, show_default=True,
                     help="Evaluation windows (0: the whole text)."),
        click.option("--eval-seq-len", type=int, default=1024, show_default=True, help="Tokens per evaluation window."),
        click.option("--text-field", default="text", show_default=True,
                     help="Field (.jsonl) or column (.parquet, hf:) holding the text, for both texts."),
        click.option("--encoding", default="utf-8", show_default=True, help="Encoding of local text files."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def data_specs(kw: dict) -> tuple[CalibrationData, EvaluationData | None]:
    """Pop the data options from a command's kwargs and build the specs (validated)."""
    from pydantic import ValidationError

    from .errors import UserError
    from .passes.base import format_validation_error

    try:
        text = {"text_field": kw.pop("text_field"), "encoding": kw.pop("encoding")}
        calibration = CalibrationData(source=kw.pop("calib_text"), split=kw.pop("calib_split"),
                                      samples=kw.pop("calib_samples"), seq_len=kw.pop("calib_seq_len"), **text)
        eval_text = kw.pop("eval_text")
        split, windows, seq_len = kw.pop("eval_split"), kw.pop("eval_windows"), kw.pop("eval_seq_len")
        evaluation = None
        if eval_text.lower() != "none":
            evaluation = EvaluationData(source=eval_text, split=split, windows=windows or None, seq_len=seq_len,
                                        **text)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, "data options")) from None
    return calibration, evaluation
