"""The critics: one class for every layout of the value functions.

A ``CriticWorker`` fits one value head per *stream* it owns. Safe RLHF's reference layout runs
two of them, a reward critic (``streams=("reward",)``) and a cost critic (``("cost",)``); the
shared layout (``ppo.critic_layout=shared``) runs one with both streams: one backbone, two
heads, so reward and cost values come from one forward pass and both losses from one backward
pass, at half the critics' arithmetic, memory and processes. Plain PPO (λ fixed at 0) runs
one with the reward stream only.

With LoRA (``ppo.lora``) the backbone trains adapters only; the value heads always train whole
(they start fresh or from a judge's head, never as the value function they must become).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rayrlhf.algorithms import clipped_value_loss
from rayrlhf.fault_injection import inject_fault
from rayrlhf.models.forward import response_values, rollout_values
from rayrlhf.models.lora import LoRASpec, add_lora
from rayrlhf.types import CriticStats, RolloutBatch
from rayrlhf.workers.base import DistributedWorker, OptimConfig, PartLoss, build_engine
from rayrlhf.workers.frozen import FrozenModels, FrozenSpec

# Which RolloutBatch fields a stream's head reads: (its old values, its value targets).
CRITIC_FIELDS = {"reward": ("reward_values", "reward_returns"), "cost": ("cost_values", "cost_returns")}


def score_head_rows(path: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight [1, H], bias [1] or None) of a one-output score model's head, or None when
    ``path`` is not a rayrlhf score model with one output (a plain LM starts a fresh head)."""
    from safetensors import safe_open

    from rayrlhf.models.score_model import read_metadata

    meta = read_metadata(path)
    if meta is None or len(meta.get("labels", [])) != 1:
        return None
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            if "score.weight" in tensors.keys():
                bias = tensors.get_tensor("score.bias") if "score.bias" in tensors.keys() else None
                return tensors.get_tensor("score.weight").float(), bias
    return None


def load_critic(streams: tuple[str, ...], init_paths: dict[str, str], cost_heads: int | None = None):
    """A ScoreModel with one value head per stream (``cost_heads`` heads for the cost stream
    when the costs are per category) on the backbone of the first stream's starting point.
    Each head starts as its stream's score model's head (Safe RLHF starts each critic from its
    judge; with one-output judges every per-category cost head starts as the cost model's) or,
    for a plain LM, fresh."""
    from rayrlhf.models.score_model import ScoreModel

    model = ScoreModel.from_pretrained(init_paths[streams[0]], kind="critic", labels=["value"], dtype="float32")
    widths = [stream_width(stream, cost_heads) for stream in streams]
    if sum(widths) == 1:
        return model
    head = model.inner.score
    heads = torch.nn.Linear(head.in_features, sum(widths), bias=head.bias is not None)
    with torch.no_grad():
        heads.weight.normal_(0.0, getattr(model.config, "initializer_range", 0.02))
        if heads.bias is not None:
            heads.bias.zero_()
        for row in range(widths[0]):
            heads.weight[row] = head.weight[0]
            if heads.bias is not None:
                heads.bias[row] = head.bias[0]
        row = widths[0]
        for stream, width in zip(streams[1:], widths[1:]):
            found = score_head_rows(init_paths[stream])
            for head_row in range(row, row + width):
                if found is not None and found[0].shape[-1] == head.in_features:
                    heads.weight[head_row] = found[0][0]
                    if heads.bias is not None and found[1] is not None:
                        heads.bias[head_row] = found[1][0].float()
            row += width
    model.inner.score = heads
    model.labels = [label for stream, width in zip(streams, widths) for label in head_labels(stream, width, cost_heads)]
    return model


def stream_width(stream: str, cost_heads: int | None) -> int:
    """Value heads of a stream: one, or one per constraint for per-category costs."""
    return cost_heads if stream == "cost" and cost_heads is not None else 1


def head_labels(stream: str, width: int, cost_heads: int | None) -> list[str]:
    if stream == "cost" and cost_heads is not None:
        return [f"cost_value_{k}" for k in range(width)]
    return [f"{stream}_value"]


