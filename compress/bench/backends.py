"""Backends: how a variant is loaded and driven token by token, one class per runtime.

Built in here:

* ``pytorch``: ``AutoModelForCausalLM`` in eager mode, on ``cpu`` or ``cuda``, in
  float32, float16 or bfloat16.
* ``onnxruntime``: ``ORTModelForCausalLM`` (optimum-onnx) over a directory that
  holds an ONNX export; the CPU provider, or the CUDA provider with IOBinding
  so inputs, outputs and the key/value cache stay on the GPU and no host-device
  copy is timed.

Beside them, ``pytorch-sparse24`` (sparse24.py): the pytorch backend on CUDA with
2:4-pruned Linear weights converted at load to semi-structured sparse tensors.

Other runtimes live in their own modules and are named in `BACKEND_MODULES`;
each defines a `Backend` subclass and calls `register()` on import. A backend
answers five questions (see `Backend`): can it run here at all (`check`), is a
path in its format (`handles`), how to load a variant for timing and for
quality (`load`), what drives the loaded model one token at a time
(`runner`), and what its model's config and tokenizer are.

Every `Runner` exposes ``prefill(ids)``, which runs the prompt and returns the
first generated token (greedy) and the state, and ``step(token, state)``,
which decodes one more. ``sync()`` waits for the device, so a timing taken
after it is complete. For quality, a loaded model is anything
`compress.evaluate.logits_of` accepts: a torch module, or a callable taking
``input_ids`` and ``attention_mask`` that returns logits for every position.

`check_available` answers, before any model is loaded, whether a backend can run
here at all; its message is the one line a failed variant shows.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from ..errors import UserError

DEVICES = ("cpu", "cuda")
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}

# Backends that live in their own modules: name -> module. Importing the module registers it.
# A module that fails to import (a runtime that is not installed) still leaves its name known,
# so a variant asking for it gets the module's own one-line reason.
BACKEND_MODULES: dict[str, str] = {
    "pytorch-sparse24": "compress.bench.sparse24",
    "llamacpp": "compress.bench.llamacpp_backend",
    "ort-genai": "compress.bench.ort_genai",
}

_REGISTRY: dict[str, "Backend"] = {}


def normalize_dtype(dtype: str | None) -> str:
    key = DTYPES.get(str(dtype or "float32").lower())
    if key is None:
        raise UserError(f"unknown dtype '{dtype}'; use one of float32, float16, bfloat16")
    return key


def has_onnx(path: str | Path | None) -> bool:
    return path is not None and Path(path).is_dir() and any(Path(path).glob("*.onnx"))


def has_torch_weights(path: str | Path | None) -> bool:
    if path is None or not Path(path).is_dir():
        return False
    p = Path(path)
    return (p / "config.json").is_file() and any(
        any(p.glob(pattern)) for pattern in ("*.safetensors", "pytorch_model*.bin")
    )


def context_from_config(cfg: Any) -> int | None:
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = get(key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _config_json(path: str | Path | None) -> dict | None:
    if path is None or not (Path(path) / "config.json").is_file():
        return None
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


class Backend:
    """One runtime. Subclasses set `name` (and `priority` to be chosen automatically)."""

    name: str = ""
    devices: tuple[str, ...] = ("cpu",)
    # Automatic choice: the highest-priority backend whose `handles(path)` is true.
    priority: int = 0
    # Whether its runner takes a batch of prompts ((b, n) ids) for settings.batch_size > 1.
    batched: bool = False
    # Whether its CUDA work runs through PyTorch: on its current stream, so CUDA events time it
    # (timing.py), and in its allocator, so torch.cuda.max_memory_allocated measures it. Other
    # runtimes are timed with the host clock after `sync`.
    torch_cuda: bool = False

    def check(self, device: str, dtype: str, path: str | Path | None) -> None:
        """Raise UserError (one line) if this backend cannot run `path` on `device` in `dtype` here."""
        if device not in self.devices:
            raise UserError(f"the {self.name} backend runs on {', '.join(self.devices)}, not {device}; "
                            f"use --device {self.devices[0]} or another backend")

    def handles(self, path: str | Path | None) -> bool:
        """Whether `path` is in this backend's format (for choosing a backend automatically)."""
        return False

    def context_length(self, path: str | Path | None) -> int | None:
        cfg = _config_json(path)
        return context_from_config(cfg) if cfg else None

    def load_tokenizer(self, path: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    def load(self, path: str, device: str, dtype: str, io_binding: bool, threads: int | None):
        raise NotImplementedError

    def runner(self, model, device: str) -> "Runner":
        raise NotImplementedError

    def config(self, model) -> Any:
        """The model's config (a dict or an object with attributes): context length and vocab size."""
        return model.config

    def parameters(self, model) -> dict[str, int | None]:
        """Total and non-zero parameter counts, where the runtime can tell."""
        return {"parameters": None, "nonzero_parameters": None}

    def describe(self, model) -> dict[str, Any] | None:
        """What a speed run should record about how the loaded model runs (e.g. which kernels); None: nothing."""
        return None


def register(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(BACKEND_MODULES))


def get_backend(name: str) -> Backend:
    """The backend called `name`, importing its module on first use; one-line UserError if it can't be had."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    module = BACKEND_MODULES.get(name)
    if module is None:
        raise UserError(f"unknown backend '{name}'; use one of {', '.join(backend_names())}")
    try:
        importlib.import_module(module)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"the {name} backend cannot be loaded here ({exc}); install what it needs "
                        "(see docs/bench.md, Backends)") from None
    if name not in _REGISTRY:
        raise RuntimeError(f"module {module} did not register the backend {name}")
    return _REGISTRY[name]


def detect_backend(path: str | Path | None) -> str:
    """The backend for a model path when none is asked for: the most specific format wins."""
    candidates = []
    for name in backend_names():
        try:
            backend = get_backend(name)
        except UserError:
            continue  # not installed here: it can't be the automatic choice
        if backend.handles(path):
            candidates.append((backend.priority, name))
    return max(candidates)[1] if candidates else "pytorch"


def check_available(backend: str, device: str, dtype: str, path: str | Path | None) -> None:
    """Raise UserError (one line) if this backend/device/dtype cannot run the model at `path` here."""
    if device not in DEVICES:
        raise UserError(f"unknown device '{device}'; use cpu or cuda")
    get_backend(backend).check(device, dtype, path)


def context_length(path: str | Path | None, backend: str = "pytorch") -> int | None:
    """The longest sequence a model accepts (None if unknown)."""
    if path is None or not Path(path).exists():
        return None
    return get_backend(backend).context_length(path)


def load_model(backend: str, path: str, device: str = "cpu", dtype: str = "float32", io_binding: bool = True,
               threads: int | None = None):
    """Load a variant for inference (timing, and quality with io_binding=False). Returns the backend's model.

    `threads` sets a runtime's intra-op threads where it has its own pool (PyTorch's are set
    process-wide by the caller).
    """
    try:
        return get_backend(backend).load(path, device, dtype, io_binding, threads)
    except UserError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
        raise UserError(f"could not load the {backend} model from {path} ({reason}); "
                        "the output may be corrupt or incomplete") from None


def make_runner(backend: str, model, device: str = "cpu") -> "Runner":
    return get_backend(backend).runner(model, device)


# --------------------------------------------------------------------------- runners


class Runner:
    """Greedy generation one token at a time, for timing and for samples.

    Subclasses implement `prefill` and `step`; a token is whatever `int()` turns
    into its id (a (1, 1) tensor for the torch-based runners).
    """

    def __init__(self, model, device: str = "cpu"):
        import torch

        self.model = model
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize()

    def to_device(self, ids):
        return ids.to(self.device)

    def reserve(self, positions: int) -> None:
        """The most positions a sequence will reach. A runtime that allocates its key/value cache up front
        (llama.cpp) sizes it from this, and may load the model here; the others need nothing."""

    def prefill(self, ids):
        """Run the prompt ((1, n) tensor of ids); return (first new token, state)."""
        raise NotImplementedError

    def step(self, token, state):
        """Decode one token after `token`; return (next token, state)."""
        raise NotImplementedError

    def generate(self, ids, new_tokens: int) -> list[int]:
        """Greedy tokens after the prompt (no stop at EOS: the timing loop doesn't stop either)."""
        self.reserve(ids.shape[1] + new_tokens)
        token, state = self.prefill(self.to_device(ids))
        tokens = [int(token)]
        for _ in range(new_tokens - 1):
            token, state = self.step(token, state)
            tokens.append(int(token))
        return tokens


class TorchRunner(Runner):
    """A transformers model's forward with its key/value cache."""

    def prefill(self, ids):
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True)
            return out.logits[:, -1:].argmax(-1), (out.past_key_values, ids.shape[1])

    def step(self, token, state):
        import torch

        past, length = state
        with torch.inference_mode():
            out = self.model(input_ids=token, past_key_values=past, use_cache=True)
            return out.logits[:, -1:].argmax(-1), (out.past_key_values, length + 1)


