"""What every model-holding PPO-Lag worker shares: threads, the torch.distributed group
between the ranks of one role, and a DeepSpeed engine for the trainable roles.

``build_engine`` is the one DeepSpeed engine builder of rayrlhf: the PPO-Lag policy and
critics use it, and so does the Ray Train loop of the score-model and SFT trainers
(``rayrlhf.trainers.ray_train``), which adds a learning-rate schedule."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from rayrlhf.fault_injection import inject_fault
from rayrlhf.types import RolloutBatch


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port: rank 0 hosts the group's rendezvous there."""
    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return ray.util.get_node_ip_address(), port


@dataclass(frozen=True)
class OptimConfig:
    """How a trainable role is optimised (one per role: the actor and critics differ)."""

    lr: float
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    zero_stage: int = 2
    # None: the model's precision (``resolve_bf16``), decided on the worker's own machine.
    bf16: bool | None = None
    micro_batch_size: int = 8
    gradient_checkpointing: bool = False
    # Micro-batches whose gradients DeepSpeed sums before each optimiser step.
    accumulation: int = 1
    # True: the caller sums any number of micro-batches per step (each ``backward`` adds its
    # weighted share, ``step`` applies them); PPO mini-batches are cut by length, so the count varies.
    caller_accumulates: bool = False
    # Train only the top N decoder layers (and the head); None trains the whole model.
    trainable_layers: int | None = None


def deepspeed_config(micro_batch_size: int, accumulation: int, max_grad_norm: float, zero_stage: int,
                     bf16: bool, caller_accumulates: bool = False) -> dict[str, Any]:
    """DeepSpeed settings for one rank; the optimiser itself is built in code."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    zero: dict[str, Any] = {"stage": zero_stage, "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7}
    if zero_stage == 3:
        # Parameters below this many elements stay whole on every rank. DeepSpeed's default
        # (1e5) would keep every tensor of the tiny test model whole, so stage 3 would go
        # untested; 1e4 still keeps a 7B model's norms whole (4096) and splits every matrix.
        zero["stage3_param_persistence_threshold"] = 1e4
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": max_grad_norm,
        # DeepSpeed's default 5e8-element buckets cost 2 GB each in fp32 per rank; 5e7 keeps
        # a 135M-parameter model's rank near its real working set on small machines.
        "zero_optimization": zero,
        "bf16": {"enabled": bool(bf16)},
        "managed_gradient_accumulation": not caller_accumulates,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }


def effective_zero_stage(zero_stage: int, world_size: int, bf16: bool) -> int:
    """The ZeRO stage a rank really runs. Stages 1 and 2 split optimiser state and gradients
    over the ranks; on one rank they split nothing, yet in fp32 still keep a flat copy of the
    weights and gradient buckets: stage 0 (plain AdamW) takes the same step in less time and
    memory (SmolLM2 policy, one thread: -7% train time, -0.3 GiB). bf16 keeps its stage, which is
    where DeepSpeed holds the fp32 master weights (its stage-0 bf16 path is another optimiser)."""
    return 0 if world_size == 1 and zero_stage in (1, 2) and not bf16 else zero_stage


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in backward (transformers models, or our ScoreModel wrapper)."""
    inner = getattr(model, "inner", model)
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# Two imports DeepSpeed makes that rayrlhf never uses, each 5-15 s in every trainer process on a
# 2-core CPU: its autotuner imports MLflow (to log tuning trials) when MLflow is installed, and its
# ZeRO-1/2 code imports its Muon optimiser (to recognise it), whose module torch.compiles three
# kernels as it loads, which imports torch inductor's compiler. rayrlhf always builds AdamW and
# never autotunes.
DEEPSPEED_MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def import_deepspeed():
    """``import deepspeed`` without those two costs: MLflow is hidden while DeepSpeed loads (its
    autotuner then runs without MLflow, as where it is not installed; a later ``import mlflow``
    works as usual), and the Muon module is loaded with its kernels left as plain functions,
    DeepSpeed's own fallback where torch.compile is missing (``compiler.dummy_decorator``)."""
    import importlib

    if "deepspeed" not in sys.modules:
        hide_mlflow = "mlflow" not in sys.modules
        if hide_mlflow:
            sys.modules["mlflow"] = None  # makes DeepSpeed's optional `import mlflow` fail at once
        try:
            importlib.import_module("deepspeed")
        finally:
            if hide_mlflow:
                del sys.modules["mlflow"]
    if DEEPSPEED_MUON_MODULE not in sys.modules:
        from deepspeed.runtime import compiler

        compile_decorator = compiler.compile
        compiler.compile = lambda: compiler.dummy_decorator
        try:
            importlib.import_module(DEEPSPEED_MUON_MODULE)
        finally:
            compiler.compile = compile_decorator
    return sys.modules["deepspeed"]


