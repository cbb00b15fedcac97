"""Passes: one module per family. Importing this package registers them all."""

from .base import REGISTRY, CalibrationData, Pass, PassContext, build_pass
from .pruning import MagnitudePrune, WandaPrune
from .sparsegpt import SparseGPTPrune
from .structured import ChannelPrune, HeadPrune, LayerDrop

__all__ = ["REGISTRY", "CalibrationData", "Pass", "PassContext", "build_pass", "MagnitudePrune", "WandaPrune", "SparseGPTPrune",
           "ChannelPrune", "HeadPrune", "LayerDrop"]
