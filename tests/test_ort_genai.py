"""The fast ONNX Runtime graph (onnxruntime-genai's builder): export, whole-window logits, generator, refusals.

The graphs are built once per precision (module-scoped) from a tiny Llama with
grouped-query attention (4 query heads in 2 KV groups) whose weights are large
enough that greedy generation does not repeat one token, so agreement means
something. Each build runs the real builder in a child process.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from compress.errors import UserError
from compress.evaluate import compare
from compress.genai_model import GenaiCausalLM
from compress.models import load_artifact
from compress.passes import OrtGenaiExport
from compress.saving import save_artifact

from conftest import save_tiny, tiny_llama_config

og = pytest.importorskip("onnxruntime_genai")


def windows(n: int = 2, seq_len: int = 48):
    from compress.data import WindowSpec, make_windows

    tokens = torch.randint(3, 380, (n * seq_len,), generator=torch.Generator().manual_seed(0)).tolist()
    return make_windows(tokens, WindowSpec(seq_len=seq_len, max_windows=n))


@pytest.fixture(scope="module")
def lively_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny GQA Llama with tied embeddings and weights big enough for varied greedy output."""
    config = tiny_llama_config(len(tiny_tokenizer), initializer_range=0.3)
    return save_tiny(tmp_path_factory.mktemp("lively-llama"), config, tiny_tokenizer)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, lively_llama_dir, tiny_llama_dir):
    """Saved outputs of ort_genai_export per precision, built on first use.

    fp32 comes from the lively model (exactness and generation); int8/int4 from the
    default tiny Llama, whose small weights quantize as a trained model's do (at the
    lively model's scale 4 bits lose everything, which would test nothing).
    """
    built = {}

    def get(precision: str, **config):
        key = (precision, tuple(sorted(config.items())))
        if key not in built:
            source = lively_llama_dir if precision == "fp32" else tiny_llama_dir
            result = OrtGenaiExport(precision=precision, **config)(load_artifact(str(source)))
            built[key] = (save_artifact(result, tmp_path_factory.mktemp(f"genai-{precision}") / "out"), result)
        return built[key]

    return get


def graph_ops(directory) -> dict[str, list[int]]:
    """op type -> the `bits` attribute of each node of that type (0 where it has none)."""
    import onnx

    found: dict[str, list[int]] = {}
    for node in onnx.load(str(directory / "model.onnx"), load_external_data=False).graph.node:
        bits = next((a.i for a in node.attribute if a.name == "bits"), 0)
        found.setdefault(node.op_type, []).append(bits)
    return found


def torch_greedy(model, ids, new_tokens):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_fp32_graph_equals_pytorch_on_whole_windows_and_in_greedy_generation(exported, lively_llama_dir):
    from transformers import AutoModelForCausalLM

    out, _ = exported("fp32")
    ops = graph_ops(out)
    # The fused graph: grouped-query attention (rotary inside), fused skip + RMS norms, one packed QKV per layer.
    assert len(ops["GroupQueryAttention"]) == 2 and "SkipSimplifiedLayerNormalization" in ops
    assert "MatMulNBits" not in ops
    torch_model = AutoModelForCausalLM.from_pretrained(lively_llama_dir).eval()
    w = windows()
    with torch.no_grad():
        ref = torch_model(input_ids=w.input_ids).logits
    graph = GenaiCausalLM(out, owned=False)
    torch.testing.assert_close(graph(w.input_ids, torch.ones_like(w.input_ids)), ref, atol=1e-4, rtol=1e-4)
    q = compare(torch_model, graph, w)
    assert q["kl_mean"] < 1e-6 and q["top1_agreement"] == 1.0

    ids = w.input_ids[:1, :20]
    expected = torch_greedy(torch_model, ids, 12)
    assert len(set(expected)) > 3  # a generation worth comparing
    assert graph.generate_greedy(ids, 12) == expected


