"""The policy (actor) and the frozen reference policy: one class, two roles.

With LoRA (``ppo.lora``) the policy trains adapters only, and the reference is the policy's
own base weights with the adapters switched off: no second copy of the model exists."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

from rayrlhf.algorithms import masked_mean, ppo_actor_loss, response_nll, token_logprobs_and_entropy
from rayrlhf.fault_injection import inject_fault
from rayrlhf.models.forward import response_logits, rollout_logprobs
from rayrlhf.models.lora import LoRASpec, adapters_disabled, add_lora, merged_state_dict, merged_weights, save_adapter
from rayrlhf.rollout.weight_sync import WeightBuckets, broadcast_buckets, join_sync_group, put_buckets
from rayrlhf.types import ActorStats, PTXBatch, RolloutBatch
from rayrlhf.workers.base import (
    DistributedWorker, OptimConfig, PartLoss, build_engine, gathered_state, is_partitioned, parameter_count,
)
from rayrlhf.workers.frozen import FrozenModels, FrozenSpec

log = logging.getLogger(__name__)
# Folders a LoRA policy writes beside its weights: peft's adapter folder, the merged model.
POLICY_ADAPTER, POLICY_MERGED = "policy_adapter", "policy_merged"


def ptx_lm_loss(model, part: PTXBatch) -> torch.Tensor:
    """Mean next-token NLL of ``part``'s answer tokens under ``model`` (the PTX term)."""
    logits = model(input_ids=part.input_ids, attention_mask=part.attention_mask, use_cache=False).logits
    return response_nll(logits.float(), part.input_ids, part.loss_mask)


