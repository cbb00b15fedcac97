"""Export to the fast ONNX Runtime LLM graph with onnxruntime-genai's model builder.

The builder (onnxruntime-genai 0.15.2, see pyproject.toml for why that version)
writes the graph onnxruntime-genai runs: GroupQueryAttention with the rotary
embedding fused in, packed QKV projections, SkipSimplifiedLayerNormalization,
and at int8/int4 MatMulNBits weight-only quantization (block-wise, one scale per
`block_size` weights) whose `accuracy_level` 4 computes with int8 activations.
A tied embedding is shared with the head: the head's quantized weight also
serves the embedding lookup (GatherBlockQuantized), so it is stored once.

What runs: the artifact's PyTorch model is saved as a Hugging Face checkpoint in
a private directory, and the builder runs on it in a child process
(`compress.genai_build`, which also fixes a builder naming bug for tied int8
heads). Its output is captured (shown with --verbose); a progress bar follows the
layers it reads. Afterwards the tokenizer file is made readable by
onnxruntime-genai (`compress.genai_tokenizer`) and the graph is checked against
the PyTorch model: the largest logit difference on a fixed input (refused above
`max_logit_diff` at fp32, where the graph must be exact) and greedy generation
through onnxruntime-genai's own Generator.

Not exported, each refused in one line before any work: architectures the
builder does not build (GPT-2 among them), models whose layers differ in width
(a stock config, which the builder reads, holds one width), models already
quantized or already ONNX.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..errors import UserError
from ..genai_model import GenaiCausalLM, is_genai, require_genai, write_genai_directory
from ..progress import log, progress
from .base import Pass, PassContext
from .onnx_export import CHECK_TEXT
from .quantization import quantization_state

# Architectures this pass exports and its tests check (the builder builds more, unchecked here).
BUILDER_ARCHITECTURES = ("LlamaForCausalLM",)
# Files of the source checkpoint copied beside the graph: context length, vocabulary, end tokens.
_CONFIG_FILES = ("config.json", "generation_config.json")
_GRAPH_OPS = ("GroupQueryAttention", "SkipSimplifiedLayerNormalization", "MatMulNBits", "GatherBlockQuantized",
              "MatMul", "Gather")


def _first_line(text: str) -> str:
    text = str(text).strip()
    return text.splitlines()[0][:300] if text else ""


def check_exportable(model) -> None:
    """One-line UserError for a model the builder cannot turn into a correct graph."""
    config = model.config
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    if arch not in BUILDER_ARCHITECTURES:
        raise UserError(
            f"ort_genai_export: onnxruntime-genai's model builder does not export {arch} here (supported: "
            f"{', '.join(BUILDER_ARCHITECTURES)}); use `compress export onnx` for an optimum ONNX export"
        )
    layers = getattr(getattr(model, "model", None), "layers", None) or []
    shapes = {(layer.mlp.down_proj.in_features, layer.self_attn.q_proj.out_features,
               layer.self_attn.k_proj.out_features) for layer in layers}
    if len(shapes) > 1:
        widths = sorted({s[0] for s in shapes})
        raise UserError(
            f"ort_genai_export: the layers differ in width (MLP widths {widths[0]}..{widths[-1]}); the builder reads "
            "one width from the config, so prune with one ratio for every layer, or save the padded checkpoint "
            "first and export that (same outputs, no speed-up)"
        )


def graph_summary(onnx_path: Path) -> dict[str, Any]:
    """Operator counts of the graph, and the bit widths of its quantized operators."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    bits: Counter = Counter()
    accuracy = set()
    for node in graph.node:
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            bits[f"{node.op_type}/{attrs.get('bits', 4)}bit"] += 1
        if "accuracy_level" in attrs:
            accuracy.add(attrs["accuracy_level"])
    return {"ops": {op: ops[op] for op in _GRAPH_OPS if ops[op]}, "quantized_ops": dict(bits),
            "accuracy_levels": sorted(accuracy)}


