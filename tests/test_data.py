"""Text sources, the calibration/evaluation split, and token windows."""

from __future__ import annotations

import json

import pytest
import torch

from compress.data import (
    TextSpec,
    WindowSpec,
    check_disjoint,
    load_text,
    load_windows,
    make_windows,
    read_source,
    split_text,
)
from compress.errors import UserError


def test_builtin_corpus_is_real_prose_available_offline():
    text = read_source(TextSpec(source="builtin"))
    assert len(text) > 300_000
    assert "The \"if\" statement" in text  # a topic page of Python's documentation
    assert read_source(TextSpec(source="builtin")) == text, "the corpus must be deterministic"


def test_calibration_and_evaluation_parts_never_overlap_and_cover_the_text(text_file):
    # (The named corpora also drop repeated paragraphs from calibration: tests/test_corpora.py.)
    src = str(text_file)
    full = read_source(TextSpec(source=src))
    evaluation = load_text(TextSpec(source=src, split="evaluation")).text
    calibration = load_text(TextSpec(source=src, split="calibration")).text
    assert evaluation + calibration == full
    assert evaluation.endswith("\n"), "the cut falls on a line boundary"
    # No line of any length is shared at the boundary: they are disjoint slices.
    assert full.index(calibration) == len(evaluation)


def test_split_fraction_moves_the_cut():
    text = "".join(f"line {i}\n" for i in range(100))
    assert len(split_text(text, "evaluation", 0.25)) < len(split_text(text, "evaluation", 0.75))
    assert split_text(text, "all", 0.5) == text


def test_same_source_for_calibration_and_evaluation_must_use_complementary_parts(text_file):
    ok_cal, ok_eval = TextSpec(source=str(text_file), split="calibration"), TextSpec(source=str(text_file))
    check_disjoint(ok_cal, ok_eval)
    with pytest.raises(UserError, match="would overlap"):
        check_disjoint(TextSpec(source=str(text_file), split="all"), ok_eval)
    with pytest.raises(UserError, match="would overlap"):
        check_disjoint(TextSpec(source="builtin", split="evaluation"), TextSpec(source="builtin"))
    check_disjoint(TextSpec(source="builtin", split="all"), TextSpec(source=str(text_file), split="all"))


def test_jsonl_reads_the_text_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"document {i}", "id": i}) for i in range(3)) + "\n")
    assert read_source(TextSpec(source=str(path), text_field="body")) == "document 0\n\ndocument 1\n\ndocument 2"
    with pytest.raises(UserError, match="no 'text' field"):
        read_source(TextSpec(source=str(path)))
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        read_source(TextSpec(source=str(path)))


def test_parquet_reads_the_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["first", "second"]}), path)
    assert read_source(TextSpec(source=str(path))) == "first\n\nsecond"


def test_hugging_face_dataset_offline_is_a_clear_error():
    pytest.importorskip("datasets")
    with pytest.raises(UserError, match="could not load dataset hf:wikitext.*network"):
        read_source(TextSpec(source="hf:wikitext@wikitext-2-raw-v1:validation"))


@pytest.mark.parametrize("content, message", [("", "is empty"), ("   \n\n", "is empty")])
def test_empty_text_file_is_refused(tmp_path, content, message):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_text(TextSpec(source=str(path)))


def test_missing_text_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_text(TextSpec(source=str(tmp_path / "nope.txt")))


def test_text_shorter_than_one_window_is_refused_naming_the_source(tmp_path, tiny_tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("just a few words\nand a second line\n")
    with pytest.raises(UserError, match=r"short.txt \(evaluation part\).*fewer than one window of 512"):
        load_windows(tiny_tokenizer, TextSpec(source=str(path)), WindowSpec(seq_len=512))


def test_non_overlapping_windows_score_every_token_but_each_windows_first():
    w = make_windows(list(range(100)), WindowSpec(seq_len=10, max_windows=None))
    assert w.input_ids.shape == (10, 10)
    assert torch.equal(w.input_ids.flatten(), torch.arange(100))
    assert w.score_from.tolist() == [1] * 10
    assert w.scored_tokens == 90


def test_sliding_windows_score_each_token_exactly_once():
    tokens = list(range(50))
    w = make_windows(tokens, WindowSpec(seq_len=10, stride=4, max_windows=None))
    scored = []
    for row, start in zip(w.input_ids.tolist(), w.score_from.tolist()):
        scored += row[start:]
    assert scored == tokens[1 : 1 + len(scored)], "each token once, in order, first token never"
    assert len(scored) == 49 - (50 - 10) % 4  # the tail shorter than a stride is dropped


def test_bos_windows_prepend_bos_and_score_the_first_text_token():
    w = make_windows(list(range(10, 30)), WindowSpec(seq_len=5, add_bos=True, max_windows=2), bos_token_id=1)
    assert w.input_ids.tolist() == [[1, 10, 11, 12, 13], [1, 14, 15, 16, 17]]
    assert w.score_from.tolist() == [1, 1]


def test_max_windows_takes_the_first_windows():
    w = make_windows(list(range(100)), WindowSpec(seq_len=10, max_windows=3))
    assert w.input_ids[:, 0].tolist() == [0, 10, 20]


def test_windows_record_their_provenance(tiny_tokenizer):
    w = load_windows(tiny_tokenizer, TextSpec(), WindowSpec(seq_len=64, max_windows=2))
    prov = w.provenance
    assert prov["source"].startswith("Python documentation topics")
    assert prov["split"] == "evaluation" and prov["windows"] == 2 and prov["scored_tokens"] == 126
    assert len(prov["sha256"]) == 16


def test_special_tokens_are_not_added_inside_the_text(tiny_tokenizer):
    w = load_windows(tiny_tokenizer, TextSpec(), WindowSpec(seq_len=32, max_windows=1))
    assert tiny_tokenizer.bos_token_id not in w.input_ids[0].tolist()
