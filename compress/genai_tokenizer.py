"""Make a saved tokenizer.json read the same in onnxruntime-genai as in transformers.

A tokenizer converted by transformers' GGUF loader (the built-in model's, before
`compress.models` wrote its own conversion) is a byte-level BPE whose decoder is a
Sequence of ByteFallback, Fuse, Replace("▁" -> " ") and ByteLevel, with
``byte_fallback`` on. transformers runs that Sequence and gets
the right text. onnxruntime-genai's tokenizer (onnxruntime-extensions) reads the
ByteFallback/"▁" parts as a SentencePiece tokenizer: it encodes most words to -1 and
decodes spaces as "Ġ". For a byte-level vocabulary those parts do nothing (there are
no ``<0xNN>`` byte tokens to fall back to, and "▁" is not a byte-level symbol), so
the equivalent file keeps only the ByteLevel decoder. `simplify_byte_level_decoder`
writes that, after checking that transformers tokenizes and decodes a sample exactly
as before (otherwise it leaves the file alone).

Our own measurements feed token ids from the transformers tokenizer to every
backend, so tokenization is identical either way; this is for stock
onnxruntime-genai users of the directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# Texts on which onnxruntime-genai's tokenizer is compared with transformers'. On the built-in
# model it differs on one: a newline followed by several spaces (transformers' byte-level regex
# keeps "\n " together, onnxruntime-extensions splits "\n" off), which no tokenizer.json edit fixes.
SAMPLES = {
    "prose": "The quick brown fox jumps over the lazy dog. It was 3.14159 times faster!",
    "unicode": "café, naïve, Straße — 東京 🙂",
    "code": "def f(x): return x**2  # <tag> {'k': [1, 2]}",
    "newline then spaces": "first line\n  indented line",
}
SAMPLE_TEXT = "\n".join(SAMPLES.values())
_NO_OP_FOR_BYTE_LEVEL = ("ByteFallback", "Fuse")


def _has_byte_level(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("type") == "ByteLevel" or any(_has_byte_level(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_byte_level(v) for v in node)
    return False


def _is_space_marker_replace(step: dict) -> bool:
    return step.get("type") == "Replace" and step.get("pattern") == {"String": "\u2581"} and step.get("content") == " "


def plain_byte_level_decoder(spec: dict) -> dict | None:
    """The tokenizer.json content with only its ByteLevel decoder, or None if that would not be equivalent."""
    decoder = spec.get("decoder") or {}
    model = spec.get("model") or {}
    if decoder.get("type") != "Sequence" or not _has_byte_level(spec.get("pre_tokenizer")):
        return None
    steps = decoder.get("decoders", [])
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    others = [s for s in steps if s.get("type") != "ByteLevel"]
    if len(byte_level) != 1 or not all(s.get("type") in _NO_OP_FOR_BYTE_LEVEL or _is_space_marker_replace(s)
                                       for s in others):
        return None
    if any(token.startswith("<0x") and token.endswith(">") for token in model.get("vocab", {})):
        return None  # real byte-fallback tokens: ByteFallback does something here
    simplified = dict(spec)
    simplified["decoder"] = byte_level[0]
    simplified["model"] = {**model, "byte_fallback": False}
    return simplified


def _encode_decode(directory: Path, text: str) -> tuple[list[int], str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, tokenizer.decode(ids)



def simplify_byte_level_decoder(directory: str | Path, text: str = SAMPLE_TEXT) -> bool:
    """Rewrite `directory`/tokenizer.json with only its ByteLevel decoder when that is equivalent; True if rewritten."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.is_file():
        return False
    spec = json.loads(path.read_text(encoding="utf-8"))
    simplified = plain_byte_level_decoder(spec)
    if simplified is None:
        return False
    before = _encode_decode(directory, text)
    backup = path.with_name("tokenizer.json.before-simplify")
    shutil.copy2(path, backup)
    path.write_text(json.dumps(simplified, ensure_ascii=False, indent=2), encoding="utf-8")
    if _encode_decode(directory, text) != before:  # not equivalent after all: keep the original
        shutil.move(backup, path)
        return False
    backup.unlink()
    return True


def genai_tokenizer_agrees(og_model, hf_tokenizer) -> dict[str, list[str]]:
    """The SAMPLES on which onnxruntime-genai's tokenizer gives other ids, or other text, than transformers'."""
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(og_model)
    ids_differ, text_differs = [], []
    for name, text in SAMPLES.items():
        ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        if [int(i) for i in tokenizer.encode(text)] != list(ids):
            ids_differ.append(name)
        if tokenizer.decode(ids) != hf_tokenizer.decode(ids):
            text_differs.append(name)
    return {"ids_differ_on": ids_differ, "text_differs_on": text_differs}