def build_engine(model: torch.nn.Module, optim: OptimConfig, model_dtype: str = "auto",
                 lr_schedule: Callable[[int], float] | None = None):
    """A DeepSpeed engine around ``model`` with AdamW (fp32 master weights under bf16), in
    train mode (from_pretrained returns eval mode, in which transformers skips gradient
    checkpointing). ``lr_schedule(step)`` multiplies the learning rate at each optimiser step
    (the engine's ``lr_scheduler``); None keeps it constant. ``optim.bf16`` None follows
    ``model_dtype`` (``resolve_bf16``)."""
    deepspeed = import_deepspeed()

    from rayrlhf.models.attention import use_trainable_attention
    from rayrlhf.models.freezing import freeze_lower_layers
    from rayrlhf.models.zoo import resolve_bf16

    use_trainable_attention(model)  # bf16 on CPUs: attention's backward in fp32 (twice as fast)
    if optim.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if optim.trainable_layers is not None:
        freeze_lower_layers(model, optim.trainable_layers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=optim.lr,
                                  weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule) if lr_schedule is not None else None
    import torch.distributed as dist

    bf16 = resolve_bf16(optim.bf16, model_dtype)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    config = deepspeed_config(optim.micro_batch_size, optim.accumulation, optim.max_grad_norm,
                              effective_zero_stage(optim.zero_stage, world_size, bf16), bf16, optim.caller_accumulates)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
                                      dist_init_required=False)
    engine.train()
    return engine


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 has split ``model``'s parameters over the ranks (then each rank holds
    placeholders, and reading the weights takes every rank: ``gathered_state``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def parameter_count(param: torch.nn.Parameter) -> int:
    """Elements of ``param``, also where ZeRO-3 left only a placeholder on this rank."""
    return int(getattr(param, "ds_numel", param.numel()))


