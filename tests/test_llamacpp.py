"""GGUF exports run in llama.cpp (llama-cpp-python) and agree with the PyTorch model they came from.

Skipped where llama-cpp-python is not installed. Logits at f32 match PyTorch's
within float rounding for Llama (dense, per-layer widths, head-pruned, layer-
dropped, with MLP biases) and GPT-2; llama.cpp's token ids equal the
tokenizer's; quantized types stay close; the pass's own check runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import save_tiny, tiny_llama_config

from compress.passes.base import CalibrationData, PassContext, build_pass

pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Numbers 0 12 345 6789 and 3.14159, dates like 2024-05-17.",
    "  Leading spaces,\ttabs\tand\nnew\n\nlines   trailing   ",
    "Unicode: naïve café, Ünïcödé, 日本語, emoji 🦙🚀.",
    "Special <|im_start|>user\nhello<|im_end|> tokens<|endoftext|>",
    "don't won't it's I'VE we'll they'd",
]


@pytest.fixture
def ctx():
    return PassContext(CalibrationData(samples=1, seq_len=32))


def load(path):
    from compress.models import load_artifact

    return load_artifact(str(path))


def exported(artifact, **config):
    """The pass's result: its model is the GGUF file run by llama.cpp."""
    config.setdefault("check", False)
    return build_pass("gguf_export", config)(artifact)


IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11, 64, 128, 200, 31, 8, 77, 300, 4]])


def assert_same_logits(artifact, result, atol=2e-3):
    with torch.inference_mode():
        want = artifact.model(IDS).logits
    got = result.model(IDS).logits
    assert got.shape == want.shape
    assert (got - want).abs().max() <= atol, float((got - want).abs().max())
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_f32_export_computes_the_same_logits_in_llama_cpp(request, arch):
    art = request.getfixturevalue(f"tiny_{arch}")
    assert_same_logits(art, exported(art, type="f32"))


def test_models_run_with_flash_attention_as_llama_cpp_itself_would(tiny_llama):
    """llama.cpp's default turns flash attention on for the CPU; llama-cpp-python's turns it off."""
    import llama_cpp

    result = exported(tiny_llama, type="f32")
    assert result.model.session(32).llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    result.model.window_logits(IDS[0].tolist())
    assert result.model.open(16, logits_all=True).context_params.flash_attn_type == \
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED


def test_llama_cpp_tokenizes_exactly_as_the_tokenizer(tiny_llama):
    from compress.llamacpp import LlamaCppTokenizer

    result = exported(tiny_llama, type="f32")
    theirs = LlamaCppTokenizer(result.model.path)
    for text in SAMPLES:
        assert theirs.encode(text) == tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"], text
        assert theirs.decode(theirs.encode(text)) == text


@pytest.fixture(scope="module")
def deep_llama_dir(tmp_path_factory, tiny_tokenizer):
    return save_tiny(tmp_path_factory.mktemp("deep"), tiny_llama_config(len(tiny_tokenizer), num_hidden_layers=4,
                                                                         num_attention_heads=6, num_key_value_heads=2),
                     tiny_tokenizer)


@pytest.mark.parametrize("passes", [
    [("channel_prune", {"ratio": 0.5, "skip_first_last": True, "importance": "magnitude"})],  # per-layer: deci
    [("channel_prune", {"ratio": 0.25, "bias_compensation": True})],  # MLP biases
    [("head_prune", {"ratio": 0.5, "mode": "groups", "importance": "magnitude"})],
    [("head_prune", {"ratio": 1 / 3, "mode": "query", "importance": "magnitude"})],
    [("layer_drop", {"count": 2})],
    [("drop_layers", {"layers": 3})],
], ids=["per-layer-widths", "mlp-bias", "kv-groups", "query-heads", "layer-drop", "student"])
def test_pruned_and_dropped_models_agree_in_llama_cpp(deep_llama_dir, ctx, passes):
    art = load(deep_llama_dir)
    for name, config in passes:
        art = build_pass(name, config)(art, ctx)
    assert_same_logits(art, exported(art, type="f32"))


def test_a_saved_per_layer_checkpoint_runs_at_its_real_widths(deep_llama_dir, ctx, tmp_path):
    from compress.saving import save_artifact

    pruned = build_pass("channel_prune", {"ratio": 0.5, "skip_first_last": True, "importance": "magnitude"})(
        load(deep_llama_dir), ctx)
    saved = load(save_artifact(pruned, tmp_path / "padded"))
    result = exported(saved, type="f32")
    assert result.passes[-1]["metrics"]["arch"] == "deci"
    assert_same_logits(pruned, result)


