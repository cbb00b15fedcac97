"""llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize) on a GGUF file: the runtime's baseline.

Every matrix gets the one type asked for (llama.cpp's `pure` mode, no importance matrix), as
`llama-quantize --pure IN OUT TYPE` would write it; vectors stay f32. Used for the types the gguf package
cannot quantize (iq4_nl), so that a GPTQ file is compared with what llama.cpp itself makes of the same model:

    compress export gguf smollm2-135m-instruct --type f16 -o /tmp/s24/iq/base-f16.gguf
    python benchmarks/gptq/llama_quantize.py /tmp/s24/iq/base-f16.gguf /tmp/s24/iq/base-iq4_nl.gguf iq4_nl
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a GGUF file at f16 or f32")
    ap.add_argument("output")
    ap.add_argument("type", help="llama.cpp file type without MOSTLY_, e.g. iq4_nl, q4_0, q8_0")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import llama_cpp

    name = f"LLAMA_FTYPE_MOSTLY_{args.type.upper()}"
    if not hasattr(llama_cpp, name):
        print(f"unknown llama.cpp file type {args.type!r}", file=sys.stderr)
        return 2
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.pure, params.nthread = getattr(llama_cpp, name), True, args.threads
    # Written beside the output and moved into place only when complete: a failed run leaves no partial file.
    partial = Path(args.output + ".partial")
    rc = llama_cpp.llama_model_quantize(args.source.encode(), str(partial).encode(), ctypes.byref(params))
    if rc != 0:
        partial.unlink(missing_ok=True)
        print(f"llama_model_quantize failed ({rc}) on {args.source}; nothing was written", file=sys.stderr)
        return 1
    partial.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
