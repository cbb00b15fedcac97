"""The two ORT int8 alternatives tried in the fourth encoder run, built from an fp32 ONNX export, with cosines.

    compress export onnx minilm -o /tmp/enc4/ort-fp32
    python benchmarks/encoders/ort_static_and_fused.py /tmp/enc4/ort-fp32 /tmp/enc4/alternatives
    python benchmarks/encoders/ort_sessions_speed.py BASE_DIR fused-int8=/tmp/enc4/alternatives/fused-int8/model.onnx ...

Writes OUT/static-{qoperator,qdq}-minmax and OUT/static-qoperator-percentile (quantize_static: per-channel s8
weights, u8 activations calibrated on 256 sentences of `mixed`'s calibration half), OUT/fused-fp32 (ONNX Runtime's
BERT fusions) and OUT/fused-int8 (those, then quantize_dynamic of MatMul and Attention, signed weights),
OUT/mha-{fp32,int8} and OUT/noattn-{fp32,int8} (the fusions with every projection left a MatMul, then dynamic int8
of those: attention fused as MultiHeadAttention, or not fused; the fifth run), and prints
each graph's embedding cosine to the fp32 graph's on 512 WikiText-2 evaluation sentences.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model
from transformers import AutoTokenizer

from compress.encoders.sentences import SentenceSpec, load_sentences
from compress.passes.ort_quant import weight_matmuls

src, out = Path(sys.argv[1]), Path(sys.argv[2])
WIKI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"
tok = AutoTokenizer.from_pretrained(src)


def directory(name: str) -> Path:
    d = out / name
    shutil.copytree(src, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.onnx"))
    return d


class Calibration(CalibrationDataReader):
    # Fixed-length padding: the percentile calibrator stacks activations and needs one shape.
    def __init__(self):
        texts = load_sentences(SentenceSpec(source="mixed", split="calibration", sentences=256)).texts
        self.batches = iter([{k: v.astype(np.int64) for k, v in tok(texts[i:i + 16], padding="max_length", truncation=True,
                                                                       max_length=64, return_tensors="np").items()}
                             for i in range(0, len(texts), 16)])

    def get_next(self):
        return next(self.batches, None)


nodes = [n for n, _ in weight_matmuls(src / "model.onnx")]
for fmt, method in (("qoperator", "minmax"), ("qdq", "minmax"), ("qoperator", "percentile")):
    quantize_static(str(src / "model.onnx"), str(directory(f"static-{fmt}-{method}") / "model.onnx"), Calibration(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile)
fused = optimize_model(str(src / "model.onnx"), model_type="bert", num_heads=12, hidden_size=384, opt_level=1)
print(fused.get_fused_operator_statistics())
fused.save_model_to_file(str(directory("fused-fp32") / "model.onnx"))
quantize_dynamic(str(out / "fused-fp32" / "model.onnx"), str(directory("fused-int8") / "model.onnx"),
                 op_types_to_quantize=["MatMul", "Attention"], per_channel=True, weight_type=QuantType.QInt8,
                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
# Fifth run: the fusions with the projections left as MatMuls, so every one of them is dynamic int8 and
# only the attention core is fused: MultiHeadAttention (Q, K and V projected apart, one kernel for
# softmax(QK')V), or no attention fusion at all (SkipLayerNorm and BiasGelu only).
for name, mha in (("mha", True), ("noattn", False)):
    options = FusionOptions("bert")
    options.use_multi_head_attention, options.enable_attention = mha, mha
    graph = optimize_model(str(src / "model.onnx"), model_type="bert", num_heads=12, hidden_size=384, opt_level=0,
                           optimization_options=options)
    print(name, graph.get_fused_operator_statistics())
    graph.save_model_to_file(str(directory(f"{name}-fp32") / "model.onnx"))
    quantize_dynamic(str(out / f"{name}-fp32" / "model.onnx"), str(directory(f"{name}-int8") / "model.onnx"),
                     op_types_to_quantize=["MatMul"], nodes_to_quantize=[n for n, _ in weight_matmuls(out / f"{name}-fp32" / "model.onnx")],
                     per_channel=True, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

lines = load_sentences(SentenceSpec(source=str(WIKI), split="evaluation", sentences=512)).texts


def embeddings(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    found = []
    for i in range(0, len(lines), 32):
        b = tok(lines[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="np")
        h = session.run(None, {k: v.astype(np.int64) for k, v in b.items() if k in names})[0]
        m = b["attention_mask"][..., None].astype(np.float32)
        e = (h * m).sum(1) / m.sum(1)
        found.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return np.concatenate(found)


reference = embeddings(src / "model.onnx")
for d in sorted(p for p in out.iterdir() if p.is_dir()):
    c = (embeddings(d / "model.onnx") * reference).sum(1)
    print(f"{d.name:28s} cosine mean {c.mean():.4f} p5 {np.percentile(c, 5):.4f} min {c.min():.4f}")