def test_structured_pruned_and_layer_dropped_outputs_export_exactly(tiny_tokenizer, tmp_path,
                                                                   one_thread_fresh_calibration):
    """Heads and MLP channels removed (with bias compensation, so the MLPs get biases), then a block dropped."""
    from transformers import AutoModelForCausalLM

    from compress.passes import ChannelPrune, HeadPrune, LayerDrop, PassContext
    from compress.passes.base import CalibrationData

    source = save_tiny(tmp_path / "three", tiny_llama_config(len(tiny_tokenizer), num_hidden_layers=3,
                                                            initializer_range=0.3), tiny_tokenizer)
    ctx = PassContext(calibration=CalibrationData(samples=2, seq_len=32))
    pruned = ChannelPrune(ratio=0.25, importance="activation", bias_compensation=True)(load_artifact(str(source)), ctx)
    pruned = LayerDrop(count=1)(HeadPrune(ratio=0.5, importance="magnitude")(pruned, ctx), ctx)
    config = pruned.model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (2, 2, 96)
    assert config.mlp_bias
    saved = save_artifact(pruned, tmp_path / "pruned")
    out = save_artifact(OrtGenaiExport(precision="fp32")(load_artifact(str(saved))), tmp_path / "genai")
    torch_model = AutoModelForCausalLM.from_pretrained(saved).eval()
    w = windows()
    with torch.no_grad():
        ref = torch_model(input_ids=w.input_ids).logits
    torch.testing.assert_close(GenaiCausalLM(out, owned=False)(w.input_ids), ref, atol=1e-4, rtol=1e-4)
    manifest = json.loads((out / "compress.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["channel_prune", "head_prune", "layer_drop", "ort_genai_export"]


def test_quantized_graphs_use_matmulnbits_with_a_shared_quantized_head_and_stay_close(exported, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    torch_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    kl = {}
    for precision, bits in (("int8", 8), ("int4", 4)):
        out, result = exported(precision)
        ops = graph_ops(out)
        assert set(ops["MatMulNBits"]) == {bits} and len(ops["MatMulNBits"]) == 2 * 5 + 1  # qkv o gate up down, head
        assert ops["GatherBlockQuantized"] == [bits]  # the embedding reads the head's quantized weight
        assert "MatMul" not in ops
        metrics = result.passes[-1]["metrics"]
        assert metrics["accuracy_levels"] == [4] and metrics["builder"]["version"] == og.__version__
        q = compare(torch_model, GenaiCausalLM(out, owned=False), windows())
        # A graph that computed something else (wrong rows, wrong scales) sits near KL 2 on this model.
        assert q["kl_mean"] < 0.01 and q["top1_agreement"] > 0.95
        kl[precision] = q["kl_mean"]
    assert 0 < kl["int8"] < kl["int4"]  # the bit widths are real: fewer bits, more divergence


def test_int4_can_keep_the_tied_head_at_8_bits(exported):
    out, _ = exported("int4", head_precision="int8")
    ops = graph_ops(out)
    assert sorted(set(ops["MatMulNBits"])) == [4, 8] and ops["MatMulNBits"].count(8) == 1
    assert ops["GatherBlockQuantized"] == [8]


def test_output_loads_with_stock_onnxruntime_genai_and_carries_the_manifest(exported):
    out, _ = exported("int8")
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=12, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([[5, 17, 42, 99]], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) == 12
    manifest = json.loads((out / "compress.json").read_text())
    record = manifest["passes"][-1]
    assert record["name"] == "ort_genai_export" and record["config"]["precision"] == "int8"
    assert record["metrics"]["generation_match"] >= 0.5
    assert record["metrics"]["genai_tokenizer"] == {"ids_differ_on": [], "text_differs_on": []}
    assert (out / "config.json").is_file() and (out / "genai_config.json").is_file()


def test_a_gguf_style_tokenizer_json_is_rewritten_so_onnxruntime_genai_reads_it_like_transformers(exported, tmp_path):
    """The built-in model's tokenizer.json mixes SentencePiece decoder steps into a byte-level BPE."""
    from transformers import AutoTokenizer

    from compress.genai_tokenizer import SAMPLE_TEXT, genai_tokenizer_agrees, simplify_byte_level_decoder

    out, _ = exported("int8")
    copy = shutil.copytree(out, tmp_path / "copy")
    spec = json.loads((copy / "tokenizer.json").read_text())
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, spec["decoder"]]}
    spec["model"]["byte_fallback"] = True
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    hf = AutoTokenizer.from_pretrained(copy)
    ids = hf(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    assert hf.decode(ids) == SAMPLE_TEXT  # transformers reads the mixed file correctly
    assert genai_tokenizer_agrees(og.Model(str(copy)), hf)["ids_differ_on"]  # onnxruntime-genai does not

    assert simplify_byte_level_decoder(copy)
    hf_after = AutoTokenizer.from_pretrained(copy)
    assert hf_after(SAMPLE_TEXT, add_special_tokens=False)["input_ids"] == ids and hf_after.decode(ids) == SAMPLE_TEXT
    assert genai_tokenizer_agrees(og.Model(str(copy)), hf_after) == {"ids_differ_on": [], "text_differs_on": []}
    assert not simplify_byte_level_decoder(copy)  # already plain: nothing to do


# ---------------------------------------------------------------- refusals, one line each, before any build


def test_gpt2_is_refused_in_one_line(tiny_gpt2):
    with pytest.raises(UserError, match=r"does not export GPT2LMHeadModel .*compress export onnx") as info:
        OrtGenaiExport()(tiny_gpt2)
    assert "\n" not in str(info.value)


def test_layers_of_different_widths_are_refused(tiny_llama):
    from compress.passes import ChannelPrune

    pruned = ChannelPrune(ratio=0.25, importance="magnitude", layer_ratios={0: 0.5})(tiny_llama)
    with pytest.raises(UserError, match=r"layers differ in width \(MLP widths 64\.\.96\)"):
        OrtGenaiExport()(pruned)


@pytest.mark.parametrize("config, message", [
    ({"precision": "int2"}, "precision: Input should be 'fp32', 'int8' or 'int4'"),
    ({"block_size": 48}, "block_size must be a power of two"),
    ({"accuracy_level": 5}, "accuracy_level"),
])
def test_bad_configs_are_refused_before_any_work(config, message):
    from compress.passes.base import build_pass

    with pytest.raises(UserError, match=message):
        build_pass("ort_genai_export", config)


@pytest.mark.parametrize("config, message", [
    ({"precision": "int8", "algorithm": "k_quant"}, "k-quant path writes 4-bit weights even at int8"),
    ({"precision": "fp32", "head_precision": "int8"}, "head_precision int8 is for precision int4"),
])
def test_combinations_the_builder_gets_wrong_are_refused(tiny_llama, config, message):
    with pytest.raises(UserError, match=message):
        OrtGenaiExport(**config)(tiny_llama)


def test_a_block_size_that_does_not_divide_the_hidden_size_is_refused_for_a_shared_embedding(tiny_llama):
    # The built-in model's 576 with block 128 gives a graph ONNX Runtime cannot run; tiny's 64 with 128 likewise.
    with pytest.raises(UserError, match="block_size 128 does not divide the hidden size 64"):
        OrtGenaiExport(block_size=128)(tiny_llama)


def test_quantized_inputs_are_refused(tiny_llama):
    from compress.passes import BnbQuantize

    with pytest.raises(UserError, match=r"already quantized \(bitsandbytes\)"):
        OrtGenaiExport()(BnbQuantize(method="int8")(tiny_llama))


def test_a_genai_directory_is_refused_as_a_pytorch_model(exported):
    out, _ = exported("int8")
    with pytest.raises(UserError, match="is an onnxruntime-genai graph .*PyTorch checkpoint it was made from"):
        load_artifact(str(out))


def test_cli_refuses_gpt2_and_an_unknown_precision_in_one_line(tiny_gpt2_dir, tmp_path, capsys):
    from compress.cli import main

    code = main(["export", "ort-genai", str(tiny_gpt2_dir), "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "does not export GPT2LMHeadModel" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()
    assert main(["export", "ort-genai", str(tiny_gpt2_dir), "-o", str(tmp_path / "y"), "--precision", "int3"]) == 2


# ---------------------------------------------------------------- the bench backend


def test_bench_backend_reports_every_metric_through_the_genai_generator(tiny_llama_dir, tmp_path):
    """The variant is built by the bench itself from a pass entry, as a suite would, then chosen by its format."""
    from compress.bench import Suite, run_bench

    suite = Suite.from_dict({
        "base": str(tiny_llama_dir),
        "settings": {"prompt_lens": [8, 16], "new_tokens": 6, "repeats": 2, "warmup_tokens": 2, "threads": 1,
                     "prefill_repeats": 2},
        "evaluation": {"source": "builtin", "split": "evaluation", "windows": 2, "seq_len": 32},
        "sample": {"new_tokens": 5},
        "variants": [{"name": "genai-int8", "passes": [{"ort_genai_export": {"precision": "int8"}}]}],
    })
    report = run_bench(suite, tmp_path / "report", isolation="fork")
    base, v = (next(x for x in report["variants"] if x["name"] == n) for n in ("base", "genai-int8"))
    assert v["status"] == "ok", v["errors"]
    assert v["backend"] == "ort-genai"  # chosen from the directory's format
    sp, q = v["speed"], v["quality"]
    assert 0 < sp["load_s"]["min"] and sp["peak_rss_bytes"]["min"] > 10e6
    for p in sp["prompts"]:
        assert 0 < p["prefill_ms"]["min"] <= p["prefill_ms"]["max"] and p["decode_steps"] == 5
        assert p["decode_tokens_per_s"]["min"] > 0 and 0 < p["per_token_ms"]["p50"] <= p["per_token_ms"]["p99"]
    assert all(len(r["prompts"][0]["decode_step_s"]) == 5 for r in sp["runs"])
    # Same prompt ids (the transformers tokenizer) and greedy decoding: the same first tokens as PyTorch.
    assert [r["prompts"][0]["first_tokens"] for r in sp["runs"]][0] == base["speed"]["runs"][0]["prompts"][0]["first_tokens"]
    assert q["tokens"] == 2 * 31 and 0 < q["kl_mean"] < 0.01 and q["top1_agreement"] > 0.9
    assert isinstance(q["sample"], str) and q["sample"]
    assert v["size"]["weights_bytes"] > 0 and v["ratios"]["decode_speedup"] > 0


def test_bench_backend_refuses_what_it_cannot_run_in_one_line(exported, tiny_llama_dir):
    from compress.bench.backends import check_available, detect_backend

    out, _ = exported("int8")
    assert detect_backend(out) == "ort-genai" and detect_backend(tiny_llama_dir) == "pytorch"
    with pytest.raises(UserError, match="has no genai_config.json"):
        check_available("ort-genai", "cpu", "float32", tiny_llama_dir)
    with pytest.raises(UserError, match="--dtype bfloat16 applies to the pytorch backend only"):
        check_available("ort-genai", "cpu", "bfloat16", out)
    with pytest.raises(UserError, match="runs on cpu, not cuda"):
        check_available("ort-genai", "cuda", "float32", out)


# ---------------------------------------------------------------- the built-in model


@pytest.mark.integration
def test_builtin_model_int8_keeps_quality_and_answers_through_stock_onnxruntime_genai(tmp_path):
    from transformers import AutoTokenizer

    from compress.recipe import EvaluationData

    base = load_artifact("smollm2-135m-instruct")
    result = OrtGenaiExport(precision="int8")(base)
    out = save_artifact(result, tmp_path / "int8")
    metrics = result.passes[-1]["metrics"]
    assert metrics["quantized_ops"] == {"MatMulNBits/8bit": 30 * 5 + 1, "GatherBlockQuantized/8bit": 1}
    # Decoding agrees everywhere; encoding only splits "\n  " differently (onnxruntime-extensions' regex).
    assert metrics["genai_tokenizer"] == {"ids_differ_on": ["newline then spaces"], "text_differs_on": []}
    assert metrics["onnx_bytes"] < 0.35 * 4 * 134.5e6  # 8-bit weights plus scales, the head stored once

    windows = EvaluationData(source="builtin", windows=4, seq_len=1024).load(base.tokenizer)
    q = compare(base.model, GenaiCausalLM(out, owned=False), windows)
    print(f"\nbuilt-in int8 vs PyTorch, builtin evaluation 4 x 1024: KL {q['kl_mean']:.5f}, "
          f"top-1 {q['top1_agreement']:.4f}, perplexity {q['perplexity_base']:.3f} -> {q['perplexity']:.3f}")
    assert q["kl_mean"] <= 0.005 and q["top1_agreement"] >= 0.96

    # What a user of stock onnxruntime-genai does, its own tokenizer included: the same prompt ids as
    # transformers', the same greedy tokens as our generator, and the same text when decoded.
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    hf_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    model = og.Model(str(out))
    og_tok = og.Tokenizer(model)
    ids = og_tok.encode(prompt)
    assert [int(i) for i in ids] == hf_ids
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 16, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    new = [int(i) for i in generator.get_sequence(0)[len(ids):]]
    assert new == GenaiCausalLM(out, owned=False).generate_greedy(hf_ids, len(new))
    text = og_tok.decode(new)
    assert text == tok.decode(new) and "Ġ" not in text and len(text.split()) > 3


def test_the_runner_sizes_the_generator_to_the_reserved_length(exported):
    """onnxruntime-genai allocates key/value buffers for max_length up front: exactly what the run needs."""
    from compress.bench.ort_genai import GenaiRunner

    out, _ = exported("int8")
    runner = GenaiRunner(GenaiCausalLM(out, owned=False))
    prompt = torch.tensor([[5, 17, 42, 99, 7]])
    runner.reserve(prompt.shape[1] + 3)
    token, generator = runner.prefill(prompt)
    for _ in range(2):
        assert not generator.is_done()
        token, generator = runner.step(token, generator)
    assert generator.is_done() and len(generator.get_sequence(0)) == prompt.shape[1] + 3