def gathered_state(model: torch.nn.Module, keep: bool = True,
                   dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every entry of ``model.state_dict()``, in its order, as new tensors
    (floating point ones cast to ``dtype`` when given), one module's own parameters at a time.

    Under ZeRO-3 each module's parameters are gathered from all ranks only while they are
    copied (``deepspeed.zero.GatheredParameters``), so no rank ever holds the whole model
    gathered; every rank must run the iteration in step (each gather is a collective), and
    only ranks with ``keep`` copy anything (the others yield nothing). A parameter shared
    by two modules (tied embeddings) comes back as one tensor under both names, as
    ``state_dict`` shares it. Copies, never views: pickling a view into ZeRO's flat buffers
    (Ray's object store) would serialise the whole buffer, once per tensor."""
    from collections import Counter

    partitioned = is_partitioned(model)
    uses = Counter(id(p) for module in model.modules(remove_duplicate=False) for p in module._parameters.values())
    shared: dict[int, torch.Tensor] = {}  # only the copies a later name will use again

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) in shared:
            return shared[id(tensor)]
        cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        copied = tensor.detach().to(cast, copy=True)
        if uses[id(tensor)] > 1:
            shared[id(tensor)] = copied
        return copied

    for prefix, module in model.named_modules(remove_duplicate=False):
        prefix = f"{prefix}." if prefix else ""
        params = [(name, p) for name, p in module._parameters.items() if p is not None]
        buffers = [(name, b) for name, b in module._buffers.items()
                   if b is not None and name not in module._non_persistent_buffers_set]
        if not params and not buffers:
            continue
        if partitioned and params:
            from deepspeed.runtime.zero.partition_parameters import GatheredParameters

            with GatheredParameters([p for _, p in params], modifier_rank=None):
                named = [(prefix + name, copy(p)) for name, p in params] if keep else []
        else:
            named = [(prefix + name, copy(p)) for name, p in params] if keep else []
        yield from named
        if keep:
            yield from ((prefix + name, copy(b)) for name, b in buffers)


@dataclass
class PartLoss:
    """A micro-batch's loss and its stats: ``loss_stats`` are aggregated like the loss (seq- or
    token-mean), ``token_stats`` are token means (clip fraction, KL, entropy)."""

    loss: torch.Tensor
    loss_stats: dict[str, float] = field(default_factory=dict)
    token_stats: dict[str, float] = field(default_factory=dict)


@dataclass
class StepOutcome:
    """What ``step_on_micro_batches`` did: mini-batch stats over the applied micro-batches."""

    stats: dict[str, float] = field(default_factory=dict)
    applied: int = 0  # backward passes that entered the step
    left_out: bool = False  # a micro-batch (or the extra loss) was NaN/Inf and left out
    extra_loss: float | None = None


class DistributedWorker:
    """Base of the PPO-Lag workers: ``setup_distributed`` joins the role's process group."""

    rank: int = 0
    world_size: int = 1

    def configure(self, threads: int | None, seed: int) -> None:
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)

    def all_ranks_finite(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank of this role. A rank that alone skipped its
        optimiser step would leave the others waiting in the gradient all-reduce, so all
        ranks skip together."""
        import torch.distributed as dist

        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0])
        if self.world_size > 1 and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad.item() == 0.0

    def step_on_micro_batches(self, minibatch: RolloutBatch, micro_batch_size: int, aggregation: str,
                              part_loss: Callable[[RolloutBatch], PartLoss],
                              extra_loss: Callable[[], torch.Tensor] | None = None) -> StepOutcome:
        """One optimiser step on ``minibatch``, computed in length-sorted, trimmed micro-batches
        of ``micro_batch_size`` rows (no forward or backward over columns that are padding in
        all of a micro-batch's rows). Each micro-batch's loss enters the gradient with its share
        of the mini-batch's aggregated loss (``aggregation_share``), so the step equals the
        unsplit mini-batch's; ``extra_loss()`` (the PTX term) is added with weight 1.

        A micro-batch whose loss is NaN/Inf on any rank is left out on every rank (a NaN would
        poison the weights, and a rank that alone skipped would leave the others waiting in a
        collective); with nothing left, no step is taken."""
        from rayrlhf.algorithms import aggregation_share

        engine, tokens = self.engine, float(minibatch.response_mask.sum())
        outcome = StepOutcome()
        for index in minibatch.length_groups(micro_batch_size):
            part = minibatch.select(index).trimmed()
            got = part_loss(part)
            loss = got.loss
            if inject_fault("loss") == "nan":  # FAULT-INJECTION POINT (tests and drills only)
                loss = loss + float("nan")
            if not self.all_ranks_finite(loss):
                outcome.left_out = True
                continue
            share = aggregation_share(part.response_mask, minibatch.response_mask, aggregation)
            engine.backward(loss * share)
            outcome.applied += 1
            token_share = float(part.response_mask.sum()) / max(tokens, 1.0)
            for name, value in got.loss_stats.items():
                outcome.stats[name] = outcome.stats.get(name, 0.0) + value * share
            for name, value in got.token_stats.items():
                outcome.stats[name] = outcome.stats.get(name, 0.0) + value * token_share
        if extra_loss is not None:
            extra = extra_loss()
            if self.all_ranks_finite(extra):
                engine.backward(extra)
                outcome.applied += 1
                outcome.extra_loss = extra.item()
            else:
                outcome.left_out = True
        if outcome.applied:
            engine.step()
            inject_fault("train_step")  # FAULT-INJECTION POINT (tests and drills only)
        return outcome

    def free_address(self) -> tuple[str, int]:
        return free_address()

    def setup_distributed(self, rank: int, world_size: int, address: str, port: int,
                          backend: str = "gloo") -> None:
        """Join this role's group (gloo on CPUs, NCCL on GPUs); DeepSpeed uses it."""
        import torch.distributed as dist

        self.rank, self.world_size = rank, world_size
        os.environ.update({"MASTER_ADDR": address, "MASTER_PORT": str(port), "RANK": str(rank),
                           "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0"})
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, init_method=f"tcp://{address}:{port}",
                                    rank=rank, world_size=world_size)
