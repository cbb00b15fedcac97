"""Encoders in ONNX: optimum's feature-extraction export, and the model object that holds it.

The export is optimum-onnx's (`onnx_export_from_model`, task
``feature-extraction``): one graph from input_ids / attention_mask
(/ token_type_ids) to ``last_hidden_state``. The pooling stays outside the
graph, as in sentence-transformers' own ONNX backend, and is saved beside it
(pooling.py), so `ORTModelForFeatureExtraction.from_pretrained(OUT)` loads the
output and pooling its states gives the embeddings that were measured.

`OnnxEncoder` is an `OnnxCausalLM` (a directory this object owns, copied on
deepcopy, saved by `write_onnx_directory`, quantized by `ort_quantize`) whose
runtime model is an `ORTModelForFeatureExtraction`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..onnx_utils import OnnxCausalLM, write_onnx_directory
from ..progress import log
from .sentences import embed, max_tokens, token_states, tokenize_batch

# Sentences the export is checked on (a fixed, varied set; padding exercised by their different lengths).
CHECK_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes a model smaller and faster, and the bench measures what that cost.",
    "Where is the nearest train station?",
    "Sentence embeddings map text to vectors whose cosine similarity follows meaning.",
]


class OnnxEncoder(OnnxCausalLM):
    """An encoder exported to ONNX; calling it returns an output with `last_hidden_state`."""

    @property
    def ort_model(self):
        if self._ort is None:
            import onnxruntime as ort
            from optimum.onnxruntime import ORTModelForFeatureExtraction

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._ort = ORTModelForFeatureExtraction.from_pretrained(self.directory, provider=self.provider,
                                                                     session_options=options)
        return self._ort

    def __call__(self, input_ids, attention_mask=None, **kwargs) -> Any:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.ort_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def generate(self, *args, **kwargs):
        raise UserError("an encoder does not generate text; it makes sentence embeddings")


def check_encoder_export(torch_model, onnx_model: OnnxEncoder, tokenizer, pooling) -> dict[str, Any]:
    """Largest difference of the token states, and the embeddings' worst cosine, ONNX vs PyTorch."""
    batch = tokenize_batch(tokenizer, CHECK_SENTENCES, max_tokens(tokenizer, torch_model.config, pooling))
    with torch.inference_mode():
        ref = token_states(torch_model, batch)
        got = token_states(onnx_model, batch)
    mask = batch["attention_mask"].bool()
    a = embed(torch_model, tokenizer, CHECK_SENTENCES, pooling, desc=None)
    b = embed(onnx_model, tokenizer, CHECK_SENTENCES, pooling, desc=None)
    return {
        "max_abs_state_diff": float((ref[mask] - got[mask]).abs().max()),
        "min_embedding_cosine": float(torch.nn.functional.cosine_similarity(a.double(), b.double()).min()),
        "check_sentences": len(CHECK_SENTENCES),
    }


def export_encoder_to_onnx(artifact, opset: int | None = None, provider: str = "CPUExecutionProvider",
                           check: bool = True, max_state_diff: float = 1e-3) -> dict[str, Any]:
    """Replace an encoder artifact's model by its ONNX export (in place); return what was measured."""
    from ..passes.onnx_export import optimum_export

    torch_model = artifact.model
    onnx_model = optimum_export(torch_model, artifact.tokenizer, "feature-extraction", OnnxEncoder, opset, provider)
    metrics: dict[str, Any] = {"task": "feature-extraction", "onnx_bytes": onnx_model.size_bytes()}
    if check and artifact.tokenizer is not None:
        metrics.update(check_encoder_export(torch_model, onnx_model, artifact.tokenizer, artifact.pooling))
        if metrics["max_abs_state_diff"] > max_state_diff:
            raise UserError(
                f"the ONNX export differs from PyTorch by {metrics['max_abs_state_diff']:.3g} in the token states "
                f"(limit {max_state_diff}); the export is wrong for this model, nothing was saved"
            )
        log.info(f"ONNX export checked: max token-state difference {metrics['max_abs_state_diff']:.2e}, "
                 f"worst embedding cosine {metrics['min_embedding_cosine']:.6f}")
    artifact.model = onnx_model
    artifact.writer = write_onnx_directory
    return metrics