def _child_env() -> dict[str, str]:
    """The child must import this very `compress` package (a checkout may not be installed)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_builder(hf_dir: Path, out_dir: Path, precision: str, extra_options: dict[str, str], num_layers: int,
                work_dir: Path) -> float:
    """Run the builder in a child process; its output goes to the debug log. Returns seconds taken."""
    from ..genai_build import ERROR_MARKER

    spec = {"input": str(hf_dir), "output": str(out_dir), "precision": precision,
            "cache_dir": str(work_dir / "builder-cache"), "extra_options": extra_options}
    spec_path = work_dir / "builder.json"
    spec_path.write_text(json.dumps(spec))
    start = time.perf_counter()
    tail: deque[str] = deque(maxlen=40)
    error = None
    bar = progress(total=num_layers, desc=f"onnxruntime-genai builder ({precision})", unit="layer")
    proc = subprocess.Popen([sys.executable, "-m", "compress.genai_build", str(spec_path)], env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        for line in proc.stdout:
            line = line.rstrip()
            log.debug(f"builder: {line}")
            tail.append(line)
            if line.startswith(ERROR_MARKER):
                error = line[len(ERROR_MARKER):].strip()
            elif line.startswith("Reading layer "):
                bar.update(1)
            elif line.startswith("Saving ONNX model"):
                bar.set_postfix_str("quantizing and saving" if precision != "fp32" else "saving")
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        bar.close()
    if proc.returncode != 0:
        reason = error or next((ln for ln in reversed(tail) if ln.strip()), f"exit status {proc.returncode}")
        raise UserError(f"onnxruntime-genai's model builder failed: {reason[:300]} (run with -v for its output)")
    return time.perf_counter() - start


def tokenizer_metrics(target: GenaiCausalLM, tokenizer) -> dict[str, Any]:
    """Make the output's tokenizer.json readable by onnxruntime-genai; say where its tokenizer still differs."""
    from ..genai_tokenizer import genai_tokenizer_agrees, simplify_byte_level_decoder

    metrics: dict[str, Any] = {"tokenizer_simplified": simplify_byte_level_decoder(target.directory)}
    if tokenizer is None:
        return metrics
    try:
        metrics["genai_tokenizer"] = agreement = genai_tokenizer_agrees(target.og_model, tokenizer)
    except Exception as exc:  # onnxruntime-genai opens the graph here first
        raise graph_failure(exc) from None
    finally:
        target.release()
    differs = sorted(set(agreement["ids_differ_on"]) | set(agreement["text_differs_on"]))
    if differs:
        log.warning(f"onnxruntime-genai's own tokenizer differs from transformers' on: {', '.join(differs)} "
                    "(see docs/ort-genai.md); our measurements feed it transformers' token ids")
    return metrics


def graph_failure(exc: BaseException) -> UserError:
    return UserError(f"the graph the builder wrote does not run in ONNX Runtime ({_first_line(exc)}); "
                     "nothing was saved")


def check_against_torch(torch_model, genai_model: GenaiCausalLM, tokenizer, new_tokens: int = 8) -> dict[str, Any]:
    """Largest logit difference on a fixed input, and greedy agreement through the genai Generator."""
    import torch

    ids = tokenizer(CHECK_TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :32]
    ids = ids.clamp(max=int(torch_model.config.vocab_size) - 1)
    with torch.inference_mode():
        ref = torch_model(input_ids=ids, use_cache=False).logits.float()
        settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                        attention_mask=torch.ones_like(ids),
                        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        gen_ref = torch_model.generate(ids, **settings)[0, ids.shape[1]:].tolist()
    try:
        got = genai_model(ids, torch.ones_like(ids))
        gen_got = genai_model.generate_greedy(ids, new_tokens)
    except Exception as exc:  # an invalid graph fails inside ONNX Runtime, with its own exception types
        raise graph_failure(exc) from None
    finally:
        genai_model.release()
    return {
        "max_abs_logit_diff": float((ref - got).abs().max()),
        "generation_match": sum(a == b for a, b in zip(gen_ref, gen_got)) / new_tokens,
        "check_tokens": int(ids.shape[1]),
    }


