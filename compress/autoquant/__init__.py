"""Mixed precision under a divergence budget: one GGUF type per weight matrix (see docs/autoquant.md).

* `grid`: the GGUF types a matrix may take, weights round-tripped through their
  exact grid (the gguf package's numpy quantizer, as the writer uses), and the
  rounding llama.cpp applies to a matrix's input before the dot products;
* `tensors`: the matrices of a model as the GGUF writer will write them, with
  the modules that multiply by each;
* `simulate`: a types assignment put on a PyTorch model (and taken off again),
  so the model computes what llama.cpp will;
* `cost`: the cost model (bytes read per decoded token, file size);
* `sensitivity`: KL(base || model with one matrix quantized) per matrix and type;
* `search`: the fastest assignment within a budget, and the back-off when the
  measured divergence exceeds it.

The pass that ties them together is compress.passes.auto_quantize.
"""
