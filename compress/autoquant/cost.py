"""The cost model: what a types assignment costs llama.cpp per decoded token, and on disk.

Decoding one token at batch 1 multiplies one vector by every weight matrix
once, so on a CPU it is bound by memory traffic: the time per token is modelled
as proportional to the bytes of weights read per token,

    bytes/token = sum over matrices of (values read) x (bytes per weight of its type)

with bytes per weight from the gguf package's block table (f16 2, q8_0 1.0625,
q5_1 0.75, q5_0 0.6875, q4_1 0.625, q4_0 0.5625). A matrix used in a product
is read whole; a matrix used only as an embedding table (an untied input
embedding) is read one row per token. Norms and biases (float32) are the same
for every assignment and are counted as they are.

What the model leaves out, so its predicted speed-ups are upper bounds: the
work that does not scale with the weights (attention over the key/value cache,
norms, sampling, llama.cpp's per-token overhead), and the compute to unpack
each type (5-bit blocks take more instructions than 4- or 8-bit ones). On an
earlier 2-core Xeon, all-q4_0 decoded 1.45x faster than all-q8_0 where bytes
alone predict 1.89x (DESIGN.md). The bench measures the real speed
(benchmarks/autoquant).
"""

from __future__ import annotations

from .grid import bytes_per_weight, fits
from .tensors import Matrix


def values_read_per_token(m: Matrix) -> int:
    rows, cols = m.shape
    return rows * cols if m.products or not m.lookup else cols


def matrix_cost(m: Matrix, type_name: str) -> float:
    """Bytes of `m` read per decoded token at `type_name`."""
    return values_read_per_token(m) * bytes_per_weight(type_name)


def matrix_size(m: Matrix, type_name: str) -> float:
    return m.numel * bytes_per_weight(type_name)


def fixed_bytes(model, matrices: list[Matrix]) -> int:
    """Bytes of everything that is not a searched matrix (float32 vectors), read every token."""
    searched = {id(m.param) for m in matrices}
    return sum(p.numel() * 4 for p in model.parameters() if id(p) not in searched)


def assignment_cost(model, matrices: list[Matrix], assignment: dict[str, str]) -> dict[str, float]:
    """Bytes read per token and bytes of weights on disk for an assignment {GGUF name: type}."""
    fixed = fixed_bytes(model, matrices)
    return {
        "bytes_per_token": fixed + sum(matrix_cost(m, assignment[m.name]) for m in matrices),
        "weight_bytes": fixed + sum(matrix_size(m, assignment[m.name]) for m in matrices),
    }


def uniform_assignment(matrices: list[Matrix], type_name: str) -> dict[str, str]:
    """Every matrix at `type_name` (the f16 fallback where its blocks do not fit, as the writer does)."""
    return {m.name: type_name if fits(type_name, m.columns) else "f16" for m in matrices}
