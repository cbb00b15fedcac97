"""Encoder batch-32 speed of raw ONNX Runtime sessions against PyTorch fp32, same sentences, interleaved rounds.

    python benchmarks/encoders/ort_sessions_speed.py BASE_DIR NAME=model.onnx [NAME=model.onnx ...]

The bench's 256 timing sentences (WikiText-2 valid, evaluation half), sorted by length, batches of 32;
prints each graph's cosine to PyTorch and its speed ratio, median [range] of 5 rounds.
"""
from _rounds import interleaved, timing_batches
import sys, time, statistics, json
from pathlib import Path
import numpy as np, torch, onnxruntime as ort
from transformers import AutoTokenizer, AutoModel

torch.set_num_threads(2)
base_dir = sys.argv[1]
graphs = dict(a.split("=", 1) for a in sys.argv[2:])
tok = AutoTokenizer.from_pretrained(base_dir)
batches = timing_batches(tok, "np")
print("tokens per batch", [b["input_ids"].shape for b in batches])
model = AutoModel.from_pretrained(base_dir).eval()
def run_torch():
    with torch.inference_mode():
        for b in batches:
            model(**{k: torch.from_numpy(v) for k, v in b.items()})
sessions = {}
for name, path in graphs.items():
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    sessions[name] = (s, names)
def runner(name):
    s, names = sessions[name]
    def run():
        for b in batches:
            s.run(None, {k: v.astype(np.int64) for k, v in b.items() if k in names})
    return run
fns = {"torch": run_torch, **{n: runner(n) for n in sessions}}
def pooled(states, mask):
    m = mask[..., None].astype(np.float32)
    e = (states * m).sum(1) / m.sum(1)
    return e / np.linalg.norm(e, axis=1, keepdims=True)
with torch.inference_mode():
    ref = [pooled(model(**{k: torch.from_numpy(v) for k, v in b.items()}).last_hidden_state.numpy(), b["attention_mask"]) for b in batches]
for name, (s, names) in sessions.items():
    cos = np.concatenate([(pooled(s.run(None, {k: v.astype(np.int64) for k, v in b.items() if k in names})[0], b["attention_mask"]) * r).sum(1) for b, r in zip(batches, ref)])
    print(f"{name:24s} cosine mean {cos.mean():.4f} min {cos.min():.4f}")
interleaved(fns, items=256)
