"""Export a PyTorch causal LM to ONNX for generation with past key values (an encoder: feature extraction).

The export itself is optimum-onnx's (`onnx_export_from_model`, task
`text-generation-with-past`): no hand-written export code. Afterwards the pass
checks the ONNX model against the PyTorch one on a short fixed input: the
largest absolute difference of the logits, and whether greedy generation
(which exercises the past-key-value path) produces the same tokens. The
result is an `OnnxCausalLM` whose directory `ORTModelForCausalLM.from_pretrained`
loads; the artifact's writer saves that directory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, ClassVar

import torch
from pydantic import Field

from ..errors import UserError
from ..onnx_utils import OnnxCausalLM, is_onnx, require_onnxruntime, write_onnx_directory
from ..progress import log
from .base import Pass, PassContext
from .quantization import quantization_state

CHECK_TEXT = "The quick brown fox jumps over the lazy dog because it wanted to see what was on the other side."


@contextlib.contextmanager
def _quiet_export():
    """optimum and torch.onnx print pages of tracer warnings; keep them for --verbose."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch.onnx")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def check_against_torch(torch_model, onnx_model: OnnxCausalLM, tokenizer, new_tokens: int = 8) -> dict[str, Any]:
    """Logit difference on a fixed input, and greedy generation agreement (past key values used)."""
    ids = tokenizer(CHECK_TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :32]
    vocab = getattr(torch_model.config, "vocab_size", None)
    if vocab is not None:
        ids = ids.clamp(max=vocab - 1)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        ref = torch_model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        got = onnx_model(ids, mask).logits.float()
        settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        gen_ref = torch_model.generate(ids, attention_mask=mask, **settings)[0, ids.shape[1]:]
        gen_got = onnx_model.generate(ids, attention_mask=mask, **settings)[0, ids.shape[1]:]
    return {
        "max_abs_logit_diff": float((ref - got).abs().max()),
        "generation_match": int((gen_ref == gen_got).sum()) / new_tokens,
        "check_tokens": int(ids.shape[1]),
    }


class OnnxExport(Pass):
    """Export to ONNX (optimum-onnx, with past key values) and check it against PyTorch."""

    name: ClassVar[str] = "onnx_export"

    opset: int | None = Field(None, ge=14)  # None: optimum's default for the architecture
    check: bool = True  # compare logits and greedy generation with the PyTorch model
    max_logit_diff: float = Field(1e-2, gt=0)  # a larger difference is an export bug: refuse it
    provider: str = "CPUExecutionProvider"

    def apply(self, artifact, ctx: PassContext) -> dict[str, Any]:
        require_onnxruntime()
        from ..genai_model import is_genai

        if is_onnx(artifact) or is_genai(artifact):
            raise UserError("onnx_export: the model is already ONNX; export once, then quantize with ort_quantize")
        state = quantization_state(artifact)
        if state is not None:
            raise UserError(
                f"onnx_export: the model is quantized with {state}, which ONNX cannot express; "
                "export the float model and use ort_quantize for an int8/int4 ONNX model"
            )
        return export_to_onnx(artifact, self.opset, self.provider, self.check, self.max_logit_diff)


def optimum_export(torch_model, tokenizer, task: str, onnx_class=OnnxCausalLM, opset: int | None = None,
                   provider: str = "CPUExecutionProvider"):
    """optimum-onnx's export of `torch_model` for `task` into a new directory held by an `onnx_class` object."""
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_model = onnx_class.new_directory(provider=provider)
    preprocessors = [tokenizer] if tokenizer is not None else None
    try:
        with _quiet_export():
            onnx_export_from_model(torch_model, onnx_model.directory, opset=opset, task=task,
                                   do_validation=False, preprocessors=preprocessors)
    except (ValueError, KeyError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        arch = getattr(torch_model.config, "model_type", "?")
        raise UserError(f"optimum-onnx cannot export this model (architecture {arch}, task {task}): {first}") from None
    return onnx_model


def export_to_onnx(artifact, opset: int | None = None, provider: str = "CPUExecutionProvider",
                   check: bool = True, max_logit_diff: float = 1e-2) -> dict[str, Any]:
    """Replace artifact.model by its ONNX export (in place); return what was measured.

    An encoder goes through optimum's feature-extraction task instead (compress.encoders.onnx).
    """
    from ..encoders.architecture import is_encoder

    if is_encoder(artifact):
        from ..encoders.onnx import export_encoder_to_onnx

        return export_encoder_to_onnx(artifact, opset, provider, check)

    torch_model = artifact.model
    onnx_model = optimum_export(torch_model, artifact.tokenizer, "text-generation-with-past", OnnxCausalLM, opset,
                                provider)
    metrics: dict[str, Any] = {"onnx_bytes": onnx_model.size_bytes()}
    if check and artifact.tokenizer is not None:
        metrics.update(check_against_torch(torch_model, onnx_model, artifact.tokenizer))
        if metrics["max_abs_logit_diff"] > max_logit_diff:
            raise UserError(
                f"the ONNX export differs from PyTorch by {metrics['max_abs_logit_diff']:.3g} in the logits "
                f"(limit {max_logit_diff}); the export is wrong for this model, nothing was saved"
            )
        log.info(f"ONNX export checked: max logit difference {metrics['max_abs_logit_diff']:.2e}, "
                 f"greedy generation match {metrics['generation_match']:.0%}")
    artifact.model = onnx_model
    artifact.writer = write_onnx_directory
    return metrics
