"""The Ray Train loop the score-model and SFT trainers share: DeepSpeed ZeRO on N workers.

``fit`` starts a ``TorchTrainer`` whose workers each run a trainer's ``train_loop`` (one
data-parallel rank). Inside it, ``StepPlan`` says which rows each rank reads at each step
(from the step number alone, so resuming needs no saved iterator), ``run_steps`` takes the
optimiser steps, evaluates every ``eval_every`` and saves a DeepSpeed checkpoint through
``ray.train.report`` every ``save_every`` steps; ``find_resume`` and ``resume_engine``
continue a run from its newest checkpoint. A trainer supplies only its model, its
micro-batch loss and its evaluation.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rayrlhf.algorithms.schedules import lr_multiplier
from rayrlhf.trainers.checkpoint_dir import latest_checkpoint, mark_complete
from rayrlhf.workers.base import OptimConfig

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
DS_TAG = "deepspeed"


def split_train_eval(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle, then the last ``fraction`` of rows (at least one) held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise ValueError(f"{len(rows)} rows are too few to hold out {fraction:.0%} for evaluation")
    return [rows[i] for i in order[:-n_eval]], [rows[i] for i in order[-n_eval:]]


def train_eval_rows(cfg, what: str) -> tuple[list, list]:
    """A trainer's rows: ``cfg.dataset`` for training and ``cfg.eval_dataset`` held out, or a
    seeded ``cfg.eval_fraction`` of ``cfg.dataset`` when no eval set is configured."""
    from rayrlhf.data import load_dataset_from_config

    rows = load_dataset_from_config(cfg.dataset).rows
    if cfg.eval_dataset is not None:
        train_rows, eval_rows = rows, load_dataset_from_config(cfg.eval_dataset).rows
    else:
        train_rows, eval_rows = split_train_eval(rows, cfg.eval_fraction, cfg.run.seed)
    log.info("%s: %d training rows, %d held out", what, len(train_rows), len(eval_rows))
    return train_rows, eval_rows


@dataclass(frozen=True)
class StepPlan:
    """How many optimiser steps a run takes and which rows each rank reads at each step."""

    num_rows: int
    world_size: int
    micro_batch: int
    accumulation: int
    epochs: int
    max_steps: int | None
    seed: int

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        steps = self.num_rows // self.rows_per_step
        if steps == 0:
            raise ValueError(f"{self.num_rows} training rows are fewer than one step's "
                             f"{self.rows_per_step} (batch x accumulation x workers)")
        return steps

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Row indices of ``rank``'s micro-batches for optimiser step ``step``.

        Every epoch is a seeded permutation, so the data position of any step is known from
        the step number alone: resuming needs no saved iterator.
        """
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        order = list(range(self.num_rows))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        chunk = order[in_epoch * self.rows_per_step:(in_epoch + 1) * self.rows_per_step]
        mine = chunk[rank::self.world_size]
        return [mine[i:i + self.micro_batch] for i in range(0, len(mine), self.micro_batch)]


def training_optim(training: dict[str, Any], total_steps: int) -> tuple[OptimConfig, Callable[[int], float]]:
    """A ``training`` section as the engine builder's optimiser settings and LR schedule
    (linear warm-up over ``warmup_ratio`` of the steps, then ``lr_scheduler`` decay)."""
    optim = OptimConfig(lr=training["lr"], weight_decay=training["weight_decay"],
                        max_grad_norm=training["max_grad_norm"], zero_stage=training["zero_stage"],
                        bf16=training["bf16"], micro_batch_size=training["per_device_batch_size"],
                        gradient_checkpointing=training["gradient_checkpointing"],
                        accumulation=training["gradient_accumulation_steps"])
    warmup = int(training["warmup_ratio"] * total_steps)
    return optim, lambda step: lr_multiplier(step, total_steps, warmup, training["lr_scheduler"])


def resume_engine(engine, checkpoint: str | None) -> dict[str, Any]:
    """Load a checkpoint written by ``save_and_report``; its saved state ({} when None)."""
    if not checkpoint:
        return {}
    engine.load_checkpoint(checkpoint, tag=DS_TAG)
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def save_and_report(engine, rank: int, metrics: dict[str, Any]) -> None:
    """A DeepSpeed checkpoint of every rank plus the step state, reported to Ray Train."""
    import ray.train as rt

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=DS_TAG)
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps({"global_step": metrics["step"], **metrics}))
            mark_complete(Path(tmp), metrics["step"])
        rt.report(metrics, checkpoint=rt.Checkpoint.from_directory(tmp))


