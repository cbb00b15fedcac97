"""Every output of the encoder bench loads with stock libraries only, and gives the embeddings it was measured with.

Reads the bench report (bench.json) for the variants' directories, then for each one:

* a PyTorch checkpoint: `transformers.AutoModel` (pooled here as modules.json says), and
  `sentence_transformers.SentenceTransformer`, whose embeddings must agree with AutoModel's;
* an ONNX directory: `optimum.onnxruntime.ORTModelForFeatureExtraction` (pooled the same way).

Each variant's stock embeddings are compared with the base's (mean cosine) on the first N sentences of
a text file, so a load that "works" but computes something else shows. compress itself is not imported.

    python benchmarks/encoders/check_loading.py RESULTS/bench/bench.json --text WIKI -o RESULTS/loading.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch


def sentences(path: str, n: int) -> list[str]:
    found = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", line):
            if 4 <= len(s.split()) <= 64:
                found.append(s)
                if len(found) == n:
                    return found
    return found


def pipeline(directory: Path) -> tuple[str, bool]:
    modules = json.loads((directory / "modules.json").read_text())
    pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
    mode = next(m for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
                if pooling.get(f"pooling_mode_{m}"))
    return mode, any(m["type"].endswith("Normalize") for m in modules)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    hidden, m = hidden.float(), mask.unsqueeze(-1).float()
    if mode == "cls_token":
        out = hidden[:, 0]
    elif mode == "max_tokens":
        out = hidden.masked_fill(m == 0, -1e9).max(1).values
    else:
        out = (hidden * m).sum(1) / (m.sum(1).sqrt() if mode == "mean_sqrt_len_tokens" else m.sum(1))
    return torch.nn.functional.normalize(out, dim=1) if normalize else out


@torch.inference_mode()
def stock_embeddings(directory: Path, texts: list[str]) -> tuple[torch.Tensor, dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    mode, normalize = pipeline(directory)
    limit = json.loads((directory / "sentence_bert_config.json").read_text()).get("max_seq_length") or 512
    loaded: dict = {}
    if (directory / "model.onnx").is_file():
        from optimum.onnxruntime import ORTModelForFeatureExtraction

        model = ORTModelForFeatureExtraction.from_pretrained(directory)
        loaded["loader"] = "ORTModelForFeatureExtraction"
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(directory).eval()
        loaded["loader"] = "AutoModel"
    out = []
    for i in range(0, len(texts), 32):
        batch = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=limit, return_tensors="pt")
        out.append(pool(torch.as_tensor(model(**batch).last_hidden_state), batch["attention_mask"], mode, normalize))
    embeddings = torch.cat(out)
    if loaded["loader"] == "AutoModel":
        from sentence_transformers import SentenceTransformer

        st = torch.as_tensor(SentenceTransformer(str(directory), device="cpu").encode(texts, batch_size=32))
        loaded["sentence_transformers"] = "SentenceTransformer"
        loaded["sentence_transformers_vs_automodel_min_cosine"] = float(
            torch.nn.functional.cosine_similarity(st.double(), embeddings.double()).min())
    return embeddings, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="bench.json of an encoder bench run with --work-dir (variant directories kept)")
    parser.add_argument("--text", required=True, help="text file the check sentences come from (WikiText-2 valid)")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    report = json.loads(Path(args.report).read_text())
    texts = sentences(args.text, args.sentences)
    results, base = [], None
    for v in report["variants"]:
        row = {"name": v["name"], "path": v["path"]}
        try:
            if not v["path"] or not Path(v["path"]).is_dir():
                raise FileNotFoundError("no saved directory (run the bench with --work-dir)")
            embeddings, loaded = stock_embeddings(Path(v["path"]), texts)
            base = embeddings if base is None else base
            cosine = torch.nn.functional.cosine_similarity(embeddings.double(), base.double())
            row.update(loaded, loads=True, stock_cosine_to_base_mean=float(cosine.mean()))
        except Exception as exc:  # a row per failure: the point is to see which ones do not load
            row.update(loads=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        results.append(row)
        print(json.dumps(row))
    Path(args.output).write_text(json.dumps({"sentences": len(texts), "text": args.text, "variants": results},
                                            indent=1) + "\n")


if __name__ == "__main__":
    main()
