"""PPO-Lagrangian on Ray: the single controller.

``PPOLagDriver.step`` is the algorithm, phase by phase (Safe RLHF, Dai et al. 2023):

1. generate   rollout engines sample responses for a batch of prompts
2. score      policy and reference log-probs, both critics' values, reward and cost scores
3. advantages KL-shaped token rewards/costs, GAE for both streams, combined advantage
4. train      critics regress on their returns; the policy takes PPO steps on
              (A_r - λ A_c) / (1 + λ)
5. lagrange   λ moves with the episode cost against the threshold
6. sync       the rollout engines receive the new policy weights

The math lives in ``rayrlhf.algorithms``; the workers hold models; this file composes them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import torch

from rayrlhf.algorithms import (
    combined_advantage, gae_advantages, make_lagrange_controller, masked_mean, shape_rewards_and_costs,
)
from rayrlhf.rollout import SamplingSpec
from rayrlhf.trainers import checkpoint_dir
from rayrlhf.trainers.faults import (
    FaultLog, NonFiniteError, WorkerFailedError, actor_failure_types, describe_nonfinite, findings_message,
    note_unreachable_threshold,
)
from rayrlhf.trainers.fingerprints import fingerprint_changes, ppo_lag_inputs, write_fingerprints
from rayrlhf.types import build_rollout_batch
from rayrlhf.workers.base import OptimConfig
from rayrlhf.workers.critic import CriticWorker
from rayrlhf.workers.frozen import FrozenWorker
from rayrlhf.workers.group import ActorGroup, get_fail_fast
from rayrlhf.workers.policy import PolicyWorker
from rayrlhf.workers.rollout_worker import RolloutWorker, generate_across
from rayrlhf.workers.scorer import ScorerWorker

log = logging.getLogger(__name__)
DRIVER_STATE = "driver_state.json"
CONFIG_SNAPSHOT = "ppo_lag_config.yaml"
RESUME_COMMAND = "resume_command.txt"
# Keys a resumed run may change without changing what it computes.
RESUME_FREE_KEYS = ("steps", "save_every", "resume_from", "resume_allow_changes", "tensorboard", "run.output_dir",
                    "run.log_level", "cluster", "faults", "keep_last_checkpoints")


def lagrange_from_config(lag) -> Any:
    """The λ controller a ``lagrange`` config section describes."""
    if lag.kind == "log_lambda":
        return make_lagrange_controller("log_lambda", threshold=lag.threshold, lambda_init=lag.lambda_init,
                                        lambda_lr=lag.lambda_lr, lambda_max=lag.lambda_max,
                                        update_delay=lag.update_delay, window=lag.window)
    if lag.kind == "pid":
        return make_lagrange_controller("pid", threshold=lag.threshold, kp=lag.kp, ki=lag.ki, kd=lag.kd,
                                        lambda_init=lag.lambda_init, lambda_max=lag.lambda_max)
    if lag.kind == "constant":
        return make_lagrange_controller("constant", value=lag.value)
    raise ValueError(f"unknown lagrange.kind {lag.kind!r}; choose log_lambda, pid or constant")


def prompt_order(num_prompts: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """Prompt indices of step ``step``: each pass over the data is a seeded permutation, so
    the data position follows from the step number alone (resume needs no iterator)."""
    steps_per_pass = max(1, num_prompts // prompts_per_step)
    data_pass, in_pass = divmod(step, steps_per_pass)
    order = list(range(num_prompts))
    random.Random(seed * 1_000_003 + data_pass).shuffle(order)
    chosen = order[in_pass * prompts_per_step:(in_pass + 1) * prompts_per_step]
    if len(chosen) < prompts_per_step:  # fewer prompts than one step: repeat them
        chosen = (chosen * (prompts_per_step // max(1, len(chosen)) + 1))[:prompts_per_step]
    return chosen


def rollout_placement_options(placement: str) -> dict[str, Any]:
    """Ray actor options that place the rollout engines (``rollout.placement``): ``default``
    leaves it to Ray's scheduler, ``spread`` asks for one engine per node where possible."""
    options = {"default": {}, "spread": {"scheduling_strategy": "SPREAD"}}
    if placement not in options:
        raise ValueError(f"unknown rollout.placement {placement!r}; choose one of {sorted(options)}")
    return options[placement]


