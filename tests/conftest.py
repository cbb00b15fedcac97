"""Shared fixtures: tiny models built from a config, with a tokenizer trained here.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in a fraction of
a second on the built-in corpus, and the models are randomly initialised Llama
(grouped-query attention) and GPT-2 (Conv1D, fused qkv) with a few layers.
Tests marked `integration` use the real built-in model instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests must never reach a hub; keep the suite hermetic and fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_VOCAB = 384


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from compress.data import _builtin_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_builtin_text()[:200_000]], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _train_tokenizer()


def tiny_llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=0, pad_token_id=0,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tiny_gpt2_config(vocab_size: int, **overrides):
    from transformers import GPT2Config

    cfg = dict(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=512,
               bos_token_id=1, eos_token_id=0)
    cfg.update(overrides)
    return GPT2Config(**cfg)


def save_tiny(path: Path, config, tokenizer, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny Llama (2 layers, 4 query heads in 2 KV groups, MLP width 128)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), tiny_llama_config(len(tiny_tokenizer)), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny GPT-2 (Conv1D projections with a fused qkv)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), tiny_gpt2_config(len(tiny_tokenizer)), tiny_tokenizer)


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model_dir(request, tiny_llama_dir, tiny_gpt2_dir) -> Path:
    """Each test using this runs on both architectures."""
    return tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir


@pytest.fixture
def tiny_llama(tiny_llama_dir):
    from compress.models import load_artifact

    return load_artifact(str(tiny_llama_dir))


@pytest.fixture
def tiny_gpt2(tiny_gpt2_dir):
    from compress.models import load_artifact

    return load_artifact(str(tiny_gpt2_dir))


@pytest.fixture
def text_file(tmp_path) -> Path:
    """A local .txt file of real prose (a slice of the built-in corpus), long enough to split."""
    from compress.data import _builtin_text

    path = tmp_path / "text.txt"
    path.write_text(_builtin_text()[:60_000])
    return path


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def one_thread_fresh_calibration():
    """For pass tests: one torch thread, and no calibration statistics cached by an earlier test."""
    from compress.passes.calibration import clear_cache

    # Tiny models: one thread is fastest, and on a loaded machine two threads can be 100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_cache()  # statistics are cached per model and windows
    yield
    torch.set_num_threads(threads)


def state_dict_copy(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} changed"


def run_killed_in_step(monkeypatch, trainer, step: int) -> None:
    """Run `trainer` with a simulated kill (KeyboardInterrupt) at the start of optimizer step `step`."""
    from compress.distill import Trainer

    original = Trainer.train_step

    def killed(self):
        if self.step == step - 1:
            raise KeyboardInterrupt("simulated kill")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", killed)
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.run(final_eval=False)
    finally:
        monkeypatch.setattr(Trainer, "train_step", original)


class WorkersStarted(Exception):
    """Raised by `stop_at_workers`'s stand-in runner: the bench got as far as starting its workers."""


@pytest.fixture
def stop_at_workers(monkeypatch):
    """install(module, name): replace a bench's process runner class by one that records the scratch
    directory it is given and stops the run (WorkersStarted); returns the dict it records into."""
    def install(module, name: str) -> dict:
        seen = {}

        class Capture:
            def __init__(self, scratch, *args, **kwargs):
                seen["scratch"] = scratch
                raise WorkersStarted

        monkeypatch.setattr(module, name, Capture)
        return seen

    return install