class CriticWorker(DistributedWorker, FrozenModels):
    """Value models V_k(s_t) per response token, one head per stream, initialised from score
    models or an LM (see ``load_critic``). Rank 0 may also host frozen models (``frozen``)."""

    def __init__(self, streams: tuple[str, ...] | list[str] | str, init_paths: dict[str, str] | str, *,
                 optim: OptimConfig, dtype: str = "auto", threads: int | None = None, seed: int = 0,
                 micro_batch_size: int = 16, frozen: FrozenSpec | None = None,
                 lora: LoRASpec | None = None, cost_heads: int | None = None) -> None:
        self.streams = (streams,) if isinstance(streams, str) else tuple(streams)
        # K: the cost stream has one head per constraint (lagrange.per_category); None: one head.
        self.cost_heads = cost_heads
        unknown = [s for s in self.streams if s not in CRITIC_FIELDS]
        if unknown or not self.streams:
            raise ValueError(f"unknown critic streams {unknown or self.streams!r}; choose from reward, cost")
        if isinstance(init_paths, str):
            init_paths = {stream: init_paths for stream in self.streams}
        self.configure(threads, seed)
        self.optim = optim
        self.dtype = dtype  # the policy's: the critics train in the same precision
        self.micro_batch_size = micro_batch_size
        self.pending_frozen = frozen
        self.model = load_critic(self.streams, init_paths, cost_heads)
        self.lora = lora
        if lora is not None:
            add_lora(self.model, lora)
            self.model.inner.score.requires_grad_(True)
        self.engine = None

    @property
    def tag(self) -> str:
        """Checkpoint tag: reward_critic, cost_critic, or reward_cost_critic (shared)."""
        return "_".join(self.streams) + "_critic"

    def init_engine(self) -> None:
        self.engine = build_engine(self.model, self.optim, self.dtype)
        if self.rank == 0 and self.pending_frozen is not None:
            self.host_frozen(self.pending_frozen)

    def values(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """{stream: [b, R] values at the response tokens (0 on padding)}; per-category costs
        are [b, R, K]."""
        module = (self.engine.module if self.engine is not None else self.model).eval()
        out = rollout_values(module, batch, self.micro_batch_size)
        return {stream: out[..., columns] for stream, columns in self.head_columns().items()}

    def head_columns(self) -> dict[str, int | slice]:
        """Which output columns are each stream's heads: one column, or K for per-category costs."""
        columns, start = {}, 0
        for stream in self.streams:
            width = stream_width(stream, self.cost_heads)
            columns[stream] = start if stream != "cost" or self.cost_heads is None else slice(start, start + width)
            start += width
        return columns

    def train(self, batch: RolloutBatch, *, epochs: int, minibatch_size: int, clip_range_value: float,
              seed: int = 0, loss_aggregation: str = "seq_mean") -> dict[str, CriticStats]:
        """Value-clipped regression of each head onto its stream's GAE returns; the heads'
        losses add up to one loss, so a shared backbone takes one backward pass for both."""
        engine = self.engine
        engine.train()
        generator = torch.Generator().manual_seed(seed)
        losses: dict[str, list[float]] = {stream: [] for stream in self.streams}
        skipped = 0

        def part_loss(part: RolloutBatch) -> PartLoss:
            values = response_values(engine, part.sequences, part.attention_mask, part.prompt_length)
            mask = part.response_mask.float()
            per_stream = {}
            for stream, columns in self.head_columns().items():
                old_field, target_field = CRITIC_FIELDS[stream]
                old, target = getattr(part, old_field), getattr(part, target_field)
                if isinstance(columns, int):
                    per_stream[stream] = clipped_value_loss(values[..., columns], old, target, mask,
                                                            clip_range_value, loss_aggregation)
                else:  # one regression per category's head, summed like the streams'
                    per_stream[stream] = sum(clipped_value_loss(values[..., columns][..., k], old[..., k],
                                                                target[..., k], mask, clip_range_value,
                                                                loss_aggregation)
                                             for k in range(self.cost_heads))
            return PartLoss(sum(per_stream.values()), loss_stats={s: loss.item() for s, loss in per_stream.items()})

        for _ in range(epochs):
            for mb in batch.minibatches(minibatch_size, generator):
                outcome = self.step_on_micro_batches(mb, self.micro_batch_size, loss_aggregation, part_loss)
                skipped += int(outcome.left_out)
                if outcome.applied:
                    for stream in self.streams:
                        losses[stream].append(outcome.stats[stream])
        return {stream: CriticStats(loss=sum(v) / len(v) if v else float("nan"), nonfinite_minibatches=float(skipped))
                for stream, v in losses.items()}

    def save_checkpoint(self, out_dir: str) -> None:
        # Under LoRA the frozen backbone is left out: the run reloads it from its starting point.
        self.engine.save_checkpoint(out_dir, tag=self.tag, exclude_frozen_parameters=self.lora is not None)
        inject_fault("save_checkpoint")  # FAULT-INJECTION POINT (tests and drills only)

    def load_checkpoint(self, in_dir: str) -> None:
        self.engine.load_checkpoint(in_dir, tag=self.tag, load_module_strict=self.lora is None)
