"""Train a reward, cost or QA-moderation model: DeepSpeed ZeRO on N Ray Train workers.

The driver (``run``) validates the data, splits off a held-out set, and starts a Ray Train
``TorchTrainer``; every worker runs ``train_loop`` (one data-parallel rank). Workers save
DeepSpeed checkpoints through ``ray.train.report`` every ``save_every`` steps; a run started
with ``resume_from=<earlier output_dir>`` continues from the last one at the same step and
data position. Rank 0 writes the final model as a transformers directory (safetensors
backbone + head, tokenizer) with the config and metrics beside it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rayrlhf.eval.metrics import flatten_scalars
from rayrlhf.models.freezing import freeze_lower_layers
from rayrlhf.models.zoo import resolve_bf16
from rayrlhf.workers.base import deepspeed_config, enable_gradient_checkpointing
from rayrlhf.algorithms import balanced_pos_weight
from rayrlhf.trainers.score_objectives import (
    ROW_TYPE, SCHEMA, harm_targets, labels_for, loss_from_scores, metrics_from_scores, pairs_to_score,
)

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
DS_TAG = "deepspeed"


# ---------------------------------------------------------------- pure helpers
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
    from rayrlhf.stages.common import load_dataset_from_config

    rows = load_dataset_from_config(cfg.dataset).rows
    if cfg.eval_dataset is not None:
        train_rows, eval_rows = rows, load_dataset_from_config(cfg.eval_dataset).rows
    else:
        train_rows, eval_rows = split_train_eval(rows, cfg.eval_fraction, cfg.run.seed)
    log.info("%s: %d training rows, %d held out", what, len(train_rows), len(eval_rows))
    return train_rows, eval_rows


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine / linear decay to 0 (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown lr_scheduler {schedule!r}; choose cosine, linear or constant")


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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step below ``run_dir`` (a previous output_dir)."""
    best, best_step = None, -1
    for state in Path(run_dir).glob(f"**/{STATE_FILE}"):
        step = json.loads(state.read_text())["global_step"]
        if step > best_step:
            best, best_step = state.parent, step
    return best


# ------------------------------------------- shared by the Ray Train trainers (score, SFT)
def make_engine(model: torch.nn.Module, training: dict[str, Any], total_steps: int, model_dtype: str = "auto"):
    """``model`` inside a DeepSpeed engine with AdamW and the warm-up + decay schedule; in
    train mode (from_pretrained returns eval mode, in which transformers skips gradient
    checkpointing). ``training["bf16"]`` None follows ``model_dtype`` (``resolve_bf16``).
    Returns the engine and its LR scheduler."""
    import deepspeed

    if training["gradient_checkpointing"]:
        enable_gradient_checkpointing(model)
    warmup = int(training["warmup_ratio"] * total_steps)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=training["lr"],
                                  weight_decay=training["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, warmup, training["lr_scheduler"]))
    ds_config = deepspeed_config(training["per_device_batch_size"], training["gradient_accumulation_steps"],
                                 training["max_grad_norm"], training["zero_stage"],
                                 resolve_bf16(training["bf16"], model_dtype))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    engine.train()
    return engine, scheduler


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
        rt.report(metrics, checkpoint=rt.Checkpoint.from_directory(tmp))


def run_steps(engine, scheduler, plan: StepPlan, rank: int, training: dict[str, Any], *, step: int,
              micro_loss, evaluate, desc: str, carry: dict[str, Any] | None = None) -> int:
    """The optimiser steps from ``step`` to the end (or ``stop_at_step``); returns the last.

    ``micro_loss(row_indices)`` gives one micro-batch's loss; ``evaluate()`` the held-out
    metrics (every ``eval_every`` steps and at the end); ``carry`` is added to every report.
    Reports to Ray Train every ``log_every`` steps; checkpoints every ``save_every`` steps
    and at the end.
    """
    import ray.train as rt
    from tqdm.auto import tqdm

    bar = tqdm(total=plan.total_steps, initial=step, desc=desc, disable=rank != 0)
    last_step = min(plan.total_steps, training["stop_at_step"] or plan.total_steps)
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
                   "train/lr": scheduler.get_last_lr()[0], **(carry or {})}
        if step % training["eval_every"] == 0 or step == last_step:
            metrics.update(evaluate())
        if step % training["log_every"] == 0 and rank == 0:
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}")
        if step % training["save_every"] == 0 or step == last_step:
            save_and_report(engine, rank, metrics)
        elif step % training["log_every"] == 0:
            # Not every step: Ray Train's controller takes one report per worker per poll
            # (every 2 s), so a report per step would make short steps take 2 s each.
            rt.report(metrics)
    bar.close()
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
    """Run ``loop`` on ``training.num_workers`` Ray Train workers; write metrics.json and
    config.yaml into ``out``; return the last reported numeric metrics."""
    from omegaconf import OmegaConf
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayrlhf.eval.metrics import format_table
    from rayrlhf.stages.common import write_json

    training = cfg.training
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if training.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=training.num_workers, use_gpu=training.use_gpu,
                                     resources_per_worker={"CPU": training.cpus_per_worker}),
        run_config=RunConfig(storage_path=str((out / "ray_train").resolve()), name=name),
    )
    result = trainer.fit()
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    write_json(out / "metrics.json", metrics)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(format_table(metrics))
    return metrics


