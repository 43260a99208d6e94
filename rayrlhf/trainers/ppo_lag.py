"""PPO-Lagrangian on Ray: the single controller.

``PPOLagDriver.step`` is the algorithm, phase by phase (Safe RLHF, Dai et al. 2023):

1. generate   rollout engines sample responses for a batch of prompts
2. score      old and reference log-probs, reward and cost values, reward and cost scores
3. advantages KL-shaped token rewards/costs, GAE for both streams, combined advantage
              (``rayrlhf.algorithms.ppo_lag_advantages``)
4. train      critics regress on their returns; the policy takes PPO steps on
              (A_r - λ A_c) / (1 + λ)
5. lagrange   λ moves with the episode cost against the threshold
6. sync       the rollout engines receive the new policy weights

The math lives in ``rayrlhf.algorithms``, the actors in ``rayrlhf.workers`` (built by
``ppo_lag_roles.build_roles``); this file composes them. Checkpoints, the metrics log and
resuming live beside it (``checkpoint_dir``, ``metrics_log``, ``resume``). Each phase that
waits on workers has a deadline (``rayrlhf.faults.PhaseDeadlines``); what ``run`` does when a
worker dies, hangs or fails is in ``rayrlhf.faults.FAILURES``.
"""

from __future__ import annotations

import json
import math
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from rayrlhf.algorithms import (
    LAGRANGE_CONTROLLERS, ConstantLagrange, LagrangeController, PerCategoryLagrange, PPOLagAdvantages, constraint_costs,
    masked_mean, ppo_lag_advantages,
)
from rayrlhf.cluster import required_cpus
from rayrlhf.config import to_object
from rayrlhf.faults import FAILURES, FaultLog, NonFiniteError, PhaseDeadlines, PhaseTimeoutError, WorkerFailedError, \
    classify_failure, describe_nonfinite, failed_actors, findings_message, name_actors, note_unreachable_threshold, \
    phase_of, worker_error
from rayrlhf.rollout import SamplingSpec
from rayrlhf.trainers import checkpoint_dir
from rayrlhf.trainers.fingerprints import ppo_lag_inputs, write_fingerprints
from rayrlhf.trainers.metrics_log import MetricsLog, tracking_settings
from rayrlhf.trainers.old_logprobs import OldLogprobSource
from rayrlhf.trainers.ppo_lag_roles import Roles, build_roles
from rayrlhf.trainers.resume import CONFIG_SNAPSHOT, check_resume_config, resume_hint, write_resume_command
from rayrlhf.types import PTXBatch, Rollout, RolloutBatch, Scores, TrainStats, build_rollout_batch
from rayrlhf.workers.critic import CriticWorker
from rayrlhf.workers.group import ActorGroup, get_collective, get_fail_fast, get_fail_fast_groups
from rayrlhf.workers.policy import PolicyWorker
from rayrlhf.workers.rollout_worker import collect_generation, start_generation

log = logging.getLogger(__name__)
DRIVER_STATE = "driver_state.json"


