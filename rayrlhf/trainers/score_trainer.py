"""Train a reward, cost or QA-moderation model: DeepSpeed ZeRO on N Ray Train workers.

The driver (``run``) validates the data, splits off a held-out set, and starts a Ray Train
``TorchTrainer`` (``rayrlhf.trainers.ray_train``); every worker runs ``train_loop`` (one
data-parallel rank). Workers save DeepSpeed checkpoints every ``save_every`` steps; a run
started with ``resume_from=<earlier output_dir>`` continues from the last one at the same
step and data position. Rank 0 writes the final model as a transformers directory (safetensors
backbone + head, tokenizer) with the config and metrics beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from rayrlhf.data import schema_type
from rayrlhf.models.freezing import freeze_lower_layers
from rayrlhf.algorithms import balanced_pos_weight
from rayrlhf.eval.metrics import flatten_scalars
from rayrlhf.trainers.ray_train import (
    StepPlan, find_resume, fit, full_state_dict, resume_engine, run_steps, train_eval_rows, training_optim,
)
from rayrlhf.trainers.score_objectives import (
    ROW_TYPE, TRAINABLE_SCHEMAS, harm_targets, labels_for, loss_from_scores, metrics_from_scores, pairs_to_score,
)
from rayrlhf.workers.base import build_engine

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- one worker
def _forward_scores(model, tokenizer, kind: str, rows: list, template: str, max_length: int) -> torch.Tensor:
    from rayrlhf.models.scoring import encode_conversations

    prompts, responses = pairs_to_score(kind, rows)
    batch = encode_conversations(tokenizer, prompts, responses, template, max_length)
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
    row_type = schema_type(config.get("schema") or TRAINABLE_SCHEMAS[kind][0])
    train_rows = [row_type.from_dict(d) for d in ray.get(config["train_rows"])]
    eval_rows = [row_type.from_dict(d) for d in ray.get(config["eval_rows"])]

    tokenizer = load_tokenizer(config["model"], padding_side="right")
    model = ScoreModel.from_pretrained(config["model"], kind=kind, labels=labels_for(kind), dtype="float32")
    freeze_lower_layers(model, training["trainable_layers"])
    plan = StepPlan(len(train_rows), world, training["per_device_batch_size"],
                    training["gradient_accumulation_steps"], training["epochs"], training["max_steps"],
                    config["seed"])
    optim, lr_schedule = training_optim(training, plan.total_steps)
    engine = build_engine(model, optim, config["model_dtype"], lr_schedule)
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
    step = run_steps(engine, plan, rank, training, step=step, micro_loss=micro_loss,
                     evaluate=evaluate, desc=f"train {kind}", tracking=config.get("tracking"))

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

    from rayrlhf.cluster import init_ray
    from rayrlhf.config import to_object
    from rayrlhf.models import resolve_model_path
    from rayrlhf.runs import output_dir

    cfg = to_object(cfg)
    kind = cfg.kind
    if kind not in ROW_TYPE:
        raise ValueError(f"unknown score model kind {kind!r}; choose reward, cost or moderation")
    if cfg.dataset.schema not in TRAINABLE_SCHEMAS[kind]:
        raise ValueError(f"a {kind} model trains on {' or '.join(map(repr, TRAINABLE_SCHEMAS[kind]))} rows, but "
                         f"dataset.schema is {cfg.dataset.schema!r}")
    out = output_dir(cfg)
    train_rows, eval_rows = train_eval_rows(cfg, f"{kind} model")

    resume = find_resume(cfg.resume_from)
    training = dataclasses.asdict(cfg.training)
    init_ray(cfg.cluster)
    loop_config = {
        "kind": kind, "schema": cfg.dataset.schema, "training": training, "template": cfg.template.name, "seed": cfg.run.seed,
        "model": resolve_model_path(cfg.model.name_or_path), "model_dtype": cfg.model.dtype,
        "output_dir": str(out.resolve()), "threshold": cfg.moderation_threshold,
        "max_false_positive_rate": cfg.moderation_max_false_positive_rate, "score_l2_coef": cfg.score_l2_coef,
        "balance_categories": cfg.moderation_balance_categories,
        "train_rows": ray.put([r.to_dict() for r in train_rows]),
        "eval_rows": ray.put([r.to_dict() for r in eval_rows]),
        "resume_checkpoint": str(resume) if resume else None,
    }
    return fit(train_loop, loop_config, cfg, out, f"train-{kind}")
