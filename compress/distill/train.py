"""The distillation training loop: CPU or CUDA, one process or several (through Accelerate).

What it guarantees:

* the teacher runs in eval mode under ``torch.no_grad`` and is never given to
  the optimizer, so its weights cannot change;
* the data order is a function of the seed alone: epoch e visits the training
  windows in ``randperm(n, seed + e)`` order, and the position in that stream
  is one counter (samples consumed), so a resumed run reads exactly the windows
  the uninterrupted run would have read;
* a checkpoint holds the student's weights, the optimizer, the scheduler, every
  random-number state (torch, Python, NumPy; one per process), the step and the
  data position. Each is written with `compress.saving.atomic_directory` into
  its own ``step-NNNNNN`` directory (built beside, renamed into place), and the
  older one is deleted only after the new one is whole, so a kill at any moment
  leaves at least one complete checkpoint and never a half-written one;
* ``resume=True`` continues from the newest checkpoint and refuses one made
  with different settings, so the result equals the uninterrupted run's.

Several processes: launch the same command with ``accelerate launch`` or
``torchrun``; Accelerate sets up the process group (gloo on CPU, NCCL on CUDA)
and wraps the student in DistributedDataParallel. ``batch_size`` is per
process; each process takes its own slice of every global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..data import Windows
from ..errors import UserError
from ..evaluate import perplexity
from ..progress import log, progress
from ..saving import atomic_directory, remove_stale_leftovers
from .loss import LossConfig, distillation_loss
from .sparsity import KeepSparsity, SparsityMasks

Schedule = Literal["cosine", "linear", "constant"]
CHECKPOINT_PREFIX = "step-"
STATE_FILE = "training_state.pt"
# Settings that may differ between a run and its resumption without changing the result.
RESUMABLE_CHANGES = {"eval_every", "checkpoint_every", "keep_last", "eval_batch_size"}


class OptimizationConfig(BaseModel):
    """How the student is trained, whatever the loss: steps, batches, learning rate, checkpoints."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(4, ge=1, description="windows per micro-batch, per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    seq_len: int = Field(256, ge=2, description="tokens per training window")
    lr: float = Field(1e-4, gt=0.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(10, ge=0, description="linear warm-up from 0 to lr")
    schedule: Schedule = Field("cosine", description="decay after warm-up, down to min_lr_ratio * lr")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    clip_norm: float | None = Field(1.0, gt=0.0, description="gradient-norm clipping (None: off)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="compute dtype (bfloat16: autocast)")
    seed: int = 0
    eval_every: int = Field(0, ge=0, description="evaluate held-out perplexity every N steps (0: only at the end)")
    eval_batch_size: int = Field(1, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="write a checkpoint every N steps (0: never)")
    keep_last: int = Field(1, ge=1, description="how many of the newest checkpoints to keep on disk")
    keep_sparsity: KeepSparsity = Field("auto", description="keep the zeros of pruned projections through "
                                        "training (auto: when the student has any; see sparsity.py)")


class TrainConfig(LossConfig, OptimizationConfig):
    """Loss weights plus the optimisation settings (all validated up front)."""

    def loss_config(self) -> LossConfig:
        return LossConfig(**{k: getattr(self, k) for k in LossConfig.model_fields})


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    progress_ = min(1.0, (step - config.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress_)) if config.schedule == "cosine" else 1 - progress_
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def sample_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Window indices for samples start .. start + count - 1 of the seeded stream."""
    out: list[int] = []
    cache: dict[int, torch.Tensor] = {}
    for k in range(start, start + count):
        epoch, pos = divmod(k, n)
        if epoch not in cache:
            cache[epoch] = epoch_order(n, seed, epoch)
        out.append(int(cache[epoch][pos]))
    return out


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial ones are hidden dot-directories and never match)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def remove_checkpoints(directory: Path) -> None:
    """Delete the checkpoints a run wrote into `directory` (and it, once empty); nothing else in it is touched."""
    if not directory.is_dir():
        return
    for path in checkpoints(directory):
        shutil.rmtree(path, ignore_errors=True)
    for leftover in directory.glob(f".{CHECKPOINT_PREFIX}*.partial-*"):
        remove_stale_leftovers(directory / leftover.name.split(".partial-")[0][1:])
    with contextlib.suppress(OSError):
        directory.rmdir()  # only if empty: a directory that holds anything else is the user's


def _config_differences(saved: dict, current: dict) -> list[str]:
    keys = (set(saved) | set(current)) - RESUMABLE_CHANGES
    return sorted(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k))


class Trainer:
    """Distil `teacher` into `student` on `train_windows`; see the module docstring."""

    def __init__(self, student, teacher, train_windows: Windows, config: TrainConfig,
                 eval_windows: Windows | None = None, checkpoint_dir: str | Path | None = None,
                 layer_map: list[int] | None = None, device: str = "cpu", extra_state: dict | None = None):
        self.config = config
        self.train_windows = train_windows
        self.eval_windows = eval_windows
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.layer_map = layer_map
        self.extra_state = extra_state or {}  # e.g. which layers a student kept; saved with checkpoints
        if config.hidden_weight > 0 and layer_map is None:
            raise UserError("hidden-state alignment needs a layer map from student to teacher layers")
        if config.checkpoint_every and self.checkpoint_dir is None:
            raise UserError("checkpoint_every is set but no checkpoint directory was given")
        if train_windows.input_ids.shape[1] != config.seq_len:
            raise UserError(f"training windows have {train_windows.input_ids.shape[1]} tokens, config says {config.seq_len}")

        from accelerate import Accelerator

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        self.accelerator = Accelerator(cpu=not device.startswith("cuda"))
        self.device = self.accelerator.device
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index

        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.to(self.device)
        student.to(self.device)
        student.train()
        self.student_module = student
        # The zero pattern of a pruned student, recorded before the first step and kept through training.
        self.sparsity = SparsityMasks.of(student, config.keep_sparsity)
        self.optimizer = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.student = self.accelerator.prepare_model(student)
        self.step = 0
        self.samples_seen = 0
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []

    # -- data -------------------------------------------------------------------------------
    def _micro_batch_indices(self):
        """Indices of this process's samples, one list per micro-batch of the next optimizer step."""
        c = self.config
        per_step = c.batch_size * c.grad_accum * self.world
        idx = sample_indices(len(self.train_windows), c.seed, self.samples_seen, per_step)
        self.samples_seen += per_step
        for m in range(c.grad_accum):
            block = idx[m * c.batch_size * self.world : (m + 1) * c.batch_size * self.world]
            yield block[self.rank * c.batch_size : (self.rank + 1) * c.batch_size]

    def _micro_batches(self):
        """This process's micro-batches for the next optimizer step."""
        for mine in self._micro_batch_indices():
            yield self.train_windows.input_ids[mine], self.train_windows.score_from[mine]

    def batch_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch and its parts (a subclass with other data or another loss overrides this)."""
        c = self.config
        hidden = c.hidden_weight > 0
        ids, score_from = batch
        ids = ids.to(self.device)
        teacher_out = None
        if c.needs_teacher:
            with torch.no_grad():
                teacher_out = self.teacher(input_ids=ids, use_cache=False, output_hidden_states=hidden)
        student_out = self.student(input_ids=ids, use_cache=False, output_hidden_states=hidden)
        return distillation_loss(student_out, teacher_out, ids, c, self.layer_map, score_from)

    # -- one step ---------------------------------------------------------------------------
    def _autocast(self):
        if self.config.dtype == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        c = self.config
        sums: dict[str, float] = {}
        micro = list(self._micro_batches())
        for m, batch in enumerate(micro):
            sync = contextlib.nullcontext() if m == len(micro) - 1 else self.accelerator.no_sync(self.student)
            with sync, self._autocast():
                loss, parts = self.batch_loss(batch)
                (loss / c.grad_accum).backward()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / len(micro)
        self.sparsity.mask_gradients()  # before clipping, so the norm is that of the weights that train
        if c.clip_norm is not None:
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), c.clip_norm))
        self.optimizer.step()
        self.sparsity.apply()  # nothing (weight decay, moments, rounding) may revive a pruned weight
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums["lr"] = self.scheduler.get_last_lr()[0]
        self.step += 1
        return {"step": self.step, **sums}

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float] | None:
        if self.eval_windows is None:
            return None
        model = self.accelerator.unwrap_model(self.student)
        model.eval()
        try:
            result = perplexity(model, self.eval_windows, self.config.eval_batch_size, desc="evaluating")
        finally:
            model.train()
        record = {"step": self.step, "perplexity": result["perplexity"], "mean_nll": result["mean_nll"]}
        self.evals.append(record)
        return record

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        rng = rng_state()
        if self.world > 1:
            from accelerate.utils import gather_object

            rng_all = gather_object([rng])
        else:
            rng_all = [rng]
        path = None
        if self.accelerator.is_main_process:
            path = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}"
            state = {
                "model": self.accelerator.unwrap_model(self.student).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "sparsity_masks": self.sparsity.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_all,
                "step": self.step,
                "samples_seen": self.samples_seen,
                "history": self.history,
                "evals": self.evals,
                "config": self.config.model_dump(mode="json"),
                "world_size": self.world,
                "extra": self.extra_state,
            }
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            with atomic_directory(path, force=True) as tmp:
                torch.save(state, tmp / STATE_FILE)
                summary = {"step": self.step, "samples_seen": self.samples_seen, "world_size": self.world,
                           "last": self.history[-1] if self.history else None, "config": state["config"],
                           "extra": self.extra_state}
                (tmp / "trainer.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            for old in checkpoints(self.checkpoint_dir)[: -self.config.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or overwritten file: torch raises RuntimeError, EOFError, pickle errors
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise UserError(f"checkpoint {path / STATE_FILE} cannot be read ({first}); delete it or drop --resume") from None
        differences = _config_differences(state["config"], self.config.model_dump(mode="json"))
        if differences:
            raise UserError(f"checkpoint {path} was made with different settings ({'; '.join(differences)}); "
                            "resume with the same settings, or start a new run without --resume")
        if state["world_size"] != self.world:
            raise UserError(f"checkpoint {path} was made with {state['world_size']} processes, this run has "
                            f"{self.world}; resume with the same number of processes")
        self.accelerator.unwrap_model(self.student).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "sparsity_masks" in state:  # the masks the run started with, not the zeros of whatever is loaded now
            self.sparsity.load_state_dict(state["sparsity_masks"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][self.rank])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        self.history, self.evals = state["history"], state["evals"]
        log.info(f"Resumed from {path} at step {self.step}")

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint; False if there is none."""
        found = checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []
        if not found:
            return False
        self.load_checkpoint(found[-1])
        return True

    # -- the loop -------------------------------------------------------------------------------
    def run(self, resume: bool = False, final_eval: bool = True) -> dict[str, Any]:
        c = self.config
        seed_everything(c.seed + self.rank)
        resumed = self.resume() if resume else False
        if resume and not resumed:
            log.info("No checkpoint to resume from; starting at step 0")
        start_time = time.perf_counter()
        start_step = self.step
        quiet = {} if self.accelerator.is_main_process else {"disable": True}
        bar = progress(range(self.step, c.steps), initial=self.step, total=c.steps, desc="distilling", unit="step",
                       **quiet)
        postfix: dict[str, str] = {}
        for _ in bar:
            record = self.train_step()
            self.history.append(record)
            postfix["loss"] = f"{record['loss']:.4f}"
            if c.eval_every and self.step % c.eval_every == 0 and self.step < c.steps:
                if self.accelerator.is_main_process:
                    postfix["eval_ppl"] = f"{self.evaluate()['perplexity']:.2f}"
                self.accelerator.wait_for_everyone()
            bar.set_postfix(postfix, refresh=False)
            if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                self.save_checkpoint()
        seconds = time.perf_counter() - start_time
        if final_eval and self.accelerator.is_main_process:
            final_eval = self.evaluate()
        else:
            final_eval = None
        self.accelerator.wait_for_everyone()
        self.accelerator.unwrap_model(self.student).eval()
        return {
            "steps": c.steps,
            "resumed_from_step": start_step if resumed else None,
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "first_loss": self.history[0]["loss"] if self.history else None,
            "history": self.history,
            "evals": self.evals,
            "final_eval_perplexity": final_eval["perplexity"] if final_eval else None,
            "train_seconds": round(seconds, 2),
            "samples_seen": self.samples_seen,
            "tokens_seen": self.samples_seen * c.seq_len,
            "processes": self.world,
            "sparsity": self.sparsity.report(self.model) if self.sparsity.pruned else None,
        }

    @property
    def model(self):
        return self.accelerator.unwrap_model(self.student)