def lagrange_from_config(node) -> LagrangeController | PerCategoryLagrange:
    """The λ controller a ``lagrange`` group node describes: its ``_target_`` class built with
    the node's other keys as arguments (conf/lagrange/, rayrlhf.config.schema). With
    ``per_category``, one such controller per constraint, each with its own threshold."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    arguments = OmegaConf.to_container(OmegaConf.structured(node), resolve=True)
    per_category = arguments.pop("per_category", None)

    def controller(**changes) -> LagrangeController:
        built = instantiate({**arguments, **changes})
        if not isinstance(built, LagrangeController):
            raise TypeError(f"lagrange._target_={arguments['_target_']!r} is not a Lagrange controller; choose "
                            f"lagrange={' | '.join(LAGRANGE_CONTROLLERS)}")
        return built

    if not (per_category or {}).get("thresholds"):
        return controller()
    return PerCategoryLagrange({name: controller(threshold=threshold)
                                for name, threshold in per_category["thresholds"].items()})


def constraint_groups(node) -> dict[str, list[str]] | None:
    """``lagrange.per_category``'s constraints: name -> the cost source's categories it covers
    (a name without a group is one category); None without per-category constraints."""
    per_category = getattr(node, "per_category", None)
    if per_category is None or not per_category.thresholds:
        return None
    groups = per_category.groups or {}
    return {name: list(groups.get(name, [name])) for name in per_category.thresholds}


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


def ignores_cost(controller: LagrangeController | PerCategoryLagrange) -> bool:
    """Whether λ stays 0 for the whole run (plain PPO): then the cost never shapes an update."""
    return isinstance(controller, ConstantLagrange) and controller.value == 0.0


def ptx_rows(cfg, tokenizer) -> PTXBatch | None:
    """The PTX data encoded as the SFT stage encodes it (loss on the answer tokens), or None
    when PTX is off (no ``ptx`` dataset or ``ppo.ptx_coef`` 0)."""
    if cfg.ptx is None or not cfg.ppo.ptx_coef:
        return None
    from rayrlhf.data import load_dataset_from_config
    from rayrlhf.trainers.sft_trainer import encode_sft

    rows = load_dataset_from_config(cfg.ptx).rows
    encoded = encode_sft(tokenizer, [r.prompt for r in rows], [r.output for r in rows], cfg.template.name,
                         cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens)
    return PTXBatch(encoded.input_ids, encoded.attention_mask, encoded.response_mask)


class PhaseTimer:
    """Seconds of each named phase of one step, and of the whole step since the timer started;
    each phase runs under its deadline (``deadlines.enforce``)."""

    def __init__(self, deadlines: PhaseDeadlines) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.deadlines = deadlines

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        with self.deadlines.enforce(name):
            yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """``timing/<phase>_s``, the whole step, and the overhead (step - sum of phases)."""
        step_s = time.perf_counter() - self.started
        return {**{f"timing/{name}_s": s for name, s in self.seconds.items()}, "timing/step_s": step_s,
                "timing/overhead_s": step_s - sum(self.seconds.values())}


class PPOLagDriver:
    """Builds the roles from a ``ppo_lag`` config and runs steps."""

    def __init__(self, cfg, fault_log: FaultLog | None = None, deadlines: PhaseDeadlines | None = None) -> None:
        from rayrlhf.data import encode_prompts, load_dataset_from_config
        from rayrlhf.data.splits import benign_share_indices
        from rayrlhf.models import load_tokenizer, resolve_model_path
        from rayrlhf.models.zoo import logprob_gap_tolerance
        from rayrlhf.rewards import source_categories

        self.cfg = cfg = to_object(cfg)
        self.seed = cfg.run.seed
        self.policy_path = resolve_model_path(cfg.policy.name_or_path)
        self.tokenizer = load_tokenizer(self.policy_path)
        rows = load_dataset_from_config(cfg.prompts).rows
        self.prompts = [row.prompt for row in rows]
        self.prompt_draws = benign_share_indices(rows, cfg.benign_prompt_share)
        self.prompt_benign = [not getattr(row, "category", None) for row in rows]
        self.prompt_ids = encode_prompts(self.tokenizer, self.prompts, cfg.template.name, cfg.rollout.max_prompt_tokens)
        self.lagrange = lagrange_from_config(cfg.lagrange)
        # Per-category constraints: the cost source's categories and each constraint's share of them.
        self.constraint_groups = constraint_groups(cfg.lagrange)
        self.cost_categories = source_categories(cfg.cost) if self.constraint_groups else None
        self.ptx = ptx_rows(cfg, self.tokenizer)
        self.step_index = 0
        # rollout.async_generation: (step, prompt indices, generation refs) started during training.
        self.pending_rollout: tuple[int, list[int], list] | None = None
        self.last_sync: dict[str, float] = {}  # the latest weight sync's rollout/sync_* metrics
        self.fault_log = fault_log or FaultLog(None)
        # How long each phase may wait on the workers (measured with these workers).
        self.deadlines = deadlines or PhaseDeadlines.from_config(cfg.faults)
        # Steps in a row that lost data to NaN/Inf: skipped, or with mini-batches not applied.
        self.consecutive_skips = 0
        # λ fixed at 0 is plain PPO: the cost never reaches the policy, so no cost critic trains.
        self.roles: Roles = build_roles(cfg, self.policy_path, cost_critic=not ignores_cost(self.lagrange))
        # The engine-vs-policy log-prob gap that rounding alone explains at their precisions.
        self.logprob_gap_tolerance = logprob_gap_tolerance(self.roles.policy_dtype, self.roles.engine_dtype)
        self.old_logprobs = OldLogprobSource.choose(
            cfg.ppo.logprobs_source, self.roles.policy_dtype, self.roles.engine_dtype,
            tolerance=self.logprob_gap_tolerance, check_every=cfg.ppo.logprob_check_every,
            check_rows=cfg.ppo.logprob_check_rows)

    @property
    def policy(self) -> ActorGroup:
        """The policy's ranks (where its weights can be read)."""
        return self.roles.policy

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        """One PPO-Lag step. A NaN/Inf among the update's inputs stops or skips it before
        anything changes (``faults.nonfinite``); the metrics are ``step_metrics``."""
        timer, lambda_used = PhaseTimer(self.deadlines), self.lagrange.value
        with timer.phase("generate"):
            rollout = self.take_rollout()
        index = rollout.index
        with timer.phase("score"):
            scores = self.score(rollout)
        with timer.phase("advantages"):
            advantages = self.advantages(rollout.batch, scores, lambda_used)
        findings = self.nonfinite_findings(rollout.batch, scores, advantages)
        if findings:
            return self.skip_or_stop(findings, timer)
        batch = replace(rollout.batch, **vars(scores), **vars(advantages))
        self.start_next_rollout()
        with timer.phase("train"):
            stats = self.train_roles(batch)
        with timer.phase("lagrange"):
            lambda_new = self.update_lambda(batch.costs)
        with timer.phase("sync"):
            self.sync()
        self.step_index += 1
        metrics = step_metrics(self.step_index, batch, stats, lambda_used=lambda_used, lambda_new=lambda_new,
                               threshold=getattr(self.lagrange, "thresholds", self.lagrange.threshold),
                               constraints=self.constraint_groups and list(self.constraint_groups),
                               at_cap_steps=self.lagrange.at_cap_steps,
                               old_logprobs=self.old_logprobs.metrics(self.step_index - 1), timer=timer,
                               sync=self.last_sync)
        # Share of this step's prompts without a harm category (benign_prompt_share raises it).
        metrics["rollout/benign_share"] = sum(self.prompt_benign[i] for i in index) / len(index)
        metrics["rollout/policy_lag"] = float(rollout.policy_lag)
        return metrics

    def step_prompts(self, step: int) -> list[int]:
        """Indices of step ``step``'s prompts (benign ones drawn up to benign_prompt_share)."""
        order = prompt_order(len(self.prompt_draws), self.cfg.rollout.prompts_per_step, step, self.seed)
        return [self.prompt_draws[i] for i in order]

    def sampling_spec(self, step: int | None = None) -> SamplingSpec:
        """How step ``step`` (default: this one) samples: the policy's own distribution, seeded
        by the step."""
        rollout, step = self.cfg.rollout, self.step_index if step is None else step
        return SamplingSpec(max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature,
                            top_p=rollout.top_p, seed=self.seed * 1_000_003 + step)

    # ------------------------------------------------------------------ rollouts
    def take_rollout(self) -> Rollout:
        """This step's rollout: the one the engines generated during the previous step's
        training (rollout.async_generation, one update behind), else generated now."""
        pending, self.pending_rollout = self.pending_rollout, None
        if pending is not None and pending[0] == self.step_index:
            return replace(self.finish_rollout(pending[1], pending[2]), policy_lag=1)
        index = self.step_prompts(self.step_index)
        return self.generate(index, self.sampling_spec())

    def start_next_rollout(self) -> None:
        """rollout.async_generation: start the next step's generation now, with the weights
        from before this step's update, to run while the roles train. Not before a step whose
        engine log-probs are checked: that one is generated on-policy, so the check still
        guards the weight sync."""
        following = self.step_index + 1
        if not self.cfg.rollout.async_generation or following >= self.cfg.steps:
            return
        if self.old_logprobs.rows_to_check(following, self.cfg.rollout.prompts_per_step):
            return
        index = self.step_prompts(following)
        self.pending_rollout = (following, index, self.start_rollout(index, self.sampling_spec(following)))

    def generate(self, index: list[int], spec: SamplingSpec) -> Rollout:
        """Responses to the prompts ``index`` from all rollout engines, packed into a batch."""
        return self.finish_rollout(index, self.start_rollout(index, spec))

    def start_rollout(self, index: list[int], spec: SamplingSpec) -> list:
        """Start every engine on its share of the prompts ``index``; the refs to finish."""
        return start_generation(self.roles.rollout_workers, [self.prompt_ids[i] for i in index], spec)

    def finish_rollout(self, index: list[int], refs: list) -> Rollout:
        """Wait for a generation's completions and pack them into a batch."""
        completions = collect_generation(refs)
        if self.roles.engines_sleep:  # the trainers sharing their GPUs get the memory until the sync
            get_fail_fast([w.sleep.remote() for w in self.roles.rollout_workers])
        batch = build_rollout_batch([c.prompt_ids for c in completions], [c.response_ids for c in completions],
                                    [c.finished for c in completions], self.tokenizer.pad_token_id,
                                    [c.response_logprobs for c in completions])
        return Rollout(prompts=[self.prompts[i] for i in index], responses=[c.text for c in completions],
                       response_ids=[c.response_ids for c in completions], batch=batch, index=index)

    def score(self, rollout: Rollout) -> Scores:
        """Every role's view of the rollout, all requested before any is awaited. The old
        log-probs are the engine's or a policy forward pass's (``OldLogprobSource``)."""
        roles, batch, source = self.roles, rollout.batch, self.old_logprobs
        source.step_used_engine = source.use_engine and batch.rollout_logprobs is not None
        check = source.rows_to_check(self.step_index, len(batch)) if source.step_used_engine else []
        policy_calls = [] if source.step_used_engine else roles.policy.call_split(PolicyWorker.logprobs, batch)
        check_calls = roles.policy_rank0(PolicyWorker.logprobs, batch.select(check)) if check else []
        policy, checked, reference, rewards, costs, *critics = get_fail_fast_groups([
            policy_calls, check_calls,
            *roles.frozen_calls(batch, rollout.prompts, rollout.responses, rollout.response_ids),
            *(critic.call_split(CriticWorker.values, batch) for critic in roles.critics),
        ])
        values = {stream: torch.cat([rank[stream] for rank in ranks]) for ranks in critics for stream in ranks[0]}
        if checked:
            rows = torch.tensor(check)
            source.record(self.step_index, batch.rollout_logprobs[rows], checked[0], batch.response_mask[rows])
            if not source.use_engine:  # the engine's failed the check: this step recomputes too
                source.step_used_engine = False
                policy = get_fail_fast(roles.policy.call_split(PolicyWorker.logprobs, batch))
        if source.step_used_engine:
            old_logprobs = batch.rollout_logprobs
        else:
            old_logprobs = torch.cat(policy)
            if batch.rollout_logprobs is not None:
                source.record(self.step_index, batch.rollout_logprobs, old_logprobs, batch.response_mask)
        reward_values, costs = values["reward"], costs[0].float()
        if self.constraint_groups:  # [B, C] category scores -> [B, K] constraint costs
            costs = constraint_costs(costs, self.cost_categories, self.constraint_groups)
        return Scores(old_logprobs=old_logprobs,
                      ref_logprobs=torch.cat(reference),
                      reward_values=reward_values,
                      cost_values=values.get("cost", torch.zeros_like(reward_values)),
                      rewards=rewards[0].float(), costs=costs)

    def advantages(self, batch: RolloutBatch, scores: Scores, lagrange_multiplier: float | list[float]) -> PPOLagAdvantages:
        ppo = self.cfg.ppo
        return ppo_lag_advantages(scores.rewards, scores.costs, scores.old_logprobs, scores.ref_logprobs,
                                  scores.reward_values, scores.cost_values, batch.response_mask,
                                  lagrange_multiplier=lagrange_multiplier, kl_coef=ppo.kl_coef,
                                  clip_range_score=ppo.clip_range_score, gamma=ppo.gamma, gae_lambda=ppo.gae_lambda)

    def train_roles(self, batch: RolloutBatch) -> TrainStats:
        """The critics and the policy train at once, each on its own data-parallel ranks."""
        ppo, roles = self.cfg.ppo, self.roles
        each = {"epochs": ppo.epochs, "minibatch_size": ppo.minibatch_size, "seed": self.seed * 7919 + self.step_index,
                "loss_aggregation": ppo.loss_aggregation}
        critic = {"clip_range_value": ppo.clip_range_value, **each}
        actor, *critics = get_fail_fast_groups([
            roles.policy.call_split(PolicyWorker.train, batch, clip_ratio=ppo.clip_ratio,
                                    entropy_coef=ppo.entropy_coef, ptx=self.ptx_for_step(), ptx_coef=ppo.ptx_coef,
                                    **each),
            *(group.call_split(CriticWorker.train, batch, **critic) for group in roles.critics),
        ])
        # Every head of a critic shares its mini-batch steps, so one stream's count is the critic's.
        skipped = {"policy": sum(rank.nonfinite_minibatches for rank in actor)}
        skipped |= {group.name: sum(next(iter(rank.values())).nonfinite_minibatches for rank in ranks)
                    for group, ranks in zip(roles.critics, critics)}
        self.report_skipped_minibatches(skipped)
        by_stream = {stream: stats for ranks in critics for stream, stats in ranks[0].items()}
        return TrainStats(actor=actor[0], reward_critic=by_stream["reward"], cost_critic=by_stream.get("cost"),
                          skipped_minibatches=skipped)

    def ptx_for_step(self) -> PTXBatch | None:
        """This step's PTX rows: a seeded pass over the PTX data, like the prompts'."""
        if self.ptx is None:
            return None
        index = prompt_order(len(self.ptx), self.cfg.ppo.ptx_rows_per_step, self.step_index, self.seed + 1)
        return self.ptx.rows(index)

    def update_lambda(self, costs: torch.Tensor) -> float | list[float]:
        """λ moves with the episode costs (cost-model scores) against the threshold; the
        controller keeps its own window of recent episodes (``lagrange.window``). Per
        category, each λ_k with its column of the [B, K] costs against d_k."""
        return self.lagrange.update(costs.tolist())

    def sync(self) -> None:
        """Policy rank 0's weights (under ZeRO-3 gathered from every rank), in the engines'
        dtype and in buckets, -> every engine (``rayrlhf.rollout.weight_sync``): through the
        object store, or broadcast over the weight-sync group (``rollout.sync_path``). Under
        LoRA only the merged adapted weights travel (``Roles.sync_changed_only``)."""
        if self.roles.engines_sleep:
            get_fail_fast([w.wake_up.remote() for w in self.roles.rollout_workers])
        dtype, bucket_mb = self.roles.engine_dtype, self.cfg.rollout.sync_bucket_mb
        changed_only, engines = self.roles.sync_changed_only, self.roles.rollout_workers
        if self.roles.sync_path == "collective":
            # Sender and receivers run at once; a member that dies fails the others within
            # rollout.sync_timeout_s (gloo/NCCL timeout), and the dead actor is the one blamed.
            sent = self.roles.policy_rank0(PolicyWorker.broadcast_weights, dtype, bucket_mb, changed_only)
            # Under ZeRO-3 every policy rank sends its part (rank 0's result counts the buckets).
            results = get_collective(sent + [w.receive_weights.remote(changed_only) for w in engines])
            buckets, received = results[0], results[len(sent):]
        else:
            sent = self.roles.policy_rank0(PolicyWorker.weight_buckets, dtype, bucket_mb, changed_only)
            buckets, *_ = get_fail_fast(sent)
            received = get_fail_fast([w.update_weights.remote(buckets.refs, changed_only) for w in engines])
        # The engines' load (vLLM: reload and repack) is the part of timing/sync_s that the
        # policy's merge, cast and transfer are not.
        self.last_sync = {"rollout/sync_bytes": float(buckets.bytes), "rollout/sync_buckets": float(len(buckets.refs)),
                          "rollout/sync_load_s": max(r.load_s for r in received)}

    # ------------------------------------------------------------------ NaN / Inf
    def nonfinite_findings(self, batch: RolloutBatch, scores: Scores, advantages: PPOLagAdvantages) -> list[dict]:
        """NaN/Inf among what the update would use: the scores first (a broken judge or role is
        the cause), and only while those are finite, what GAE made of them."""
        mask, cfg = batch.response_mask, self.cfg
        return describe_nonfinite({
            "rewards": (scores.rewards, None, f"reward model ({cfg.reward})"),
            "costs": (scores.costs, None, f"cost model ({cfg.cost})"),
            "policy log-probs": (scores.old_logprobs, mask, "policy"),
            "reference log-probs": (scores.ref_logprobs, mask, "reference policy"),
            "reward values": (scores.reward_values, mask, "reward critic"),
            "cost values": (scores.cost_values, mask, "cost critic"),
        }) or describe_nonfinite({
            "advantages": (advantages.advantages, mask, "GAE (rewards, costs, KL shaping, values)"),
            "reward returns": (advantages.reward_returns, mask, "GAE of the reward stream"),
            "cost returns": (advantages.cost_returns, mask, "GAE of the cost stream"),
        })

    def skip_or_stop(self, findings: list[dict], timer: PhaseTimer) -> dict[str, float]:
        """NaN/Inf before any update: stop, or skip the step (no training, λ unchanged,
        the prompts count as used so that the run moves on)."""
        message = findings_message(self.step_index + 1, findings)
        self.skip_or_raise("nonfinite", message, f"{message} (faults.nonfinite=stop)", findings=findings)
        log.warning("%s: step skipped (faults.nonfinite=skip)", message)
        self.step_index += 1
        return {"step": self.step_index, "faults/skipped_nonfinite": 1.0,
                "lagrange/lambda": total_lambda(self.lagrange.value), **timer.metrics()}

    def report_skipped_minibatches(self, skipped: dict[str, float]) -> None:
        """Mini-batches whose loss was NaN/Inf were not applied (all ranks of the role skipped
        them): logged, and under ``faults.nonfinite=stop`` the end of the run. The step counts
        towards ``faults.max_consecutive_skips`` like a skipped one; a clean step ends the streak."""
        if not any(skipped.values()):
            self.consecutive_skips = 0
            return
        message = f"step {self.step_index + 1}: NaN/Inf loss, mini-batches not applied: " + ", ".join(
            f"{role} {count:.0f}" for role, count in skipped.items() if count)
        self.skip_or_raise("nonfinite_loss", message, message, skipped_minibatches=skipped)
        log.warning(message)

    def skip_or_raise(self, kind: str, message: str, stop_message: str, **details) -> None:
        """faults.nonfinite decides: record the fault, then stop (``stop``, or a ``skip``
        streak past faults.max_consecutive_skips) or return so the caller skips."""
        policy = self.cfg.faults.nonfinite
        too_many = policy == "skip" and self.nonfinite_streak_too_long()
        self.fault_log.record(kind, step=self.step_index + 1, **details,
                              action="stop" if policy == "stop" or too_many else "skip",
                              consecutive=self.consecutive_skips, message=message)
        if policy == "stop":
            raise NonFiniteError(stop_message)
        if too_many:
            raise self.nonfinite_streak_error(message)

    def nonfinite_streak_too_long(self) -> bool:
        """Count one more step in a row that lost data to NaN/Inf: whether the streak is now
        longer than ``faults.max_consecutive_skips`` (the source is broken, not noisy)."""
        self.consecutive_skips += 1
        return self.consecutive_skips > self.cfg.faults.max_consecutive_skips

    def nonfinite_streak_error(self, message: str) -> NonFiniteError:
        return NonFiniteError(f"{message}: {self.consecutive_skips} steps in a row lost to NaN/Inf "
                              f"(faults.max_consecutive_skips={self.cfg.faults.max_consecutive_skips}); "
                              "the source is broken, not noisy")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, root: Path) -> Path:
        """Everything a resumed run needs, published atomically (rayrlhf.trainers.checkpoint_dir)."""
        def write(folder: Path) -> None:
            self.roles.save_checkpoint(folder)
            state = {"step": self.step_index, "lagrange": self.lagrange.state_dict(),
                     "python_random": repr(random.getstate()), "torch_seed": torch.initial_seed()}
            (folder / DRIVER_STATE).write_text(json.dumps(state, indent=2))

        with self.deadlines.enforce("save"):
            return checkpoint_dir.publish_checkpoint(root, self.step_index, write,
                                                     keep_last=self.cfg.keep_last_checkpoints)

    def load_checkpoint(self, path: Path) -> None:
        self.roles.load_checkpoint(path)
        state = json.loads((path / DRIVER_STATE).read_text())
        self.step_index = state["step"]
        self.pending_rollout = None  # generated for a step of the run being abandoned
        self.lagrange.load_state_dict(state["lagrange"])
        self.sync()  # the engines still hold the initial weights

    def save_policy(self, out_dir: Path) -> Path:
        """The trained policy as a transformers folder (merged under LoRA), and under LoRA also
        peft's adapter folder beside it (``<out_dir>_adapter``)."""
        with self.deadlines.enforce("save"):
            get_fail_fast(self.roles.policy.call(PolicyWorker.save_pretrained, str(out_dir), self.policy_path))
            if self.cfg.ppo.lora.enabled:
                adapter = out_dir.with_name(out_dir.name + "_adapter")
                get_fail_fast(self.roles.policy.call(PolicyWorker.save_adapter, str(adapter)))
        return out_dir

    def actor_names(self) -> dict[str, str]:
        return self.roles.actor_names()

    def shutdown(self) -> None:
        self.roles.shutdown()


