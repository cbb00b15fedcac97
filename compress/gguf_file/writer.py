"""Write a GGUF file from an Artifact: layout, tensor types, tokenizer keys and provenance.

The container is the gguf package's ``GGUFWriter``; quantization is the gguf
package's numpy code (see compress.gguf_file.types), so exporting needs no
llama.cpp build. Provenance goes in as

* ``general.name`` (the source model), ``general.quantized_by`` ("compress"),
  ``general.description`` (the chain of passes, one line), ``general.file_type``;
* ``compress.manifest``: the manifest as JSON (format, source, every pass with its
  config and measurements so far, this export's settings, library versions).

The same manifest, completed with what the export measured, is saved beside
the file (``OUT.gguf.compress.json``) by compress.saving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import progress
from .layout import Layout, model_layout, write_hparams
from .types import TypeChoice, check_raw_blocks, choose_types, encode, file_type, type_counts
from .vocab import tokenizer_keys

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION of the block formats written here


@dataclass
class ExportReport:
    """What was written: the architecture, every matrix's type, fallbacks, where the tokenizer came from."""

    arch: str
    choices: list[TypeChoice]
    tokenizer: str
    notes: list[str]
    bytes: int

    def metrics(self) -> dict[str, Any]:
        fallbacks = [{"tensor": c.name, "asked": c.asked, "written": c.written, "why": c.why}
                     for c in self.choices if c.fell_back]
        return {
            "arch": self.arch,
            "gguf_bytes": self.bytes,
            "type_counts": type_counts(self.choices),
            "tensor_types": {c.name: c.written for c in self.choices},
            "fallbacks": fallbacks,
            "quantized_blocks_written": sorted(c.name for c in self.choices if c.asked == "quantized_blocks"),
            "tokenizer": self.tokenizer,
            "notes": self.notes,
        }


def describe_passes(source: dict, passes: list[dict]) -> str:
    ref = source.get("ref", "?")
    chain = [p.get("name", "?") for p in passes]
    return f"compress: {Path(str(ref)).name} -> " + " -> ".join(chain) if chain else f"compress: {ref}"


def write_gguf(artifact, path: Path, type_name: str, overrides: dict[str, str], provenance: dict[str, Any]) -> ExportReport:
    """Write `artifact` as a GGUF file at `path`; return what was written."""
    import gguf

    layout: Layout = model_layout(artifact.model, artifact.passes)
    raw_blocks = dict(artifact.quantized_blocks or {})
    choices = choose_types(layout.tensors, type_name, overrides, raw_blocks)
    by_name = {c.name: c for c in choices}
    vocab = tokenizer_keys(artifact, layout.vocab_rows)

    writer = gguf.GGUFWriter(path, layout.arch)
    try:
        writer.add_name(str(provenance.get("name") or Path(str(artifact.source.get("ref", "model"))).name))
        writer.add_quantized_by("compress")
        writer.add_description(describe_passes(artifact.source, provenance.get("passes", [])))
        writer.add_file_type(file_type(choices))
        writer.add_quantization_version(QUANTIZATION_VERSION)
        writer.add_string("compress.manifest", json.dumps(provenance, default=str))
        write_hparams(writer, layout)
        vocab.write(writer)
        for t in progress(layout.tensors, desc=f"writing GGUF ({type_name})", unit="tensor"):
            choice = by_name.get(t.name)
            if choice is None:  # a vector: norms and biases stay float32
                writer.add_tensor(t.name, np.ascontiguousarray(t.data, dtype=np.float32))
            elif choice.asked == "quantized_blocks":
                _, blocks = raw_blocks[t.source]
                data = check_raw_blocks(t.source, choice.written, blocks, t.data, t.row_order)
                writer.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType[choice.written.upper()])
            elif choice.written in ("f32", "f16"):
                writer.add_tensor(t.name, encode(t.data, choice.written))
            else:
                writer.add_tensor(t.name, encode(t.data, choice.written),
                                  raw_dtype=gguf.GGMLQuantizationType[choice.written.upper()])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return ExportReport(layout.arch, choices, vocab.origin, layout.notes, Path(path).stat().st_size)
