"""`embedding_distill`: train an encoder to reproduce its teacher's sentence embeddings (and hidden states).

``total = embedding_weight * E(student embedding, teacher embedding)
        + hidden_weight * mean over mapped layers of H(student_j, teacher_map[j])``

* ``E``: ``cosine`` (1 - cosine similarity of the pooled embeddings; what
  retrieval uses) or ``mse`` (squared error of the embeddings as the pipeline
  outputs them, normalised where it normalises, as sentence-transformers'
  distillation does);
* ``H``: ``cosine`` or ``mse`` between token hidden states over the real
  (unpadded) tokens, student layer j imitating teacher layer ``layer_map[j]``
  (the layer it was copied from after layer dropping, else spread evenly);
  this needs equal hidden sizes, which channel and head pruning keep.

Training text is the recipe's calibration text, cut into sentences
(sentences.py; never the evaluation part), tokenized once up to ``seq_len``
tokens with [CLS]/[SEP] as in use, padded per batch. Two ways to show the
student more kinds of input from the same text, since a student fitted to a
few thousand sentences learns their domain rather than the teacher:
``passages`` adds that many random runs of 4 to 64 consecutive words
(crossing sentence boundaries, code and lists included), ``vocabulary_passages``
adds runs of words drawn at random from the tokenizer's vocabulary (nonsense,
but it reaches the words the training text lacks), ``extra_text`` adds
other texts (their sentences, and a share of the passages by their length;
refused where one overlaps the recipe's evaluation text), and ``mask_share``
replaces that share of each batch's words with the mask token, freshly drawn
every step, for teacher and student alike (the teacher's output on the
corrupted input is still the target). The loop is the
distillation trainer's (compress/distill/train.py: seeded order, schedules,
gradient clipping, resumable checkpoints), with the batch and the loss
replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data import TextSpec, overlaps
from ..distill.loss import HiddenLoss, hidden_alignment
from ..distill.train import OptimizationConfig, Trainer
from ..errors import UserError
from ..passes.base import Pass, PassContext
from ..passes.distillation import TeacherTraining
from .pooling import Pooling, pool
from .sentences import SentenceSpec, load_sentences, max_tokens, random_passages, random_vocabulary_passages
from .sentences import vocabulary_words

EmbeddingLoss = Literal["cosine", "mse"]


class EmbeddingLossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding_weight: float = Field(1.0, ge=0.0, description="weight of the pooled-embedding loss")
    embedding_loss: EmbeddingLoss = Field("cosine", description="cosine (1 - cos) or mse on the embeddings")
    hidden_weight: float = Field(0.0, ge=0.0, description="weight of the token hidden-state alignment")
    hidden_loss: HiddenLoss = "cosine"

    @model_validator(mode="after")
    def _something_to_learn(self):
        if self.embedding_weight == 0 and self.hidden_weight == 0:
            raise ValueError("embedding_weight and hidden_weight are both 0: nothing to train on")
        return self

    @property
    def needs_teacher(self) -> bool:
        return True


class EmbeddingTrainConfig(EmbeddingLossConfig, OptimizationConfig):
    """The loss plus the optimisation settings; defaults sized for a small sentence encoder on a CPU."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1, description="sentences per micro-batch, per process")
    seq_len: int = Field(128, ge=8, description="tokens per training sentence at most ([CLS] and [SEP] included)")
    lr: float = Field(5e-5, gt=0.0)
    warmup_steps: int = Field(20, ge=0)
    passages: int = Field(0, ge=0, description="random word runs of the training text added to its sentences")
    vocabulary_passages: int = Field(0, ge=0, description="runs of words drawn at random from the tokenizer's "
                                     "vocabulary added to the sentences")
    mask_share: float = Field(0.0, ge=0.0, lt=1.0, description="share of tokens replaced by the mask token, per step")


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: EmbeddingLoss) -> torch.Tensor:
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    return F.mse_loss(student.float(), teacher.float())


