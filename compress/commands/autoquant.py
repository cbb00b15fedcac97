"""`compress quantize --target-kl KL`: the auto_quantize pass from the command line, then the quality guard."""

from __future__ import annotations

import click

OPTIONS = [
    click.option("--target-kl", type=float, default=None, metavar="KL",
                 help="Mixed precision for llama.cpp: the fastest GGUF type per matrix whose mean KL from MODEL, "
                      "measured on held-out calibration windows, stays within KL; writes OUTPUT.gguf."),
    click.option("--types", default="q4_0,q5_0,q8_0,f16", show_default=True,
                 help="--target-kl: candidate GGUF types (comma-separated; f16, q8_0, q5_1, q5_0, q4_1, iq4_nl, q4_0)."),
    click.option("--search-windows", type=int, default=2, show_default=True,
                 help="--target-kl: calibration windows the per-matrix sensitivities are measured on."),
    click.option("--check-windows", type=int, default=4, show_default=True,
                 help="--target-kl: the calibration windows after those, on which the result's KL is measured."),
    click.option("--blocks-from", default=None, metavar="DIR",
                 help="--target-kl: a saved GPTQ output of MODEL (compress quantize MODEL --method gptq); a matrix "
                      "given its blocks' type takes those blocks instead of round-to-nearest."),
    click.option("--search-kl", type=float, default=None, metavar="KL",
                 help="--target-kl with --tune-steps: the budget the search aims at before training (above the "
                      "target: training lowers the KL; the check and back-off then hold the target)."),
]


def run_autoquant(model: str, target_kl: float, types: str, search_windows: int, check_windows: int,
                  blocks_from: str | None, max_kl: float, min_top1: float, fail_on_damage: bool, output: str,
                  force: bool, trust_remote_code: bool, data: dict, tune_steps: int = 0,
                  search_kl: float | None = None) -> None:
    from ..cli_options import data_specs
    from ..data import check_disjoint
    from ..encoders.architecture import is_encoder_config
    from ..llamacpp import require_llama_cpp
    from ..errors import UserError
    from ..models import load_artifact, load_config, resolve_source
    from ..passes.base import PassContext, build_pass
    from ..progress import log
    from ..saving import check_output_file, save_artifact
    from ..support import check_sequence_lengths
    from ..passes.auto_quantize import ENCODER_ALTERNATIVE
    from .quantize import echo_quality, run_guard

    quant = build_pass("auto_quantize", {"target_kl": target_kl, "types": types, "search_windows": search_windows,
                                         "check_windows": check_windows, "blocks_from": blocks_from,
                                         "tune_steps": tune_steps, "search_kl": search_kl})
    calibration, evaluation = data_specs(data)
    if evaluation is not None:
        check_disjoint(calibration, evaluation)
    source = resolve_source(model)
    check_output_file(output, force, source.path, quant.output_file_suffix)
    config = load_config(model, trust_remote_code=trust_remote_code)
    if is_encoder_config(config):  # refused from the config, before any weights are read
        raise UserError(f"{model} is a {config.model_type} encoder; --target-kl writes a GGUF for llama.cpp, which runs "
                        f"causal language models here; {ENCODER_ALTERNATIVE}")
    check_sequence_lengths(config, model, {"calibration": calibration.seq_len,
                                           "evaluation": evaluation.seq_len if evaluation else None})
    if calibration.samples < search_windows + check_windows:
        raise UserError(f"--search-windows + --check-windows = {search_windows + check_windows} calibration windows, "
                        f"but --calib-samples is {calibration.samples}; raise --calib-samples")
    if evaluation is not None:
        try:
            require_llama_cpp()
        except UserError:
            log.warning("llama-cpp-python is not installed: the GGUF is written but not evaluated")
            evaluation = None

    base = load_artifact(model, trust_remote_code=trust_remote_code)
    result = quant(base, PassContext(calibration=calibration))
    quality = run_guard(base, result, evaluation, f"the KL-{target_kl} mix of {model}", max_kl, min_top1,
                        fail_on_damage)
    path = save_artifact(result, output, force=force)
    m = result.passes[-1]["metrics"]
    counts = ", ".join(f"{n} {t}" for t, n in m["type_counts"].items())
    given = ""
    if m["tuning"] and m["tuning"]["matrices_tuned"]:
        t = m["tuning"]
        click.echo(f"trained the scales of {t['matrices_tuned']} matrices and the norms for {t['steps']} steps: "
                   f"KL {t['measured_kl_before']:.4f} -> {t['measured_kl_after']:.4f} on the check windows "
                   f"(searched at {t['searched_kl']})")
    if m["given_blocks"]:
        given = f" ({m['export']['given_blocks_written']} taking the blocks of {blocks_from})"
    where = "llama.cpp" if m["measured_kl_llamacpp"] is not None else "PyTorch, llama.cpp's roundings"
    click.echo(f"chose {counts} matrices{given}: predicted KL {m['predicted_kl']:.4f}, "
               f"measured {m['measured_kl']:.4f} "
               f"({where}, {m['windows']['check']['windows']} held-out calibration windows; budget {target_kl}); "
               f"{m['gguf_bytes'] / 1e6:.1f} MB, predicted {m['predicted_speedup_vs_q8_0']:.2f}x the decode speed "
               "of all-q8_0 (bytes model)")
    echo_quality(quality, str(path))
