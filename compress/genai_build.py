"""Run onnxruntime-genai's model builder in this (child) process, with one naming fix.

`compress.passes.ort_genai_export` starts ``python -m compress.genai_build SPEC.json``
in a subprocess: the builder adds its own directory to ``sys.path`` (it imports
``builders`` as a top-level package), prints pages of progress, and loads a
second float copy of the model; a child process keeps all of that out of ours.

The fix (onnxruntime-genai 0.15.2): with the default quantizer and a tied
embedding, the builder names the lm_head weight that the embedding's
GatherBlockQuantized reads as if it were always 4-bit (``weight_Q4``, bits=4).
At ``-p int8`` ORT's quantizer writes ``lm_head.MatMul.weight_Q8``, so the graph
references a tensor that does not exist and ONNX Runtime refuses to load it
("Node input 'lm_head.MatMul.weight_Q4' is not a graph input"). Asking for an
int8 head with ``matmul_mixed_precision=last_matmul:int8`` gives the RTN
spelling (``weight_Q8G32``), equally absent (the default quantizer writes
``weight_Q8`` there too). The replacement below names what the default quantizer
actually writes, at the bit width it writes; the RTN and k-quant methods keep the
builder's own naming, which matches theirs. The exporting pass checks the result
against PyTorch, so a wrong fix would be refused, not saved.
"""

from __future__ import annotations

import json
import sys
import traceback

ERROR_MARKER = "COMPRESS_BUILDER_ERROR:"


def _patch_tied_embedding_names(model_class, resolve_dtype) -> None:
    original = model_class.make_tied_quantized_embedding_input_names

    def tied_names(self):
        if not hasattr(self, "quantization_algo"):
            self.resolve_quant_config(getattr(self, "extra_options", {}))
        if self.quantization_algo != "default":
            return original(self)
        # The default (MLAS) quantizer's names: weight + "_Q{bits}", "_scales", "_zero_points",
        # at the head's own width when `matmul_mixed_precision` sets one.
        head = self.matmul_mixed_precision.get("last_matmul")
        bits = resolve_dtype(head).bits if head else self.quant_attrs["bits"]
        symmetric = self.quant_attrs["is_symmetric"]
        return (bits, f"lm_head.MatMul.weight_Q{bits}", "lm_head.MatMul.weight_scales",
                "" if symmetric else "lm_head.MatMul.weight_zero_points")

    model_class.make_tied_quantized_embedding_input_names = tied_names


def build(spec: dict) -> None:
    """spec: input, output, precision, cache_dir, extra_options ({key: value})."""
    import onnxruntime_genai.models.builder as builder  # puts the builders package on sys.path
    import builders.base  # the module the builder itself uses
    from builders.quant_config import resolve_dtype

    _patch_tied_embedding_names(builders.base.Model, resolve_dtype)
    options = [f"{k}={v}" for k, v in spec.get("extra_options", {}).items()]
    args = (None, spec["input"], spec["output"], spec["precision"], "cpu", spec["cache_dir"])
    extra = builder.parse_extra_options(*args, options)
    builder.create_model(*args, **extra)


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    try:
        build(spec)
    except Exception as exc:  # reported to the parent as one line; the traceback stays in the log
        traceback.print_exc()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"{ERROR_MARKER} {type(exc).__name__}: {text}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
