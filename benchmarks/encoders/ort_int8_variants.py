"""Two more dynamic-int8 graphs of the same ONNX export, for ort_sessions_speed.py (seventh run).

    python benchmarks/encoders/ort_int8_variants.py FP32_DIR/model.onnx OUT_DIR

* `all-matmul.onnx`: MatMulConstBOnly off, so the attention products (QK' and the weighted sum of V) are
  quantized at run time too, not only the 36 projections (48 MatMulInteger instead of 36);
* `per-tensor.onnx`: one scale per weight matrix instead of one per output channel.
Both with signed weights, as `ort_quantize` writes them on a CPU with VNNI.
"""
import sys
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

src, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
quantize_dynamic(src, str(out / "all-matmul.onnx"), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                 weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": False})
quantize_dynamic(src, str(out / "per-tensor.onnx"), op_types_to_quantize=["MatMul", "Gemm"], per_channel=False,
                 weight_type=QuantType.QInt8)
