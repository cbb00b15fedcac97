"""Progress bars and log verbosity, set once by the CLI (or a Python caller)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from tqdm.auto import tqdm

from .startup import started

log = logging.getLogger("compress")

_show_progress = True
_verbose = False

# Libraries whose warnings and log lines (bitsandbytes' "kernels", ONNX Runtime's graph notes,
# transformers' loading remarks) are noise for a user of the command line unless asked for.
THIRD_PARTY = ("transformers", "torch", "bitsandbytes", "onnxruntime", "onnx", "optimum", "accelerate",
               "huggingface_hub", "datasets", "tokenizers", "torch_pruning")


def quiet_onnxruntime() -> None:
    """ONNX Runtime logs from C++, past Python's logging: errors only, unless verbose."""
    if "onnxruntime" in sys.modules:
        sys.modules["onnxruntime"].set_default_logger_severity(0 if _verbose else 3)


def _quiet_third_party(verbose: bool) -> None:
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers sets up its logger
    warnings.filterwarnings("ignore", module=r"(" + "|".join(THIRD_PARTY) + r")(\.|$)")
    # Our own warnings are logged as well (one line each); the Python warning would repeat them.
    warnings.filterwarnings("ignore", module=r"compress(\.|$)")
    quiet_onnxruntime()


def configure(quiet: bool = False, verbose: bool = False) -> None:
    """Quiet hides progress bars and info logs; verbose adds debug logs and third-party warnings."""
    global _show_progress, _verbose
    _show_progress = not quiet
    _verbose = verbose
    _quiet_third_party(verbose)
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def progress(iterable=None, **kwargs):
    """tqdm on stderr, hidden when quiet."""
    started()
    kwargs.setdefault("disable", not _show_progress)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
