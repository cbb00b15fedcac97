"""The tokenizer keys of a GGUF export (``tokenizer.ggml.*``), so llama.cpp tokenizes as transformers does.

Two sources, in this order:

1. **The GGUF the model came from.** The built-in model, a ``.gguf`` input and
   every output derived from one (their provenance says so) carry the original
   file's tokenizer keys over unchanged: llama.cpp's own converter wrote them,
   and llama.cpp reads them back exactly. They are used only if their token
   list is, id for id, the tokenizer the artifact holds.
2. **The Hugging Face tokenizer** (``tokenizer.json``), for byte-level BPE
   tokenizers: the vocabulary by id, the merges, a token type per token
   (added special tokens are CONTROL, other added tokens USER_DEFINED, ids
   without a token UNUSED padding), the special token ids, and the name of
   llama.cpp's pre-tokenizer that splits text as the tokenizer's own
   pre-tokenizer does. That name is read off the pre-tokenizer's structure
   (GPT-2's byte-level regex, SmolLM's single digits before it, Llama 3's and
   Qwen2's split patterns); a tokenizer outside those is refused, since
   llama.cpp would split its text differently.

What does not matter for llama.cpp: the Hugging Face decoder. The tokenizer
transformers converts from a GGUF has a decoder that mixes ByteFallback and a
Replace of U+2581 with ByteLevel; llama.cpp decodes a "gpt2" vocabulary as
byte-level BPE whatever that decoder says. What does: the normalizer (none is
accepted), the pre-tokenizer, the merges, and whether merges are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..progress import log

# Hugging Face split patterns whose llama.cpp pre-tokenizer is known, with the
# `ignore_merges` setting llama.cpp then applies (it must match the tokenizer's).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE = {LLAMA3_SPLIT: ("llama-bpe", True), QWEN2_SPLIT: ("qwen2", False)}

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType values


class TokenizerKeys:
    """(key, value, value type, array element type) entries, and where they came from."""

    def __init__(self, origin: str):
        self.origin = origin
        self.entries: list[tuple[str, Any, Any, Any]] = []

    def add(self, key: str, value: Any, vtype, sub_type=None) -> None:
        self.entries.append((key, value, vtype, sub_type))

    def write(self, writer) -> None:
        for key, value, vtype, sub_type in self.entries:
            writer.add_key_value(key, value, vtype, sub_type=sub_type)


def tokenizer_keys(artifact, n_vocab: int) -> TokenizerKeys:
    tokenizer = artifact.tokenizer
    if tokenizer is None:
        raise UserError("the model has no tokenizer; a GGUF file needs one for llama.cpp to read text")
    origin = gguf_origin(artifact.source, artifact.source_path)
    if origin is not None:
        carried = carried_keys(origin, tokenizer, n_vocab)
        if carried is not None:
            return carried
    return hf_keys(tokenizer, n_vocab)


# ------------------------------------------------------------------------- from a GGUF


def gguf_origin(source: dict | None, source_path: Path | None = None) -> Path | None:
    """The GGUF file this model's tokenizer came from, following the provenance back (None if none)."""
    from ..models import BUILTIN_MODELS, builtin_gguf_path

    if source_path is not None and Path(source_path).is_dir():
        marker = Path(source_path) / "gguf_source.json"  # a converted-GGUF cache directory given directly
        if marker.is_file():
            path = Path(json.loads(marker.read_text()).get("gguf", ""))
            if path.is_file():
                return path
    seen = 0
    while isinstance(source, dict) and seen < 100:
        kind = source.get("kind")
        if kind == "builtin" and source.get("ref") in BUILTIN_MODELS:
            path = Path(source.get("path", ""))
            return path if path.is_file() else builtin_gguf_path(source["ref"])
        if kind == "gguf" and Path(source.get("path", "")).is_file():
            return Path(source["path"])
        source = source.get("derived_from")
        seen += 1
    return None


def carried_keys(path: Path, tokenizer, n_vocab: int) -> TokenizerKeys | None:
    """The origin GGUF's tokenizer keys, if its token list is the tokenizer's, id for id."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    tokens_field = fields.get("tokenizer.ggml.tokens")
    if tokens_field is None:
        return None
    tokens = tokens_field.contents()
    ours = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if len(tokens) != n_vocab or tokens[: len(ours)] != ours:
        log.info(f"the tokenizer differs from the one in {path.name}; writing it from the Hugging Face tokenizer")
        return None
    keys = TokenizerKeys(f"carried over from {path.name}")
    pre = _hf_pre_name(tokenizer)
    for key, f in fields.items():
        vtype = f.types[0]
        sub_type = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = f.contents()
        if key == "tokenizer.ggml.pre" and pre is not None and value != pre:
            # The tokenizer splits text as llama.cpp's `pre` does, not as the origin's: for
            # SmolLM2 ("smollm": single digits first) transformers' GGUF conversion keeps only
            # the byte-level split. Tokenizing as the tokenizer does is what the export promises.
            keys.origin += f", pre-tokenizer {value} -> {pre} to split text as the tokenizer does"
            value = pre
        keys.add(key, value, vtype, sub_type)
    return keys


def _hf_pre_name(tokenizer) -> str | None:
    """llama.cpp's name for the tokenizer's own pre-tokenizer, or None where it cannot be told."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    try:
        return _pre_name(spec.get("pre_tokenizer"), bool(spec.get("model", {}).get("ignore_merges", False)))
    except UserError:
        return None