class PolicyWorker(DistributedWorker, FrozenModels):
    """A causal LM rank. Trainable (the policy, DeepSpeed) or frozen (the reference). Rank 0 of
    the policy may also host frozen models (``frozen``: the reference, a judge)."""

    def __init__(self, model_path: str, *, dtype: str = "auto", optim: OptimConfig | None = None,
                 threads: int | None = None, seed: int = 0, micro_batch_size: int = 16,
                 frozen: FrozenSpec | None = None, lora: LoRASpec | None = None) -> None:
        from rayrlhf.models import load_causal_lm

        self.configure(threads, seed)
        self.model_path = model_path
        self.trainable = optim is not None
        # Trainable weights stay fp32 (DeepSpeed keeps bf16 copies when bf16 is on).
        self.model = load_causal_lm(model_path, dtype="float32" if self.trainable else dtype)
        self.optim = optim
        self.dtype = dtype
        self.micro_batch_size = micro_batch_size
        self.pending_frozen = frozen
        self.engine = None
        if not self.trainable:
            self.model.eval().requires_grad_(False)
        self.lora = lora if self.trainable else None
        if self.lora is not None:
            add_lora(self.model, self.lora)  # before DeepSpeed: its optimiser gets the adapters only

    def init_engine(self) -> None:
        """Build the DeepSpeed engine (after ``setup_distributed``); rank 0 loads the frozen
        models it hosts."""
        if self.trainable:
            if self.lora is not None and self.optim.zero_stage == 3:
                # merged_state_dict and the adapters-off reference read whole weights.
                raise ValueError("LoRA (ppo.lora.enabled) does not run under ZeRO-3 (ppo.zero_stage=3); "
                                 "use ppo.zero_stage=2: the frozen base weights need no optimiser state to split")
            self.engine = build_engine(self.model, self.optim, self.dtype)
        if self.rank == 0 and self.pending_frozen is not None:
            self.host_frozen(self.pending_frozen)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module if self.engine is not None else self.model

    def logprobs(self, batch: RolloutBatch, micro_batch_size: int | None = None) -> torch.Tensor:
        """[b, R] log-probs of the response tokens."""
        return rollout_logprobs(self.module.eval(), batch, micro_batch_size or self.micro_batch_size)

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """The reference's [b, R] log-probs: under LoRA the policy with its adapters off (the
        initial weights, untouched by training), else the hosted copy."""
        if self.lora is None:
            return FrozenModels.reference_logprobs(self, batch)
        with adapters_disabled(self.module) as base:
            return rollout_logprobs(base.eval(), batch, self.micro_batch_size)

    def train(self, batch: RolloutBatch, *, epochs: int, minibatch_size: int, clip_ratio: float,
              entropy_coef: float = 0.0, seed: int = 0, loss_aggregation: str = "seq_mean",
              ptx: PTXBatch | None = None, ptx_coef: float = 0.0) -> ActorStats:
        """PPO epochs over this rank's rows: clipped surrogate on ``batch.advantages``, plus
        ``ptx_coef`` times the LM loss on this rank's share of ``ptx`` (one part per mini-batch)."""
        engine = self.engine
        engine.train()
        generator = torch.Generator().manual_seed(seed)
        stats: dict[str, list[float]] = {"loss": [], "clip_fraction": [], "approx_kl": [], "entropy": [], "ptx_loss": []}
        skipped = 0

        def part_loss(part: RolloutBatch) -> PartLoss:
            logits = response_logits(engine, part.sequences, part.attention_mask, part.prompt_length)
            # One softmax gives the log-probs, the entropy and both gradients; the entropy's
            # backward runs only when the loss uses it (entropy_coef > 0).
            logp, token_entropy = token_logprobs_and_entropy(logits, part.response_ids)
            mask = part.response_mask.float()
            loss, info = ppo_actor_loss(logp, part.old_logprobs, part.advantages, mask, clip_ratio, loss_aggregation)
            entropy = masked_mean(token_entropy, mask)
            if entropy_coef:
                loss = loss - entropy_coef * entropy
            return PartLoss(loss, loss_stats={"loss": loss.item()},
                            token_stats={"clip_fraction": float(info["clip_fraction"]),
                                         "approx_kl": float(info["approx_kl"]), "entropy": entropy.item()})

        for _ in range(epochs):
            minibatches = batch.minibatches(minibatch_size, generator)
            ptx_parts = ptx.shard(self.rank, self.world_size).chunks(len(minibatches)) if ptx and ptx_coef else []
            for i, mb in enumerate(minibatches):
                ptx_part = ptx_parts[i % len(ptx_parts)] if ptx_parts else None
                extra = (lambda: ptx_coef * ptx_lm_loss(engine, ptx_part)) if ptx_part is not None else None
                outcome = self.step_on_micro_batches(mb, self.micro_batch_size, loss_aggregation, part_loss, extra)
                skipped += int(outcome.left_out)
                if "loss" in outcome.stats:
                    for name in ("loss", "clip_fraction", "approx_kl", "entropy"):
                        stats[name].append(outcome.stats[name])
                if outcome.extra_loss is not None:
                    stats["ptx_loss"].append(outcome.extra_loss / ptx_coef)
        return ActorStats(**{k: sum(v) / len(v) if v else float("nan") for k, v in stats.items()},
                          nonfinite_minibatches=float(skipped))

    @property
    def partitioned(self) -> bool:
        """ZeRO-3 holds a slice of each weight per rank: reading them takes every rank."""
        return self.engine is not None and is_partitioned(self.module)

    def weights(self) -> dict[str, torch.Tensor] | None:
        """The policy's parameters under their transformers names, for the rollout engines
        (under LoRA the merged W + BA: engines run plain transformers models). Under ZeRO-3
        every rank must call it (each layer is gathered from all ranks in turn) and only rank
        0 returns the weights; the others return None."""
        if self.lora is not None:
            return merged_state_dict(self.module, torch.float32)
        keep = self.rank == 0 or not self.partitioned
        state = dict(gathered_state(self.module, keep=keep, dtype=torch.float32))
        return state if keep else None

    def weight_buckets(self, dtype: str | None, bucket_mb: float, changed_only: bool = False) -> WeightBuckets | None:
        """The weights ``weights`` gives, cast to ``dtype`` (the engines'; None: fp32) and put
        into the object store in buckets of at most ``bucket_mb`` MB as they are gathered
        (``rayrlhf.rollout.weight_sync``). Under ZeRO-3 every rank must call it; rank 0
        returns the buckets, the others None. ``changed_only``: see ``_engine_weights``."""
        buckets = put_buckets(self._engine_weights(dtype, changed_only), max(1, int(bucket_mb * 1e6)))
        return buckets if self.rank == 0 else None

    def _engine_weights(self, dtype: str | None, changed_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, copy in ``dtype``) of every weight, streamed; empty on ranks other than 0
        (which under ZeRO-3 still take part in each layer's gather). With ``changed_only``, a
        LoRA policy gives only the merged adapted weights (``merged_weights``): engines built
        from the policy's checkpoint hold the rest already. Full fine-tuning gives every weight."""
        from rayrlhf.models.zoo import to_dtype

        cast = to_dtype(dtype) if dtype is not None else torch.float32
        if self.lora is not None:
            return merged_weights(self.module, cast, changed_only=changed_only) if self.rank == 0 else iter(())
        return gathered_state(self.module, keep=self.rank == 0, dtype=cast)

    def join_weight_sync(self, address: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        """Rank 0 hosts the weight-sync group with the engines (``rollout.sync_path=collective``)
        at ``address:port``, one of its own node's free ports; the other ranks are not in it."""
        if self.rank == 0:
            self.sync_group = join_sync_group(address, port, 0, world_size, backend, timeout_s)

    def broadcast_weights(self, dtype: str | None, bucket_mb: float,
                          changed_only: bool = False) -> WeightBuckets | None:
        """``weight_buckets`` over the weight-sync group instead of the object store: rank 0
        broadcasts each bucket as it fills (the engines run ``receive_weights`` meanwhile).
        Under ZeRO-3 every rank must call it (the gathers); rank 0 returns what it sent."""
        named = self._engine_weights(dtype, changed_only)
        if self.rank != 0:
            for _ in named:  # nothing to send: only the gathers' collectives
                pass
            return None
        return broadcast_buckets(self.sync_group, named, max(1, int(bucket_mb * 1e6)))

    def save_pretrained(self, out_dir: str, tokenizer_path: str | None = None) -> str:
        """A plain transformers directory (rank 0 writes) that vLLM and transformers load
        (under LoRA the merged weights). Every rank must call it: under ZeRO-3 rank 0 writes
        weights gathered from all of them."""
        from rayrlhf.models import load_tokenizer

        state = None
        if self.lora is not None:
            state = merged_state_dict(self.module) if self.rank == 0 else None
        elif self.partitioned:
            state = dict(gathered_state(self.module, keep=self.rank == 0))
        if self.rank == 0:
            self.module.save_pretrained(out_dir, safe_serialization=True, state_dict=state)
            load_tokenizer(tokenizer_path or self.model_path).save_pretrained(out_dir)
        return out_dir

    def save_adapter(self, out_dir: str) -> str:
        """peft's adapter folder of a LoRA policy (rank 0 writes), on the base at ``model_path``."""
        if self.rank == 0:
            save_adapter(self.module, self.lora, out_dir, self.model_path)
        return out_dir

    def save_checkpoint(self, out_dir: str) -> None:
        """DeepSpeed state of this rank; under LoRA without the frozen base weights (the run
        reloads them from the model), plus the adapter folder and, when
        ``ppo.lora.merged_checkpoints``, the merged model (``policy_merged/``)."""
        self.engine.save_checkpoint(out_dir, tag="policy", exclude_frozen_parameters=self.lora is not None)
        if self.lora is not None:
            self.save_adapter(f"{out_dir}/{POLICY_ADAPTER}")
            if self.lora.merged_checkpoints:
                self.save_pretrained(f"{out_dir}/{POLICY_MERGED}")
        inject_fault("save_checkpoint")  # FAULT-INJECTION POINT (tests and drills only)

    def load_checkpoint(self, in_dir: str) -> None:
        self.engine.load_checkpoint(in_dir, tag="policy", load_module_strict=self.lora is None)

    def info(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "trainable": self.trainable,
                "parameters": sum(parameter_count(p) for p in self.model.parameters()),
                "trainable_parameters": sum(parameter_count(p) for p in self.model.parameters() if p.requires_grad),
                "compute_dtype": str(next(self.module.parameters()).dtype).removeprefix("torch.")}
