"""Supervised fine-tuning of the policy: DeepSpeed ZeRO on N Ray Train workers.

Each instruction/response row is rendered with the prompt template the rest of the pipeline
uses (so PPO-Lag, the judges and the SFT'd policy read the same text), and the loss is the
next-token NLL over the *response* tokens only: the prompt part of each sequence is masked.
Held-out loss and perplexity are measured before training and every ``eval_every`` steps.

Step plan, LR schedule, train/eval split, DeepSpeed engine, checkpoints and resume are the
Ray Train loop the score trainer uses too (``rayrlhf.trainers.ray_train``). Rank 0 writes the final policy as a
plain transformers directory (safetensors + tokenizer) that transformers and vLLM load.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from rayrlhf.algorithms import response_nll
from rayrlhf.data.templates import format_prompt
from rayrlhf.trainers.ray_train import (
    StepPlan, find_resume, fit, full_state_dict, resume_engine, run_steps, train_eval_rows, training_optim,
)
from rayrlhf.workers.base import build_engine

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- pure helpers
def response_mask_from_offsets(offsets: list[tuple[int, int]], prompt_chars: int) -> list[int]:
    """1 for each token that starts at or after character ``prompt_chars`` (the answer).

    A token that straddles the prompt/answer boundary starts inside the prompt and counts as
    prompt: the model is never trained to produce any part of the prompt text.
    """
    return [1 if start >= prompt_chars else 0 for start, _ in offsets]


@dataclasses.dataclass
class SFTBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T] 1 on real tokens
    response_mask: torch.Tensor  # [B, T] 1 on answer tokens (the ones the loss learns)


def sft_texts(tokenizer, prompt: str, response: str, template: str) -> tuple[str, str]:
    """(prompt text, whole conversation text): the policy's prompt as PPO renders it, and the
    conversation as the judges read it (with its end-of-answer token)."""
    from rayrlhf.models.scoring import conversation_texts

    prompt_text = format_prompt(prompt, template, tokenizer)
    (full_text,) = conversation_texts(tokenizer, [prompt], [response], template)
    if not full_text.startswith(prompt_text):
        raise ValueError(f"template {template!r}: the rendered conversation does not start with the "
                         f"rendered prompt, so the prompt tokens cannot be masked (prompt {prompt[:60]!r})")
    return prompt_text, full_text


def encode_sft(tokenizer, prompts: list[str], responses: list[str], template: str, max_length: int) -> SFTBatch:
    """Right-padded ids with the response mask; sequences over ``max_length`` tokens lose the
    end of the answer (the prompt and the answer's start are kept)."""
    ids, masks = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt_text, full_text = sft_texts(tokenizer, prompt, response, template)
        if getattr(tokenizer, "is_fast", False):
            enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
            mask = response_mask_from_offsets(enc["offset_mapping"], len(prompt_text))
        else:  # slow tokenizers have no offsets: count the prompt's own tokens instead
            enc = tokenizer(full_text, add_special_tokens=False)
            n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
            mask = [0] * n_prompt + [1] * (len(enc["input_ids"]) - n_prompt)
        ids.append(enc["input_ids"][:max_length])
        masks.append(mask[:max_length])
    width = max(len(seq) for seq in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    response_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, (seq, mask) in enumerate(zip(ids, masks)):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
        response_mask[row, :len(seq)] = torch.tensor(mask, dtype=torch.long)
    return SFTBatch(input_ids, attention_mask, response_mask)


def batch_loss(model, batch: SFTBatch) -> tuple[torch.Tensor, int]:
    """Mean response-token NLL of ``batch`` under ``model`` and the number of tokens it averages."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return response_nll(logits.float(), batch.input_ids, batch.response_mask), int(batch.response_mask[:, 1:].sum())


# ---------------------------------------------------------------- one worker
@torch.no_grad()
def _evaluate(engine, tokenizer, rows, template, max_length, batch_size, rank, world) -> dict[str, float]:
    """Token-weighted held-out NLL and perplexity: every rank sums a shard, then all-reduce."""
    import torch.distributed as dist

    engine.eval()
    totals = torch.zeros(2, dtype=torch.float64)  # [Σ NLL, Σ tokens]
    mine = rows[rank::world]
    for start in range(0, len(mine), batch_size):
        part = mine[start:start + batch_size]
        loss, tokens = batch_loss(engine, encode_sft(tokenizer, [r.prompt for r in part],
                                                     [r.output for r in part], template, max_length))
        totals += torch.tensor([loss.item() * tokens, tokens], dtype=torch.float64)
    dist.all_reduce(totals)
    engine.train()
    mean = (totals[0] / totals[1].clamp_min(1)).item()
    return {"eval/loss": mean, "eval/perplexity": math.exp(mean), "eval/tokens": int(totals[1].item())}


def train_loop(config: dict[str, Any]) -> None:
    """One data-parallel rank (runs inside a Ray Train worker)."""
    import ray
    import ray.train as rt

    from rayrlhf.data import SFTRow
    from rayrlhf.models.freezing import freeze_lower_layers
    from rayrlhf.models.zoo import load_causal_lm, load_tokenizer

    ctx = rt.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    training = config["training"]
    torch.set_num_threads(training["cpus_per_worker"])
    torch.manual_seed(config["seed"])
    train_rows = [SFTRow.from_dict(d) for d in ray.get(config["train_rows"])]
    eval_rows = [SFTRow.from_dict(d) for d in ray.get(config["eval_rows"])]

    tokenizer = load_tokenizer(config["model"], padding_side="right",
                               trust_remote_code=config["trust_remote_code"])
    model = load_causal_lm(config["model"], dtype="float32", trust_remote_code=config["trust_remote_code"])
    freeze_lower_layers(model, training["trainable_layers"])
    plan = StepPlan(len(train_rows), world, training["per_device_batch_size"],
                    training["gradient_accumulation_steps"], training["epochs"], training["max_steps"],
                    config["seed"])
    optim, lr_schedule = training_optim(training, plan.total_steps)
    engine = build_engine(model, optim, config["model_dtype"], lr_schedule)
    state = resume_engine(engine, config.get("resume_checkpoint"))
    step = state.get("global_step", 0)
    template, max_length = config["template"], training["max_length"]

    def micro_loss(micro: list[int]) -> torch.Tensor:
        rows = [train_rows[i] for i in micro]
        batch = encode_sft(tokenizer, [r.prompt for r in rows], [r.output for r in rows], template, max_length)
        return batch_loss(engine, batch)[0]

    def evaluate() -> dict[str, float]:
        return _evaluate(engine, tokenizer, eval_rows, template, max_length, training["per_device_batch_size"],
                         rank, world)

    # The untrained model's held-out loss rides along in every report (and checkpoint), so
    # the final metrics say how far SFT moved it, also after a resume.
    carry = {k: v for k, v in state.items() if k.startswith("eval/initial_")}
    if step == 0 and config["eval_at_start"]:
        initial = evaluate()
        carry = {"eval/initial_loss": initial["eval/loss"], "eval/initial_perplexity": initial["eval/perplexity"]}
    start_time = time.perf_counter()
    step = run_steps(engine, plan, rank, training, step=step, micro_loss=micro_loss,
                     evaluate=evaluate, desc="train sft", carry=carry,
                     tracking=config.get("tracking"))

    state_dict = full_state_dict(engine, training["zero_stage"])
    if rank == 0:
        out = Path(config["output_dir"]) / "model"
        engine.module.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        # Saved with the default (left) padding side, which generation wants.
        load_tokenizer(config["model"], trust_remote_code=config["trust_remote_code"]).save_pretrained(out)
        log.info("SFT policy (%d steps, %.1f s) written to %s", step, time.perf_counter() - start_time, out)


# ---------------------------------------------------------------- the driver
def run(cfg) -> dict:
    """Entry of ``rayrlhf train-sft``."""
    import ray

    from rayrlhf.cluster import init_ray
    from rayrlhf.config import to_object
    from rayrlhf.models import resolve_model_path
    from rayrlhf.runs import output_dir

    cfg = to_object(cfg)
    if cfg.dataset.schema != "sft":
        raise ValueError(f"train-sft trains on 'sft' rows (instruction, input, output), but dataset.schema "
                         f"is {cfg.dataset.schema!r}")
    out = output_dir(cfg)
    train_rows, eval_rows = train_eval_rows(cfg, "SFT")

    resume = find_resume(cfg.resume_from)
    init_ray(cfg.cluster)
    loop_config = {
        "training": dataclasses.asdict(cfg.training), "template": cfg.template.name,
        "seed": cfg.run.seed, "model": resolve_model_path(cfg.model.name_or_path), "model_dtype": cfg.model.dtype,
        "trust_remote_code": cfg.model.trust_remote_code, "output_dir": str(out.resolve()),
        "eval_at_start": cfg.eval_at_start,
        "train_rows": ray.put([r.to_dict() for r in train_rows]),
        "eval_rows": ray.put([r.to_dict() for r in eval_rows]),
        "resume_checkpoint": str(resume) if resume else None,
    }
    return fit(train_loop, loop_config, cfg, out, "train-sft")
