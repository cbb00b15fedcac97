"""Tiny BERT-family encoders built from a config, with a WordPiece tokenizer trained here (nothing downloaded).

Import the fixtures into a test module (`from encoder_fixtures import tiny_bert_dir, ...`);
pytest finds fixtures in a module's namespace.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.data import _builtin_text


def train_wordpiece(vocab_size: int = 400):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([_builtin_text()[:100_000]],
                            trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", model_max_length=128)


def tiny_bert_config(vocab_size: int, **overrides):
    from transformers import BertConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
               intermediate_size=128, max_position_embeddings=128, type_vocab_size=2, pad_token_id=0)
    cfg.update(overrides)
    return BertConfig(**cfg)


def save_encoder(path: Path, config, tokenizer, pooling: dict | None = None, normalize: bool = True,
                 seed: int = 0) -> Path:
    """A saved random encoder; with `pooling` (a 1_Pooling config) a sentence-transformers pipeline too."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if pooling is not None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "modules.json").write_text(json.dumps(modules))
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": config.hidden_size,
                                                                    **pooling}))
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return path


MEAN_POOLING = {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}


@pytest.fixture(scope="session")
def bert_tokenizer():
    return train_wordpiece()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, bert_tokenizer) -> Path:
    """A tiny sentence-transformers BERT: 4 layers, 4 heads of 16, intermediate 128, mean pooling + Normalize."""
    return save_encoder(tmp_path_factory.mktemp("tiny-bert"), tiny_bert_config(len(bert_tokenizer)), bert_tokenizer,
                        pooling=MEAN_POOLING)


@pytest.fixture(scope="session")
def plain_bert_dir(tmp_path_factory, bert_tokenizer) -> Path:
    """A tiny BERT checkpoint without any sentence-transformers files (mean pooling is assumed)."""
    return save_encoder(tmp_path_factory.mktemp("plain-bert"), tiny_bert_config(len(bert_tokenizer)), bert_tokenizer)


@pytest.fixture
def tiny_bert(tiny_bert_dir):
    from compress.models import load_artifact

    return load_artifact(str(tiny_bert_dir))


@pytest.fixture(scope="session")
def encoder_text(tmp_path_factory) -> Path:
    """Prose with plenty of sentences in both halves (a slice of the built-in corpus)."""
    path = tmp_path_factory.mktemp("encoder-text") / "text.txt"
    path.write_text(_builtin_text()[:120_000])
    return path
