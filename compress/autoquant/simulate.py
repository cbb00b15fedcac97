"""A types assignment put on a PyTorch model, so that it computes what llama.cpp will.

Inside `simulated(matrices, assignment)` every assigned matrix holds its
weights decoded from the type's grid (`Matrix.on_grid`: blocks a calibrated
quantizer gave for that type, else compress.autoquant.grid.roundtrip) and
every product with it rounds its input as ggml does for that type
(grid.round_input); on leaving, the float weights are back and the hooks gone,
whatever happened inside. The model is changed in place: the caller owns it
(the auto_quantize pass works on its copy of the model).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .grid import INPUT_ROUNDING, round_input
from .tensors import Matrix


def _rounding_hook(rounding: str):
    def hook(module, args):
        return (round_input(args[0], rounding),) + tuple(args[1:])

    return hook


@contextmanager
def simulated(matrices: list[Matrix], assignment: dict[str, str]) -> Iterator[None]:
    """Matrices named in `assignment` ({GGUF name: type}) take that type; others stay float32."""
    originals = []
    handles = []
    try:
        for m in matrices:
            type_name = assignment.get(m.name)
            if type_name is None or type_name == "f32":
                continue
            decoded = m.as_param(m.on_grid(type_name))
            originals.append((m, m.param.data))
            m.param.data = decoded
            for module in m.products:
                handles.append(module.register_forward_pre_hook(_rounding_hook(INPUT_ROUNDING[type_name])))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, data in originals:
            m.param.data = data
