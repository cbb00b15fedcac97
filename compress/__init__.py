"""compress: make Hugging Face causal LMs smaller and faster, with honest numbers.

Python API (the CLI calls the same objects)::

    from compress import load_artifact, Recipe, MagnitudePrune, save_artifact
    base = load_artifact("smollm2-135m-instruct")
    pruned = MagnitudePrune(sparsity=0.5)(base)      # works on a copy
    save_artifact(pruned, "out/pruned")
"""

import importlib

# Names resolve on first use (PEP 562): `import compress` stays light, so the command line
# starts quickly and a Ctrl-C while it starts is the CLI's to answer (see compress/cli.py).
_EXPORTS = {
    "Artifact": "artifact", "TextSpec": "data", "WindowSpec": "data", "load_text": "data", "load_windows": "data",
    "QualityError": "errors", "UserError": "errors", "compare": "evaluate", "perplexity": "evaluate",
    "DEFAULT_MODEL": "models", "load_artifact": "models", "resolve_source": "models", "REGISTRY": "passes",
    "CalibrationData": "passes", "MagnitudePrune": "passes", "Pass": "passes", "PassContext": "passes",
    "build_pass": "passes", "EvaluationData": "recipe", "Recipe": "recipe", "run_recipe": "recipe",
    "save_artifact": "saving",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "Artifact", "TextSpec", "WindowSpec", "load_text", "load_windows", "QualityError", "UserError",
    "compare", "perplexity", "DEFAULT_MODEL", "load_artifact", "resolve_source", "REGISTRY",
    "CalibrationData", "MagnitudePrune", "Pass", "PassContext", "build_pass", "EvaluationData",
    "Recipe", "run_recipe", "save_artifact",
]