def step_metrics(step: int, batch: RolloutBatch, stats: TrainStats, *, lambda_used: float | list[float],
                 lambda_new: float | list[float], threshold: float | list[float], at_cap_steps: int,
                 old_logprobs: dict[str, float], timer: PhaseTimer,
                 constraints: list[str] | None = None, sync: dict[str, float] | None = None) -> dict[str, float]:
    """One row of metrics.jsonl, by namespace (README: "Metrics")."""
    mask = batch.response_mask.float()
    timing = timer.metrics()
    return {
        "step": step,
        "rollout/response_length": float(mask.sum(-1).mean()),
        "rollout/finished": float(batch.finished.float().mean()),
        # Engine vs trained policy on the sampled tokens (OldLogprobSource.metrics): small when
        # weight sync works; with engine log-probs it is measured on a few rows every N steps.
        **old_logprobs,
        # Engine vs the initial weights (the reference): grows once the policy has moved.
        "rollout/ref_logprob_gap": float(masked_mean((batch.rollout_logprobs - batch.ref_logprobs).abs(), mask)),
        "reward/mean": float(batch.rewards.mean()),
        **constraint_metrics(batch.costs, threshold, lambda_used, lambda_new, constraints),
        # Updates in a row that ended with λ at its cap (lagrange.lambda_max).
        "lagrange/at_cap_steps": float(at_cap_steps),
        "actor/kl_to_ref": float(masked_mean(batch.old_logprobs - batch.ref_logprobs, mask)),
        **{f"actor/{name}": value for name, value in vars(stats.actor).items()},
        "critic/reward_loss": stats.reward_critic.loss,
        **({"critic/cost_loss": stats.cost_critic.loss} if stats.cost_critic is not None else {}),
        "faults/nonfinite_minibatches": float(sum(stats.skipped_minibatches.values())),
        # What this step's weight sync sent (one copy, in the engines' dtype): with timing/sync_s.
        **(sync or {}),
        **timing,
        "timing/generate_tokens_per_s": float(mask.sum()) / max(timer.seconds["generate"], 1e-9),
    }


