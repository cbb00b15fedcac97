"""The encoder quality measures, the sentences they are taken on, and what each one notices."""

from __future__ import annotations

import pytest
import torch
from encoder_fixtures import bert_tokenizer, encoder_text, tiny_bert, tiny_bert_config, tiny_bert_dir  # noqa: F401

from compress.encoders.quality import embedding_agreement, rank, spearman, top_k_overlap
from compress.encoders.sentences import SentenceSpec, embed, load_sentences, split_sentences


@pytest.fixture
def embeddings():
    torch.manual_seed(0)
    return torch.randn(60, 16)


def test_the_base_against_itself_scores_one_on_every_measure(embeddings):
    result = embedding_agreement(embeddings, embeddings.clone())
    for key in ("cosine_mean", "cosine_p5", "cosine_min", "top10_overlap", "spearman_pairwise"):
        assert result[key] == pytest.approx(1.0, abs=1e-12), key
    assert result["sentences"] == 60 and result["pairs"] == 60 * 59 // 2


def test_a_real_encoder_against_itself_scores_one(tiny_bert, encoder_text):
    sentences = load_sentences(SentenceSpec(source=str(encoder_text), sentences=30))
    e = embed(tiny_bert.model, tiny_bert.tokenizer, sentences.texts, tiny_bert.pooling, desc=None)
    again = embed(tiny_bert.model, tiny_bert.tokenizer, sentences.texts, tiny_bert.pooling, batch_size=7, desc=None)
    result = embedding_agreement(e, again)  # another batching, so other padding: still the same embeddings
    assert result["cosine_min"] == pytest.approx(1.0, abs=1e-6)
    assert result["top10_overlap"] == 1.0 and result["spearman_pairwise"] == pytest.approx(1.0, abs=1e-6)


def test_a_rotation_keeps_neighbours_and_similarities_but_not_the_cosine_to_the_base(embeddings):
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    result = embedding_agreement(embeddings, embeddings @ q)
    assert result["top10_overlap"] == pytest.approx(1.0)
    assert result["spearman_pairwise"] == pytest.approx(1.0, abs=1e-9)
    assert result["cosine_mean"] < 0.5  # an index built from the base could not serve these embeddings


def test_noise_lowers_every_measure_and_the_tail_more_than_the_mean(embeddings):
    torch.manual_seed(1)
    result = embedding_agreement(embeddings, embeddings + 0.5 * torch.randn_like(embeddings))
    assert result["cosine_min"] <= result["cosine_p5"] <= result["cosine_mean"] < 1.0
    assert 0 < result["top10_overlap"] < 1.0 and 0 < result["spearman_pairwise"] < 1.0


def test_top_k_overlap_counts_shared_neighbours_and_never_the_query_itself():
    sims = torch.tensor([[9.0, 3, 2, 1], [3, 9, 1, 2], [2, 1, 9, 3], [1, 2, 3, 9]])
    assert top_k_overlap(sims, sims, k=1) == 1.0
    swapped = sims.clone()
    swapped[0, 1], swapped[0, 2] = 2, 3  # query 0's nearest neighbour changes; the others keep theirs
    assert top_k_overlap(sims, swapped, k=1) == pytest.approx(3 / 4)
    assert top_k_overlap(sims, swapped, k=2) == 1.0


def test_spearman_uses_average_ranks_for_ties_as_scipy_does():
    stats = pytest.importorskip("scipy.stats")
    a = torch.tensor([1.0, 2, 2, 3, 5, 5, 5, 0]).numpy()
    b = torch.tensor([2.0, 1, 4, 3, 6, 5, 5, 0]).numpy()
    assert list(rank(a)) == list(stats.rankdata(a) - 1)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert spearman(a, a ** 3) == pytest.approx(1.0)  # rank correlation: any increasing map keeps it


def test_sentences_are_split_from_paragraphs_with_headings_and_code_left_out():
    text = ("= Heading of an article =\n\nThe first sentence of a paragraph that is\nwrapped over two lines. "
            "And a second sentence follows it here!\n\n    x = [1, 2, 3] # {code} == ( ) ;;\n\n"
            "Too short.\n\nThe first sentence of a paragraph that is wrapped over two lines.")
    assert split_sentences(text) == ["The first sentence of a paragraph that is wrapped over two lines.",
                                     "And a second sentence follows it here!"]


def test_evaluation_and_calibration_sentences_come_from_disjoint_parts_of_the_text(encoder_text):
    evaluation = load_sentences(SentenceSpec(source=str(encoder_text), split="evaluation", sentences=None))
    calibration = load_sentences(SentenceSpec(source=str(encoder_text), split="calibration", sentences=None))
    assert len(evaluation) > 100 and len(calibration) > 100
    # A sentence in both halves is one the text itself repeats (the Python docs do), never a shared region.
    whole = " ".join(encoder_text.read_text().split())
    assert all(whole.count(s) >= 2 for s in set(evaluation.texts) & set(calibration.texts))
    assert evaluation.provenance["split"] == "evaluation" and len(evaluation.provenance["sentences_sha256"]) == 16


def test_asking_for_more_sentences_than_the_text_has_uses_what_there_is_and_says_so(encoder_text, caplog):
    found = load_sentences(SentenceSpec(source=str(encoder_text), sentences=100_000))
    assert 100 < len(found) < 100_000
    assert "fewer than the 100000 asked for" in caplog.text
