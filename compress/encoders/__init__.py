"""BERT-family sentence encoders: the load path, the pooling, held-out sentences, quality, heads, distillation, bench.

* architecture.py: which configs are encoders (BERT, MiniLM, RoBERTa, XLM-RoBERTa);
* loading.py / pooling.py: `AutoModel` plus the sentence-transformers pooling, read and written back;
* sentences.py: held-out sentences from any text source, and embeddings from PyTorch or ONNX Runtime;
* quality.py: cosine to the base, top-10 neighbour overlap, Spearman of pairwise similarities;
* structure.py: attention heads through transformers' `pruned_heads`;
* distill.py: the `embedding_distill` pass;
* onnx.py: optimum's feature-extraction export (`OnnxEncoder`);
* bench.py, bench_worker.py, bench_report.py: `compress bench` when the base is an encoder.

See docs/encoders.md.
"""