def total_lambda(value: float | list[float]) -> float:
    """λ, or Σ_k λ_k of per-category constraints: the weight of the costs in the advantage."""
    return float(value) if isinstance(value, (int, float)) else float(sum(value))


def constraint_metrics(costs: torch.Tensor, threshold: float | list[float], lambda_used: float | list[float],
                       lambda_new: float | list[float], constraints: list[str] | None) -> dict[str, float]:
    """``cost/`` and ``lagrange/`` of one step. Per-category constraints add each one's
    ``cost/<name>/{mean,threshold,violation_rate}`` and ``lagrange/<name>/{lambda,lambda_used}``;
    their run-level summary is the most violated constraint's excess, ``cost/mean`` =
    max_k (mean c_k − d_k) against ``cost/threshold`` 0, a response violates when any c_k > 0,
    and ``lagrange/lambda`` is Σ_k λ_k."""
    if constraints is None:
        return {"cost/mean": float(costs.mean()), "cost/threshold": float(threshold),
                "cost/violation_rate": float((costs > 0).float().mean()),
                "lagrange/lambda": float(lambda_new), "lagrange/lambda_used": float(lambda_used)}
    each = {}
    for k, name in enumerate(constraints):
        each |= {f"cost/{name}/mean": float(costs[:, k].mean()), f"cost/{name}/threshold": float(threshold[k]),
                 f"cost/{name}/violation_rate": float((costs[:, k] > 0).float().mean()),
                 f"lagrange/{name}/lambda": float(lambda_new[k]), f"lagrange/{name}/lambda_used": float(lambda_used[k])}
    excess = max(each[f"cost/{name}/mean"] - each[f"cost/{name}/threshold"] for name in constraints)
    return {"cost/mean": excess, "cost/threshold": 0.0, "cost/violation_rate": float((costs > 0).any(1).float().mean()),
            "lagrange/lambda": total_lambda(lambda_new), "lagrange/lambda_used": total_lambda(lambda_used), **each}


