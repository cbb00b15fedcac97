"""Text sources, the calibration/evaluation split, and fixed-length token windows.

Sources:

* a named corpus that works offline (`compress.corpora`): ``builtin`` (the topic pages of
  Python's own documentation, ``pydoc_data.topics``, shipped with every CPython; PSF License),
  ``wikipedia-leads`` (lead sections of English Wikipedia's vital articles, shipped in this
  package; CC BY-SA 4.0) and ``mixed`` (the two interleaved); reports name each one's licence;
* a local file: ``.txt`` (read as is), ``.jsonl`` (one JSON object a line, the
  ``text_field`` of each), ``.parquet`` (the ``text_field`` column, needs pyarrow);
* ``hf:NAME[@CONFIG][:SPLIT]`` (e.g. ``hf:wikitext@wikitext-2-raw-v1:validation``): a Hugging Face dataset (needs the ``datasets``
  package and a network, or a local datasets cache).

Every source is one text. Its split is deterministic and the two halves never
overlap: the *evaluation* part is the text before a line boundary at
``eval_fraction`` of its characters, the *calibration* part is everything after.
``all`` uses the whole text, allowed only when calibration and evaluation come
from different sources (see `check_disjoint`). A mixed corpus's part is the same part of each
of its members, interleaved (see `compress.corpora`).
"""

from __future__ import annotations

import codecs
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import corpora
from .errors import UserError

Split = Literal["evaluation", "calibration", "all"]
BUILTIN = "builtin"
BUILTIN_DESCRIPTION = corpora.CORPORA[BUILTIN].description
# The default calibration text of every pass, command and bench suite: builtin and wikipedia-leads
# interleaved, the corpus that lost least out of its own domain (benchmarks/calibration, docs/calibration.md).
DEFAULT_CALIBRATION = "mixed"


def _builtin_text() -> str:
    return corpora.full_text(corpora.CORPORA[BUILTIN])


class TextSpec(BaseModel):
    """Which text, which part of it. Used in recipes and on the command line."""

    model_config = ConfigDict(extra="forbid")

    source: str = BUILTIN
    split: Split = "evaluation"
    text_field: str = "text"
    encoding: str = "utf-8"
    eval_fraction: float = Field(0.5, gt=0.0, lt=1.0)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v):
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}; use e.g. utf-8, latin-1 or cp1252") from None
        return v

    def text_only(self) -> "TextSpec":
        """Just which text and which part (a subclass's window settings dropped)."""
        return TextSpec(**{k: getattr(self, k) for k in TextSpec.model_fields})

    def identity(self) -> str:
        """A key that is equal for two specs reading the same underlying text.

        A local file is known by its content, so a byte-identical copy under another name is the same text.
        """
        if corpora.corpus(self.source) or self.source.startswith("hf:"):
            return self.source
        path = Path(self.source).expanduser().resolve()
        if path.is_file():
            return "sha256:" + _file_sha256(path)
        return str(path)

    def identities(self) -> set[str]:
        """The identities of every text this spec reads (a mixed corpus reads each of its members)."""
        named = corpora.corpus(self.source)
        if named is not None and named.members:
            return set(named.members)
        return {self.identity()}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def decode_text(path: Path, data: bytes, encoding: str) -> str:
    """The file's text; a byte the encoding cannot read is one line naming the file and its offset."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"text file {path} is not valid {encoding}: byte {exc.start} (0x{data[exc.start]:02x}) cannot be decoded; "
            "pass --encoding with the file's encoding (e.g. latin-1, cp1252) or convert it to UTF-8"
        ) from None


class WindowSpec(BaseModel):
    """How text becomes model inputs: window length, stride, how many windows."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(1024, ge=2)
    stride: int | None = Field(None, ge=1)  # None: non-overlapping (stride == seq_len)
    max_windows: int | None = Field(16, ge=1)  # None: the whole text
    add_bos: bool = False