def engine_threads_default(num_engines: int) -> int:
    """Threads per rollout engine when the config leaves it open: the engines generate while
    every other role waits, so they may share all of a node's cores."""
    return max(1, (os.cpu_count() or 1) // num_engines)


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class PPOLagDriver:
    """Builds the role groups from a ``ppo_lag`` config and runs steps."""

    def __init__(self, cfg, fault_log: FaultLog | None = None) -> None:
        from rayrlhf.data.templates import encode_prompt
        from rayrlhf.models import load_tokenizer, resolve_model_path
        from rayrlhf.models.zoo import logprob_gap_tolerance
        from rayrlhf.rewards import RULE_PREFIX
        from rayrlhf.stages.common import load_dataset_from_config

        self.cfg = cfg
        self.seed = cfg.run.seed
        check_cluster_capacity(cfg)
        self.policy_path = resolve_model_path(cfg.policy.name_or_path)
        self.tokenizer = load_tokenizer(self.policy_path)
        rows = load_dataset_from_config(cfg.prompts).rows
        self.prompts = [row.prompt for row in rows]
        max_tokens = cfg.rollout.max_prompt_tokens
        self.prompt_ids = [encode_prompt(self.tokenizer, p, cfg.template.name)[-max_tokens:] for p in self.prompts]
        self.lagrange = lagrange_from_config(cfg.lagrange)
        self.step_index = 0
        self.fault_log = fault_log or FaultLog(None)
        self.consecutive_skips = 0

        res, ppo = cfg.resources, cfg.ppo
        threads = res.threads_per_worker
        rows_per_rank = cfg.rollout.prompts_per_step // max(res.policy_ranks, res.critic_ranks)
        actor_optim = OptimConfig(lr=ppo.actor_lr, weight_decay=ppo.weight_decay, max_grad_norm=ppo.max_grad_norm,
                                  zero_stage=ppo.zero_stage, bf16=ppo.bf16,
                                  micro_batch_size=min(ppo.minibatch_size, rows_per_rank),
                                  gradient_checkpointing=ppo.gradient_checkpointing)
        critic_optim = OptimConfig(**{**asdict(actor_optim), "lr": ppo.critic_lr})
        gpus = 1 if res.use_gpu else 0
        backend = "nccl" if res.use_gpu else "gloo"

        def critic_init(explicit, source):
            if explicit:
                return resolve_model_path(explicit)
            return self.policy_path if source.startswith(RULE_PREFIX) else resolve_model_path(source)

        self.policy = ActorGroup(PolicyWorker, res.policy_ranks, self.policy_path, name="policy",
                                 num_cpus=res.cpus_per_worker, num_gpus=gpus, distributed=True,
                                 backend=backend, dtype=cfg.policy.dtype, optim=actor_optim,
                                 threads=threads, seed=self.seed)
        self.reward_critic = ActorGroup(CriticWorker, res.critic_ranks, "reward",
                                        critic_init(cfg.reward_critic_init, cfg.reward), name="reward-critic",
                                        num_cpus=res.cpus_per_worker, num_gpus=gpus, distributed=True,
                                        backend=backend, optim=critic_optim, dtype=cfg.policy.dtype,
                                        threads=threads, seed=self.seed)
        self.cost_critic = ActorGroup(CriticWorker, res.critic_ranks, "cost",
                                      critic_init(cfg.cost_critic_init, cfg.cost), name="cost-critic",
                                      num_cpus=res.cpus_per_worker, num_gpus=gpus, distributed=True,
                                      backend=backend, optim=critic_optim, dtype=cfg.policy.dtype,
                                      threads=threads, seed=self.seed)
        frozen = {"num_cpus": res.cpus_per_frozen_worker, "num_gpus": gpus * 0.25}
        if res.colocate_frozen:
            self.frozen = ActorGroup(FrozenWorker, 1, self.policy_path, cfg.reward, cfg.cost, name="frozen",
                                     **frozen, dtype=cfg.policy.dtype, threads=threads, seed=self.seed)
            frozen_groups = (self.frozen,)
        else:
            self.reference = ActorGroup(PolicyWorker, 1, self.policy_path, name="reference", **frozen,
                                        dtype=cfg.policy.dtype, threads=threads, seed=self.seed)
            self.reward_model = ActorGroup(ScorerWorker, 1, cfg.reward, name="reward-model", **frozen,
                                           threads=threads)
            self.cost_model = ActorGroup(ScorerWorker, 1, cfg.cost, name="cost-model", **frozen, threads=threads)
            frozen_groups = (self.reference, self.reward_model, self.cost_model)
        engine_kwargs: dict[str, Any] = {}
        if cfg.rollout.engine == "vllm":
            engine_kwargs = {"max_model_len": cfg.rollout.max_model_len, "seed": self.seed,
                             "dtype": cfg.policy.dtype,
                             "env": {"VLLM_CPU_KVCACHE_SPACE": str(int(cfg.rollout.kv_cache_gib))}}
        placement = rollout_placement_options(cfg.rollout.placement)
        engine_threads = cfg.rollout.threads_per_engine or engine_threads_default(cfg.rollout.num_engines)
        self.rollout_names = [f"rollout-{i}" for i in range(cfg.rollout.num_engines)]
        self.rollout_workers = [
            RolloutWorker.options(num_cpus=cfg.rollout.cpus_per_engine, num_gpus=gpus, name=name,
                                  **placement).remote(cfg.rollout.engine, self.policy_path, engine_kwargs,
                                                      engine_threads)
            for name in self.rollout_names
        ]
        self.groups = (self.policy, self.reward_critic, self.cost_critic, *frozen_groups)
        started = get_fail_fast([w.ready.remote() for w in self.rollout_workers]
                                + self.policy.call(PolicyWorker.init_engine)
                                + self.reward_critic.call(CriticWorker.init_engine)
                                + self.cost_critic.call(CriticWorker.init_engine))
        # The precision each side really computes in (bf16 "auto" depends on the machine), and
        # the engine-vs-policy log-prob gap that rounding alone explains at that precision.
        self.policy_dtype = get_fail_fast([self.policy.call_rank0(PolicyWorker.info)])[0]["compute_dtype"]
        self.engine_dtype = started[0]["dtype"]
        self.logprob_gap_tolerance = logprob_gap_tolerance(self.policy_dtype, self.engine_dtype)

    def actor_names(self) -> dict[str, str]:
        """Actor id (hex) -> actor name, to say which worker died."""
        names = {}
        for group in self.groups:
            for actor, name in zip(group.actors, group.actor_names):
                names[actor._actor_id.hex()] = name
        for worker, name in zip(self.rollout_workers, self.rollout_names):
            names[worker._actor_id.hex()] = name
        return names

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        cfg, ppo = self.cfg, self.cfg.ppo
        timer = PhaseTimer()
        step_start = time.perf_counter()
        index = prompt_order(len(self.prompts), cfg.rollout.prompts_per_step, self.step_index, self.seed)
        prompts = [self.prompts[i] for i in index]

        with timer.phase("generate"):
            spec = SamplingSpec(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                top_p=cfg.rollout.top_p, seed=self.seed * 1_000_003 + self.step_index)
            completions = generate_across(self.rollout_workers, [self.prompt_ids[i] for i in index], spec)
            batch = build_rollout_batch([c.prompt_ids for c in completions], [c.response_ids for c in completions],
                                        [c.finished for c in completions], self.tokenizer.pad_token_id,
                                        [c.response_logprobs for c in completions])
            responses = [c.text for c in completions]
            response_ids = [c.response_ids for c in completions]

        with timer.phase("score"):
            futures = {
                "policy": self.policy.call_split(PolicyWorker.logprobs, batch),
                "reward_values": self.reward_critic.call_split(CriticWorker.values, batch),
                "cost_values": self.cost_critic.call_split(CriticWorker.values, batch),
                **self.frozen_calls(batch, prompts, responses, response_ids),
            }
            got = dict(zip(futures, get_fail_fast_groups(list(futures.values()))))
            batch.old_logprobs = torch.cat([lp for lp, _ in got["policy"]])
            entropy = torch.cat([ent for _, ent in got["policy"]])
            batch.ref_logprobs = torch.cat([lp for lp, _ in got["reference"]])
            batch.reward_values = torch.cat(got["reward_values"])
            batch.cost_values = torch.cat(got["cost_values"])
            batch.rewards, batch.costs = got["rewards"][0].float(), got["costs"][0].float()
            token_mask = batch.response_mask
            findings = describe_nonfinite({
                "rewards": (batch.rewards, None, f"reward model ({cfg.reward})"),
                "costs": (batch.costs, None, f"cost model ({cfg.cost})"),
                "policy log-probs": (batch.old_logprobs, token_mask, "policy"),
                "reference log-probs": (batch.ref_logprobs, token_mask, "reference policy"),
                "reward values": (batch.reward_values, token_mask, "reward critic"),
                "cost values": (batch.cost_values, token_mask, "cost critic"),
            })
        if findings:
            return self.nonfinite_step(findings, timer, step_start)

        with timer.phase("advantages"):
            mask = batch.response_mask.float()
            token_rewards, token_costs = shape_rewards_and_costs(
                batch.rewards, batch.costs, batch.old_logprobs, batch.ref_logprobs, mask,
                ppo.kl_coef, ppo.clip_range_score)
            adv_r, batch.reward_returns = gae_advantages(token_rewards, batch.reward_values, mask,
                                                         ppo.gamma, ppo.gae_lambda)
            adv_c, batch.cost_returns = gae_advantages(token_costs, batch.cost_values, mask,
                                                       ppo.gamma, ppo.gae_lambda)
            lam = self.lagrange.value
            batch.advantages = combined_advantage(adv_r, adv_c, lam) * mask
            findings = describe_nonfinite({
                "advantages": (batch.advantages, token_mask, "GAE (rewards, costs, KL shaping, values)"),
                "reward returns": (batch.reward_returns, token_mask, "GAE of the reward stream"),
                "cost returns": (batch.cost_returns, token_mask, "GAE of the cost stream"),
            })
        if findings:
            return self.nonfinite_step(findings, timer, step_start)

        with timer.phase("train"):
            train_kwargs = {"epochs": ppo.epochs, "minibatch_size": ppo.minibatch_size,
                            "seed": self.seed * 7919 + self.step_index}
            actor = self.policy.call_split(PolicyWorker.train, batch, clip_ratio=ppo.clip_ratio,
                                           entropy_coef=ppo.entropy_coef, **train_kwargs)
            reward_critic = self.reward_critic.call_split(CriticWorker.train, batch,
                                                          clip_range_value=ppo.clip_range_value, **train_kwargs)
            cost_critic = self.cost_critic.call_split(CriticWorker.train, batch,
                                                      clip_range_value=ppo.clip_range_value, **train_kwargs)
            actor_all, reward_all, cost_all = get_fail_fast_groups([actor, reward_critic, cost_critic])
            actor_stats, reward_stats, cost_stats = actor_all[0], reward_all[0], cost_all[0]
            # Mini-batches whose loss was NaN/Inf were not applied (all ranks skipped them).
            skipped = {role: sum(s["nonfinite_minibatches"] for s in stats)
                       for role, stats in (("policy", actor_all), ("reward critic", reward_all),
                                           ("cost critic", cost_all))}
            if any(skipped.values()):
                message = f"step {self.step_index + 1}: NaN/Inf loss, mini-batches not applied: " + ", ".join(
                    f"{role} {count:.0f}" for role, count in skipped.items() if count)
                self.fault_log.record("nonfinite_loss", step=self.step_index + 1, skipped_minibatches=skipped,
                                      message=message)
                if cfg.faults.nonfinite == "stop":
                    raise NonFiniteError(message)
                log.warning(message)

        with timer.phase("lagrange"):
            episode_cost = float(batch.costs.mean())
            new_lambda = self.lagrange.update(episode_cost)

        with timer.phase("sync"):
            self.sync_weights()

        self.step_index += 1
        self.consecutive_skips = 0
        step_seconds = time.perf_counter() - step_start
        tokens = float(mask.sum())
        kl = masked_mean(batch.old_logprobs - batch.ref_logprobs, mask)
        metrics = {
            "step": self.step_index,
            "rollout/response_length": float(mask.sum(-1).mean()),
            "rollout/finished": float(batch.finished.float().mean()),
            # Engine vs trained policy on the sampled tokens: small when weight sync works.
            "rollout/logprob_gap": float(masked_mean((batch.rollout_logprobs - batch.old_logprobs).abs(), mask)),
            "rollout/logprob_gap_tolerance": self.logprob_gap_tolerance,
            # Engine vs the initial weights (the reference): grows once the policy has moved.
            "rollout/ref_logprob_gap": float(masked_mean((batch.rollout_logprobs - batch.ref_logprobs).abs(), mask)),
            "reward/mean": float(batch.rewards.mean()),
            "cost/mean": episode_cost,
            "cost/threshold": float(self.cfg.lagrange.threshold),
            "cost/violation_rate": float((batch.costs > 0).float().mean()),
            "lagrange/lambda": float(new_lambda),
            "lagrange/lambda_used": float(lam),
            "lagrange/at_cap_steps": float(self.lagrange.at_cap_steps),
            "actor/kl_to_ref": float(kl),
            "actor/entropy": float(entropy.mean()),
            **{f"actor/{k}": v for k, v in actor_stats.items()},
            "critic/reward_loss": reward_stats["loss"],
            "critic/cost_loss": cost_stats["loss"],
            "faults/nonfinite_minibatches": float(sum(skipped.values())),
            **{f"timing/{k}_s": v for k, v in timer.seconds.items()},
            "timing/step_s": step_seconds,
            "timing/overhead_s": step_seconds - sum(timer.seconds.values()),
            "timing/generate_tokens_per_s": tokens / max(timer.seconds["generate"], 1e-9),
        }
        return metrics

    def frozen_calls(self, batch, prompts, responses, response_ids) -> dict[str, list[ray.ObjectRef]]:
        """Reference log-probs, rewards and costs: from one colocated actor or three."""
        texts = (prompts, responses, response_ids)
        if self.cfg.resources.colocate_frozen:
            return {"reference": self.frozen.call(FrozenWorker.reference_logprobs, batch),
                    "rewards": self.frozen.call(FrozenWorker.reward_scores, *texts),
                    "costs": self.frozen.call(FrozenWorker.cost_scores, *texts)}
        return {"reference": self.reference.call(PolicyWorker.logprobs, batch),
                "rewards": self.reward_model.call(ScorerWorker.score, *texts),
                "costs": self.cost_model.call(ScorerWorker.score, *texts)}

    def nonfinite_step(self, findings: list[dict], timer: PhaseTimer, step_start: float) -> dict[str, float]:
        """NaN/Inf before any update: stop, or skip the step (no training, λ unchanged,
        the prompts count as used so that the run moves on)."""
        message = findings_message(self.step_index + 1, findings)
        policy = self.cfg.faults.nonfinite
        self.fault_log.record("nonfinite", step=self.step_index + 1, findings=findings, action=policy,
                              message=message)
        if policy == "stop":
            raise NonFiniteError(f"{message} (faults.nonfinite=stop)")
        self.consecutive_skips += 1
        limit = self.cfg.faults.max_consecutive_skips
        if self.consecutive_skips > limit:
            raise NonFiniteError(f"{message}: {self.consecutive_skips} steps in a row skipped "
                                 f"(faults.max_consecutive_skips={limit}); the source is broken, not noisy")
        log.warning("%s: step skipped (faults.nonfinite=skip)", message)
        self.step_index += 1
        step_seconds = time.perf_counter() - step_start
        return {"step": self.step_index, "faults/skipped_nonfinite": 1.0,
                "lagrange/lambda": float(self.lagrange.value),
                **{f"timing/{k}_s": v for k, v in timer.seconds.items()}, "timing/step_s": step_seconds}

    def sync_weights(self) -> None:
        """Policy rank 0's weights -> object store -> every rollout engine."""
        weights = self.policy.call_rank0(PolicyWorker.weights)
        get_fail_fast([w.update_weights.remote(weights) for w in self.rollout_workers])

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, root: Path) -> Path:
        """Everything a resumed run needs, published atomically (rayrlhf.trainers.checkpoint_dir)."""
        def write(folder: Path) -> None:
            get_fail_fast(self.policy.call(PolicyWorker.save_checkpoint, str(folder))
                          + self.reward_critic.call(CriticWorker.save_checkpoint, str(folder))
                          + self.cost_critic.call(CriticWorker.save_checkpoint, str(folder)))
            state = {"step": self.step_index, "lagrange": self.lagrange.state_dict(),
                     "python_random": repr(random.getstate()), "torch_seed": torch.initial_seed()}
            (folder / DRIVER_STATE).write_text(json.dumps(state, indent=2))

        return checkpoint_dir.publish_checkpoint(root, self.step_index, write, keep_last=self.cfg.keep_last_checkpoints)

    def load_checkpoint(self, path: Path) -> None:
        get_fail_fast(self.policy.call(PolicyWorker.load_checkpoint, str(path))
                      + self.reward_critic.call(CriticWorker.load_checkpoint, str(path))
                      + self.cost_critic.call(CriticWorker.load_checkpoint, str(path)))
        state = json.loads((path / DRIVER_STATE).read_text())
        self.step_index = state["step"]
        self.lagrange.load_state_dict(state["lagrange"])
        self.sync_weights()  # the engines still hold the initial weights

    def save_policy(self, out_dir: Path) -> Path:
        get_fail_fast(self.policy.call(PolicyWorker.save_pretrained, str(out_dir), self.policy_path))
        return out_dir

    def shutdown(self) -> None:
        """Kill every worker (dead or hung in a collective) and wait until their names are
        free, so that a rebuilt driver can register the same names."""
        names = [name for group in self.groups for name in group.actor_names]
        names += self.rollout_names
        for group in self.groups:
            group.kill()
        for worker in self.rollout_workers:
            ray.kill(worker)
        self.rollout_workers = []
        wait_until_names_free(names)