class OrtGenaiExport(Pass):
    """The fast ONNX Runtime LLM graph (onnxruntime-genai's builder) at fp32, int8 or int4, checked against PyTorch."""

    name: ClassVar[str] = "ort_genai_export"
    decoder_only: ClassVar[bool] = True  # the builder writes causal-LM graphs
    encoder_alternative: ClassVar[str] = ("use ort_quantize method weight-int8 (weight-only int8 with int8 compute on "
                                          "optimum's graph) or onnx_export")

    precision: Literal["fp32", "int8", "int4"] = "int8"
    block_size: int = Field(32, ge=16, le=256, description="weights per scale (int8/int4); a power of two")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="MatMulNBits compute: 4 = int8 activations (fast on CPUs with VNNI), 1 = float32, 0 = unset")
    symmetric: bool = True
    # int4 only: the tied head (and the embedding that shares it) at 8 bits, the body at 4.
    head_precision: Literal["same", "int8"] = "same"
    # How the 4-bit codes are chosen: the builder's default (MLAS round-to-nearest) or k-quant (llama.cpp's
    # search over scales). RTN through Intel Neural Compressor is left out: it gives the same names and codes.
    algorithm: Literal["default", "k_quant"] = "default"
    # Share the tied embedding with the (quantized) head; False keeps a float embedding (larger, same speed).
    share_embedding: bool = True
    check: bool = True
    max_logit_diff: float = Field(1e-2, gt=0, description="fp32 only: a larger difference from PyTorch is refused")

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"block_size must be a power of two (16, 32, 64, 128, 256), got {v}")
        return v

    def extra_options(self, tied: bool) -> dict[str, str]:
        """The builder's --extra_options for this config."""
        options: dict[str, str] = {}
        if tied:
            options["shared_embeddings"] = "true" if self.share_embedding else "false"
        if self.precision == "fp32":
            return options
        options.update(accuracy_level=str(self.accuracy_level), block_size=str(self.block_size),
                       is_symmetric="true" if self.symmetric else "false", algo_config=self.algorithm)
        if self.head_precision == "int8":
            options["matmul_mixed_precision"] = "last_matmul:int8"
        return options

    def _refuse_bad_combinations(self) -> None:
        if self.precision != "int4" and self.head_precision != "same":
            raise UserError(f"ort_genai_export: head_precision int8 is for precision int4 (the {self.precision} "
                            "head already has the model's precision); drop it")
        if self.precision != "int4" and self.algorithm != "default":
            # onnxruntime-genai 0.15.2: its k-quant/RTN paths quantize to 4 bits whatever the precision.
            raise UserError(f"ort_genai_export: algorithm {self.algorithm} is for precision int4 (the builder's "
                            "k-quant path writes 4-bit weights even at int8); use algorithm default")

    def apply(self, artifact, ctx: PassContext) -> dict[str, Any]:
        self._refuse_bad_combinations()
        if is_genai(artifact):
            raise UserError("ort_genai_export: the model is already an onnxruntime-genai graph; export the PyTorch "
                            "model it came from")
        from ..onnx_utils import is_onnx

        if is_onnx(artifact):
            raise UserError("ort_genai_export: the model is an optimum ONNX export; the builder needs the PyTorch "
                            "model (export that instead)")
        state = quantization_state(artifact)
        if state is not None:
            raise UserError(f"ort_genai_export: the model is already quantized ({state}); export the float model "
                            "with precision int8 or int4 instead")
        check_exportable(artifact.model)
        require_genai()
        from ..saving import write_hf_checkpoint

        tied = bool(getattr(artifact.model.config, "tie_word_embeddings", False))
        hidden = int(artifact.model.config.hidden_size)
        if tied and self.share_embedding and self.precision != "fp32" and hidden % self.block_size:
            # The builder reshapes the head's blocks back into embedding rows; a padded last block breaks that.
            raise UserError(f"ort_genai_export: block_size {self.block_size} does not divide the hidden size {hidden}, "
                            "which the shared quantized embedding needs; use a block size that divides it, or "
                            "share_embedding: false")
        options = self.extra_options(tied)
        target = GenaiCausalLM.new_directory()
        with tempfile.TemporaryDirectory(prefix="compress-genai-build-") as work:
            work = Path(work)
            hf_dir = work / "checkpoint"
            hf_dir.mkdir()
            log.info("ort_genai_export: saving the PyTorch model for the builder")
            write_hf_checkpoint(artifact, hf_dir)
            seconds = run_builder(hf_dir, target.directory, self.precision, options,
                                  int(artifact.model.config.num_hidden_layers), work)
            for name in _CONFIG_FILES:
                if (hf_dir / name).is_file():
                    (target.directory / name).write_bytes((hf_dir / name).read_bytes())
        metrics: dict[str, Any] = {
            "builder": {"version": _genai_version(), "extra_options": options, "seconds": round(seconds, 1)},
            **graph_summary(target.onnx_path),
            "onnx_bytes": target.size_bytes(),
            **tokenizer_metrics(target, artifact.tokenizer),
        }
        if self.check and artifact.tokenizer is not None:
            metrics.update(check_against_torch(artifact.model, target, artifact.tokenizer))
            diff = metrics["max_abs_logit_diff"]
            if diff != diff or (self.precision == "fp32" and diff > self.max_logit_diff):
                raise UserError(f"the onnxruntime-genai graph differs from PyTorch by {diff:.3g} in the logits "
                                f"(limit {self.max_logit_diff} at fp32); the export is wrong for this model, "
                                "nothing was saved")
            log.info(f"ort_genai_export checked: max logit difference {diff:.2e}, "
                     f"greedy generation match {metrics['generation_match']:.0%}")
        artifact.model = target
        artifact.writer = write_genai_directory
        return metrics


def _genai_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        return "?"
