"""Where an ONNX encoder graph spends its time at batch 32: ONNX Runtime's profiler, kernel time summed by operator.

    python benchmarks/encoders/ort_profile.py GRAPH.onnx [GRAPH.onnx ...]

The bench's 256 timing sentences (WikiText-2 valid, evaluation half), sorted by length, batches of 32, run twice;
prints each graph's total kernel time and its 12 most expensive operators as shares of it. Kernel times add up
work done on both threads, so compare shares, not totals, with wall-clock speed.
"""
import collections
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

from _rounds import timing_batches

tok = AutoTokenizer.from_pretrained(str(Path(sys.argv[1]).parent))
batches = timing_batches(tok, "np")
for path in sys.argv[1:]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.enable_profiling = True
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for _ in range(2):
        for b in batches:
            session.run(None, {k: v.astype(np.int64) for k, v in b.items() if k in names})
    profile = session.end_profiling()
    by_op = collections.Counter()
    for event in json.load(open(profile)):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    os.remove(profile)
    total = sum(by_op.values())
    print(f"{path}: kernel time {total / 1e3:.0f} ms")
    for op, t in by_op.most_common(12):
        print(f"   {op:28s} {100 * t / total:5.1f} %")
