"""Perplexity ratio, KL and top-1 agreement to the base of saved SmolLM2 variants, on WikiText-2's, the built-in
corpus's and Shakespeare's evaluation halves (WINDOWS windows of 1024 tokens each, default 16; TEXTS picks).

    WINDOWS=8 TEXTS=wikitext2,builtin python benchmarks/pruning/lm_quality.py DIR [DIR ...]
"""
import os
import sys

import torch

from compress.data import TextSpec, WindowSpec, load_windows
from compress.evaluate import compare
from compress.models import load_artifact

torch.set_num_threads(2)
base = load_artifact("smollm2-135m-instruct")
texts = {"wikitext2": TextSpec(source=os.environ.get("WIKI", "../shared/data/wikitext-2/wiki.valid.tokens"), split="evaluation"),
         "builtin": TextSpec(source="builtin", split="evaluation"),
         "shakespeare": TextSpec(source=os.environ.get("SHAKESPEARE", "/tmp/third/shakespeare.txt"), split="evaluation")}
texts = {k: texts[k] for k in os.environ.get("TEXTS", "wikitext2,builtin,shakespeare").split(",")}
n = int(os.environ.get("WINDOWS", "16"))
wins = {k: load_windows(base.tokenizer, t, WindowSpec(seq_len=1024, max_windows=n)) for k, t in texts.items()}
out = {}
for path in sys.argv[1:]:
    v = load_artifact(path)
    row = {}
    for k, w in wins.items():
        c = compare(base.model, v.model, w, desc=None)
        row[k] = {"ppl_ratio": round(c["perplexity"] / c["perplexity_base"], 4), "kl": round(c["kl_mean"], 4),
                  "top1": round(c["top1_agreement"], 4), "ppl_base": round(c["perplexity_base"], 3)}
    out[path] = row
    print(path, row, flush=True)
