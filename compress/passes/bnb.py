"""bitsandbytes quantization: LLM.int8 and 4-bit (NF4, FP4), on CUDA or on the CPU.

The pass goes through transformers' own loading path: the float model is
written to a private temporary directory and reloaded with a
`BitsAndBytesConfig`, so the result is exactly what `from_pretrained` builds,
and its `save_pretrained` output (weights plus `quantization_config` in
config.json) reloads quantized with a stock `AutoModelForCausalLM.from_pretrained`
(`AutoModel` for an encoder).

Mixed precision: `keep` lists module-name globs left in float (the LM head
is always kept: transformers never quantizes it), and `keep_first`/`keep_last`
keep the first/last N decoder blocks in float. Embeddings are not
linear layers, so bitsandbytes never touches them.
"""

from __future__ import annotations

import fnmatch
import tempfile
from typing import Any, ClassVar, Literal

from pydantic import Field

from ..errors import UserError
from ..layers import output_head_names, weight_matrices
from ..progress import log
from .base import Pass, PassContext
from .quantization import block_index, edge_blocks, refuse_if_quantized


def _check_backend(device: str, method: str) -> None:
    """Fail with one line, before any heavy work, if bitsandbytes cannot run here."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("bitsandbytes is not installed; pip install bitsandbytes (0.50+ also runs on the CPU)") from None
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"bitsandbytes on {device} needs a CUDA GPU, and none is available here; use --device cpu")
    # Run one tiny layer: the cheapest reliable test that a kernel exists for this device.
    try:
        if method == "int8":
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type=method, compute_dtype=torch.float32)
        layer = layer.to(device)
        with torch.inference_mode():
            layer(torch.randn(2, 64, device=device, dtype=torch.float16 if method == "int8" else torch.float32))
    except Exception as exc:  # bitsandbytes raises many types for a missing backend
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"bitsandbytes {bnb.__version__} has no usable {method} backend on {device} ({first}); "
            "try --device cpu, or another method"
        ) from None


def kept_modules(model, keep: list[str], keep_first: int, keep_last: int) -> list[str]:
    """Full names of the projections left in float: the LM head, `keep` globs, first/last blocks."""
    names = sorted(output_head_names(model))
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", 0)
    edge = edge_blocks(n_layers, keep_first, keep_last)
    for wm in weight_matrices(model):
        if any(fnmatch.fnmatch(wm.name, p) for p in keep) or block_index(wm.name) in edge:
            names.append(wm.name)
    return names


class BnbQuantize(Pass):
    """Quantize the projections with bitsandbytes: int8 (LLM.int8), nf4 or fp4."""

    name: ClassVar[str] = "bnb_quantize"

    method: Literal["int8", "nf4", "fp4"] = "int8"
    double_quant: bool = True  # 4-bit: quantize the block scales too (saves ~0.4 bit/weight)
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # 4-bit matmul dtype
    int8_threshold: float = Field(6.0, ge=0.0)  # LLM.int8 outlier threshold (0 disables the float path)
    keep: list[str] = Field(default_factory=list)  # module-name globs kept in float, e.g. "*.mlp.down_proj"
    keep_first: int = Field(0, ge=0)  # keep the first N decoder blocks in float
    keep_last: int = Field(0, ge=0)  # keep the last N decoder blocks in float
    device: str | None = None  # None: the runner's device (cpu unless told)

    def quantization_config(self, skip: list[str]):
        import torch
        from transformers import BitsAndBytesConfig

        if self.method == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.int8_threshold,
                                      llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=self.method, bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype), llm_int8_skip_modules=skip,
        )

    def apply(self, artifact, ctx: PassContext) -> dict[str, Any]:
        import torch

        from ..encoders.loading import auto_class

        refuse_if_quantized(artifact, "bnb_quantize")
        if not isinstance(artifact.model, torch.nn.Module):
            raise UserError("bnb_quantize needs a PyTorch model; put it before onnx_export / ort_quantize in the recipe")
        device = self.device or ctx.device
        _check_backend(device, self.method)
        model = artifact.model
        skip = kept_modules(model, self.keep, self.keep_first, self.keep_last)
        total = sum(1 for _ in weight_matrices(model, include_lm_head=True))
        if len(skip) >= total:
            raise UserError("bnb_quantize: every projection is kept in float by 'keep'/'keep_first'/'keep_last'; keep fewer")
        dtype = next(model.parameters()).dtype
        if self.method == "int8" and dtype == torch.float32:
            log.debug("LLM.int8 layers compute in float16; the rest of the model stays float32")
        with tempfile.TemporaryDirectory(prefix="compress-bnb-") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            quantized = auto_class(model).from_pretrained(  # AutoModel for an encoder
                tmp, quantization_config=self.quantization_config(skip), device_map={"": device}, dtype=dtype,
            )
        quantized.eval()
        quantized.generation_config = model.generation_config
        artifact.model = quantized
        return {
            "quantized_projections": total - len(skip),
            "float_projections": skip,
            "device": device,
            "memory_footprint_bytes": int(quantized.get_memory_footprint()),
        }