class OptimumRunner(Runner):
    """ORTModelForCausalLM's forward, which also wants the attention mask."""

    def prefill(self, ids):
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            return out.logits[:, -1:].argmax(-1), (out.past_key_values, ids.shape[1])

    def step(self, token, state):
        import torch

        past, length = state
        with torch.inference_mode():
            mask = torch.ones((1, length + 1), dtype=torch.long, device=token.device)
            out = self.model(input_ids=token, attention_mask=mask, past_key_values=past, use_cache=True)
            return out.logits[:, -1:].argmax(-1), (out.past_key_values, length + 1)


# --------------------------------------------------------------------------- built-in backends


class PyTorchBackend(Backend):
    name = "pytorch"
    devices = ("cpu", "cuda")
    priority = 0
    batched = True
    torch_cuda = True

    def check(self, device, dtype, path):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise UserError(
                f"CUDA is not available to PyTorch here (torch {torch.__version__} sees no GPU); "
                "run on a machine with a GPU or use --device cpu"
            )
        if path is not None and has_onnx(path) and not has_torch_weights(path):
            raise UserError(f"{path} holds an ONNX export, not PyTorch weights; run it with --backend onnxruntime")
        if path is not None and Path(path).is_file() and Path(path).suffix.lower() == ".gguf":
            raise UserError(f"{path} is a GGUF file, which the pytorch backend cannot run; run it with --backend "
                            "llamacpp, or give it as a recipe variant's model to run it converted to float")
        if path is not None and Path(path).is_file():
            raise UserError(f"{path} is a file, not a PyTorch checkpoint directory; the pytorch backend needs a "
                            "directory with config.json and weights")

    def handles(self, path):
        return has_torch_weights(path)

    def load(self, path, device, dtype, io_binding, threads):
        from transformers import AutoModelForCausalLM

        import torch

        kwargs = {}
        if device != "cpu" and "quantization_config" in (_config_json(path) or {}):
            # A quantized checkpoint (bitsandbytes) is placed by from_pretrained itself:
            # transformers refuses `.to()` on an 8-bit model.
            kwargs["device_map"] = {"": device}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, normalize_dtype(dtype)), **kwargs)
        model.eval()
        if device != "cpu" and not kwargs:
            model.to(device)
        return model

    def runner(self, model, device):
        return TorchRunner(model, device)

    def parameters(self, model):
        from ..layers import count_parameters

        return count_parameters(model)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    devices = ("cpu", "cuda")
    priority = 10

    def check(self, device, dtype, path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("ONNX Runtime is not installed; pip install onnxruntime (or onnxruntime-gpu for CUDA)") from None
        try:
            import optimum.onnxruntime  # noqa: F401
        except ImportError as exc:
            raise UserError(f"the onnxruntime backend needs optimum-onnx ({exc}); pip install optimum-onnx") from None
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(
                f"ONNX Runtime's CUDA provider is not available (installed providers: {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu on a machine with a GPU, or use --device cpu"
            )
        if dtype != "float32":
            raise UserError(
                f"--dtype {dtype} applies to the pytorch backend only; an ONNX Runtime variant runs the exported graph "
                "as it is (export it in the precision you want)"
            )
        if path is not None and Path(path).suffix.lower() == ".gguf":
            raise UserError(f"{path} is a GGUF file, which the onnxruntime backend cannot run; run it with --backend "
                            "llamacpp")
        if path is not None and not has_onnx(path):
            raise UserError(
                f"{path} has no ONNX export (no *.onnx file) for the onnxruntime backend; "
                "export the model first (e.g. a recipe with an ONNX export pass) or use --backend pytorch"
            )

    def handles(self, path):
        return has_onnx(path) and not has_torch_weights(path)

    def load(self, path, device, dtype, io_binding, threads):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        return ORTModelForCausalLM.from_pretrained(
            path, provider=provider, session_options=options, use_cache=True,
            use_io_binding=io_binding if device == "cuda" else False,
        )

    def runner(self, model, device):
        return OptimumRunner(model, device)


register(PyTorchBackend())
register(OnnxRuntimeBackend())
