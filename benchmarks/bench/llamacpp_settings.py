"""llama.cpp context settings against each other on one GGUF file: decode tok/s in interleaved rounds.

    python benchmarks/bench/llamacpp_settings.py FILE.gguf [ROUNDS]

Every setting's context is loaded once, then each round decodes 64 greedy steps after a 128-token
prompt in every context in turn (median and range over rounds). Then the logits of one 1,024-token
WikiText-2 window with flash attention off and on (KL and top-1 between them), from ../shared.
"""
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from compress import llamacpp_runtime as rt

SETTINGS = {
    "2 threads": dict(n_threads=2),
    "1 thread": dict(n_threads=1),
    "2 threads, flash attention": dict(n_threads=2, flash_attn=True),
    "2 threads, no mmap": dict(n_threads=2, use_mmap=False),
}
WIKI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"


def decode_speed(llm, prompt: list[int]) -> float:
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for token in prompt[:64]:  # decode cost does not depend on which token is fed
        llm.eval([token])
    return 64 / (time.perf_counter() - start)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def main() -> None:
    path, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    rt.quiet_llama_logs()
    print("llama.cpp CPU code:", rt.ensure_cpu_backend())
    from llama_cpp import Llama

    models = {k: Llama(model_path=path, n_ctx=256, n_batch=128, verbose=False, **v) for k, v in SETTINGS.items()}
    prompt = next(iter(models.values())).tokenize(b"The history of the city begins with " * 40)[:128]
    for llm in models.values():
        decode_speed(llm, prompt)  # warm-up
    speeds = {k: [] for k in models}
    for _ in range(rounds):
        for k, llm in models.items():
            speeds[k].append(decode_speed(llm, prompt))
    for k, v in speeds.items():
        print(f"{k:28s} decode {statistics.median(v):6.1f} tok/s [{min(v):.1f}-{max(v):.1f}]")
    for llm in models.values():
        llm.close()

    text = WIKI.read_text()[:20000].encode()
    logits = {}
    for flash in (False, True):
        llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_ubatch=512, logits_all=True, flash_attn=flash,
                    n_threads=2, verbose=False)
        ids = llm.tokenize(text)[:1024]
        llm.eval(ids)
        logits[flash] = log_softmax(np.array(llm.scores[: len(ids)], dtype=np.float64))
        llm.close()
    off, on = logits[False], logits[True]
    kl = float((np.exp(off) * (off - on)).sum(1).mean())
    print(f"flash attention off vs on, one 1,024-token WikiText-2 window: KL {kl:.2e}, "
          f"top-1 agreement {(off.argmax(1) == on.argmax(1)).mean():.1%}")


if __name__ == "__main__":
    main()
