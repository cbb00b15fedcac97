"""Embedding quality of saved encoders against the base on three texts, 2,000 sentences each (built-in: 1,502).

    python benchmarks/encoders/quality_three_texts.py DIR [DIR ...] [-o OUT.json]

Texts: the built-in corpus's evaluation half, WikiText-2 valid's evaluation half (WIKI, default
../shared/data/wikitext-2/wiki.valid.tokens) and four Shakespeare plays (SHAKESPEARE, default
/tmp/third/shakespeare.txt, made by benchmarks/calibration/third_domain.sh). The same sentences and
the same measures as the bench's quality worker (compress.encoders.quality.embedding_agreement);
the base's embeddings are computed once per text and kept in memory.
"""
import argparse
import json
import os

import torch

from compress.encoders.bench_worker import load_encoder
from compress.encoders.quality import embedding_agreement
from compress.encoders.sentences import SentenceSpec, embed, load_sentences
from compress.models import load_dir_of, resolve_source

BASE = "minilm"
KEYS = ("cosine_mean", "cosine_p5", "cosine_min", "top10_overlap", "spearman_pairwise")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("-o", "--out")
    args = parser.parse_args()
    torch.set_num_threads(2)
    texts = {"builtin": "builtin",
             "wikitext2": os.environ.get("WIKI", "../shared/data/wikitext-2/wiki.valid.tokens"),
             "shakespeare": os.environ.get("SHAKESPEARE", "/tmp/third/shakespeare.txt")}
    base_model, base_tok, base_pool = load_encoder(str(load_dir_of(resolve_source(BASE))), "pytorch")
    sentences = {name: load_sentences(SentenceSpec(source=src, split="evaluation", sentences=2000)).texts
                 for name, src in texts.items()}
    reference = {name: embed(base_model, base_tok, s, base_pool, desc=f"base on {name}") for name, s in sentences.items()}
    rows = {}
    for path in args.dirs:
        model, tok, pool = load_encoder(path, "pytorch")
        rows[path] = {}
        for name, s in sentences.items():
            r = embedding_agreement(reference[name], embed(model, tok, s, pool, desc=None))
            rows[path][name] = {k: round(float(r[k]), 4) for k in KEYS}
        print(path, {n: v["cosine_mean"] for n, v in rows[path].items()}, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"texts": texts, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