@dataclass
class SentenceBatches:
    """Training sentences tokenized once: tensors padded to `seq_len`, trimmed per micro-batch."""

    tensors: dict[str, torch.Tensor]
    provenance: dict = field(default_factory=dict)

    @property
    def input_ids(self) -> torch.Tensor:  # the trainer checks its width against seq_len
        return self.tensors["input_ids"]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def take(self, rows: list[int]) -> dict[str, torch.Tensor]:
        width = int(self.tensors["attention_mask"][rows].sum(1).max())
        return {k: v[rows][:, :width] for k, v in self.tensors.items()}


def training_sentences(tokenizer, calibration, seq_len: int, count: int | None = None, passages: int = 0,
                       seed: int = 0, vocabulary_passages: int = 0,
                       extra_text: Sequence[TextSpec] = ()) -> SentenceBatches:
    """The calibration text's sentences (`count` at most), those of each extra text (as many), then the passages.

    Passages are drawn from all the texts together, so each gives a share by its length.
    """
    sentences = load_sentences(SentenceSpec.from_text(calibration, sentences=count))
    extra = [load_sentences(SentenceSpec.from_text(t, sentences=count)) for t in extra_text]
    texts = list(sentences.texts) + [s for e in extra for s in e.texts]
    provenance = {**sentences.provenance, "seq_len": seq_len}
    if extra:
        provenance["extra_text"] = [e.provenance for e in extra]
    if passages:
        from ..data import load_text

        source = "\n\n".join(load_text(t).text for t in [calibration, *extra_text])
        drawn = random_passages(source, passages, seed=seed)
        texts += drawn
        provenance["passages"] = len(drawn)
    if vocabulary_passages:
        words = vocabulary_words(tokenizer)
        texts += random_vocabulary_passages(words, vocabulary_passages, seed=seed)
        provenance["vocabulary_passages"] = vocabulary_passages
        provenance["vocabulary_words"] = len(words)
    tensors = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"))
    return SentenceBatches(tensors, provenance)


