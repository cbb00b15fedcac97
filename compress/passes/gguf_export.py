"""Export to a GGUF file for llama.cpp, in one of its weight types, and check it there.

The file is written with the gguf package (compress.gguf_file): no llama.cpp
build is needed to export. The result is an Artifact whose model is the GGUF
file run by llama.cpp (`LlamaCppCausalLM`), so a recipe's evaluation after
this pass measures what llama.cpp computes; it saves as ``OUT.gguf`` with its
manifest beside it (``OUT.gguf.compress.json``). It must be a recipe's last pass.

When llama-cpp-python is installed, the pass checks the file in llama.cpp
before anything is saved: llama.cpp's token ids for a sample text must be
the tokenizer's, and its logits on a fixed input must agree with PyTorch's
(at f32 and f16 within `max_relative_diff` of the largest logit; at every type
the share of positions with the same top-1 token is recorded).

Config (YAML)::

    - gguf_export: {type: q8_0, overrides: {"token_embd.weight": f16, "blk.0.*": q8_0}}
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator

from ..errors import UserError
from ..gguf_file.types import EXPORT_TYPES, check_type
from ..progress import log
from .base import Pass, PassContext

CHECK_TEXT = ("The quick brown fox jumps over the lazy dog in 2024, because it wanted to see what was on the "
              "other side: 3.14 apples, naïve café, \"quotes\" and (parentheses)!\n\tIndented line.")


class GgufExport(Pass):
    """Write the model as a GGUF file (f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1) and check it in llama.cpp."""

    name: ClassVar[str] = "gguf_export"
    output_file_suffix: ClassVar[str | None] = ".gguf"
    decoder_only: ClassVar[bool] = True  # llama.cpp's GGUF models here are causal LMs
    encoder_alternative: ClassVar[str] = "export it to ONNX (onnx_export, ort_quantize) for ONNX Runtime instead"

    type: str = Field("q8_0", description=f"weight type of every matrix: {', '.join(EXPORT_TYPES)}")
    overrides: dict[str, str] = Field(
        default_factory=dict, description="glob on tensor names (GGUF or model names) -> type; a later pattern wins")
    check: bool = Field(True, description="check tokenizer and logits in llama.cpp (when llama-cpp-python is installed)")
    max_relative_diff: float = Field(
        2e-3, gt=0, description="largest logit difference from PyTorch at f32, relative to the largest |logit| "
        "(five times that at f16); a wrong export is off by the logits' own size")

    @field_validator("type")
    @classmethod
    def _known_type(cls, v):
        try:
            return check_type(v, "type")
        except UserError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("overrides")
    @classmethod
    def _known_override_types(cls, v):
        try:
            return {pattern: check_type(t, f"override '{pattern}'") for pattern, t in v.items()}
        except UserError as exc:
            raise ValueError(str(exc)) from None

    def apply(self, artifact, ctx: PassContext) -> dict[str, Any]:
        return self.export(artifact, {"name": self.name, "config": self.config()})

    def export(self, artifact, record: dict[str, Any]) -> dict[str, Any]:
        """Write and check the file; `record` is the pass entry the file's own manifest ends with
        (this pass, or a pass that exports through it, such as auto_quantize)."""
        from ..gguf_file import write_gguf
        from ..llamacpp import LlamaCppCausalLM, write_gguf_file
        from ..saving import MANIFEST_FORMAT, library_versions

        provenance = {
            "format": MANIFEST_FORMAT,
            "source": artifact.source,
            "passes": artifact.passes + [record],
            "versions": library_versions(),
        }
        exported = LlamaCppCausalLM.new_file()
        report = write_gguf(artifact, exported.path, self.type, self.overrides, provenance)
        for note in report.notes:
            log.info(note)
        fallbacks = [c for c in report.choices if c.fell_back]
        if fallbacks:
            log.warning(f"{len(fallbacks)} matri{'x' if len(fallbacks) == 1 else 'ces'} written as "
                        f"{fallbacks[0].written} instead of {fallbacks[0].asked}: {fallbacks[0].why} "
                        f"(e.g. {fallbacks[0].name}; all listed in the manifest)")
        metrics = report.metrics()
        if self.check:
            metrics["check"] = self.check_in_llamacpp(artifact, exported)
        artifact.model = exported
        artifact.writer = write_gguf_file
        artifact.quantized_blocks = {}  # written; the model is now the file
        return metrics

    def check_in_llamacpp(self, artifact, exported) -> dict[str, Any]:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            log.warning("llama-cpp-python is not installed, so the GGUF file was not checked in llama.cpp")
            return {"checked": False, "reason": "llama-cpp-python is not installed"}
        result = check_against_torch(artifact, exported)
        if not result["tokenizer_match"]:
            raise UserError(f"llama.cpp tokenizes the sample text differently from the model's tokenizer "
                            f"(first difference at token {result['first_token_difference']}); nothing was saved")
        exact = self.type in ("f32", "f16") and not self.overrides and not artifact.quantized_blocks
        limit = self.max_relative_diff * (1 if self.type == "f32" else 5)
        if exact and result["relative_logit_diff"] > limit:
            raise UserError(
                f"llama.cpp's logits differ from PyTorch's by {result['max_abs_logit_diff']:.3g} at {self.type} "
                f"({result['relative_logit_diff']:.2g} of the largest logit, limit {limit:.2g}); the export is wrong "
                "for this model, nothing was saved")
        log.info(f"checked in llama.cpp: same tokens, logits within {result['max_abs_logit_diff']:.2e} of PyTorch, "
                 f"top-1 agreement {result['top1_agreement']:.0%}")
        return {"checked": True, **result}


@torch.inference_mode()
def check_against_torch(artifact, exported, text: str = CHECK_TEXT) -> dict[str, Any]:
    """Token ids of `text` in llama.cpp vs the tokenizer; logits on those ids vs PyTorch."""
    from ..llamacpp import LlamaCppTokenizer

    tokenizer = artifact.tokenizer
    ours = tokenizer(text, add_special_tokens=False)["input_ids"]
    theirs = LlamaCppTokenizer(exported.path).encode(text)
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    ids = torch.tensor([ours[:48]])
    ref = artifact.model(input_ids=ids, use_cache=False).logits.float()
    got = exported(ids).logits.float()
    exported.close()
    return {
        "tokenizer_match": ours == theirs,
        "first_token_difference": None if ours == theirs else first_diff,
        "check_tokens": int(ids.shape[1]),
        "max_abs_logit_diff": float((ref - got).abs().max()),
        "relative_logit_diff": float((ref - got).abs().max() / ref.abs().max().clamp(min=1e-6)),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
    }
