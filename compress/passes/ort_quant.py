"""ONNX Runtime quantization of optimum's ONNX export: dynamic int8 (per channel) and 4-bit block-wise (MatMulNBits).

This pass works on the graph `onnx_export` writes (optimum's, run by
ORTModelForCausalLM). The toolkit's default int8 and int4 are the fast
onnxruntime-genai graph instead (`ort_genai_export`, `--method ort-int8/ort-int4`):
weight-only MatMulNBits with int8 compute, which keeps quality at int8 and decodes
faster. This one stays for dynamic int8 (`--method ort-dynamic-int8`) and for 4-bit
on optimum's graph with HQQ or per-module `keep` (`--method ort-optimum-int4`).

Only MatMuls whose second input is a weight (a graph initializer) are
candidates. That leaves out by construction the rotary-embedding MatMul and
the attention score/value products (two activations), and the LM head of a
model with tied embeddings (its weight is a Transpose of the embedding table).
An untied LM head is left out by name unless `quantize_lm_head` is set.

Node names from optimum's export follow the PyTorch module path
(`/model/layers.3/mlp/down_proj/MatMul`); `keep` takes globs on the
PyTorch-style name (`model.layers.3.mlp.down_proj`), the same spelling as
`bnb_quantize`'s `keep`.

Why the int8 default keeps the MLP down projections in float (measured on
SmolLM2-135M, see docs/quantization.md): dynamic int8 quantizes each
activation tensor with one scale computed at run time. The input of
`down_proj` (the gated MLP activation) has rare huge outliers, so one scale
leaves almost no resolution for the other values, and those 30 MatMuls alone
account for nearly all the damage (+54% perplexity with them, ~+6% without).
"""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..errors import UserError
from ..onnx_utils import ONNX_FILE, OnnxCausalLM, is_onnx, ort_runtime_has_op, require_onnxruntime
from ..progress import log
from .base import Pass, PassContext
from .quantization import block_index, edge_blocks, quantization_state

# MLP output projections (Llama family, GPT-2): their input carries the outliers.
DEFAULT_INT8_KEEP = ["*.mlp.down_proj", "*.mlp.c_proj"]
DEFAULT_INT8_KEEP_FIRST = 2
DEFAULT_INT8_KEEP_LAST = 2
_WEIGHT_OPS = ("MatMul", "Gemm")
NBITS_METHODS = {"int4": 4, "weight-int8": 8}  # MatMulNBits: bits per weight
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # /proc/cpuinfo names


def module_name(node_name: str) -> str:
    """'/model/layers.3/mlp/down_proj/MatMul' -> 'model.layers.3.mlp.down_proj'."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) > 1:
        parts = parts[:-1]  # drop the op name
    return ".".join(parts)


def weight_matmuls(onnx_path: Path) -> list[tuple[str, str]]:
    """(node name, module name) of every MatMul/Gemm whose weight is an initializer."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1 and node.input[1] in initializers:
            found.append((node.name, module_name(node.name)))
    return found


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm nodes with a weight initializer as MatMul (+ Add for the bias), in place.

    GPT-2's Conv1D exports as Gemm, which neither MatMulNBits nor per-channel
    dynamic quantization handles; MatMul + Add computes the same thing.
    Returns how many nodes were rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    rewritten = 0
    new_nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or len(node.input) < 2 or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(inits[weight]).T.copy()
            weight = f"{weight}_transposed_for_matmul"
            graph.initializer.append(numpy_helper.from_array(array, weight))
        prefix = node.name.rsplit("/", 1)[0] if "/" in node.name else node.name
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{prefix}/MatMul_output_0" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{prefix}/MatMul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{prefix}/Add"))
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return rewritten


_QUANTIZED_OPS = ("DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat", "MatMulNBits")


def count_quantized(onnx_path: Path) -> int:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return sum(1 for node in graph.node if node.op_type in _QUANTIZED_OPS)


def _num_layers(onnx_dir: Path) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(onnx_dir)
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)