# ---------------------------------------------------------------- one worker
def _forward_scores(model, tokenizer, kind: str, rows: list, template: str, max_length: int) -> torch.Tensor:
    from rayrlhf.models.scoring import conversation_texts, encode_texts

    prompts, responses = pairs_to_score(kind, rows)
    batch = encode_texts(tokenizer, conversation_texts(tokenizer, prompts, responses, template), max_length)
    return model(batch.input_ids, batch.attention_mask).end_scores


@torch.no_grad()
def _evaluate(engine, tokenizer, kind, rows, template, max_length, batch_size, threshold, max_fpr, rank, world):
    """Every rank scores a shard; all gather; every rank gets the same metrics."""
    import torch.distributed as dist

    engine.eval()
    mine = list(range(rank, len(rows), world))
    out: list[tuple[int, list[float]]] = []
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        scores = _forward_scores(engine, tokenizer, kind, [rows[i] for i in idx], template, max_length).float()
        n = len(idx)
        for j, i in enumerate(idx):
            out.append((i, scores[j].tolist() + (scores[n + j].tolist() if kind != "moderation" else [])))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, out)
    engine.train()
    by_row = dict(item for part in gathered for item in part)
    k = len(labels_for(kind))
    flat = torch.tensor([by_row[i] for i in range(len(rows))])
    scores = flat if kind == "moderation" else torch.cat([flat[:, :k], flat[:, k:]])
    return metrics_from_scores(kind, scores, rows, threshold, max_fpr)