def get_fail_fast_groups(groups: list[list[ray.ObjectRef]]) -> list[list[Any]]:
    """``get_fail_fast`` over several groups' futures at once, results per group."""
    flat = get_fail_fast([ref for refs in groups for ref in refs])
    out, start = [], 0
    for refs in groups:
        out.append(flat[start:start + len(refs)])
        start += len(refs)
    return out


def wait_until_names_free(names: list[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.2)


def required_cpus(cfg) -> float:
    """Logical CPUs all of a run's actors reserve together."""
    res = cfg.resources
    frozen_actors = 1 if res.colocate_frozen else 3
    return (res.cpus_per_worker * (res.policy_ranks + 2 * res.critic_ranks)
            + frozen_actors * res.cpus_per_frozen_worker + cfg.rollout.num_engines * cfg.rollout.cpus_per_engine)


def check_cluster_capacity(cfg) -> None:
    """Actors that do not fit would wait forever. A local cluster cannot grow: refuse at once.
    A remote one may autoscale: warn and let Ray wait for new nodes."""
    need, have = required_cpus(cfg), ray.cluster_resources().get("CPU", 0.0)
    if have >= need:
        return
    message = (f"the Ray cluster has {have:g} CPUs, but this run's actors reserve {need:g} "
               f"(resources.cpus_per_worker x (policy_ranks + 2 critic_ranks), cpus_per_frozen_worker, "
               f"rollout.num_engines x rollout.cpus_per_engine)")
    if cfg.cluster.address is None:
        raise RuntimeError(message + ": lower those, or start Ray with more logical CPUs")
    log.warning("%s; the actors wait until the autoscaler adds nodes", message)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a PPO-Lag run folder."""
    return checkpoint_dir.latest_checkpoint(Path(run_dir) / "checkpoints")


class MetricsLog:
    """metrics.jsonl (always), TensorBoard (optional) and a console progress bar."""

    def __init__(self, out: Path, total: int, initial: int, tensorboard: bool) -> None:
        from tqdm.auto import tqdm

        self.path = out / "metrics.jsonl"
        self.file = open(self.path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        self.bar = tqdm(total=total, initial=initial, desc="ppo-lag")

    def log(self, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(key, value, metrics["step"])
        self.bar.update(1)
        self.bar.set_postfix({name: f"{metrics[key]:.3f}" for name, key in
                              (("reward", "reward/mean"), ("cost", "cost/mean"), ("λ", "lagrange/lambda"))
                              if key in metrics})

    def rewind(self, step: int) -> list[dict]:
        """Forget the rows after ``step`` (a restart recomputes them from a checkpoint); the
        dropped rows are returned so the caller can keep them in the fault log."""
        self.file.close()
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept, dropped = [r for r in rows if r["step"] <= step], [r for r in rows if r["step"] > step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.path)
        self.file = open(self.path, "a", encoding="utf-8")
        self.bar.n = step
        self.bar.refresh()
        return dropped

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        self.bar.close()


def config_changes(saved: dict, current: dict, free_keys: tuple[str, ...] = RESUME_FREE_KEYS) -> list[str]:
    """``key: saved -> current`` for every leaf that differs, ignoring ``free_keys`` (and
    everything below them)."""
    def leaves(node, prefix=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], node

    def free(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in free_keys)

    old, new = dict(leaves(saved)), dict(leaves(current))
    return [f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
            for key in sorted(set(old) | set(new)) if not free(key) and old.get(key) != new.get(key)]


def check_resume_config(cfg, resume_dir: Path) -> None:
    """A resumed run must compute what the interrupted one would have: same settings, same
    data and judges (``rayrlhf.trainers.fingerprints``), and the interrupted run must be over."""
    from omegaconf import OmegaConf

    from rayrlhf.run_folder import run_in_progress

    if run_in_progress(resume_dir):
        raise RuntimeError(f"resume_from={resume_dir}: that run is still going (another process holds its "
                           "folder's lock); stop it first")
    snapshot = resume_dir / CONFIG_SNAPSHOT
    if cfg.resume_allow_changes:
        return
    if not snapshot.is_file():
        raise ValueError(f"resume_from={resume_dir}: no {CONFIG_SNAPSHOT}, so this run cannot be checked against "
                         "the one it resumes; pass resume_allow_changes=true to resume anyway")
    saved = OmegaConf.to_container(OmegaConf.load(snapshot), resolve=False)
    changes = config_changes(saved, OmegaConf.to_container(cfg, resolve=True))
    changes += fingerprint_changes(resume_dir, ppo_lag_inputs(cfg))
    if changes:
        raise ValueError(
            f"resume_from={resume_dir}: this run's config differs from the one it resumes "
            f"({snapshot}):\n  " + "\n  ".join(changes)
            + f"\nRun the command in {resume_dir / RESUME_COMMAND} to continue the same run, or pass "
              "resume_allow_changes=true to change these settings on purpose.")


def write_resume_command(out: Path) -> None:
    """``<run>/resume_command.txt``: the one command that continues this run after a crash."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().job.name != "ppo-lag":
        return  # composed in code (tests, the pipeline): no command line to repeat
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("resume_from=", "hydra."))]
    words = ["rayrlhf", "ppo-lag", *overrides, f"resume_from={out}"]
    (out / RESUME_COMMAND).write_text(" ".join(shlex.quote(w) for w in words) + "\n")


