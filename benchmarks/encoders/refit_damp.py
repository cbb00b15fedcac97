"""MLP -25 % on MiniLM: plain removal against the least-squares refit at several damps, per calibration text.

    python benchmarks/encoders/refit_damp.py mixed builtin

Mean cosine of sentence embeddings to the base's on 800 WikiText-2 sentences, 64 calibration windows of
256 tokens. Quality only (no timing), so it can run on a loaded machine.
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # this checkout's compress

from compress.encoders.sentences import embed, split_sentences  # noqa: E402
from compress.models import load_artifact  # noqa: E402
from compress.passes.base import CalibrationData, PassContext  # noqa: E402
from compress.passes.structured import ChannelPrune  # noqa: E402
from compress.progress import configure  # noqa: E402

WIKITEXT = HERE.parents[2] / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"


def main(corpora: list[str]) -> None:
    configure(quiet=True)
    base = load_artifact("minilm")
    sentences = split_sentences(WIKITEXT.read_text(encoding="utf-8"), limit=800)
    reference = embed(base.model, base.tokenizer, sentences, base.pooling, desc=None)

    def mean_cosine(variant) -> float:
        e = embed(variant.model, variant.tokenizer, sentences, variant.pooling, desc=None)
        return float(torch.nn.functional.cosine_similarity(e, reference, dim=-1).mean())

    for corpus in corpora:
        ctx = PassContext(calibration=CalibrationData(source=corpus, samples=64, seq_len=256))
        print(f"{corpus}: plain removal {mean_cosine(ChannelPrune(ratio=0.25, refit=False)(base, ctx)):.4f}", flush=True)
        for damp in (1e-3, 1e-2, 1e-1, 1.0):
            print(f"{corpus}: refit damp {damp:g} {mean_cosine(ChannelPrune(ratio=0.25, refit_damp=damp)(base, ctx)):.4f}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["mixed", "builtin"])
