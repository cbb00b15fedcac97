"""Can the installed llama.cpp build run on this CPU? Asked once, in a child process.

A llama.cpp compiled for instructions this CPU lacks (``-march=native`` on
another machine, AMX on a CPU without it) does not raise: the process dies
with SIGILL ("Illegal instruction") the first time a kernel runs. So the
question is asked in a child: it writes a tiny GGUF model (one layer, with
F32, F16, Q8_0 and Q4_0 matrices, so the quantized kernels run too), loads it
with llama-cpp-python and decodes a few tokens. The answer is remembered per
llama.cpp build and CPU in the cache directory, so a machine pays for the
question once.

Run as ``python -m compress.llamacpp_probe`` (exit 0: it runs here).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import UserError

PROBE_TIMEOUT_S = 180
_checked: set[str] = set()


def _build_key() -> str:
    """A key for this llama.cpp build on this CPU: its library files and the CPU's flags."""
    import importlib.util

    h = hashlib.sha256()
    spec = importlib.util.find_spec("llama_cpp")
    root = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if root is not None:
        for lib in sorted(root.rglob("*.so*")) + sorted(root.rglob("*.dylib")):
            stat = lib.stat()
            h.update(f"{lib.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((ln for ln in cpuinfo.read_text(errors="replace").splitlines() if ln.startswith("flags")), "")
        h.update(flags.encode())
    return h.hexdigest()[:16]


def check_cpu_support() -> None:
    """Raise UserError (one line) if the installed llama.cpp build cannot run on this CPU."""
    from .models import compress_cache_dir

    key = _build_key()
    if key in _checked:
        return
    marker = compress_cache_dir() / "llamacpp" / f"runs-here-{key}"
    if marker.is_file():
        _checked.add(key)
        return
    try:
        done = subprocess.run([sys.executable, "-m", "compress.llamacpp_probe"], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, env={**os.environ, "PYTHONPATH": _package_path()})
    except subprocess.TimeoutExpired:
        raise UserError(f"llama.cpp did not finish decoding a tiny model within {PROBE_TIMEOUT_S} s here; "
                        "the build or the machine is not usable for it") from None
    if done.returncode == -signal.SIGILL:
        raise UserError(
            "the installed llama.cpp build uses CPU instructions this machine lacks (it died with SIGILL, Illegal "
            "instruction); reinstall llama-cpp-python built for any x86 CPU: CMAKE_ARGS=\"-DGGML_NATIVE=OFF "
            "-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON\" pip install --force-reinstall --no-cache-dir "
            "llama-cpp-python (see docs/gguf.md)"
        )
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or "").strip().splitlines() if ln.strip()]
        why = lines[-1].strip()[:300] if lines else f"exit code {done.returncode}"
        raise UserError(f"llama.cpp cannot run a tiny model here ({why}); check the llama-cpp-python install")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("llama.cpp decoded a tiny model here\n")
    _checked.add(key)


def _package_path() -> str:
    here = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([here] + [p for p in [os.environ.get("PYTHONPATH")] if p])


def write_tiny_gguf(path: Path) -> None:
    """A one-layer Llama with a 256-token byte-level vocabulary; matrices in F32, F16, Q8_0 and Q4_0."""
    import gguf
    import numpy as np
    from tokenizers.pre_tokenizers import ByteLevel

    rng = np.random.default_rng(0)
    n_embd, n_ff, n_head, n_vocab = 64, 128, 2, 256
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    # The 256 symbols of byte-level BPE, so every text (a newline included) tokenizes.
    w.add_token_list(sorted(ByteLevel.alphabet()))
    w.add_token_types([1] * n_vocab)
    w.add_token_merges([])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)

    def mat(rows, cols):
        return rng.standard_normal((rows, cols)).astype(np.float32) * 0.05

    def q(name, data, kind):
        t = gguf.GGMLQuantizationType[kind]
        w.add_tensor(name, gguf.quants.quantize(data, t), raw_dtype=t)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    q("blk.0.attn_q.weight", mat(n_embd, n_embd), "Q8_0")
    q("blk.0.attn_k.weight", mat(n_embd, n_embd), "Q4_0")
    w.add_tensor("blk.0.attn_v.weight", mat(n_embd, n_embd).astype(np.float16))
    w.add_tensor("blk.0.attn_output.weight", mat(n_embd, n_embd))
    q("blk.0.ffn_gate.weight", mat(n_ff, n_embd), "Q8_0")
    q("blk.0.ffn_up.weight", mat(n_ff, n_embd), "Q4_0")
    q("blk.0.ffn_down.weight", mat(n_embd, n_ff), "Q8_0")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> int:
    import llama_cpp

    with tempfile.TemporaryDirectory(prefix="compress-llamacpp-probe-") as tmp:
        path = Path(tmp) / "tiny.gguf"
        write_tiny_gguf(path)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=16, verbose=False)
        llm.eval([2, 3, 4, 5, 6, 7, 8, 9])
        llm.eval([10])
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
