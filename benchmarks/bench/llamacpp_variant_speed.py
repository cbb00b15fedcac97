"""Decode speed of one llama.cpp CPU variant (zen4, haswell, ...) on a GGUF file: 128-token prompt, 64 greedy steps."""
import json, sys, time
from compress import llamacpp_runtime as rt

name, path = sys.argv[1], sys.argv[2]
rt.quiet_llama_logs()
files = rt.variant_files()
assert rt._ggml().ggml_backend_load(str(files[name]).encode()), name
rt._loaded["cpu"] = name
from llama_cpp import Llama

m = Llama(model_path=path, n_ctx=256, n_threads=2, n_batch=128, verbose=False)
prompt = m.tokenize(b"The history of the city begins with " * 40)[:128]
m.eval(prompt[:8]); m.n_tokens = 0  # warm-up
t0 = time.perf_counter(); m.eval(prompt); prefill = time.perf_counter() - t0
steps = []
for tok in prompt[:64]:  # decode cost does not depend on which token is fed
    t = time.perf_counter(); m.eval([tok]); steps.append(time.perf_counter() - t)
print(json.dumps({"variant": name, "file": path, "prefill_s": prefill, "decode_tok_s": 64 / sum(steps)}))