def train_loop(config: dict[str, Any]) -> None:
    """One data-parallel rank (runs inside a Ray Train worker)."""
    import ray
    import ray.train as rt

    from rayrlhf.models.score_model import ScoreModel
    from rayrlhf.models.zoo import load_tokenizer

    ctx = rt.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    training, kind = config["training"], config["kind"]
    torch.set_num_threads(training["cpus_per_worker"])
    torch.manual_seed(config["seed"])
    row_type = ROW_TYPE[kind]
    train_rows = [row_type.from_dict(d) for d in ray.get(config["train_rows"])]
    eval_rows = [row_type.from_dict(d) for d in ray.get(config["eval_rows"])]

    tokenizer = load_tokenizer(config["model"], padding_side="right")
    model = ScoreModel.from_pretrained(config["model"], kind=kind, labels=labels_for(kind), dtype="float32")
    freeze_lower_layers(model, training["trainable_layers"])
    plan = StepPlan(len(train_rows), world, training["per_device_batch_size"],
                    training["gradient_accumulation_steps"], training["epochs"], training["max_steps"],
                    config["seed"])
    engine, scheduler = make_engine(model, training, plan.total_steps, config["model_dtype"])
    step = resume_engine(engine, config.get("resume_checkpoint")).get("global_step", 0)
    if step:
        log.info("rank %d resumed at step %d", rank, step)

    template, max_length = config["template"], training["max_length"]
    # Moderation: weigh each harm category's rare positives by its negatives/positives ratio.
    pos_weight = (balanced_pos_weight(harm_targets(train_rows))
                  if kind == "moderation" and config["balance_categories"] else None)

    def micro_loss(micro: list[int]) -> torch.Tensor:
        rows = [train_rows[i] for i in micro]
        scores = _forward_scores(engine, tokenizer, kind, rows, template, max_length)
        return loss_from_scores(kind, scores.float(), rows, config["score_l2_coef"], pos_weight)

    latest: dict[str, Any] = {}  # the last evaluation: its calibrated threshold is saved

    def evaluate() -> dict[str, float]:
        evaluated = _evaluate(engine, tokenizer, kind, eval_rows, template, max_length,
                              training["per_device_batch_size"], config["threshold"],
                              config["max_false_positive_rate"], rank, world)
        latest.update(evaluated)
        return {f"eval/{k}": float(v) for k, v in flatten_scalars(evaluated).items()}

    start_time = time.perf_counter()
    step = run_steps(engine, scheduler, plan, rank, training, step=step, micro_loss=micro_loss,
                     evaluate=evaluate, desc=f"train {kind}")

    # Final transformers directory (ZeRO-3 gathers the shards on rank 0 first).
    state_dict = full_state_dict(engine, training["zero_stage"])
    if rank == 0:
        out = Path(config["output_dir"]) / "model"
        module = engine.module
        if state_dict is not None:
            state_dict = {k.removeprefix("inner."): v for k, v in state_dict.items()}
        module.save_pretrained(out, tokenizer=tokenizer, state_dict=state_dict, extra={
            "template": template, "max_length": max_length,
            "threshold": latest.get("threshold", config["threshold"]),
            "trained_steps": step, "train_seconds": round(time.perf_counter() - start_time, 1),
        })


# ---------------------------------------------------------------- the driver
def run(cfg) -> dict:
    """Entry of ``rayrlhf train-reward | train-cost | train-moderation``."""
    import ray
    from omegaconf import OmegaConf

    from rayrlhf.cluster import init_ray
    from rayrlhf.models import resolve_model_path
    from rayrlhf.stages.common import output_dir

    kind = cfg.kind
    if kind not in ROW_TYPE:
        raise ValueError(f"unknown score model kind {kind!r}; choose reward, cost or moderation")
    if cfg.dataset.schema != SCHEMA[kind]:
        raise ValueError(f"a {kind} model trains on {SCHEMA[kind]!r} rows, but dataset.schema "
                         f"is {cfg.dataset.schema!r}")
    out = output_dir(cfg)
    train_rows, eval_rows = train_eval_rows(cfg, f"{kind} model")

    resume = find_resume(cfg.resume_from)
    training = OmegaConf.to_container(cfg.training, resolve=True)
    init_ray(cfg.cluster)
    loop_config = {
        "kind": kind, "training": training, "template": cfg.template.name, "seed": cfg.run.seed,
        "model": resolve_model_path(cfg.model.name_or_path), "model_dtype": cfg.model.dtype,
        "output_dir": str(out.resolve()), "threshold": cfg.moderation_threshold,
        "max_false_positive_rate": cfg.moderation_max_false_positive_rate, "score_l2_coef": cfg.score_l2_coef,
        "balance_categories": cfg.moderation_balance_categories,
        "train_rows": ray.put([r.to_dict() for r in train_rows]),
        "eval_rows": ray.put([r.to_dict() for r in eval_rows]),
        "resume_checkpoint": str(resume) if resume else None,
    }
    return fit(train_loop, loop_config, cfg, out, f"train-{kind}")