def run(cfg) -> list[dict[str, float]]:
    """Entry of ``rayrlhf ppo-lag``: build the workers, run ``cfg.steps`` steps, save.

    A worker that dies, hangs past its phase's deadline or fails in a way a rebuild can cure
    (``rayrlhf.faults.FAILURES``) costs a restart: every worker is killed and rebuilt and the
    run continues from its newest checkpoint (metrics after it are recomputed), up to
    ``faults.max_restarts``. The other failures stop the run, saying what to do; a periodic save
    that finds the disk full is retried at the next save point. Each is a line in faults.jsonl."""
    from omegaconf import OmegaConf

    from rayrlhf.cluster import init_ray
    from rayrlhf.runs import output_dir

    cfg = to_object(cfg)
    out = output_dir(cfg)
    resume_point = None
    if cfg.resume_from:
        resume_point = checkpoint_dir.latest_checkpoint(cfg.resume_from)
        if resume_point is None:
            raise FileNotFoundError(f"resume_from={cfg.resume_from}: no complete checkpoint below it")
        check_resume_config(cfg, Path(cfg.resume_from))
        checkpoint_dir.remove_stale_saves(Path(cfg.resume_from) / "checkpoints")  # saves the crash cut short
    (out / CONFIG_SNAPSHOT).write_text(OmegaConf.to_yaml(cfg))
    write_fingerprints(out, ppo_lag_inputs(cfg))
    write_resume_command(out)
    init_ray(cfg.cluster, required_cpus=required_cpus(cfg))
    fault_log = FaultLog(out / "faults.jsonl")
    metrics_log = MetricsLog(tracking_settings(cfg, out), total=cfg.steps, progress="ppo-lag")
    history: list[dict[str, float]] = []
    restarts = failed_saves = 0
    try:
        while True:
            driver = None
            deadlines = PhaseDeadlines.from_config(cfg.faults)  # measured anew with each set of workers
            try:
                with deadlines.enforce("start"):
                    driver = PPOLagDriver(cfg, fault_log, deadlines)
                    if resume_point is not None:
                        driver.load_checkpoint(resume_point)
                        log.info("continuing from %s at step %d", resume_point, driver.step_index)
                history = [m for m in history if m["step"] <= driver.step_index]
                if restarts:
                    dropped = metrics_log.rewind(driver.step_index)
                    fault_log.record("recomputed_steps", steps=[m["step"] for m in dropped], rows=dropped)
                while driver.step_index < cfg.steps:
                    metrics = driver.step()
                    note_unreachable_threshold(metrics, after=cfg.faults.threshold_unreachable_after,
                                               lambda_max=getattr(driver.lagrange, "lambda_max", math.inf),
                                               threshold=driver.lagrange.threshold, fault_log=fault_log)
                    history.append(metrics)
                    metrics_log.log(metrics)
                    if cfg.save_every and driver.step_index % cfg.save_every == 0:
                        failed_saves = save_unless_disk_full(driver, out / "checkpoints", fault_log, failed_saves)
                driver.save_checkpoint(out / "checkpoints")
                driver.save_policy(out / "policy")
                return history
            except Exception as exc:
                kind = classify_failure(exc)
                if kind is None:  # the driver's own error (a NaN stop, bad input): not a worker fault
                    raise
                if driver is not None:
                    name_actors(exc, driver.actor_names())
                restarts += FAILURES[kind].restart
                resume_point = checkpoint_dir.latest_checkpoint(out) or resume_point
                handle_failure(exc, kind, driver.step_index if driver else None, restarts=restarts,
                               resume_point=resume_point, fault_log=fault_log, cfg=cfg, out=out)
            finally:
                if driver is not None:
                    driver.shutdown()  # kills every worker, the hung ones too
    finally:
        metrics_log.close()


