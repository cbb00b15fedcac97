"""Quality of onnxruntime-genai builder options on the built-in model, against PyTorch float32.

Each configuration is built with `compress.genai_build` (the builder of the pinned
onnxruntime-genai, with our tied-head naming fix) straight from the cached float
checkpoint, then compared with the PyTorch model on WikiText-2 valid windows through
the same `compress.evaluate.compare` as every other variant (whole windows, plain
InferenceSession, empty past). One JSON line per configuration on stdout.

    python benchmarks/ort-genai/builder_options.py --work /tmp/genai-options --windows 4 \
        --wikitext ../shared/data/wikitext-2/wiki.valid.tokens [NAME ...]

Speed is not measured here (see `compress bench` with the ort-genai backend).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# name -> (precision, builder --extra_options)
CONFIGS = {
    "fp32": ("fp32", {}),
    "int8": ("int8", {}),
    "int8-untied": ("int8", {"shared_embeddings": "false"}),
    "int8-acc0": ("int8", {"accuracy_level": "0"}),
    "int8-b16": ("int8", {"block_size": "16"}),
    "int8-b64": ("int8", {"block_size": "64"}),
    "int8-b128": ("int8", {"block_size": "128"}),
    "int4": ("int4", {}),
    "int4-head8": ("int4", {"matmul_mixed_precision": "last_matmul:int8"}),
    "int4-kq": ("int4", {"algo_config": "k_quant"}),
    "int4-kq-head8": ("int4", {"algo_config": "k_quant", "matmul_mixed_precision": "last_matmul:int8"}),
    "int4-rtn-head8": ("int4", {"algo_config": "rtn", "matmul_mixed_precision": "last_matmul:int8"}),
    "int4-asym": ("int4", {"is_symmetric": "false"}),
    "int4-asym-head8": ("int4", {"is_symmetric": "false", "matmul_mixed_precision": "last_matmul:int8"}),
}


class Replay:
    """The base model's logits, computed once and handed out window by window."""

    def __init__(self, model, windows):
        import torch

        from compress.evaluate import logits_of

        with torch.inference_mode():  # no autograd graph: it would keep every activation alive
            self.logits = [logits_of(model, windows.input_ids[i:i + 1]) for i in range(len(windows))]
        self.i = 0

    def __call__(self, input_ids, attention_mask=None):
        out = self.logits[self.i]
        self.i = (self.i + 1) % len(self.logits)
        return out


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.evaluate import compare
    from compress.genai_model import GenaiCausalLM
    from compress.models import DEFAULT_MODEL, builtin_gguf_path, converted_gguf_dir
    from compress.recipe import EvaluationData

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(CONFIGS))
    parser.add_argument("--work", type=Path, required=True, help="where the graphs are built (kept, reused)")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--wikitext", default=str(ROOT.parent / "shared/data/wikitext-2/wiki.valid.tokens"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hf_dir = converted_gguf_dir(builtin_gguf_path(DEFAULT_MODEL))
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    windows = EvaluationData(source=args.wikitext, split="all", windows=args.windows, seq_len=1024).load(tokenizer)
    reference = Replay(AutoModelForCausalLM.from_pretrained(hf_dir).eval(), windows)
    for name in args.names:
        precision, extra = CONFIGS[name]
        out = args.work / name
        build_s = 0.0
        if not (out / "model.onnx").exists():
            args.work.mkdir(parents=True, exist_ok=True)
            spec = args.work / f"{name}.json"
            spec.write_text(json.dumps({"input": str(hf_dir), "output": str(out), "precision": precision,
                                        "cache_dir": str(args.work / "cache"), "extra_options": extra}))
            start = time.time()
            run = subprocess.run([sys.executable, "-m", "compress.genai_build", str(spec)], cwd=ROOT,
                                 capture_output=True, text=True)
            if run.returncode:
                print(json.dumps({"name": name, "error": run.stdout.strip().splitlines()[-1:]}), flush=True)
                continue
            build_s = time.time() - start
        graph = GenaiCausalLM(out, owned=False, threads=args.threads)
        q = compare(reference, graph, windows)
        print(json.dumps({"name": name, "precision": precision, "extra": extra,
                          "ppl_base": round(q["perplexity_base"], 3), "ppl": round(q["perplexity"], 3),
                          "kl": round(q["kl_mean"], 5), "top1": round(q["top1_agreement"], 4),
                          "MB": round(graph.size_bytes() / 2**20, 1), "build_s": round(build_s, 1),
                          "windows": args.windows}), flush=True)
        graph.release()


if __name__ == "__main__":
    main()
