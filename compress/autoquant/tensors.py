"""The weight matrices of a model as the GGUF writer will write them, and the modules that use each.

The list comes from the writer's own layout (compress.gguf_file.layout), so a
matrix here is exactly a matrix in the file: same GGUF name, same columns
(after any cut of zero-padded channels), and the writer's rule that a type
whose blocks do not divide a row falls back to f16 becomes a smaller choice of
candidate types instead. Rows are the model's output features in the model's
order; a row permutation the layout applies (llama.cpp's q/k order) moves whole
rows and changes no value, since every type quantizes rows independently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..layers import is_projection
from .grid import fits, roundtrip


@dataclass(eq=False)
class Matrix:
    name: str  # GGUF tensor name
    source: str  # the model's parameter name
    param: nn.Parameter
    transposed: bool  # stored (in, out), as GPT-2's Conv1D
    columns: int  # values per row as written
    types: tuple[str, ...]  # candidate types the writer can write for these rows, most precise first
    products: list[nn.Module] = field(default_factory=list)  # modules that multiply their input by it
    lookup: bool = False  # also read as an embedding table (one row per token)
    # Blocks a calibrated quantizer chose for this matrix, by type: {type: (quantized_blocks entry, decoded rows)}.
    # Such a type stands for those blocks instead of round-to-nearest (compress.autoquant.given_blocks).
    given: dict[str, tuple] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        w = self.param.data
        return (w.shape[1], w.shape[0]) if self.transposed else (w.shape[0], w.shape[1])

    @property
    def numel(self) -> int:
        return int(self.param.numel())

    def rows(self) -> np.ndarray:
        """The current weights as float32 rows (one per output feature)."""
        w = self.param.data.detach().to("cpu", torch.float32)
        return np.ascontiguousarray((w.t() if self.transposed else w).numpy())

    def on_grid(self, type_name: str) -> np.ndarray:
        """The rows the file will hold at `type_name`: the given blocks decoded, else round-to-nearest on its grid."""
        if type_name in self.given:
            return self.given[type_name][1]
        return roundtrip(self.rows(), type_name)

    def as_param(self, rows: np.ndarray) -> torch.Tensor:
        """Rows back in the parameter's own orientation, dtype and device."""
        t = torch.from_numpy(np.ascontiguousarray(rows))
        t = t.t().contiguous() if self.transposed else t
        return t.to(self.param.device, self.param.dtype)


def model_matrices(model, passes: list[dict] | None, types: tuple[str, ...]) -> list[Matrix]:
    """Every matrix the GGUF export writes, with the candidate types that fit its rows."""
    from transformers.pytorch_utils import Conv1D

    from ..gguf_file.layout import model_layout

    layout = model_layout(model, passes)
    params = dict(model.named_parameters())
    matrices = []
    for t in layout.tensors:
        if not t.matrix:
            continue
        param = params[t.source]
        columns = int(t.data.shape[1])
        allowed = tuple(k for k in types if fits(k, columns))
        if not allowed:
            raise UserError(f"{t.name} has rows of {columns} values, which none of the candidate types "
                            f"({', '.join(types)}) splits into whole blocks; add f16 to the types")
        m = Matrix(t.name, t.source, param, transposed=False, columns=columns, types=allowed)
        for module in model.modules():
            if is_projection(module) and module.weight is param:
                m.products.append(module)
                m.transposed = isinstance(module, Conv1D)
            elif isinstance(module, nn.Embedding) and module.weight is param:
                m.lookup = True
        matrices.append(m)
    return matrices
