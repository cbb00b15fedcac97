"""Imported for its side effect: every pass module registers its passes.

A new pass family adds one import line here.
"""

from . import pruning  # noqa: F401
from . import structured  # noqa: F401
from . import sparsegpt  # noqa: F401
from . import gptq, tune_scales  # noqa: F401
from . import distillation  # noqa: F401
from . import bnb, onnx_export, ort_quant, ort_genai_export  # noqa: F401
from . import gguf_export  # noqa: F401
from . import auto_quantize  # noqa: F401
from ..encoders import distill as _encoder_distill  # noqa: F401  (embedding_distill)
