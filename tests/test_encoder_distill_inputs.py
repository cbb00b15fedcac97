"""embedding_distill's extra inputs: random word runs of the training text, other texts, and masked tokens."""

from __future__ import annotations

import pytest
import torch
from encoder_fixtures import bert_tokenizer, tiny_bert, tiny_bert_dir  # noqa: F401

from compress.passes.base import CalibrationData, PassContext, build_pass  # first: it registers the passes
from compress.encoders.distill import mask_tokens, training_sentences  # noqa: E402  (isort: skip)
from compress.encoders.sentences import random_passages, random_vocabulary_passages, vocabulary_words  # noqa: E402
from compress.data import TextSpec  # noqa: E402
from compress.errors import UserError  # noqa: E402
from compress.recipe import Recipe, run_recipe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")

TEXT = ("= A heading =\n\n"
        "The first paragraph has exactly ten words in it, no more.\n\n"
        "def f(x):\n    return x + 1\n\n"
        "A second paragraph, also prose, runs across two lines\nof the file and ends here.\n")


def test_passages_are_runs_of_consecutive_words_from_one_paragraph():
    paragraphs = [" ".join(p.split()) for p in TEXT.split("\n\n")[1:]]
    passages = random_passages(TEXT, 200, min_words=3, max_words=8, seed=1)
    assert len(passages) == 200
    for passage in passages:
        assert 3 <= len(passage.split()) <= 8
        assert any(passage in p for p in paragraphs), passage
    assert not any("heading" in p for p in passages)  # WikiText-style headings are not text
    assert any("return" in p for p in passages)  # code is kept: the sentence filter's leftovers are input too


def test_passages_depend_on_the_seed_alone():
    assert random_passages(TEXT, 50, seed=3) == random_passages(TEXT, 50, seed=3)
    assert random_passages(TEXT, 50, seed=3) != random_passages(TEXT, 50, seed=4)


def test_a_text_without_long_enough_paragraphs_gives_no_passages():
    assert random_passages("too short\n\nalso short", 10, min_words=4) == []


def test_vocabulary_words_are_whole_words_of_letters_without_special_tokens_or_pieces(bert_tokenizer):
    words = vocabulary_words(bert_tokenizer)
    assert words and words == sorted(set(words))
    assert all(w.isalpha() and len(w) >= 2 for w in words)
    vocab = bert_tokenizer.get_vocab()
    assert all(w in vocab for w in words)  # each one is a token of its own, so it reaches that token's embedding
    assert not {t.strip("[]").lower() for t in bert_tokenizer.all_special_tokens} & {w.lower() for w in words}


def test_vocabulary_passages_draw_their_words_from_the_list_by_the_seed_alone():
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    passages = random_vocabulary_passages(words, 100, min_words=2, max_words=6, seed=5)
    assert len(passages) == 100
    assert all(2 <= len(p.split()) <= 6 and set(p.split()) <= set(words) for p in passages)
    assert passages == random_vocabulary_passages(words, 100, min_words=2, max_words=6, seed=5)
    assert passages != random_vocabulary_passages(words, 100, min_words=2, max_words=6, seed=6)
    assert random_vocabulary_passages([], 10) == []


