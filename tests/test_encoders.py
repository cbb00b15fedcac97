"""Encoders: the load path, the pooling carried through, and every pass round-tripping through save and stock reload."""

from __future__ import annotations

import json

import pytest
import torch
from encoder_fixtures import (MEAN_POOLING, bert_tokenizer, encoder_text, plain_bert_dir, save_encoder,  # noqa: F401
                              tiny_bert, tiny_bert_config, tiny_bert_dir)

from compress.cli import main
from compress.encoders.pooling import Pooling, pool
from compress.encoders.sentences import embed
from compress.errors import UserError
from compress.models import load_artifact
from compress.passes.base import CalibrationData, PassContext, build_pass
from compress.saving import save_artifact

pytestmark = pytest.mark.usefixtures("one_thread_fresh_calibration")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A statement is executed once per loop.",
         "Names refer to objects.", "An exception is raised when the argument has the wrong type, as described."]


@pytest.fixture
def ctx():
    return PassContext(CalibrationData(samples=2, seq_len=64))


def stock_embeddings(directory, texts=TEXTS) -> torch.Tensor:
    """Embeddings from stock libraries only: ORTModelForFeatureExtraction for ONNX, else AutoModel; pooled by hand."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    pooling_config = json.loads((directory / "1_Pooling" / "config.json").read_text())
    assert pooling_config["pooling_mode_mean_tokens"]
    normalize = any(m["type"].endswith("Normalize") for m in json.loads((directory / "modules.json").read_text()))
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    if (directory / "model.onnx").is_file():
        from optimum.onnxruntime import ORTModelForFeatureExtraction

        model = ORTModelForFeatureExtraction.from_pretrained(directory)
    else:
        model = AutoModel.from_pretrained(directory).eval()
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    return pool(torch.as_tensor(hidden), batch["attention_mask"], Pooling(normalize=normalize))


def cosine_to(base):
    """A function giving an artifact's mean embedding cosine to `base` on a few sentences."""
    from compress.encoders.quality import embedding_agreement

    texts = TEXTS * 3 + ["One more sentence so that there are enough.", "And the last one of the set."] * 2
    reference = embed(base.model, base.tokenizer, texts, base.pooling, desc=None)
    return lambda a: embedding_agreement(reference, embed(a.model, a.tokenizer, texts, a.pooling, desc=None))["cosine_mean"]


def assert_reloads(result, tmp_path, atol=1e-5):
    """Saved, the result loads with stock libraries and gives the embeddings it gave in memory."""
    out = save_artifact(result, tmp_path / "out")
    expected = embed(result.model, result.tokenizer, TEXTS, result.pooling, desc=None)
    assert torch.allclose(stock_embeddings(out), expected, atol=atol)
    return out


def test_a_bert_directory_loads_as_an_encoder_with_its_pooling(tiny_bert):
    from transformers import BertModel

    assert type(tiny_bert.model) is BertModel  # never BertLMHeadModel with a random head
    assert tiny_bert.pooling.mode == "mean" and tiny_bert.pooling.normalize
    assert tiny_bert.pooling.max_seq_length == 64


def test_a_checkpoint_without_a_pooling_config_gets_mean_pooling(plain_bert_dir, tmp_path):
    artifact = load_artifact(str(plain_bert_dir))
    assert artifact.pooling.mode == "mean" and not artifact.pooling.normalize
    assert "default" in artifact.pooling.origin
    out = save_artifact(artifact, tmp_path / "out")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    assert json.loads((out / "compress.json").read_text())["pooling"]["mode"] == "mean"


