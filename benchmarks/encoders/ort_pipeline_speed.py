"""Encoder batch-32 speed through optimum's ORTModelForFeatureExtraction plus torch mean pooling (as the bench and
sentence-transformers' ONNX backend run it), thread spinning on and off, against PyTorch fp32.

    python benchmarks/encoders/ort_pipeline_speed.py ONNX_DIR
"""
from _rounds import interleaved, timing_batches
import sys, time, statistics, torch, numpy as np, onnxruntime as ort
from pathlib import Path
from optimum.onnxruntime import ORTModelForFeatureExtraction
from transformers import AutoTokenizer, AutoModel
torch.set_num_threads(2)
from compress.models import resolve_source
base = str(resolve_source("minilm").path)
tok = AutoTokenizer.from_pretrained(base)
batches = timing_batches(tok, "pt")
def pool(h, m):
    m = m[..., None].float(); e = (h * m).sum(1) / m.sum(1); return torch.nn.functional.normalize(e, dim=1)
model = AutoModel.from_pretrained(base).eval()
def mk(spin):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    if not spin: o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ORTModelForFeatureExtraction.from_pretrained(sys.argv[1], session_options=o)
ms = {"spin": mk(True), "nospin": mk(False)}
def run_torch():
    with torch.inference_mode():
        for b in batches: pool(model(**b).last_hidden_state, b["attention_mask"])
def run_ort(m):
    def f():
        with torch.inference_mode():
            for b in batches: pool(m(**b).last_hidden_state, b["attention_mask"])
    return f
fns = {"torch": run_torch, **{k: run_ort(m) for k, m in ms.items()}}
interleaved(fns, items=256)
