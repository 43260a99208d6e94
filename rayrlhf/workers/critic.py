"""The reward critic and the cost critic: one class, configured by which returns it fits."""

from __future__ import annotations

import torch

from rayrlhf.algorithms import clipped_value_loss
from rayrlhf.fault_injection import inject_fault
from rayrlhf.models.forward import response_values
from rayrlhf.types import CriticStats, RolloutBatch
from rayrlhf.workers.base import DistributedWorker, OptimConfig, build_engine

# Which RolloutBatch fields a critic reads: (its old values, its value targets).
CRITIC_FIELDS = {"reward": ("reward_values", "reward_returns"), "cost": ("cost_values", "cost_returns")}


class CriticWorker(DistributedWorker):
    """A value model V(s_t) per response token, initialised from a score model or an LM.

    Starting from the trained reward (cost) model, as Safe RLHF does, gives the critic a
    head that already ranks responses; starting from the policy LM gives a fresh head.
    """

    def __init__(self, stream: str, init_path: str, *, optim: OptimConfig, dtype: str = "auto",
                 threads: int | None = None, seed: int = 0) -> None:
        from rayrlhf.models.score_model import ScoreModel

        if stream not in CRITIC_FIELDS:
            raise ValueError(f"unknown critic stream {stream!r}; choose reward or cost")
        self.configure(threads, seed)
        self.stream = stream
        self.optim = optim
        self.dtype = dtype  # the policy's: the critics train in the same precision
        self.model = ScoreModel.from_pretrained(init_path, kind="critic", labels=["value"], dtype="float32")
        self.engine = None

    def init_engine(self) -> None:
        self.engine = build_engine(self.model, self.optim, self.dtype)

    @torch.no_grad()
    def values(self, batch: RolloutBatch, micro_batch_size: int = 16) -> torch.Tensor:
        module = (self.engine.module if self.engine is not None else self.model).eval()
        parts = []
        for start in range(0, len(batch), micro_batch_size):
            part = batch.select(slice(start, start + micro_batch_size))
            parts.append(response_values(module, part.sequences, part.attention_mask, part.prompt_length)
                         * part.response_mask)
        return torch.cat(parts)

    def train(self, batch: RolloutBatch, *, epochs: int, minibatch_size: int, clip_range_value: float,
              seed: int = 0, loss_aggregation: str = "seq_mean") -> CriticStats:
        """Value-clipped regression onto this critic's GAE returns."""
        old_field, target_field = CRITIC_FIELDS[self.stream]
        engine = self.engine
        engine.train()
        generator = torch.Generator().manual_seed(seed)
        losses, skipped = [], 0
        for _ in range(epochs):
            for mb in batch.minibatches(minibatch_size, generator):
                values = response_values(engine, mb.sequences, mb.attention_mask, mb.prompt_length)
                loss = clipped_value_loss(values, getattr(mb, old_field), getattr(mb, target_field),
                                          mb.response_mask.float(), clip_range_value, loss_aggregation)
                if inject_fault("loss") == "nan":  # FAULT-INJECTION POINT (tests and drills only)
                    loss = loss + float("nan")
                if not self.all_ranks_finite(loss):  # a NaN step would poison the weights
                    skipped += 1
                    continue
                engine.backward(loss)
                engine.step()
                inject_fault("train_step")  # FAULT-INJECTION POINT (tests and drills only)
                losses.append(loss.item())
        return CriticStats(loss=sum(losses) / len(losses) if losses else float("nan"),
                           nonfinite_minibatches=float(skipped))

    def save_checkpoint(self, out_dir: str) -> None:
        self.engine.save_checkpoint(out_dir, tag=f"{self.stream}_critic")
        inject_fault("save_checkpoint")  # FAULT-INJECTION POINT (tests and drills only)

    def load_checkpoint(self, in_dir: str) -> None:
        self.engine.load_checkpoint(in_dir, tag=f"{self.stream}_critic")