def test_the_saved_encoder_reloads_in_sentence_transformers_with_the_same_embeddings(tiny_bert, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    out = save_artifact(tiny_bert, tmp_path / "out")
    st = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    ours = embed(tiny_bert.model, tiny_bert.tokenizer, TEXTS, tiny_bert.pooling, desc=None)
    assert torch.allclose(torch.as_tensor(st.encode(TEXTS)), ours, atol=1e-5)
    assert str(type(st[2]).__name__) == "Normalize"


@pytest.mark.parametrize("pooling,mode", [({"pooling_mode_cls_token": True}, "cls"),
                                          ({"pooling_mode": "max"}, "max")])
def test_other_pooling_modes_are_read_and_written_back(tmp_path, bert_tokenizer, pooling, mode):
    d = save_encoder(tmp_path / "m", tiny_bert_config(len(bert_tokenizer)), bert_tokenizer, pooling=pooling,
                     normalize=False)
    artifact = load_artifact(str(d))
    assert artifact.pooling.mode == mode and not artifact.pooling.normalize
    assert load_artifact(str(save_artifact(artifact, tmp_path / "out"))).pooling.mode == mode


def test_a_pipeline_with_modules_compress_cannot_carry_is_refused(tmp_path, bert_tokenizer):
    d = save_encoder(tmp_path / "m", tiny_bert_config(len(bert_tokenizer)), bert_tokenizer, pooling=MEAN_POOLING)
    modules = json.loads((d / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (d / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UserError, match="Dense"):
        load_artifact(str(d))


def test_the_minilm_alias_resolves_to_the_packaged_directory():
    from compress.models import load_dir_of, resolve_source

    source = resolve_source("minilm")
    assert source.kind == "builtin" and source.ref == "all-minilm-l6-v2"
    assert (load_dir_of(source) / "config.json").is_file()
    assert (load_dir_of(source) / "modules.json").is_file()


PASSES = [
    ("magnitude_prune", {"sparsity": 0.5}),
    ("magnitude_prune", {"pattern": "2:4"}),
    ("wanda_prune", {"sparsity": 0.5}),
    ("wanda_prune", {"sparsity": 0.5, "sequential": False}),
    ("sparsegpt_prune", {"sparsity": 0.5}),
    ("channel_prune", {"ratio": 0.25}),
    ("channel_prune", {"ratio": 0.25, "skip_first_last": True}),
    ("head_prune", {"ratio": 0.5}),
    ("layer_drop", {"count": 1}),
    ("drop_layers", {"layers": 2}),
]


@pytest.mark.parametrize("name,config", PASSES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PASSES)])
def test_every_pytorch_pass_round_trips_through_save_and_stock_reload(tiny_bert, ctx, tmp_path, name, config):
    result = build_pass(name, config)(tiny_bert, ctx)
    assert_reloads(result, tmp_path)


def test_head_pruning_writes_pruned_heads_that_stock_transformers_applies(tiny_bert, ctx, tmp_path):
    from transformers import AutoModel

    result = build_pass("head_prune", {"ratio": 0.25, "importance": "magnitude"})(tiny_bert, ctx)
    metrics = result.passes[-1]["metrics"]
    assert metrics["heads_before"] == [4] * 4 and metrics["heads_after"] == [3] * 4
    out = assert_reloads(result, tmp_path)
    stock = AutoModel.from_pretrained(out)
    assert stock.encoder.layer[0].attention.self.query.out_features == 3 * 16
    assert metrics["parameters"] < metrics["parameters_before"]
    # Pruning again removes heads by their original numbers, and dropping a layer keeps the map consistent.
    again = build_pass("head_prune", {"ratio": 1 / 3})(result, ctx)
    dropped = build_pass("layer_drop", {"count": 1})(again, ctx)
    assert all(len(v) == 2 for v in dropped.model.config.pruned_heads.values())
    assert_reloads(dropped, tmp_path / "again")


def test_channel_pruning_shrinks_the_intermediate_width_in_the_config(tiny_bert, ctx, tmp_path):
    from transformers import AutoConfig

    result = build_pass("channel_prune", {"ratio": 0.25})(tiny_bert, ctx)
    out = save_artifact(result, tmp_path / "out")
    assert AutoConfig.from_pretrained(out).intermediate_size == 96
    assert result.model.encoder.layer[0].output.dense.in_features == 96


@pytest.mark.parametrize("method", ["int8", "nf4"])
def test_bitsandbytes_round_trips(tiny_bert, ctx, tmp_path, method):
    from transformers import AutoModel

    result = build_pass("bnb_quantize", {"method": method})(tiny_bert, ctx)
    out = assert_reloads(result, tmp_path, atol=1e-3)  # LLM.int8 computes in float16: padding shifts the last digits
    assert "quantization_config" in AutoModel.from_pretrained(out).config.to_dict()


@pytest.mark.parametrize("passes", [[("onnx_export", {})], [("ort_quantize", {"method": "int8"})],
                                    [("onnx_export", {}), ("ort_quantize", {"method": "int4", "block_size": 16})],
                                    [("ort_quantize", {"method": "weight-int8"})]],
                         ids=["fp32", "int8", "int4", "weight-int8"])
def test_onnx_outputs_load_with_ort_model_for_feature_extraction(tiny_bert, ctx, tmp_path, passes):
    result = tiny_bert
    for name, config in passes:
        result = build_pass(name, config)(result, ctx)
    assert result.passes[0]["name"] == passes[0][0]
    if passes[-1][1].get("method") == "weight-int8":  # MatMulNBits 8-bit with int8 compute
        import onnx

        nodes = [n for n in onnx.load(str(result.model.onnx_path)).graph.node if n.op_type == "MatMulNBits"]
        assert len(nodes) == 24
        assert {a.name: a.i for a in nodes[0].attribute}["bits"] == 8
        assert {a.name: a.i for a in nodes[0].attribute}["accuracy_level"] == 4
    out = assert_reloads(result, tmp_path, atol=1e-4)
    assert (out / "modules.json").is_file()  # the pooling travels with the ONNX graph too
    reloaded = load_artifact_any(out)
    assert torch.allclose(embed(reloaded.model, reloaded.tokenizer, TEXTS, reloaded.pooling, desc=None),
                          stock_embeddings(out), atol=1e-5)


def load_artifact_any(path):
    from compress.onnx_utils import is_onnx_directory, load_onnx_artifact

    return load_onnx_artifact(str(path)) if is_onnx_directory(str(path)) else load_artifact(str(path))


def test_the_onnx_export_is_checked_against_pytorch(tiny_bert, ctx):
    metrics = build_pass("onnx_export", {})(tiny_bert, ctx).passes[-1]["metrics"]
    assert metrics["task"] == "feature-extraction"
    assert metrics["max_abs_state_diff"] < 1e-4 and metrics["min_embedding_cosine"] > 0.9999


def test_embedding_distillation_moves_a_pruned_student_towards_its_teacher(tiny_bert_dir, tiny_bert, ctx, tmp_path):
    student = build_pass("channel_prune", {"ratio": 0.5, "importance": "magnitude"})(tiny_bert, ctx)
    torch.manual_seed(0)
    with torch.no_grad():  # a random tiny model barely notices pruning; damage it so there is something to recover
        for layer in student.model.encoder.layer:
            layer.output.dense.weight.add_(torch.randn_like(layer.output.dense.weight) * 0.3)
    trained = build_pass("embedding_distill", {"steps": 16, "batch_size": 8, "seq_len": 32, "lr": 1e-3,
                                                "hidden_weight": 1.0, "warmup_steps": 0})(student, ctx)
    metrics = trained.passes[-1]["metrics"]
    assert metrics["final_loss"] < metrics["first_loss"]
    assert metrics["teacher"]["path"] == str(tiny_bert_dir)
    cosine = cosine_to(tiny_bert)
    assert cosine(trained) > cosine(student)
    assert_reloads(trained, tmp_path)


# Passes that only make sense for causal LMs, each with what its refusal points an encoder to.
DECODER_ONLY = [
    ("distill", {"steps": 1}, "embedding_distill"),
    ("gptq_quantize", {"grid": "q4_0"}, "ort_quantize"),
    ("gguf_export", {"check": False}, "onnx_export"),
    ("ort_genai_export", {"precision": "int8"}, "weight-int8"),
]


@pytest.mark.parametrize("name,config,instead", DECODER_ONLY, ids=[n for n, _, _ in DECODER_ONLY])
def test_a_decoder_only_pass_refuses_an_encoder_in_one_line_naming_what_to_use(tiny_bert, ctx, name, config, instead):
    with pytest.raises(UserError) as refused:
        build_pass(name, config)(tiny_bert, ctx)
    message = str(refused.value)
    assert "\n" not in message
    assert f"the {name} pass is for decoder (causal) language models" in message and "bert encoder" in message
    assert instead in message


COMMANDS_FOR_DECODERS = [
    (["quantize", "--method", "gptq", "--grid", "q4_0"], "ort-weight-int8"),
    (["quantize", "--method", "ort-int8"], "ort-weight-int8"),
    (["quantize", "--method", "ort-int4"], "ort-optimum-int4"),
    (["export", "gguf", "--no-check"], "onnx_export"),
    (["export", "ort-genai", "--precision", "int8"], "weight-int8"),
]


@pytest.mark.parametrize("args,instead", COMMANDS_FOR_DECODERS, ids=[" ".join(a[:3]) for a, _ in COMMANDS_FOR_DECODERS])
def test_a_command_for_causal_lms_refuses_an_encoder_in_one_line_and_saves_nothing(tiny_bert_dir, tmp_path, capsys,
                                                                                   args, instead):
    out = tmp_path / ("out.gguf" if "gguf" in args else "out")
    command = args[:2] if args[0] == "export" else args[:1]
    code = main([*command, str(tiny_bert_dir), *args[len(command):], "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "encoder" in err and instead in err, err
    assert not out.exists()


def test_the_distill_command_refuses_an_encoder_teacher(tiny_bert_dir, tmp_path, capsys):
    code = main(["distill", "--teacher", str(tiny_bert_dir), "--student-layers", "2", "-o", str(tmp_path / "s"),
                 "--steps", "1", "--eval-text", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "embedding_distill" in err
    assert not (tmp_path / "s").exists()


def test_a_head_ratio_that_does_not_fit_is_refused_before_loading(tiny_bert_dir, tmp_path, capsys):
    code = main(["prune", str(tiny_bert_dir), "--structure", "heads", "--sparsity", "0.3", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "4 attention heads" in err and "0.25, 0.5, 0.75" in err
    with pytest.raises(UserError, match="no key/value groups"):
        build_pass("head_prune", {"ratio": 0.5, "mode": "query"})(load_artifact(str(tiny_bert_dir)))


def test_the_prune_command_measures_an_encoder_on_held_out_sentences(tiny_bert_dir, encoder_text, tmp_path, capsys):
    code = main(["prune", str(tiny_bert_dir), "--method", "magnitude", "--sparsity", "0.3", "-o", str(tmp_path / "o"),
                 "--eval-text", str(encoder_text), "--calib-text", str(encoder_text), "--calib-samples", "2",
                 "--calib-seq-len", "64"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "top-10 overlap" in out and "cosine mean" in out
    evaluation = json.loads((tmp_path / "o" / "compress.json").read_text())["metrics"]["evaluation"]
    assert 0 < evaluation["cosine_mean"] < 1 and evaluation["data"]["split"] == "evaluation"


def test_the_quantize_command_guards_an_encoder_on_its_embeddings(tiny_bert_dir, encoder_text, tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["quantize", str(tiny_bert_dir), "--method", "ort-dynamic-int8", "-o", str(out),
                 "--eval-text", str(encoder_text)])
    printed = capsys.readouterr().out
    assert code == 0 and "quality guard passed" in printed and "top-10 overlap" in printed
    quality = json.loads((out / "compress.json").read_text())["metrics"]["quality"]
    assert quality["passed"] and quality["limits"]["min_mean_cosine"] == 0.95
    # An impossible limit with --fail-on-damage: exit 3 and nothing saved.
    code = main(["quantize", str(tiny_bert_dir), "--method", "ort-dynamic-int8", "-o", str(tmp_path / "refused"),
                 "--eval-text", str(encoder_text), "--min-cosine", "1.01", "--fail-on-damage"])
    assert code == 3 and not (tmp_path / "refused").exists()


def test_the_export_command_exports_an_encoder_for_feature_extraction(tiny_bert_dir, tmp_path, capsys):
    code = main(["export", "onnx", str(tiny_bert_dir), "-o", str(tmp_path / "onnx")])
    assert code == 0 and "token-state difference" in capsys.readouterr().out
    assert stock_embeddings(tmp_path / "onnx").shape == (len(TEXTS), 64)


def test_a_recipe_prunes_then_distills_an_encoder(tiny_bert_dir, encoder_text, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"calibration: {{source: {encoder_text}, samples: 2, seq_len: 32}}\n"
        f"evaluation: {{source: {encoder_text}, split: evaluation}}\n"
        "passes:\n"
        "  - channel_prune: {ratio: 0.25}\n"
        "  - embedding_distill: {steps: 2, batch_size: 4, seq_len: 32, embedding_loss: mse}\n")
    code = main(["run", str(recipe), "-m", str(tiny_bert_dir), "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "compress.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["channel_prune", "embedding_distill"]
    assert manifest["passes"][1]["metrics"]["train_data"]["split"] == "calibration"
    assert 0 < manifest["metrics"]["evaluation"]["cosine_mean"] <= 1


def test_a_roberta_encoder_takes_the_same_path(tmp_path, bert_tokenizer, ctx):
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(vocab_size=len(bert_tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=130, pad_token_id=0)
    artifact = load_artifact(str(save_encoder(tmp_path / "roberta", config, bert_tokenizer, pooling=MEAN_POOLING)))
    assert type(artifact.model) is RobertaModel
    result = build_pass("head_prune", {"ratio": 0.5})(build_pass("channel_prune", {"ratio": 0.5})(artifact, ctx), ctx)
    assert_reloads(result, tmp_path)


def test_the_head_refit_brings_an_encoder_closer_to_its_base_and_reloads(tiny_bert, ctx, tmp_path):
    plain = build_pass("head_prune", {"ratio": 0.5, "refit": False})(tiny_bert, ctx)
    refit = build_pass("head_prune", {"ratio": 0.5})(tiny_bert, ctx)  # refit is the default
    record = refit.passes[-1]["metrics"]["refit"]
    assert record["attention_output_error_refit"] < record["attention_output_error_removed"]
    assert plain.passes[-1]["metrics"]["pruned_heads"] == refit.passes[-1]["metrics"]["pruned_heads"]
    cosine = cosine_to(tiny_bert)
    assert cosine(refit) > cosine(plain)
    assert_reloads(refit, tmp_path)