# ------------------------------------------------------------------ from Hugging Face


def _pre_name(pre: dict | None, ignore_merges: bool) -> str:
    """llama.cpp's pre-tokenizer that splits text as this Hugging Face pre-tokenizer does."""

    def byte_level(p, regex: bool) -> bool:
        return (p.get("type") == "ByteLevel" and bool(p.get("use_regex", True)) == regex
                and not p.get("add_prefix_space", False))

    name, wants_ignore = None, False
    if pre is not None and byte_level(pre, True):
        name = "gpt-2"
    elif pre is not None and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        if len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") \
                and byte_level(parts[1], True):
            name = "smollm"  # llama.cpp: single digits, then GPT-2's regex
        elif len(parts) == 2 and parts[0].get("type") == "Split" and byte_level(parts[1], False) \
                and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert", False):
            found = SPLIT_PRE.get((parts[0].get("pattern") or {}).get("Regex"))
            if found:
                name, wants_ignore = found
    if name is None:
        raise UserError(
            f"the tokenizer's pre-tokenizer ({_summary(pre)}) has no llama.cpp equivalent this exporter knows "
            "(GPT-2 byte-level, SmolLM, Llama 3, Qwen2); llama.cpp would split text differently, so it is not exported"
        )
    if wants_ignore != ignore_merges:
        raise UserError(f"the tokenizer {'ignores' if ignore_merges else 'applies'} merges for whole-vocabulary words "
                        f"but llama.cpp's '{name}' pre-tokenizer does the opposite; it would tokenize differently")
    return name


def _summary(pre: dict | None) -> str:
    if pre is None:
        return "none"
    if pre.get("type") == "Sequence":
        return "Sequence[" + ", ".join(p.get("type", "?") for p in pre.get("pretokenizers", [])) + "]"
    return str(pre.get("type"))


def hf_keys(tokenizer, n_vocab: int) -> TokenizerKeys:
    """Keys for a byte-level BPE tokenizer from its tokenizer.json, or a one-line refusal."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"the tokenizer ({type(tokenizer).__name__}) has no tokenizer.json (a 'fast' tokenizer); "
                        "GGUF export writes byte-level BPE tokenizers from it")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(f"the tokenizer is a {model.get('type')} model; GGUF export writes byte-level BPE tokenizers "
                        "only (GPT-2, Llama 3, SmolLM, Qwen2 style), so this one is not exported")
    normalizer = spec.get("normalizer")
    if normalizer and not (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        raise UserError(f"the tokenizer normalizes text ({normalizer.get('type')}), which llama.cpp's byte-level BPE "
                        "does not; it would tokenize differently, so it is not exported")
    pre = _pre_name(spec.get("pre_tokenizer"), bool(model.get("ignore_merges", False)))

    vocab = {token: i for token, i in model.get("vocab", {}).items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    if max(by_id, default=-1) >= n_vocab:
        raise UserError(f"the tokenizer has ids up to {max(by_id)} but the model's embedding has {n_vocab} rows")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    keys = TokenizerKeys("written from the Hugging Face tokenizer")
    V = gguf.GGUFValueType
    keys.add("tokenizer.ggml.model", "gpt2", V.STRING)
    keys.add("tokenizer.ggml.pre", pre, V.STRING)
    keys.add("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING)
    keys.add("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32)
    keys.add("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING)
    for key, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                          ("unknown", tokenizer.unk_token_id), ("padding", tokenizer.pad_token_id)):
        if token_id is not None:
            keys.add(f"tokenizer.ggml.{key}_token_id", int(token_id), V.UINT32)
    adds_bos, adds_eos = _adds_special(tokenizer)
    keys.add("tokenizer.ggml.add_bos_token", adds_bos, V.BOOL)
    keys.add("tokenizer.ggml.add_eos_token", adds_eos, V.BOOL)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        keys.add("tokenizer.chat_template", template, V.STRING)
    return keys


def _adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether encoding with special tokens puts BOS in front / EOS at the end (what llama.cpp's flags say)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    extra = len(full) > len(plain)
    adds_bos = extra and bos is not None and full[0] == bos and plain[:1] != [bos]
    adds_eos = extra and eos is not None and full[-1] == eos and plain[-1:] != [eos]
    return adds_bos, adds_eos