def save_unless_disk_full(driver: PPOLagDriver, root: Path, fault_log: FaultLog, failed_in_a_row: int) -> int:
    """A periodic checkpoint. When the disk is full the save is dropped (its partial folder
    too), the previous checkpoint stays the newest, and the run trains on: a save changes
    nothing the workers train with, and the next save point retries. More than
    ``faults.max_failed_saves`` such saves in a row stop the run (``handle_failure``).
    Returns the failed saves in a row."""
    try:
        driver.save_checkpoint(root)
        return 0
    except Exception as exc:
        limit = driver.cfg.faults.max_failed_saves
        if classify_failure(exc) != "disk_full" or failed_in_a_row >= limit:
            raise
        cause = worker_error(exc)
        message = (f"saving the checkpoint of step {driver.step_index} failed, the disk is full "
                   f"({type(cause).__name__}: {cause}); training goes on, the next save point retries "
                   f"({failed_in_a_row + 1} of faults.max_failed_saves={limit} in a row)")
        latest = checkpoint_dir.latest_checkpoint(root)
        fault_log.record("save_failed", step=driver.step_index, phase="save",
                         actor=", ".join(failed_actors(name_actors(exc, driver.actor_names()))),
                         action="train on, retry at the next save", failed_in_a_row=failed_in_a_row + 1,
                         latest_checkpoint=str(latest) if latest else None, message=message,
                         error=f"{type(exc).__name__}: {str(exc)[:2000]}")
        log.error(message)
        return failed_in_a_row + 1