def _read_file(path: Path, text_field: str, encoding: str = "utf-8") -> str:
    if not path.exists():
        raise UserError(f"text file {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a .txt, .jsonl or .parquet file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts = []
        for n, line in enumerate(decode_text(path, path.read_bytes(), encoding).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path} line {n} is not valid JSON; each line must be one JSON object") from None
            if not isinstance(obj, dict) or text_field not in obj:
                raise UserError(f"{path} line {n} has no '{text_field}' field; name the field holding the text with --text-field "
                                "(text_field in a recipe)")
            texts.append(str(obj[text_field]))
        return "\n\n".join(texts)
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("reading .parquet needs pyarrow: pip install pyarrow") from None
        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise UserError(f"{path} has no column '{text_field}' (columns: {', '.join(table.column_names)})")
        return "\n\n".join(str(t) for t in table.column(text_field).to_pylist() if t)
    return decode_text(path, path.read_bytes(), encoding)


def _hf_text(ref: str, text_field: str) -> str:
    spec = ref[len("hf:"):]
    name, _, split = spec.partition(":")
    # NAME may itself contain a slash (org/dataset), so the config goes after '@'.
    name, _, config = name.partition("@")
    try:
        import datasets
    except ImportError:
        raise UserError(f"reading {ref} needs the datasets package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "validation")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"could not load dataset {ref} ({first}); it needs a network or a local datasets cache; "
            "use a local text file or the built-in corpus instead"
        ) from None
    if text_field not in ds.column_names:
        raise UserError(f"dataset {ref} has no column '{text_field}' (columns: {', '.join(ds.column_names)})")
    return "\n".join(t for t in ds[text_field] if t)


@dataclass
class Text:
    """A resolved piece of text and a description of where it came from."""

    text: str
    provenance: dict = field(default_factory=dict)


def read_source(spec: TextSpec) -> str:
    named = corpora.corpus(spec.source)
    if named is not None:
        return corpora.full_text(named)
    if spec.source.startswith("hf:"):
        return _hf_text(spec.source, spec.text_field)
    return _read_file(Path(spec.source).expanduser(), spec.text_field, spec.encoding)


def split_text(text: str, split: Split, eval_fraction: float) -> str:
    """The evaluation part is the text before a line break near eval_fraction; calibration is the rest.

    A text with no line break after that point (one long line) is cut at the next whitespace instead.
    """
    if split == "all":
        return text
    target = int(len(text) * eval_fraction)
    cut = text.find("\n", target)
    if cut < 0:
        cut = next((i for i in range(target, len(text)) if text[i].isspace()), -1)
    cut = len(text) if cut < 0 else cut + 1
    return text[:cut] if split == "evaluation" else text[cut:]


def load_text(spec: TextSpec) -> Text:
    named = corpora.corpus(spec.source)
    if named is not None:
        part = corpora.part(named, spec.split, spec.eval_fraction)
    else:
        full = read_source(spec)
        if not full.strip():
            raise UserError(f"text source {spec.source} is empty; give a file with text in it")
        part = split_text(full, spec.split, spec.eval_fraction)
    if not part.strip():
        raise UserError(f"the {spec.split} part of {spec.source} is empty; the text is too short to split")
    provenance = {
        "source": named.description if named is not None else spec.source,
        **({"licence": named.licence} if named is not None else {}),
        "split": spec.split,
        "eval_fraction": spec.eval_fraction if spec.split != "all" else None,
        "characters": len(part),
        "sha256": hashlib.sha256(part.encode("utf-8")).hexdigest()[:16],
    }
    return Text(part, provenance)


def overlaps(a: TextSpec, b: TextSpec) -> bool:
    """Whether two specs can read some of the same text: one text, unless they are its two parts."""
    if not a.identities() & b.identities():
        return False
    return {a.split, b.split} != {"calibration", "evaluation"} or a.eval_fraction != b.eval_fraction


def check_disjoint(calibration: TextSpec, evaluation: TextSpec) -> None:
    """Calibration and evaluation text must never overlap."""
    if overlaps(calibration, evaluation):
        same = (calibration.source if calibration.source == evaluation.source
                else f"{calibration.source} and {evaluation.source} (byte-identical copies)"
                if calibration.identity() == evaluation.identity()
                else f"{calibration.source} and {evaluation.source} (one holds the other)")
        raise UserError(
            f"calibration and evaluation both read {same} with splits "
            f"{calibration.split}/{evaluation.split}: they would overlap; use split 'calibration' for "
            "calibration and 'evaluation' for evaluation (same eval_fraction), or two different sources"
        )


def domain_relation(calibration: TextSpec, evaluation: TextSpec) -> str:
    """How calibration text relates to evaluation text, for reports.

    'same corpus': two parts of one text (a calibrated model is measured in its own domain);
    'shares a corpus': one is a mix holding the other's text; 'different corpora' otherwise.
    """
    cal, ev = calibration.identities(), evaluation.identities()
    if not cal & ev:
        return "different corpora"
    return "same corpus" if cal == ev else "shares a corpus"


@dataclass
class Windows:
    """Token windows ready for a model.

    ``input_ids[i, j]`` for j >= ``score_from[i]`` are the tokens whose
    prediction counts: each token of the text is scored at most once, and the
    first token of the text (no context) never.
    """

    input_ids: torch.Tensor  # (n, seq_len) int64
    score_from: torch.Tensor  # (n,) int64, >= 1
    provenance: dict

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def scored_tokens(self) -> int:
        return int((self.input_ids.shape[1] - self.score_from).sum().item())


def tokenize(tokenizer, text: str) -> list[int]:
    # No special tokens: a BOS, if wanted, is added per window (WindowSpec.add_bos).
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def make_windows(tokens: list[int], spec: WindowSpec, bos_token_id: int | None = None) -> Windows:
    """Cut a token stream into windows of spec.seq_len.

    With stride == seq_len the windows do not overlap and each scores all of its
    tokens but the first. With a smaller stride a window repeats the previous
    window's tail as context and scores only its new tokens.
    With add_bos, each window starts with BOS and also scores its first text token.
    """
    seq_len, stride = spec.seq_len, spec.stride or spec.seq_len
    if stride > seq_len:
        raise UserError(f"stride {stride} is larger than seq_len {seq_len}; tokens between windows would be skipped")
    body = seq_len - 1 if spec.add_bos else seq_len
    if spec.add_bos and bos_token_id is None:
        raise UserError("add_bos is set but the tokenizer has no BOS token; turn add_bos off")
    if len(tokens) < body:
        raise UserError(
            f"the text has {len(tokens)} tokens, fewer than one window of {seq_len}; "
            "use a longer text or a shorter seq_len"
        )
    rows, score_from = [], []
    scored_until = 0  # tokens[:scored_until] are already scored (or unscorable)
    start = 0
    while start + body <= len(tokens):
        chunk = tokens[start : start + body]
        first_new = max(scored_until - start, 0)
        if spec.add_bos:
            rows.append([bos_token_id] + chunk)
            score_from.append(1 + first_new)
        else:
            rows.append(chunk)
            score_from.append(max(first_new, 1))
        scored_until = start + body
        if spec.max_windows is not None and len(rows) >= spec.max_windows:
            break
        start += stride if not spec.add_bos else min(stride, body)
    return Windows(
        input_ids=torch.tensor(rows, dtype=torch.long),
        score_from=torch.tensor(score_from, dtype=torch.long),
        provenance={"seq_len": seq_len, "stride": stride, "windows": len(rows), "add_bos": spec.add_bos,
                    "text_tokens": len(tokens)},
    )


def load_windows(tokenizer, text: TextSpec, windows: WindowSpec) -> Windows:
    """Text spec + window spec → windows, with provenance naming both."""
    loaded = load_text(text)
    try:
        result = make_windows(tokenize(tokenizer, loaded.text), windows, getattr(tokenizer, "bos_token_id", None))
    except UserError as exc:
        raise UserError(f"{text.source} ({text.split} part): {exc}") from None
    result.provenance = {**loaded.provenance, **result.provenance, "scored_tokens": result.scored_tokens}
    return result
