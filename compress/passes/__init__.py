"""Passes: one module per family. Importing this package registers them all."""

from .base import REGISTRY, CalibrationData, Pass, PassContext, build_pass
from .bnb import BnbQuantize
from .distillation import Distill, DropLayers
from .gguf_export import GgufExport
from .gptq import GptqQuantize
from .onnx_export import OnnxExport
from .ort_genai_export import OrtGenaiExport
from .ort_quant import OrtQuantize
from .pruning import MagnitudePrune, WandaPrune
from .sparsegpt import SparseGPTPrune
from .structured import ChannelPrune, HeadPrune, LayerDrop
from ..encoders.distill import EmbeddingDistill

__all__ = [
    "REGISTRY", "CalibrationData", "Pass", "PassContext", "build_pass",
    "MagnitudePrune", "WandaPrune", "SparseGPTPrune", "ChannelPrune", "HeadPrune", "LayerDrop",
    "Distill", "DropLayers", "EmbeddingDistill", "BnbQuantize", "OnnxExport", "OrtQuantize", "GgufExport",
    "OrtGenaiExport", "GptqQuantize",
]
