"""GGUF files for llama.cpp, written from this toolkit's PyTorch models with the gguf package.

* `layout`: architecture, hyperparameters and tensors as llama.cpp lays them out;
* `types`: the GGML type of every tensor (export type, overrides, fallbacks, ready-made blocks);
* `vocab`: the tokenizer keys, carried from an origin GGUF or written from tokenizer.json;
* `writer`: the file itself, with provenance.

See docs/gguf.md.
"""

from .types import EXPORT_TYPES
from .writer import write_gguf

__all__ = ["EXPORT_TYPES", "write_gguf"]