def mask_tokens(batch: dict[str, torch.Tensor], share: float, mask_id: int, special_ids: list[int],
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A copy of `batch` with `share` of its real, non-special tokens replaced by `mask_id`."""
    ids = batch["input_ids"]
    maskable = batch["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype))
    chosen = maskable & (torch.rand(ids.shape, generator=generator) < share)
    return {**batch, "input_ids": torch.where(chosen, torch.full_like(ids, mask_id), ids)}


class EmbeddingTrainer(Trainer):
    """The distillation trainer with sentence batches and the embedding loss."""

    def __init__(self, student, teacher, sentences: SentenceBatches, config: EmbeddingTrainConfig,
                 pooling: Pooling, mask_id: int | None = None, special_ids: list[int] | None = None, **kwargs):
        super().__init__(student, teacher, sentences, config, **kwargs)
        self.pooling = pooling
        self.mask_id, self.special_ids = mask_id, special_ids or []
        if config.mask_share > 0 and mask_id is None:
            raise UserError("mask_share needs a tokenizer with a mask token; this one has none, so use mask_share 0")

    def _micro_batches(self):
        c = self.config
        for k, mine in enumerate(self._micro_batch_indices()):
            batch = self.train_windows.take(mine)
            if c.mask_share > 0:
                # drawn from the position in the sample stream, so a resumed run masks as the first would have
                g = torch.Generator().manual_seed(c.seed * 1_000_003 + self.samples_seen * 64 + k)
                batch = mask_tokens(batch, c.mask_share, self.mask_id, self.special_ids, g)
            yield batch

    def batch_loss(self, batch):
        c = self.config
        hidden = c.hidden_weight > 0
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = batch["attention_mask"]
        with torch.no_grad():
            t = self.teacher(**batch, output_hidden_states=hidden)
        s = self.student(**batch, output_hidden_states=hidden)
        total = torch.zeros((), device=self.device)
        parts: dict[str, float] = {}
        if c.embedding_weight > 0:
            e = embedding_loss(pool(s.last_hidden_state, mask, self.pooling),
                               pool(t.last_hidden_state, mask, self.pooling), c.embedding_loss)
            parts["embedding"] = float(e.detach())
            total = total + c.embedding_weight * e
        if hidden:
            h = hidden_alignment(s.hidden_states, t.hidden_states, self.layer_map, mask.bool(), c.hidden_loss)
            parts["hidden"] = float(h.detach())
            total = total + c.hidden_weight * h
        parts["loss"] = float(total.detach())
        return total, parts


def check_student(teacher, student) -> None:
    if teacher.tokenizer.get_vocab() != student.tokenizer.get_vocab():
        raise UserError("the student's tokenizer differs from the teacher's; embedding distillation feeds both "
                        "the same tokens, so they must share one")
    t_h, s_h = teacher.model.config.hidden_size, student.model.config.hidden_size
    if t_h != s_h:
        raise UserError(f"the student's embeddings and hidden states have {s_h} dimensions and the teacher's {t_h}; "
                        "embedding distillation needs the same width")


class EmbeddingDistill(EmbeddingTrainConfig, TeacherTraining, Pass):
    """Train an encoder against a frozen teacher's sentence embeddings (see the module docstring)."""

    name = "embedding_distill"
    needs_calibration = True

    train_sentences: int | None = Field(None, ge=2, description="training sentences per text (None: all of its part)")
    extra_text: list[TextSpec] = Field(default_factory=list, description="texts to train on besides the calibration "
                                       "text, each with its split; never one the recipe evaluates on")

    @field_validator("extra_text")
    @classmethod
    def _split_given(cls, v: list[TextSpec]) -> list[TextSpec]:
        for t in v:
            if "split" not in t.model_fields_set:
                raise ValueError(f"give {t.source}'s split (calibration, evaluation or all): a text to train on "
                                 "has no default part")
        return v

    def check_evaluation(self, evaluation: TextSpec) -> None:
        for t in self.extra_text:
            if overlaps(t, evaluation):
                raise UserError(f"embedding_distill: extra_text {t.source} ({t.split} part) overlaps the evaluation "
                                f"text {evaluation.source} ({evaluation.split} part); train on another text or its "
                                "other part")

    def training_config(self) -> EmbeddingTrainConfig:
        return EmbeddingTrainConfig(**{k: getattr(self, k) for k in EmbeddingTrainConfig.model_fields})

    def apply(self, artifact, ctx: PassContext) -> dict[str, Any]:
        from ..distill import student_layer_map
        from ..encoders.architecture import is_encoder
        from ..onnx_utils import is_onnx
        from ..passes.quantization import quantization_state

        if not is_encoder(artifact):
            raise UserError("embedding_distill trains sentence encoders; for a causal LM use distill")
        if is_onnx(artifact) or quantization_state(artifact):
            raise UserError("embedding_distill trains a float PyTorch encoder; put it before quantization and ONNX export")
        teacher = self.load_teacher(artifact)
        if not is_encoder(teacher):
            raise UserError(f"the teacher {self.teacher} is not an encoder; embedding distillation needs one")
        config = self.training_config()
        check_student(teacher, artifact)
        length = min(config.seq_len, max_tokens(artifact.tokenizer, artifact.model.config, artifact.pooling))
        if length != config.seq_len:
            raise UserError(f"seq_len {config.seq_len} is longer than the model takes ({length} tokens); "
                            f"use seq_len {length} or less")
        data = training_sentences(artifact.tokenizer, ctx.calibration, config.seq_len, self.train_sentences,
                                  passages=config.passages, seed=config.seed,
                                  vocabulary_passages=config.vocabulary_passages, extra_text=self.extra_text)
        layer_map = student_layer_map(artifact, teacher) if config.hidden_weight > 0 else None
        trainer = EmbeddingTrainer(artifact.model, teacher.model, data, config, artifact.pooling,
                                   checkpoint_dir=self.checkpoint_dir if config.checkpoint_every or self.resume else None,
                                   layer_map=layer_map, device=self.device,
                                   mask_id=artifact.tokenizer.mask_token_id, special_ids=artifact.tokenizer.all_special_ids)
        result = trainer.run(resume=self.resume, final_eval=False)
        artifact.model = trainer.model.to("cpu").eval()
        from ..distill import summarize

        return {**summarize(result), "teacher": teacher.source, "train_data": data.provenance}