class OrtQuantize(Pass):
    """Quantize an ONNX model's weight MatMuls with ONNX Runtime: int8 (dynamic) or int4 (MatMulNBits).

    A PyTorch model is exported first (as `onnx_export` with its defaults would).
    """

    name: ClassVar[str] = "ort_quantize"

    # dynamic-int8: weights per channel, activations quantized at run time (`quantize_dynamic`);
    # int4: MatMulNBits. Both on optimum's graph. "int8" is this pass's former name for
    # dynamic-int8 and still means it; the int8 that keeps quality is `ort_genai_export` for causal LMs.
    # weight-int8: MatMulNBits 8-bit, weights only, int8 compute (accuracy_level 4 unless set): the same
    # kind of int8 on optimum's graph, for graphs the genai builder does not make (encoders: docs/encoders.md).
    method: Literal["dynamic-int8", "int4", "weight-int8"] = "dynamic-int8"
    # Module-name globs left in float. None: the method's default (int8: the MLP
    # down projections, see the module docstring; int4: nothing).
    keep: list[str] | None = None
    # Also keep the first / last N decoder blocks in float. None: the method's
    # default (int8: 2 and 2, at most an eighth of the blocks each; the edge blocks are the most sensitive after
    # down_proj, the last one most of all; int4: 0 and 0).
    keep_first: int | None = Field(None, ge=0)
    keep_last: int | None = Field(None, ge=0)
    quantize_lm_head: bool = False  # an untied LM head (a tied one is never a candidate)
    # int8
    per_channel: bool = True  # one scale per output channel of each weight
    reduce_range: bool = False  # 7-bit weights (avoids int16 saturation in u8s8 kernels; costs accuracy)
    # auto: int8 where this CPU has VNNI (its u8 x s8 dot product is what ONNX Runtime's int8 kernels use:
    # measured 2.2x the speed of uint8 weights on all-MiniLM-L6-v2 at batch 32, same cosine), else uint8
    # (without VNNI, u8 x s8 pairs can saturate int16; see _resolved_weight_type).
    weight_type: Literal["auto", "uint8", "int8"] = "auto"
    # int4
    block_size: int = Field(32, ge=16)
    symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None  # MatMulNBits compute type; 4 = int8 activations
    # How the 4-bit codes are chosen: round-to-nearest, or HQQ (half-quadratic
    # optimisation of scales and zero points; asymmetric, data-free, slower to build).
    algorithm: Literal["rtn", "hqq"] = "rtn"

    @field_validator("method", mode="before")
    @classmethod
    def _former_int8_name(cls, v):
        return "dynamic-int8" if v == "int8" else v

    def keep_patterns(self) -> list[str]:
        if self.keep is not None:
            return list(self.keep)
        return list(DEFAULT_INT8_KEEP) if self.method == "dynamic-int8" else []

    def apply(self, artifact, ctx: PassContext) -> dict[str, Any]:
        require_onnxruntime()
        if self.block_size & (self.block_size - 1):
            raise UserError(f"ort_quantize: block_size must be a power of two (16, 32, 64, 128...), got {self.block_size}")
        nbits = self.method in NBITS_METHODS
        if self.algorithm != "rtn" and self.method != "int4":
            raise UserError(f"ort_quantize: algorithm {self.algorithm!r} is for method int4; drop it for dynamic-int8")
        if nbits and not ort_runtime_has_op("MatMulNBits"):
            import onnxruntime

            raise UserError(
                f"ort_quantize {self.method} needs the MatMulNBits operator, which ONNX Runtime {onnxruntime.__version__} "
                "lacks; upgrade onnxruntime (1.17+) or use method dynamic-int8"
            )
        if nbits:
            try:
                from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: F401
                import onnx_ir  # noqa: F401
            except ImportError as exc:
                raise UserError(f"ort_quantize {self.method} needs {exc.name}: pip install onnx-ir") from None
        from ..genai_model import is_genai

        if is_genai(artifact):
            raise UserError("ort_quantize: the model is an onnxruntime-genai graph; quantize it when exporting "
                            "(ort_genai_export precision int8/int4) instead")
        state = quantization_state(artifact)
        if state is not None:
            raise UserError(f"ort_quantize: the model is already quantized ({state}); quantize the float model instead")
        metrics: dict[str, Any] = {}
        if not is_onnx(artifact):
            from .onnx_export import export_to_onnx

            log.info("ort_quantize: exporting the PyTorch model to ONNX first")
            metrics["export"] = export_to_onnx(artifact)
        import onnx

        source: OnnxCausalLM = artifact.model
        target = type(source).new_directory(provider=source.provider, threads=source.threads)  # encoder or LM
        for item in source.directory.iterdir():
            if item.is_file() and not item.name.startswith(ONNX_FILE):
                (target.directory / item.name).write_bytes(item.read_bytes())
        onnx_in = source.onnx_path
        proto = onnx.load(str(onnx_in), load_external_data=False)
        if any(node.op_type == "Gemm" for node in proto.graph.node):
            proto = onnx.load(str(onnx_in))
            if gemm_to_matmul(proto):
                onnx_in = target.directory / "float.onnx"
                onnx.save(proto, str(onnx_in))
        del proto
        candidates = weight_matmuls(onnx_in)
        chosen, kept = self.select(candidates, _num_layers(source.directory))
        if not chosen:
            raise UserError("ort_quantize: no weight MatMul is left to quantize after 'keep'/'keep_first'/'keep_last'; "
                            "keep fewer modules")
        start = time.perf_counter()
        if self.method == "dynamic-int8":
            self._int8(onnx_in, target.onnx_path, chosen)
            metrics["weight_type"], metrics["weight_type_reason"] = self.resolved_weight_type()
        else:
            self._nbits(onnx_in, target.onnx_path, kept, NBITS_METHODS[self.method])
        if onnx_in != source.onnx_path:
            onnx_in.unlink()
        artifact.model = target
        metrics.update({
            "quantized_matmuls": count_quantized(target.onnx_path),
            "float_matmuls": [module_name(node) for node in kept],
            "onnx_bytes_before": source.size_bytes(),
            "onnx_bytes": target.size_bytes(),
            "quantize_seconds": round(time.perf_counter() - start, 1),
        })
        return metrics

    def select(self, candidates: list[tuple[str, str]], n_layers: int) -> tuple[list[str], list[str]]:
        """Split weight MatMuls into (node names to quantize, node names kept in float)."""
        patterns = self.keep_patterns()
        # The int8 defaults never keep more than an eighth of the blocks at each end (none on tiny models).
        cap = n_layers // 8 if self.method == "dynamic-int8" else 0
        first = self.keep_first if self.keep_first is not None else min(DEFAULT_INT8_KEEP_FIRST, cap)
        last = self.keep_last if self.keep_last is not None else min(DEFAULT_INT8_KEEP_LAST, cap)
        edge = edge_blocks(n_layers, first, last)
        chosen, kept = [], []
        for node, module in candidates:
            is_head = module.split(".")[-1] in ("lm_head", "embed_out", "output")
            if (is_head and not self.quantize_lm_head) or any(fnmatch.fnmatch(module, p) for p in patterns) \
                    or block_index(module) in edge:
                kept.append(node)
            else:
                chosen.append(node)
        return chosen, kept

    def resolved_weight_type(self) -> tuple[str, str]:
        """(uint8 | int8, why): `auto` decided by this machine's CPU flags."""
        if self.weight_type != "auto":
            return self.weight_type, "asked"
        from ..llamacpp_runtime import cpu_flags

        vnni = sorted(cpu_flags() & VNNI_FLAGS)
        if vnni:
            return "int8", f"auto: this CPU has {vnni[0]}, whose u8 x s8 dot product ONNX Runtime's int8 kernels use"
        return "uint8", ("auto: this CPU has no VNNI, where u8 x s8 products can saturate int16 in ONNX Runtime's "
                         "kernels; a machine with VNNI runs weight_type int8 faster")

    def _int8(self, src: Path, dst: Path, nodes: list[str]) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        weight_type = QuantType.QUInt8 if self.resolved_weight_type()[0] == "uint8" else QuantType.QInt8
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(_WEIGHT_OPS), nodes_to_quantize=nodes,
                         per_channel=self.per_channel, reduce_range=self.reduce_range, weight_type=weight_type)

    def _nbits(self, src: Path, dst: Path, excluded: list[str], bits: int) -> None:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # MatMulNBitsQuantizer quantizes every MatMul with a constant weight
        # (nodes_to_include only adds to that), so what stays float is excluded by name.
        algo_config = None
        if self.algorithm == "hqq":
            from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

            algo_config = HQQWeightOnlyQuantConfig(block_size=self.block_size, bits=4,
                                                   op_types_to_quantize=("MatMul",))
        accuracy = self.accuracy_level if self.accuracy_level is not None or bits == 4 else 4  # weight-int8: int8 compute
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=self.block_size,
                                         is_symmetric=self.symmetric, accuracy_level=accuracy,
                                         nodes_to_exclude=excluded, op_types_to_quantize=("MatMul",),
                                         algo_config=algo_config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
