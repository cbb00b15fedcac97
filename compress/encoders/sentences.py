"""Held-out sentences for encoders, and their embeddings from any encoder (PyTorch or ONNX Runtime).

Sentences come from the same text sources and the same deterministic
evaluation / calibration split as every other measurement (compress.data), so
an encoder is never measured on the sentences it was calibrated or distilled
on. From the chosen part of the text: paragraphs (blank-line separated; the
lines of a paragraph are joined, since the built-in corpus wraps its lines, and
runs of whitespace become one space),
WikiText headings (``= Title =``) skipped, each paragraph split after ``.``,
``!`` or ``?`` before a capital letter, and sentences kept when they have
`min_words` to `max_words` words and are mostly letters (which leaves out
grammar rules and code). Duplicates are dropped; the order is the text's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import torch
from pydantic import Field

from ..data import TextSpec, load_text
from ..errors import UserError
from ..progress import log, progress
from .pooling import Pooling, pool

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])")
_MIN_LETTER_SHARE = 0.75


class SentenceSpec(TextSpec):
    """Which sentences: a text source and split (as everywhere), how many, and how long."""

    sentences: int | None = Field(2000, ge=2, description="sentences to use (the first ones of the part; None: all); "
                                  "fewer, with a warning, if the text has fewer")
    min_words: int = Field(4, ge=1)
    max_words: int = Field(64, ge=1)

    @classmethod
    def from_text(cls, text: TextSpec, **overrides) -> "SentenceSpec":
        fields = {k: getattr(text, k) for k in TextSpec.model_fields}
        return cls(**{**fields, **overrides})


@dataclass
class Sentences:
    texts: list[str]
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


def split_sentences(text: str, min_words: int = 4, max_words: int = 64, limit: int | None = None) -> list[str]:
    """The sentences of `text` (see the module docstring), in order, without duplicates."""
    found: list[str] = []
    seen: set[str] = set()
    for paragraph in _PARAGRAPH_BREAK.split(text):
        lines = [ln.strip() for ln in paragraph.splitlines() if ln.strip()]
        if not lines or lines[0].startswith("="):
            continue
        for sentence in _SENTENCE_END.split(" ".join(" ".join(lines).split())):  # whitespace runs become one space
            words = sentence.split()
            letters = sum(c.isalpha() or c == " " for c in sentence) / max(len(sentence), 1)
            if min_words <= len(words) <= max_words and letters >= _MIN_LETTER_SHARE and sentence not in seen:
                seen.add(sentence)
                found.append(sentence)
                if limit is not None and len(found) >= limit:
                    return found
    return found


def random_passages(text: str, count: int, min_words: int = 4, max_words: int = 64, seed: int = 0) -> list[str]:
    """`count` runs of `min_words` to `max_words` consecutive words from the paragraphs of `text`, drawn with `seed`.

    They cross sentence boundaries and keep what the sentence filter leaves out
    (code, lists, fragments), so a student trained on them sees more kinds of
    input than the sentences alone, from the same text.
    """
    import random

    paragraphs = [p.split() for p in _PARAGRAPH_BREAK.split(text)]
    paragraphs = [w for w in paragraphs if len(w) >= min_words and not w[0].startswith("=")]
    if not paragraphs:
        return []
    rng = random.Random(seed)
    weights = [len(w) for w in paragraphs]  # every word equally likely to start a passage
    out = []
    for words in rng.choices(paragraphs, weights=weights, k=count):
        length = rng.randint(min_words, min(max_words, len(words)))
        start = rng.randint(0, len(words) - length)
        out.append(" ".join(words[start : start + length]))
    return out


def vocabulary_words(tokenizer) -> list[str]:
    """The tokenizer's whole words: tokens that read as letters alone (no special tokens, no ``##`` pieces)."""
    special = set(tokenizer.all_special_ids)
    words = set()
    for token, index in tokenizer.get_vocab().items():
        if index in special:
            continue
        word = tokenizer.convert_tokens_to_string([token]).strip()
        if len(word) >= 2 and word.isalpha():
            words.add(word)
    return sorted(words)  # sorted: the draw depends on the seed alone, not on the vocabulary's order


def random_vocabulary_passages(words: list[str], count: int, min_words: int = 4, max_words: int = 64,
                               seed: int = 0) -> list[str]:
    """`count` runs of `min_words` to `max_words` words drawn uniformly from `words` (with `seed`).

    Nonsense as prose, but they reach the words that the training text never
    uses: on them the student still has to give the teacher's embedding, which
    is what it will be asked on text of another domain.
    """
    import random

    if not words:
        return []
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(min_words, max_words))) for _ in range(count)]


def load_sentences(spec: SentenceSpec) -> Sentences:
    loaded = load_text(spec)
    texts = split_sentences(loaded.text, spec.min_words, spec.max_words, spec.sentences)
    if len(texts) < 2:
        raise UserError(f"the {spec.split} part of {spec.source} has {len(texts)} sentence(s) of {spec.min_words} to "
                        f"{spec.max_words} words; give a longer text")
    if spec.sentences is not None and len(texts) < spec.sentences:
        log.warning(f"the {spec.split} part of {spec.source} has {len(texts)} sentences, fewer than the "
                    f"{spec.sentences} asked for; measuring on {len(texts)} (WikiText-2 valid has over 3,000 per half)")
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    provenance = {**loaded.provenance, "sentences": len(texts), "sentences_asked": spec.sentences,
                  "min_words": spec.min_words, "max_words": spec.max_words, "sentences_sha256": digest}
    return Sentences(texts, provenance)


def max_tokens(tokenizer, config, pooling: Pooling) -> int:
    """Tokens per sentence: the pooling config's max_seq_length, else the tokenizer's, within the positions."""
    limits = [pooling.max_seq_length, getattr(config, "max_position_embeddings", None)]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 100_000:  # transformers uses a huge number for "unset"
        limits.append(model_max)
    kept = [int(x) for x in limits if isinstance(x, int) and x > 0]
    return min(kept) if kept else 512


def tokenize_batch(tokenizer, texts: list[str], length: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask (and token_type_ids where the tokenizer makes them), padded to the longest."""
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt"))


def token_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """last_hidden_state of a PyTorch encoder or an ONNX one (OnnxEncoder), float32 on the CPU."""
    if isinstance(model, torch.nn.Module):
        device = next(model.parameters()).device
        out = model(**{k: v.to(device) for k, v in batch.items()})
    else:
        out = model(**batch)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return torch.as_tensor(hidden).float().cpu()


@torch.inference_mode()
def embed(model, tokenizer, texts: list[str], pooling: Pooling, batch_size: int = 32,
          desc: str | None = "embedding") -> torch.Tensor:
    """(len(texts), hidden) float32 sentence embeddings, computed as sentence-transformers would.

    Sentences go through in order of length (less padding; the results do not
    depend on it) and come back in the order given.
    """
    length = max_tokens(tokenizer, getattr(model, "config", None), pooling)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor | None] = [None] * len(texts)
    starts = range(0, len(order), batch_size)
    for start in (progress(starts, desc=desc, unit="batch") if desc else starts):
        idx = order[start : start + batch_size]
        batch = tokenize_batch(tokenizer, [texts[i] for i in idx], length)
        embeddings = pool(token_states(model, batch), batch["attention_mask"], pooling)
        for i, e in zip(idx, embeddings):
            out[i] = e
    return torch.stack(out)  # type: ignore[arg-type]
