"""The named offline corpora: wikipedia-leads (shipped in the package) and mixed (it and builtin, interleaved)."""

from __future__ import annotations

import pytest

from compress.corpora import CORPORA, interleave
from compress.data import TextSpec, check_disjoint, domain_relation, load_text, read_source
from compress.errors import UserError


def _paragraphs(text: str) -> set[str]:
    return {p.strip() for p in text.split("\n\n") if p.strip()}


def test_wikipedia_leads_loads_offline_from_the_package_and_names_its_licence(monkeypatch):
    # No network is involved: make any attempt to reach one fail loudly.
    import socket

    monkeypatch.setattr(socket, "socket", lambda *a, **k: (_ for _ in ()).throw(OSError("no network in this test")))
    text = load_text(TextSpec(source="wikipedia-leads", split="calibration"))
    assert len(text.text) > 300_000
    assert text.provenance["licence"].startswith("CC BY-SA 4.0")
    assert "Wikipedia" in text.provenance["source"]
    assert len(_paragraphs(text.text)) > 500, "one lead section per paragraph"


@pytest.mark.parametrize("source", ["builtin", "wikipedia-leads", "mixed"])
def test_every_named_corpus_reports_its_licence_and_splits_the_same_way_every_time(source):
    first = load_text(TextSpec(source=source, split="calibration"))
    again = load_text(TextSpec(source=source, split="calibration"))
    assert first.provenance["sha256"] == again.provenance["sha256"] and first.text == again.text
    assert first.provenance["licence"] == CORPORA[source].licence


def test_wikipedia_leads_parts_cover_the_text_as_it_repeats_no_lead():
    full = read_source(TextSpec(source="wikipedia-leads"))
    evaluation = load_text(TextSpec(source="wikipedia-leads", split="evaluation")).text
    calibration = load_text(TextSpec(source="wikipedia-leads", split="calibration")).text
    assert evaluation + calibration == full


@pytest.mark.parametrize("source", ["builtin", "wikipedia-leads"])
def test_a_corpus_calibration_part_is_its_second_part_less_any_paragraph_its_evaluation_part_holds(source):
    full = read_source(TextSpec(source=source))
    evaluation = load_text(TextSpec(source=source, split="evaluation")).text
    calibration = load_text(TextSpec(source=source, split="calibration")).text
    assert full.startswith(evaluation) and evaluation.endswith("\n")
    rest = _paragraphs(full[len(evaluation):])
    assert _paragraphs(calibration) == rest - _paragraphs(evaluation)
    assert not _paragraphs(calibration) & _paragraphs(evaluation)


def test_the_builtin_corpus_repeats_paragraphs_across_its_halves_which_calibration_leaves_out():
    # Python's topic pages quote each other; without the filter a calibration sample would hold evaluation text.
    full = read_source(TextSpec(source="builtin"))
    evaluation = load_text(TextSpec(source="builtin", split="evaluation")).text
    repeated = _paragraphs(full[len(evaluation):]) & _paragraphs(evaluation)
    assert sum(len(p) for p in repeated) > 10_000


def test_mixed_calibration_shares_no_paragraph_with_any_evaluation_part():
    mixed_cal = _paragraphs(load_text(TextSpec(source="mixed", split="calibration")).text)
    for source in ("builtin", "wikipedia-leads", "mixed"):
        evaluation = _paragraphs(load_text(TextSpec(source=source, split="evaluation")).text)
        assert not mixed_cal & evaluation, f"mixed calibration overlaps {source}'s evaluation part"


def test_mixed_holds_both_members_in_equal_measure_from_its_first_characters():
    members = {name: _paragraphs(load_text(TextSpec(source=name, split="calibration")).text)
               for name in ("builtin", "wikipedia-leads")}
    head = load_text(TextSpec(source="mixed", split="calibration")).text[:60_000]  # about one calibration sample set
    chars = {name: sum(len(p) for p in _paragraphs(head) if p in paras) for name, paras in members.items()}
    assert min(chars.values()) > 0.4 * sum(chars.values())


def test_interleave_takes_from_whichever_text_has_given_fewest_characters():
    assert interleave(["a1\n\na2\n\na3", "bbbbbb1\n\nbbbbbb2"]) == "a1\n\nbbbbbb1\n\na2\n\na3\n\nbbbbbb2"
    assert interleave(["only\n\nthis", ""]) == "only\n\nthis"


def test_a_mix_and_its_members_are_checked_for_overlap_like_one_corpus():
    mixed_cal = TextSpec(source="mixed", split="calibration")
    check_disjoint(mixed_cal, TextSpec(source="builtin", split="evaluation"))
    check_disjoint(mixed_cal, TextSpec(source="wikipedia-leads", split="evaluation"))
    with pytest.raises(UserError, match="one holds the other"):
        check_disjoint(TextSpec(source="mixed", split="all"), TextSpec(source="builtin", split="evaluation"))
    with pytest.raises(UserError, match="would overlap"):
        check_disjoint(mixed_cal, TextSpec(source="wikipedia-leads", split="calibration"))
    with pytest.raises(UserError, match="would overlap"):
        check_disjoint(mixed_cal, TextSpec(source="builtin", split="evaluation", eval_fraction=0.4))


def test_domain_relation_says_whether_calibration_and_evaluation_share_a_corpus(text_file):
    evaluation = TextSpec(source="builtin", split="evaluation")
    assert domain_relation(TextSpec(source="builtin", split="calibration"), evaluation) == "same corpus"
    assert domain_relation(TextSpec(source="mixed", split="calibration"), evaluation) == "shares a corpus"
    assert domain_relation(TextSpec(source="wikipedia-leads", split="calibration"), evaluation) == "different corpora"
    assert domain_relation(TextSpec(source=str(text_file), split="calibration"), evaluation) == "different corpora"


def test_the_default_calibration_is_mixed_and_never_overlaps_the_default_evaluation():
    from compress.passes.base import CalibrationData
    from compress.recipe import EvaluationData

    calibration, evaluation = CalibrationData(), EvaluationData()
    assert calibration.source == "mixed" and calibration.split == "calibration"
    check_disjoint(calibration, evaluation)
    assert domain_relation(calibration, evaluation) == "shares a corpus"
