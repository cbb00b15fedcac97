"""The ``ort-genai`` backend: the fast ONNX Runtime graph, run by onnxruntime-genai's own generator.

A variant is a directory with ``genai_config.json`` (an output of `compress export
ort-genai`, or of onnxruntime-genai's builder itself). Timing goes through
``onnxruntime_genai.Generator``, the loop a user of this graph runs, not optimum's
``generate``:

* prefill: a new Generator (its key/value buffers sized for the prompt plus the new
  tokens, see `Runner.reserve`), ``append_tokens(prompt ids)``, which runs the
  prompt, and the first ``generate_next_token()``, which picks the first token from
  the prompt's logits;
* one decode step: ``generate_next_token()``, which runs the model on the last token
  and picks the next.

Token ids come from the transformers tokenizer, as for every other backend, so all
variants see the same prompt. Intra-op threads are set in the genai config's session
options. Quality uses the same directory through a plain InferenceSession on whole
windows (`compress.genai_model.GenaiCausalLM.__call__`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..genai_model import GenaiCausalLM, is_genai_directory, read_genai_config
from .backends import Backend, Runner, register

# Key/value capacity beyond the prompt when nobody said how many tokens will follow.
DEFAULT_NEW_TOKENS = 256


class GenaiRunner(Runner):
    """Greedy decoding with onnxruntime-genai's Generator; the state is the Generator itself."""

    def __init__(self, model: GenaiCausalLM, device: str = "cpu"):
        super().__init__(model, device)
        self.max_length: int | None = None

    def reserve(self, positions: int) -> None:
        self.max_length = int(positions)

    def prefill(self, ids):
        import numpy as np

        prompt = ids.detach().cpu().numpy().astype(np.int32).reshape(1, -1)
        wanted = self.max_length if self.max_length else prompt.shape[1] + DEFAULT_NEW_TOKENS
        context = int(self.model.config["max_position_embeddings"])
        generator = self.model.generator(min(max(wanted, prompt.shape[1] + 1), context))
        generator.append_tokens(prompt)
        generator.generate_next_token()
        return int(generator.get_next_tokens()[0]), generator

    def step(self, token, generator):
        # The generator already holds `token` (it chose it); this runs the model on it and picks the next.
        generator.generate_next_token()
        return int(generator.get_next_tokens()[0]), generator


class OrtGenaiBackend(Backend):
    name = "ort-genai"
    devices = ("cpu",)
    priority = 20  # a genai directory also holds model.onnx: this is the more specific format

    def check(self, device, dtype, path):
        super().check(device, dtype, path)
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError:
            raise UserError("the ort-genai backend needs onnxruntime-genai: pip install onnxruntime-genai==0.15.2") from None
        if dtype != "float32":
            raise UserError(f"--dtype {dtype} applies to the pytorch backend only; an ort-genai variant runs its graph "
                            "as built (export it with the precision you want)")
        if path is not None and not is_genai_directory(path):
            raise UserError(f"{path} has no genai_config.json, so it is not an onnxruntime-genai model; make one with "
                            "`compress export ort-genai`, or use --backend pytorch / onnxruntime")

    def handles(self, path):
        return is_genai_directory(path)

    def context_length(self, path):
        if not is_genai_directory(path):
            return None
        return int(read_genai_config(path)["model"]["context_length"])

    def load(self, path, device, dtype, io_binding, threads):
        model = GenaiCausalLM(Path(path), threads=threads, owned=False)
        model.genai_config  # a missing or broken config fails here, at load, in one line
        if io_binding:  # loading for timing (quality loads with io_binding=False and opens its own session)
            model.og_model  # so the load time and memory are counted at load, not in the first prefill
        return model

    def runner(self, model, device):
        return GenaiRunner(model, device)

    def config(self, model):
        return model.config


register(OrtGenaiBackend())
