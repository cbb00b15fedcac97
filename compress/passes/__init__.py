"""Passes: one module per family. Importing this package registers them all."""

from .base import REGISTRY, CalibrationData, Pass, PassContext, build_pass
from .bnb import BnbQuantize
from .onnx_export import OnnxExport
from .ort_quant import OrtQuantize
from .pruning import MagnitudePrune

__all__ = ["REGISTRY", "CalibrationData", "Pass", "PassContext", "build_pass", "MagnitudePrune", "BnbQuantize", "OnnxExport", "OrtQuantize"]
