"""An Artifact is what flows between passes: a model, its tokenizer, and provenance.

Provenance records where the model came from, every pass applied to it with its
full config, and what each pass measured. It is written next to the weights as
`compress.json` (see `compress.saving`) so an output explains itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Artifact:
    model: Any
    tokenizer: Any
    # Where the model was loaded from: {"kind": "builtin"|"hub"|"local"|"gguf", ...}.
    source: dict[str, Any] = field(default_factory=dict)
    # One record per pass applied: {"name", "config", "metrics", "seconds"}.
    passes: list[dict[str, Any]] = field(default_factory=list)
    # Run-level measurements (perplexity before/after, data used, ...).
    metrics: dict[str, Any] = field(default_factory=dict)
    # Local directory (or file) the weights were read from; outputs may never land there.
    source_path: Path | None = None
    # Writes the model into a directory. None means a Hugging Face checkpoint;
    # passes that produce other formats (ONNX, bitsandbytes) set their own.
    writer: Any = None
    # Weights a calibrated quantizer (GPTQ) already put on a runtime's grid, keyed by the
    # model's parameter name: {"model.layers.0.mlp.up_proj.weight": ("q4_0", raw_blocks)},
    # raw_blocks being the runtime's own bytes (a uint8 numpy array in GGUF's layout), or
    # ("matmulnbits", {"bits", "block_size", "symmetric", "K", "N", "q", "scales", "zero_points"})
    # for ONNX Runtime's MatMulNBits (layouts: compress/quant_grids.py). A writer for that
    # runtime stores them as they are instead of quantizing again, so the runtime runs
    # exactly what the quantizer chose. Saved beside a checkpoint as
    # quantized_blocks.safetensors and read back by load_artifact (compress/quantized_blocks.py).
    quantized_blocks: dict[str, Any] = field(default_factory=dict)
    # Encoders only (compress.encoders): how token states become a sentence embedding
    # (a compress.encoders.pooling.Pooling). None for decoders. Saved beside the weights.
    pooling: Any = None

    def copy(self) -> "Artifact":
        """A deep copy of the model and provenance; the tokenizer is shared (immutable in use)."""
        return Artifact(
            model=copy.deepcopy(self.model),
            tokenizer=self.tokenizer,
            source=copy.deepcopy(self.source),
            passes=copy.deepcopy(self.passes),
            metrics=copy.deepcopy(self.metrics),
            source_path=self.source_path,
            writer=self.writer,
            quantized_blocks=dict(self.quantized_blocks),
            pooling=copy.deepcopy(self.pooling),
        )

    def record_pass(self, name: str, config: dict, metrics: dict, seconds: float) -> None:
        self.passes.append(
            {"name": name, "config": config, "metrics": metrics, "seconds": round(seconds, 3)}
        )
