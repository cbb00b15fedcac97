"""One encoder measurement in a fresh process: ``python -m compress.encoders.bench_worker MODE JOB.json EVENTS.jsonl``.

Modes:

* ``build``: apply a variant's passes and save it (the decoder bench's build step, unchanged);
* ``speed``: load one variant (PyTorch ``AutoModel`` or ONNX Runtime's
  ``ORTModelForFeatureExtraction``), warm up, then embed the timing sentences
  at each batch size, timing every batch (tokenization excluded: it is the same
  tokenizer for every variant); report load time and memory;
* ``quality``: embed the evaluation sentences; the base saves its embeddings,
  every other variant is compared with them (compress.encoders.quality).

Events are JSON lines as in the decoder bench's worker (``start``, then
``result`` or ``error``, one line).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..bench.worker import Events
from ..errors import UserError


def _threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def load_encoder(path: str, backend: str, threads: int | None = None):
    """(model, tokenizer, pooling) for a saved variant, with stock loaders only."""
    from transformers import AutoModel, AutoTokenizer

    from .loading import pooling_of

    tokenizer = AutoTokenizer.from_pretrained(path)
    pooling = pooling_of(path)
    if backend == "onnxruntime":
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForFeatureExtraction

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        model = ORTModelForFeatureExtraction.from_pretrained(path, provider="CPUExecutionProvider",
                                                             session_options=options)
    else:
        model = AutoModel.from_pretrained(path).eval()
    return model, tokenizer, pooling


def _import_backend(backend: str) -> None:
    import transformers.models.bert.modeling_bert  # noqa: F401  (transformers imports model classes lazily)
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    if backend == "onnxruntime":
        from optimum.onnxruntime import ORTModelForFeatureExtraction  # noqa: F401


def timing_batches(tokenizer, texts: list[str], batch_size: int, length: int) -> list[dict]:
    """The timing sentences, sorted by length as sentence-transformers' encode sorts them, cut into padded batches."""
    from .sentences import tokenize_batch

    ordered = sorted(texts, key=lambda t: len(tokenizer(t, truncation=True, max_length=length)["input_ids"]))
    return [tokenize_batch(tokenizer, ordered[i : i + batch_size], length)
            for i in range(0, len(ordered), batch_size)]


def run_speed(job: dict, events: Events) -> None:
    import torch

    from ..bench.metrics import current_rss_bytes, peak_rss_bytes
    from .pooling import pool
    from .sentences import max_tokens, token_states

    name = job["name"]
    _threads(job.get("threads"))
    events.emit("start", name)
    _import_backend(job["backend"])  # library imports are not load time
    rss_before = current_rss_bytes()
    start = time.perf_counter()
    model, tokenizer, pooling = load_encoder(job["path"], job["backend"], job.get("threads"))
    load_s = time.perf_counter() - start
    rss_after = current_rss_bytes()
    length = max_tokens(tokenizer, getattr(model, "config", None), pooling)

    def run(batch):
        with torch.inference_mode():
            return pool(token_states(model, batch), batch["attention_mask"], pooling)

    measured = []
    for size in job["batch_sizes"]:
        batches = timing_batches(tokenizer, job["texts"], int(size), length)
        for batch in batches[: max(1, int(job.get("warmup_batches", 2)))]:
            run(batch)
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - t0)
        measured.append({"batch_size": int(size), "sentences": sum(int(b["input_ids"].shape[0]) for b in batches),
                         "batch_s": times})
    events.emit("result", name, load_s=load_s, rss_before_load_bytes=rss_before, rss_after_load_bytes=rss_after,
                peak_rss_bytes=peak_rss_bytes(), torch_threads=torch.get_num_threads(), batches=measured)


def run_quality(job: dict, events: Events) -> None:
    import torch

    from ..layers import count_parameters
    from .quality import embedding_agreement
    from .sentences import embed

    name = job["name"]
    _threads(job.get("threads"))
    events.emit("start", name)
    model, tokenizer, pooling = load_encoder(job["path"], job["backend"], job.get("threads"))
    embeddings = embed(model, tokenizer, job["texts"], pooling, desc=None)
    reference = Path(job["base_embeddings"])
    if job.get("is_base"):
        torch.save(embeddings, reference)
        result = embedding_agreement(embeddings, embeddings)
    else:
        if not reference.is_file():
            raise UserError("the base's embeddings are missing (its quality measurement failed), so there is "
                            "nothing to compare with")
        base = torch.load(reference)
        if base.shape != embeddings.shape:
            raise UserError(f"its embeddings have {embeddings.shape[1]} dimensions and the base's {base.shape[1]}; "
                            "they cannot be compared")
        result = embedding_agreement(base, embeddings)
    counts = count_parameters(model) if isinstance(model, torch.nn.Module) else {"parameters": None,
                                                                                 "nonzero_parameters": None}
    events.emit("result", name, **result, **counts)


def run_build(job: dict, events: Events) -> None:
    from ..bench.worker import run_build as build

    build(job, events)


MODES = {"build": run_build, "speed": run_speed, "quality": run_quality}


def main(argv: list[str] | None = None) -> int:
    from ..bench.worker import main as run_mode

    return run_mode(argv, MODES, "compress.encoders.bench_worker")


if __name__ == "__main__":
    sys.exit(main())