def handle_failure(exc: Exception, kind: str, steps_done: int | None, *, restarts: int,
                   resume_point: Path | None, fault_log: FaultLog, cfg, out: Path) -> None:
    """Record a classified worker failure in faults.jsonl and the log; return to restart from
    ``resume_point``, or raise ``WorkerFailedError`` saying what happened and what to do.
    ``steps_done``: the driver's completed steps (None: it had not started)."""
    failure, phase = FAILURES[kind], phase_of(exc)
    actors = failed_actors(exc)
    who = ", ".join(actors)
    step = None if steps_done is None else steps_done if phase == "save" else steps_done + 1
    if steps_done is None or phase == "start":
        when = "while starting (or loading the checkpoint)"
    elif phase == "save":
        when = f"while saving after step {step}"
    else:
        when = f"during step {step} ({phase})"
    if kind == "worker_died":
        what = f"{who} died {when}"
    elif kind == "worker_hung":
        what = f"{who} did not answer within {exc.seconds:.0f} s {when} (hung)"
    else:
        cause = worker_error(exc)
        what = f"{who} failed {when}: {failure.what} ({type(cause).__name__}: {str(cause)[:300]})"
    entry = {"actor": who, "phase": phase, "step": step,
             "action": "restart" if failure.restart else "stop",
             "error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
    if isinstance(exc, PhaseTimeoutError):
        entry.update(not_answered=actors, timeout_s=exc.seconds)
    resume = str(resume_point) if resume_point else "the start"
    if not failure.restart:
        fault_log.record(kind, **entry, message=what)
        raise WorkerFailedError(f"{what}. {failure.remedy[:1].upper()}{failure.remedy[1:]}. Checkpoint: "
                                f"{resume_point or 'none yet'}. Details in {fault_log.path}.{resume_hint(out)}") from exc
    fault_log.record(kind, **entry, restart=restarts, resume_from=resume, message=what)
    if restarts > cfg.faults.max_restarts:
        raise WorkerFailedError(
            f"{what} ({type(exc).__name__}); gave up after faults.max_restarts={cfg.faults.max_restarts} "
            f"restarts. Checkpoint: {resume_point}. Details in {fault_log.path}.{resume_hint(out)}") from exc
    log.error("%s (%s); restart %d/%d from %s", what, type(exc).__name__, restarts, cfg.faults.max_restarts, resume)
