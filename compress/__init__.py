"""compress: make Hugging Face causal LMs smaller and faster, with honest numbers.

Python API (the CLI calls the same objects)::

    from compress import load_artifact, Recipe, MagnitudePrune, save_artifact
    base = load_artifact("smollm2-135m-instruct")
    pruned = MagnitudePrune(sparsity=0.5)(base)      # works on a copy
    save_artifact(pruned, "out/pruned")
"""

from .artifact import Artifact
from .data import TextSpec, WindowSpec, load_text, load_windows
from .errors import QualityError, UserError
from .evaluate import compare, perplexity
from .models import DEFAULT_MODEL, load_artifact, resolve_source
from .passes import REGISTRY, CalibrationData, MagnitudePrune, Pass, PassContext, build_pass
from .recipe import EvaluationData, Recipe, run_recipe
from .saving import save_artifact

__version__ = "0.1.0"

__all__ = [
    "Artifact", "TextSpec", "WindowSpec", "load_text", "load_windows", "QualityError", "UserError",
    "compare", "perplexity", "DEFAULT_MODEL", "load_artifact", "resolve_source", "REGISTRY",
    "CalibrationData", "MagnitudePrune", "Pass", "PassContext", "build_pass", "EvaluationData",
    "Recipe", "run_recipe", "save_artifact",
]