def test_masking_replaces_only_real_non_special_tokens_at_about_the_share():
    ids = torch.tensor([[101] + list(range(1000, 1400)) + [102, 0, 0]])
    mask = torch.tensor([[1] * 402 + [0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask}
    out = mask_tokens(batch, 0.25, mask_id=103, special_ids=[0, 101, 102, 103],
                      generator=torch.Generator().manual_seed(0))
    changed = out["input_ids"] != ids
    assert torch.equal(out["attention_mask"], mask) and torch.equal(batch["input_ids"], ids)  # the input is kept
    assert (out["input_ids"][changed] == 103).all()
    assert not changed[0, 0] and not changed[0, 401] and not changed[0, 402:].any()  # [CLS], [SEP], padding
    assert 0.18 < changed.sum().item() / 400 < 0.32


def test_distillation_trains_on_sentences_plus_passages_with_masking(tiny_bert, tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(f"Paragraph {i} says that the loop runs once for every item in the list, "
                                f"and then the function returns its value number {i}." for i in range(12)))
    ctx = PassContext(CalibrationData(source=str(text), samples=2, seq_len=64))
    trained = build_pass("embedding_distill", {"steps": 3, "batch_size": 4, "seq_len": 32, "passages": 30,
                                                "vocabulary_passages": 20, "mask_share": 0.2,
                                                "warmup_steps": 0})(tiny_bert, ctx)
    data = trained.passes[-1]["metrics"]["train_data"]
    assert data["passages"] == 30 and data["sentences"] >= 2
    assert data["vocabulary_passages"] == 20 and data["vocabulary_words"] > 0


def test_masking_without_a_mask_token_is_refused_in_one_line(tiny_bert, monkeypatch):
    monkeypatch.setattr(type(tiny_bert.tokenizer), "mask_token_id", property(lambda self: None), raising=False)
    ctx = PassContext(CalibrationData(samples=2, seq_len=64))
    with pytest.raises(UserError, match="mask token") as err:
        build_pass("embedding_distill", {"steps": 1, "batch_size": 2, "seq_len": 32, "mask_share": 0.1})(tiny_bert, ctx)
    assert "\n" not in str(err.value)


HORSE = "Paragraph {i} tells how the horse crossed the river, and then the horse rested there for day number {i}."
HERON = "Passage {i} shows a heron wading in reeds, so each heron waits quietly beside shallow water until night {i}."
HERON_WORDS = {w.strip(",.").lower() for w in HERON.split() if "{" not in w}  # no word of HORSE but the number


def _prose(path, template: str, paragraphs: int = 12):
    path.write_text("\n\n".join(template.format(i=i) for i in range(paragraphs)))
    return path


def test_extra_text_adds_its_sentences_and_a_share_of_the_passages(bert_tokenizer, tmp_path):
    calibration = CalibrationData(source=str(_prose(tmp_path / "cal.txt", HORSE)), split="calibration")
    extra = TextSpec(source=str(_prose(tmp_path / "extra.txt", HERON)), split="all")
    plain = training_sentences(bert_tokenizer, calibration, 32, passages=400, seed=2)
    data = training_sentences(bert_tokenizer, calibration, 32, passages=400, seed=2, extra_text=[extra])
    assert len(data) == len(plain) + 12  # the extra text's 12 sentences; as many passages as asked
    assert data.provenance["passages"] == 400 and data.provenance["sentences"] == plain.provenance["sentences"]
    [record] = data.provenance["extra_text"]
    assert record["source"] == extra.source and record["split"] == "all" and record["sentences"] == 12

    def words(row) -> set[str]:  # the tiny tokenizer has no decoder: join its word pieces here
        return set(" ".join(bert_tokenizer.convert_ids_to_tokens(row)).replace(" ##", "").split())

    def from_extra(batches, rows):
        return sum(bool(HERON_WORDS & words(batches.input_ids[r])) for r in rows)

    assert from_extra(plain, range(len(plain))) == 0
    # passages come from both texts by their length: the extra text (all of its file) has 12 of the 17 paragraphs
    assert 0.55 * 400 < from_extra(data, range(len(data) - 400, len(data))) < 0.85 * 400


def test_distillation_records_its_extra_text_in_the_manifest(tiny_bert, tmp_path):
    ctx = PassContext(CalibrationData(source=str(_prose(tmp_path / "cal.txt", HORSE)), samples=2, seq_len=64))
    extra = {"source": str(_prose(tmp_path / "extra.txt", HERON)), "split": "all"}
    trained = build_pass("embedding_distill", {"steps": 2, "batch_size": 4, "seq_len": 32, "warmup_steps": 0,
                                                "passages": 10, "extra_text": [extra]})(tiny_bert, ctx)
    record = trained.passes[-1]
    assert record["config"]["extra_text"][0]["source"] == extra["source"]
    assert record["metrics"]["train_data"]["extra_text"][0]["sentences"] == 12


def test_extra_text_without_a_split_is_refused_in_one_line():
    with pytest.raises(UserError, match="split") as err:
        build_pass("embedding_distill", {"extra_text": [{"source": "wikipedia-leads"}]})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("extra, evaluation", [
    ({"source": "wikipedia-leads", "split": "evaluation"}, {"source": "mixed", "split": "evaluation"}),
    ({"source": "builtin", "split": "all"}, {"source": "builtin", "split": "evaluation"}),
])
def test_extra_text_that_overlaps_the_evaluation_text_is_refused_before_any_work(tiny_bert_dir, extra, evaluation,
                                                                                  monkeypatch):
    import compress.recipe

    monkeypatch.setattr(compress.recipe, "load_artifact", lambda *a, **k: pytest.fail("the model was loaded"))
    recipe = Recipe.from_dict({"evaluation": evaluation,
                               "passes": [{"embedding_distill": {"steps": 1, "extra_text": [extra]}}]})
    with pytest.raises(UserError, match="extra_text .* overlaps the evaluation text") as err:
        run_recipe(recipe, model=str(tiny_bert_dir))
    assert "\n" not in str(err.value)


def test_extra_text_the_other_part_of_the_evaluation_text_is_allowed():
    distill = build_pass("embedding_distill", {"extra_text": [{"source": "wikipedia-leads", "split": "evaluation"}]})
    distill.check_evaluation(TextSpec(source="wikipedia-leads", split="calibration"))
    distill.check_evaluation(TextSpec(source="builtin", split="evaluation"))