def run_steps(engine, plan: StepPlan, rank: int, training: dict[str, Any], *, step: int,
              micro_loss, evaluate, desc: str, carry: dict[str, Any] | None = None,
              tracking: dict[str, Any] | None = None) -> int:
    """The optimiser steps from ``step`` to the end (or ``stop_at_step``); returns the last.

    ``micro_loss(row_indices)`` gives one micro-batch's loss; ``evaluate()`` the held-out
    metrics (every ``eval_every`` steps and at the end); ``carry`` is added to every report.
    Rank 0 logs every step's metrics to the run's loggers (``tracking``: the driver's
    ``tracking_settings``; metrics.jsonl, TensorBoard, W&B, MLflow). Reports to Ray Train
    every ``log_every`` steps; checkpoints every ``save_every`` steps and at the end.
    """
    import ray.train as rt
    from tqdm.auto import tqdm

    from rayrlhf.logs import progress_interval_s
    from rayrlhf.trainers.metrics_log import MetricsLog

    # Per step from rank 0, here: under Ray Train V2 a report without a checkpoint keeps
    # nothing, so the result holds only the last metrics, not the curve.
    metrics_log = MetricsLog(tracking) if tracking and rank == 0 else None
    bar = tqdm(total=plan.total_steps, initial=step, desc=desc, disable=rank != 0,
               mininterval=progress_interval_s())
    last_step = min(plan.total_steps, training["stop_at_step"] or plan.total_steps)
    try:
        while step < last_step:
            losses = []
            for micro in plan.micro_batches(step, rank):
                loss = micro_loss(micro)
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
            step += 1
            bar.update(1)
            metrics = {"step": step, "train/loss": sum(losses) / len(losses),
                       "train/lr": engine.lr_scheduler.get_last_lr()[0], **(carry or {})}
            if step % training["eval_every"] == 0 or step == last_step:
                metrics.update(evaluate())
            if metrics_log is not None:
                metrics_log.log(metrics)
            if step % training["log_every"] == 0 and rank == 0:
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", refresh=False)
            if step % training["save_every"] == 0 or step == last_step:
                save_and_report(engine, rank, metrics)
            elif step % training["log_every"] == 0:
                # Not every step: Ray Train's controller takes one report per worker per poll
                # (every 2 s), so a report per step would make short steps take 2 s each.
                rt.report(metrics)
    finally:
        bar.close()
        if metrics_log is not None:
            metrics_log.close()
    return step


def full_state_dict(engine, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """ZeRO-3: the gathered weights (every rank must call; rank 0 gets them). Otherwise
    None: the module itself holds the full weights."""
    return engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None


def find_resume(resume_from: str | None) -> Path | None:
    """The checkpoint ``resume_from=<earlier output_dir>`` names (None: a fresh run)."""
    if not resume_from:
        return None
    found = latest_checkpoint(resume_from)
    if found is None:
        raise FileNotFoundError(f"resume_from={resume_from}: no checkpoint found below it")
    log.info("resuming from %s", found)
    return found


def fit(loop, loop_config: dict[str, Any], cfg, out: Path, name: str) -> dict[str, float]:
    """Run ``loop`` on ``training.num_workers`` Ray Train workers (its config gets
    ``"tracking"``: where rank 0 logs each step); write metrics.json and config.yaml into
    ``out``; return the last reported numeric metrics."""
    from omegaconf import OmegaConf
    from ray.train import CheckpointConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayrlhf.eval.metrics import format_table
    from rayrlhf.logs import ray_train_log_level
    from rayrlhf.runs import write_json

    from rayrlhf.trainers.metrics_log import tracking_settings

    training = cfg.training
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "tracking": tracking_settings(cfg, out)},
        torch_config=TorchConfig(backend="nccl" if training.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=training.num_workers, use_gpu=training.use_gpu,
                                     resources_per_worker={"CPU": training.cpus_per_worker}),
        run_config=RunConfig(storage_path=str((out / "ray_train").resolve()), name=name,
                             checkpoint_config=CheckpointConfig(num_to_keep=training.keep_last_checkpoints),
                             logging_config=LoggingConfig(log_level=ray_train_log_level())),
    )
    result = trainer.fit()
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    write_json(out / "metrics.json", metrics)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    # The console gets the headline numbers; per-category ones (14 harm categories) stay in the file.
    headline = {k: v for k, v in metrics.items() if "/per_category_" not in k}
    print(format_table(headline) + (f"\n(per-category metrics: {out / 'metrics.json'})"
                                     if len(headline) < len(metrics) else ""))
    return metrics