def resume_hint(out: Path) -> str:
    command = out / RESUME_COMMAND
    return f" Continue with: {command.read_text().strip()}" if command.is_file() else ""


def run(cfg) -> list[dict[str, float]]:
    """Entry of ``rayrlhf ppo-lag``: build the workers, run ``cfg.steps`` steps, save.

    A dead worker actor costs a restart: every worker is rebuilt and the run continues from
    its newest checkpoint (metrics after it are recomputed), up to ``faults.max_restarts``."""
    from omegaconf import OmegaConf

    from rayrlhf.cluster import init_ray
    from rayrlhf.stages.common import output_dir

    out = output_dir(cfg)
    resume_point = None
    if cfg.resume_from:
        resume_point = latest_checkpoint(cfg.resume_from)
        if resume_point is None:
            raise FileNotFoundError(f"resume_from={cfg.resume_from}: no complete checkpoint in "
                                    f"{Path(cfg.resume_from) / 'checkpoints'}")
        check_resume_config(cfg, Path(cfg.resume_from))
        checkpoint_dir.remove_stale_saves(Path(cfg.resume_from) / "checkpoints")  # saves the crash cut short
    (out / CONFIG_SNAPSHOT).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_fingerprints(out, ppo_lag_inputs(cfg))
    write_resume_command(out)
    init_ray(cfg.cluster, required_cpus=required_cpus(cfg))
    fault_log = FaultLog(out / "faults.jsonl")
    metrics_log = MetricsLog(out, cfg.steps, 0, cfg.tensorboard)
    history: list[dict[str, float]] = []
    restarts = 0
    try:
        while True:
            driver = None
            try:
                driver = PPOLagDriver(cfg, fault_log)
                if resume_point is not None:
                    driver.load_checkpoint(resume_point)
                    log.info("continuing from %s at step %d", resume_point, driver.step_index)
                history = [m for m in history if m["step"] <= driver.step_index]
                if restarts:
                    dropped = metrics_log.rewind(driver.step_index)
                    fault_log.record("recomputed_steps", steps=[m["step"] for m in dropped], rows=dropped)
                while driver.step_index < cfg.steps:
                    metrics = driver.step()
                    note_unreachable_threshold(metrics, cfg.lagrange, fault_log)
                    history.append(metrics)
                    metrics_log.log(metrics)
                    if cfg.save_every and driver.step_index % cfg.save_every == 0:
                        driver.save_checkpoint(out / "checkpoints")
                driver.save_checkpoint(out / "checkpoints")
                driver.save_policy(out / "policy")
                return history
            except actor_failure_types() as exc:
                dead = driver.actor_names().get(getattr(exc, "actor_id", None) or "", "a worker") if driver else \
                    "a worker (while starting)"
                restarts += 1
                resume_point = latest_checkpoint(out) or resume_point
                step = driver.step_index + 1 if driver else None  # the step in progress
                fault_log.record("worker_died", actor=dead, step=step, restart=restarts,
                                 resume_from=str(resume_point) if resume_point else "the start",
                                 error=f"{type(exc).__name__}: {str(exc)[:2000]}")
                if restarts > cfg.faults.max_restarts:
                    raise WorkerFailedError(
                        f"{dead} died during step {step} ({type(exc).__name__}); gave up after "
                        f"faults.max_restarts={cfg.faults.max_restarts} restarts. Checkpoint: {resume_point}. "
                        f"Details in {fault_log.path}.{resume_hint(out)}") from exc
                log.error("%s died during step %s (%s); restart %d/%d from %s", dead, step, type(exc).__name__,
                          restarts, cfg.faults.max_restarts, resume_point or "the start")
            finally:
                if driver is not None:
                    driver.shutdown()
    finally:
        metrics_log.close()
