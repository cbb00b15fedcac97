"""How an encoder's token states become one sentence embedding, read from and written as sentence-transformers files.

A sentence-transformers model directory is a Hugging Face checkpoint plus a
pipeline in ``modules.json``: the Transformer (the checkpoint itself), a
``Pooling`` module (``1_Pooling/config.json``: which pooling) and often a
``Normalize`` module (unit-length embeddings). `read_pooling` reads that
pipeline; a directory without one gets mean pooling, without normalisation
(what sentence-transformers itself assumes for a plain checkpoint), and says so
in its `origin`. `write_pooling` writes the same files into every output, so a
compressed encoder reloads in sentence-transformers exactly as it was measured,
and stock `AutoModel` ignores them.

Supported: Transformer -> Pooling (one of mean, cls, max, mean_sqrt_len) ->
optional Normalize. Other modules (Dense projections, word weights, several
pooling modes concatenated) would change the embedding in ways the passes do
not carry through, so they are refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import UserError

PoolingMode = Literal["mean", "cls", "max", "mean_sqrt_len"]
# sentence-transformers' config key for each mode we support.
_MODE_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
_UNSUPPORTED_MODE_KEYS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
POOLING_DIR = "1_Pooling"
# Carried from the source's config_sentence_transformers.json when present (how users query the model).
_CARRIED_SETTINGS = ("prompts", "default_prompt_name", "similarity_fn_name")


@dataclass
class Pooling:
    """One sentence embedding per input: `mode` over the unmasked tokens, then unit length if `normalize`."""

    mode: PoolingMode = "mean"
    normalize: bool = False
    max_seq_length: int | None = None  # tokens per sentence (sentence_bert_config.json); None: the tokenizer's limit
    do_lower_case: bool = False
    origin: str = "default: mean pooling (the source has no sentence-transformers pooling config)"
    settings: dict[str, Any] = field(default_factory=dict)  # prompts / similarity function, carried as they were

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "normalize": self.normalize, "max_seq_length": self.max_seq_length,
                "origin": self.origin}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(batch, tokens, hidden) states and their mask -> (batch, hidden) float32 embeddings, as sentence-transformers computes them."""
    hidden = hidden.float()
    mask = attention_mask.to(hidden.device).unsqueeze(-1).float()
    if pooling.mode == "cls":
        out = hidden[:, 0]
    elif pooling.mode == "max":
        out = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    else:
        summed = (hidden * mask).sum(1)
        count = mask.sum(1).clamp(min=1e-9)
        out = summed / (count.sqrt() if pooling.mode == "mean_sqrt_len" else count)
    if pooling.normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=1)
    return out


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc}); fix or remove it") from None


def read_pooling(locate) -> Pooling:
    """The pooling of a model, given `locate(filename) -> Path | None` over its files (local or hub)."""
    modules_path = locate("modules.json")
    if modules_path is None:
        return Pooling()
    modules = _json(modules_path)
    if not isinstance(modules, list):
        raise UserError(f"{modules_path} must hold a list of modules")
    kinds = [m.get("type", "?") for m in modules]
    supported = {_TRANSFORMER, _POOLING, _NORMALIZE}
    other = [k for k in kinds if k not in supported]
    if other:
        raise UserError(
            f"the sentence-transformers pipeline in {modules_path} has {', '.join(k.rsplit('.', 1)[-1] for k in other)}; "
            "compress carries Transformer -> Pooling -> Normalize pipelines only (other modules would change the "
            "embedding in ways the passes do not preserve)"
        )
    if not kinds or kinds[0] != _TRANSFORMER or next((m.get("path") for m in modules), "") not in ("", "."):
        raise UserError(f"{modules_path}: the first module must be the Transformer stored in the directory itself "
                        "(path \"\"); older layouts with a 0_Transformer subdirectory are not supported")
    pooling = Pooling(normalize=_NORMALIZE in kinds, origin=f"sentence-transformers config ({modules_path.parent.name})")
    pooling_module = next((m for m in modules if m.get("type") == _POOLING), None)
    if pooling_module is None:
        pooling.origin += "; no Pooling module, so mean pooling"
    else:
        config_path = locate(f"{pooling_module.get('path') or POOLING_DIR}/config.json")
        if config_path is not None:
            pooling.mode = _mode_of(_json(config_path), config_path)
    st_config = locate("sentence_bert_config.json")
    if st_config is not None:
        st = _json(st_config)
        pooling.max_seq_length = st.get("max_seq_length")
        pooling.do_lower_case = bool(st.get("do_lower_case", False))
    settings_path = locate("config_sentence_transformers.json")
    if settings_path is not None:
        settings = _json(settings_path)
        pooling.settings = {k: settings[k] for k in _CARRIED_SETTINGS if settings.get(k) is not None}
    return pooling


def _mode_of(config: dict, path: Path) -> PoolingMode:
    if config.get("pooling_mode"):  # the newer single-string form
        chosen = {"mean_sqrt_len_tokens": "mean_sqrt_len"}.get(config["pooling_mode"], config["pooling_mode"])
        modes = [chosen]
    else:
        modes = [m for m, key in _MODE_KEYS.items() if config.get(key)]
        modes += [key for key in _UNSUPPORTED_MODE_KEYS if config.get(key)]
    if len(modes) != 1 or modes[0] not in _MODE_KEYS:
        raise UserError(f"{path} asks for pooling {'+'.join(modes) or 'none'}; compress supports exactly one of "
                        f"{', '.join(_MODE_KEYS)}")
    return modes[0]  # type: ignore[return-value]


def local_locator(directory: str | Path):
    directory = Path(directory)

    def locate(name: str) -> Path | None:
        path = directory / name
        return path if path.is_file() else None

    return locate


def hub_locator(repo_id: str, cache_dir=None):
    """Files of a hub model through transformers' own cache (None where the repo has no such file)."""
    from transformers.utils import cached_file

    def locate(name: str) -> Path | None:
        found = cached_file(repo_id, name, cache_dir=cache_dir, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
        return Path(found) if found else None

    return locate


def write_pooling(directory: str | Path, pooling: Pooling, hidden_size: int) -> None:
    """modules.json, 1_Pooling/config.json, sentence_bert_config.json, config_sentence_transformers.json."""
    from ..saving import library_versions

    directory = Path(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": _TRANSFORMER},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": _POOLING}]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _NORMALIZE})
    (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (directory / POOLING_DIR).mkdir(exist_ok=True)
    config = {"word_embedding_dimension": int(hidden_size),
              **{key: mode == pooling.mode for mode, key in _MODE_KEYS.items()},
              **{key: False for key in _UNSUPPORTED_MODE_KEYS}, "include_prompt": True}
    (directory / POOLING_DIR / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    st = {"max_seq_length": pooling.max_seq_length, "do_lower_case": pooling.do_lower_case}
    (directory / "sentence_bert_config.json").write_text(json.dumps(st, indent=2) + "\n")
    versions = library_versions()
    settings = {"__version__": {"sentence_transformers": versions.get("sentence-transformers", "unknown"),
                                "transformers": versions.get("transformers"), "pytorch": versions.get("torch")},
                **pooling.settings}
    (directory / "config_sentence_transformers.json").write_text(json.dumps(settings, indent=2) + "\n")