@pytest.mark.parametrize("kind, max_kl", [("f16", 1e-4), ("q8_0", 2e-3), ("q5_1", 2e-2), ("q4_0", 1e-1)])
def test_quantized_exports_stay_close_to_pytorch(tiny_llama, kind, max_kl):
    result = exported(tiny_llama, type=kind)
    with torch.inference_mode():
        want = F.log_softmax(tiny_llama.model(IDS).logits, -1)
    got = F.log_softmax(result.model(IDS).logits, -1)
    kl = float((want.exp() * (want - got)).sum(-1).mean())
    assert kl <= max_kl, kl


def test_ready_made_blocks_run_as_given(tiny_llama):
    """llama.cpp runs the quantizer's grid: the PyTorch model holding the same (decoded) weights agrees."""
    from gguf import GGMLQuantizationType, quants

    art = tiny_llama.copy()
    blocks = {}
    for name, param in art.model.named_parameters():
        if name.endswith("proj.weight"):
            w = param.detach().numpy()
            q = quants.quantize(w * 0.9, GGMLQuantizationType.Q8_0)  # a grid plain rounding would not choose
            with torch.no_grad():
                param.copy_(torch.from_numpy(quants.dequantize(q, GGMLQuantizationType.Q8_0).reshape(w.shape)))
            blocks[name] = ("q8_0", q)
    art.quantized_blocks = blocks
    # llama.cpp multiplies Q8_0 weights with activations rounded to Q8_0 too, hence the tolerance.
    assert_same_logits(art, exported(art, type="f32"), atol=2e-2)


def test_iq4_nl_blocks_from_gptq_run_in_llama_cpp_as_the_weights_pytorch_holds(tiny_llama, ctx):
    """llama.cpp decodes GPTQ's iq4_nl blocks to the grid values the PyTorch model holds (its q8_0 activations
    are the only difference)."""
    import gguf

    art = build_pass("gptq_quantize", {"grid": "iq4_nl"})(tiny_llama, ctx)
    result = exported(art, type="f32")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(result.model.path).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.IQ4_NL
    assert_same_logits(art, result, atol=2e-2)


def test_the_pass_checks_its_file_in_llama_cpp(tiny_gpt2):
    metrics = exported(tiny_gpt2, type="f32", check=True).passes[-1]["metrics"]["check"]
    assert metrics["checked"] and metrics["tokenizer_match"]
    assert metrics["max_abs_logit_diff"] < 1e-2 and metrics["top1_agreement"] == 1.0


def test_a_copy_of_the_exported_model_is_its_own_file(tiny_llama):
    import copy

    result = exported(tiny_llama, type="q8_0")
    clone = copy.deepcopy(result.model)
    assert clone.path != result.model.path and clone.path.read_bytes() == result.model.path.read_bytes()
    assert torch.equal(clone(IDS).logits, result.model(IDS).logits)


# ------------------------------------------------------------------------ the built-in model


@pytest.fixture(scope="module")
def builtin():
    from compress.models import load_artifact

    return load_artifact("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def builtin_windows(builtin):
    from compress.recipe import EvaluationData

    return EvaluationData(windows=2, seq_len=512).load(builtin.tokenizer)


@pytest.mark.integration
def test_builtin_model_tokenizes_the_same_in_llama_cpp(builtin):
    from compress.data import _builtin_text
    from compress.llamacpp import LlamaCppTokenizer

    result = exported(builtin, type="q4_0")
    origin = result.passes[-1]["metrics"]["tokenizer"]
    # The current conversion splits digits as llama.cpp's "smollm" pre-tokenizer does, so the
    # origin's keys are carried over unchanged; the ids below are what the export promises.
    assert origin.startswith("carried over from SmolLM2-135M-Instruct"), origin
    theirs = LlamaCppTokenizer(result.model.path)
    text = _builtin_text()[:50_000]
    assert theirs.encode(text) == builtin.tokenizer(text, add_special_tokens=False)["input_ids"]
    for sample in SAMPLES:
        assert theirs.encode(sample) == builtin.tokenizer(sample, add_special_tokens=False)["input_ids"], sample


@pytest.mark.integration
def test_builtin_model_agrees_with_pytorch_at_f32_and_q8_0(builtin, builtin_windows):
    from compress.bench.worker import ReplayLogits
    from compress.evaluate import compare

    base = ReplayLogits(builtin.model, builtin_windows, 1)  # PyTorch's logits, computed once for both
    f32 = compare(base, exported(builtin, type="f32").model, builtin_windows)
    assert f32["top1_agreement"] >= 0.99, f32
    q8 = compare(base.rewind(), exported(builtin, type="q8_0").model, builtin_windows)
    assert q8["kl_mean"] <= 0.005, q8
