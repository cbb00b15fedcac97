"""Backends: how a variant is loaded and driven token by token.

* ``pytorch``: ``AutoModelForCausalLM`` in eager mode, on ``cpu`` or ``cuda``, in
  float32, float16 or bfloat16.
* ``onnxruntime``: ``ORTModelForCausalLM`` (optimum-onnx) over a directory that
  holds an ONNX export; the CPU provider, or the CUDA provider with IOBinding
  so inputs, outputs and the key/value cache stay on the GPU and no host-device
  copy is timed.

Both expose the same `Runner`: ``prefill(ids)`` runs the prompt and returns the
first generated token (greedy) and the cache; ``step(token, state)`` decodes one
more. ``sync()`` waits for the device, so a timing taken after it is complete.

`check_available` answers, before any model is loaded, whether a backend can run
here at all; its message is the one line a failed variant shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError

BACKENDS = ("pytorch", "onnxruntime")
DEVICES = ("cpu", "cuda")
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


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


def check_available(backend: str, device: str, dtype: str, path: str | Path | None) -> None:
    """Raise UserError (one line) if this backend/device/dtype cannot run the model at `path` here."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise UserError(f"unknown device '{device}'; use cpu or cuda")
    if backend == "pytorch":
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise UserError(
                f"CUDA is not available to PyTorch here (torch {torch.__version__} sees no GPU); "
                "run on a machine with a GPU or use --device cpu"
            )
        if path is not None and has_onnx(path) and not has_torch_weights(path):
            raise UserError(f"{path} holds an ONNX export, not PyTorch weights; run it with --backend onnxruntime")
        return
    # onnxruntime
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
    if path is not None and not has_onnx(path):
        raise UserError(
            f"{path} has no ONNX export (no *.onnx file) for the onnxruntime backend; "
            "export the model first (e.g. a recipe with an ONNX export pass) or use --backend pytorch"
        )


def context_length(path: str | Path | None) -> int | None:
    """The longest sequence a model accepts, read from its config.json (None if unknown)."""
    if path is None or not (Path(path) / "config.json").is_file():
        return None
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return context_from_config(cfg)


def context_from_config(cfg: Any) -> int | None:
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = get(key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _torch_dtype(dtype: str):
    import torch

    return getattr(torch, normalize_dtype(dtype))


def load_model(backend: str, path: str, device: str = "cpu", dtype: str = "float32", io_binding: bool = True,
               threads: int | None = None):
    """Load a variant for inference. Returns the model (torch module or ORT model).

    `threads` sets ONNX Runtime's intra-op threads (PyTorch's are set process-wide by the caller).
    """
    try:
        return _load(backend, path, device, dtype, io_binding, threads)
    except UserError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
        raise UserError(f"could not load the {backend} model from {path} ({reason}); "
                        "the output may be corrupt or incomplete") from None


def _load(backend: str, path: str, device: str, dtype: str, io_binding: bool, threads: int | None):
    if backend == "pytorch":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype))
        model.eval()
        if device != "cpu":
            model.to(device)
        return model
    from optimum.onnxruntime import ORTModelForCausalLM

    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    return ORTModelForCausalLM.from_pretrained(
        path, provider=provider, session_options=options, use_cache=True,
        use_io_binding=io_binding if device == "cuda" else False,
    )


class Runner:
    """Greedy generation one token at a time, for timing and for samples."""

    def __init__(self, model, backend: str, device: str = "cpu"):
        import torch

        self.model = model
        self.backend = backend
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize()

    def to_device(self, ids):
        return ids.to(self.device)

    def prefill(self, ids):
        """Run the prompt; return (first new token as a (1, 1) tensor, state)."""
        import torch

        with torch.inference_mode():
            if self.backend == "pytorch":
                out = self.model(input_ids=ids, use_cache=True)
                state = (out.past_key_values, ids.shape[1])
            else:
                mask = torch.ones_like(ids)
                out = self.model(input_ids=ids, attention_mask=mask, use_cache=True)
                state = (out.past_key_values, ids.shape[1])
            token = out.logits[:, -1:].argmax(-1)
        return token, state

    def step(self, token, state):
        """Decode one token after `token`; return (next token, state)."""
        import torch

        past, length = state
        with torch.inference_mode():
            if self.backend == "pytorch":
                out = self.model(input_ids=token, past_key_values=past, use_cache=True)
            else:
                mask = torch.ones((1, length + 1), dtype=torch.long, device=token.device)
                out = self.model(input_ids=token, attention_mask=mask, past_key_values=past, use_cache=True)
            return out.logits[:, -1:].argmax(-1), (out.past_key_values, length + 1)

    def generate(self, ids, new_tokens: int) -> list[int]:
        """Greedy tokens after the prompt (no stop at EOS: the timing loop doesn't stop either)."""
        token, state = self.prefill(self.to_device(ids))
        tokens = [int(token)]
        for _ in range(new_tokens - 1):
            token, state = self.step(token, state)
            tokens.append(int(token))
        return tokens

