"""The ``pytorch-sparse24`` backend: 2:4-pruned weights run on the GPU's semi-structured sparse kernels.

A model pruned to the 2:4 pattern (``wanda_prune``, ``magnitude_prune`` or
``sparsegpt_prune`` with ``pattern: "2:4"``) is saved dense: its zeros are
stored as zeros, and the dense kernels of the ``pytorch`` backend multiply them
like any other number, so it runs no faster. This backend loads the same
checkpoint, then converts every ``nn.Linear`` whose weight has at least two
zeros in each group of four consecutive inputs with
``torch.sparse.to_sparse_semi_structured``: those matmuls then run on the
sparse tensor cores (cuSPARSELt where PyTorch has it, CUTLASS otherwise),
which read half the weights. The checkpoint on disk is not touched.

It runs on CUDA only (Ampere or newer), in float16 or bfloat16 (the dtypes
cuSPARSELt accepts), and refuses with one line otherwise, or when no Linear
of the model is 2:4 sparse. The output head (tied to the embeddings in most
small models), GPT-2's ``Conv1D`` layers and any matrix whose shape the
kernels do not accept stay dense; `describe` says how many were converted,
and the report shows it with each speed run.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .backends import PyTorchBackend, register

SPARSE_DTYPES = ("float16", "bfloat16")


def is_2_4_sparse(weight) -> bool:
    """Whether every group of 4 consecutive inputs (along the last dimension) has at least 2 zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = weight.detach().reshape(weight.shape[0], -1, 4)
    return bool(((groups == 0).sum(-1) >= 2).all())


def kernel_library() -> str:
    """Which semi-structured kernels PyTorch will use here: cuSPARSELt if it has it, else CUTLASS."""
    import torch

    available = getattr(torch.backends, "cusparselt", None)
    return "cusparselt" if available is not None and available.is_available() else "cutlass"


def convert_2_4_linears(model) -> dict[str, Any]:
    """Replace every eligible 2:4-sparse Linear weight by a semi-structured sparse tensor, in place.

    Returns what was done: the kernel library, the converted layer count, and
    the layers left dense with the reason (not 2:4, shape, output head).
    """
    import torch
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from ..layers import output_head_names

    library = kernel_library()
    # Without cuSPARSELt, PyTorch's CUTLASS kernels do the same job (with larger shape multiples).
    SparseSemiStructuredTensor._FORCE_CUTLASS = library == "cutlass"
    cls = (torch.sparse.SparseSemiStructuredTensorCUTLASS if library == "cutlass"
           else torch.sparse.SparseSemiStructuredTensorCUSPARSELT)
    heads = output_head_names(model)
    converted, dense = 0, {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        weight = module.weight
        if name in heads:
            dense[name] = "output head"
            continue
        if not is_2_4_sparse(weight):
            dense[name] = "not 2:4 sparse"
            continue
        rule = cls._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
        rows, cols = weight.shape
        if rule is None or rows % rule.sparse_min_rows or cols % rule.sparse_min_cols:
            dense[name] = f"shape {rows}x{cols} not accepted by {library} in {weight.dtype}"
            continue
        module.weight = torch.nn.Parameter(to_sparse_semi_structured(weight.detach().contiguous()), requires_grad=False)
        converted += 1
    return {"kernels": library, "converted_linears": converted, "dense_linears": len(dense),
            "dense_reasons": sorted(set(dense.values()))}


class Sparse24Backend(PyTorchBackend):
    """PyTorch eager on CUDA, with 2:4-sparse Linear weights on semi-structured sparse kernels."""

    name = "pytorch-sparse24"
    devices = ("cuda",)

    def check(self, device, dtype, path):
        if device != "cuda":
            raise UserError(
                f"the {self.name} backend runs 2:4-pruned weights on CUDA's semi-structured sparse kernels and cannot "
                f"run on {device}; use --device cuda on a GPU machine, or the pytorch backend (dense kernels)"
            )
        if dtype not in SPARSE_DTYPES:
            raise UserError(f"the {self.name} backend needs dtype float16 or bfloat16 (the sparse kernels' types), "
                            f"not {dtype}; set dtype: float16")
        super().check(device, dtype, path)
        import torch

        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 0):
            raise UserError(f"the {self.name} backend needs a GPU with sparse tensor cores (compute capability 8.0+); "
                            f"{torch.cuda.get_device_name()} has {major}.{minor}")

    def handles(self, path):
        return False  # never chosen automatically: a 2:4 checkpoint looks like any other

    def load(self, path, device, dtype, io_binding, threads):
        from ..layers import count_parameters

        model = super().load(path, device, dtype, io_binding, threads)
        # Counted while the weights are dense: the sparse tensors support matmuls, not comparisons.
        model._compress_parameter_counts = count_parameters(model)
        done = convert_2_4_linears(model)
        if not done["converted_linears"]:
            raise UserError(
                f"no Linear weight of {path} is 2:4 sparse in a shape the {done['kernels']} kernels accept "
                f"({', '.join(done['dense_reasons']) or 'no Linear layers'}); prune it with pattern 2:4 first "
                "(e.g. wanda_prune: {pattern: \"2:4\"})"
            )
        model._compress_sparse24 = done
        return model

    def parameters(self, model):
        return dict(model._compress_parameter_counts)

    def describe(self, model):
        return dict(model._compress_sparse24)


register(Sparse24Backend())
